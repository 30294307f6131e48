#!/usr/bin/env bash
# The console API's fuzzer: schemathesis (Python registry) in a virtual environment cached in
# ~/.cache/signalbus/schemathesis, installed on first use. `scripts/schemathesis.sh install`
# is what scripts/test.sh runs; crates/signalbus-console/tests/openapi_fuzz.rs runs the tool.
set -euo pipefail

VENV=${SIGNALBUS_SCHEMATHESIS_VENV:-$HOME/.cache/signalbus/schemathesis}
VERSION=${SCHEMATHESIS_VERSION:-4.32.5}   # the version the test was written against

case "${1:-install}" in
install)
    if [ -x "$VENV/bin/schemathesis" ] && "$VENV/bin/pip" show schemathesis 2>/dev/null | grep -qx "Version: $VERSION"; then
        exit 0
    fi
    echo "== installing schemathesis==$VERSION into $VENV"
    if ! python3 -m venv --help >/dev/null 2>&1; then
        apt-get install -y python3-venv >/dev/null 2>&1 ||
            { apt-get update >/dev/null && apt-get install -y python3-venv >/dev/null; } ||
            { echo "ERROR: python3 -m venv is missing and apt-get install python3-venv failed" >&2; exit 1; }
    fi
    rm -rf "$VENV"
    python3 -m venv "$VENV" ||
        { echo "ERROR: python3 -m venv $VENV failed; the console's API fuzz test needs schemathesis" >&2; exit 1; }
    "$VENV/bin/pip" install --quiet "schemathesis==$VERSION" ||
        { echo "ERROR: pip install schemathesis==$VERSION failed; the console's API fuzz test needs it" >&2; exit 1; }
    ;;
*)
    echo "usage: $0 install" >&2
    exit 2
    ;;
esac
