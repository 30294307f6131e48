#!/usr/bin/env bash
# The `signalbus` binary of the previous release, for the rolling-upgrade test
# (crates/signalbus-tests/tests/integration/rolling.rs): an old relay beside a new one on one
# database, a migration of the new release in between. Built from this repository's own
# history (git archive of PREVIOUS; nothing downloaded but crates) into
# <target>/previous-release/signalbus, in this tree's target directory so that the
# dependencies built for it are shared. Skipped when that binary is already PREVIOUS's.
set -euo pipefail
cd "$(dirname "$0")/.."

# Bump at each release: the commit the last release was tagged on (before tags: the last
# commit before fleet mode).
PREVIOUS=043b9f7

# Where cargo builds: the target directory may be elsewhere (CARGO_TARGET_DIR, a target in
# .cargo/config.toml), and the test looks beside its own binary.
target=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
OUT="$target/previous-release"
STAMP="$OUT/commit"

if [ -x "$OUT/signalbus" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$PREVIOUS" ]; then
    exit 0
fi
if ! git cat-file -e "$PREVIOUS^{commit}" 2>/dev/null; then
    echo "ERROR: the previous release's commit $PREVIOUS is not in this clone's history." >&2
    echo "       The rolling-upgrade test builds its relay from it: clone without --depth," >&2
    echo "       or run 'git fetch --unshallow'." >&2
    exit 1
fi
echo "== building the previous release's signalbus ($PREVIOUS) into $OUT"
rm -rf "$OUT"
mkdir -p "$OUT/src"
trap 'rm -rf "$OUT/src"' EXIT
git archive "$PREVIOUS" | tar -x -C "$OUT/src"
# Other packages to cargo than this tree's, so that the two never take each other's
# artifacts in the shared target directory: its own version (build metadata, which still
# matches the `0.1.0` requirements between its crates) ...
sed -i '0,/^version = "\([^"+]*\)"$/s//version = "\1+previous"/' "$OUT/src/Cargo.toml"
grep -q '^version = ".*+previous"$' "$OUT/src/Cargo.toml" ||
    { echo "ERROR: no workspace version found in $PREVIOUS's Cargo.toml" >&2; exit 1; }
# ... and its own binary name, so that this tree's target/debug/signalbus is never replaced.
cli="$OUT/src/crates/signalbus-cli/Cargo.toml"
sed -i 's/^name = "signalbus"$/name = "signalbus-previous"/' "$cli"
grep -q '^name = "signalbus-previous"$' "$cli" ||
    { echo "ERROR: no [[bin]] signalbus found in $PREVIOUS's signalbus-cli" >&2; exit 1; }
# This tree's build profiles (debug info), so that the dependencies built for it are the test
# build's own artifacts, not a second copy with other settings.
# (Only the [profile…] tables; a release that has its own keeps them.)
grep -q '^\[profile' "$OUT/src/Cargo.toml" ||
    awk '/^\[/ {on = /^\[profile/} on' Cargo.toml >> "$OUT/src/Cargo.toml"
# --workspace --all-features: features unified as in the test build, so that most shared
# dependencies are built once.
cargo build --manifest-path "$OUT/src/Cargo.toml" --target-dir "$target" \
    --workspace --all-features --bin signalbus-previous ||
    { echo "ERROR: could not build the previous release ($PREVIOUS); the rolling-upgrade test needs it" >&2; exit 1; }
cp "$target/debug/signalbus-previous" "$OUT/signalbus"
echo "$PREVIOUS" > "$STAMP"
