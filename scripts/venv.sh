# Sourced by scripts/moto.sh and scripts/schemathesis.sh: install one pinned package from the
# Python registry into a virtual environment of its own, once.
#
#   venv_install VENV PACKAGE VERSION SPEC WHO
#
# Does nothing when VENV already holds PACKAGE at VERSION; otherwise makes VENV anew and
# installs SPEC (e.g. "moto[server]==5.2.6"). WHO says which tests need it, in the errors.
venv_install() {
    local venv=$1 package=$2 version=$3 spec=$4 who=$5
    local shown=""
    # Read whole before matching: `pip show | grep -q` fails under pipefail when grep stops
    # reading first.
    [ -x "$venv/bin/pip" ] && shown=$("$venv/bin/pip" show "$package" 2>/dev/null || true)
    if grep -qx "Version: $version" <<<"$shown"; then
        return 0
    fi
    echo "== installing $spec into $venv"
    if ! python3 -m venv --help >/dev/null 2>&1; then
        apt-get install -y python3-venv >/dev/null 2>&1 ||
            { apt-get update >/dev/null && apt-get install -y python3-venv >/dev/null; } ||
            { echo "ERROR: python3 -m venv is missing and apt-get install python3-venv failed" >&2; exit 1; }
    fi
    rm -rf "$venv"
    python3 -m venv "$venv" ||
        { echo "ERROR: python3 -m venv $venv failed; $who" >&2; exit 1; }
    "$venv/bin/pip" install --quiet "$spec" ||
        { echo "ERROR: pip install $spec failed; $who" >&2; exit 1; }
}
