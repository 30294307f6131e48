#!/usr/bin/env bash
# The `signalbus` binary of the previous release, for the rolling-upgrade test
# (crates/signalbus-tests/tests/integration/rolling.rs): an old relay beside a new one on one
# database, a migration of the new release in between. Built from this repository's own
# history (git archive of PREVIOUS, nothing downloaded but crates) into
# target/previous-release/signalbus; the build shares target/ so that the dependencies
# compiled for this tree are reused (about half a minute on 2 cores). Skipped when that
# binary is already the one of PREVIOUS.
set -euo pipefail
cd "$(dirname "$0")/.."

# Bump at each release: the commit the last release was tagged on (before tags: the last
# commit before fleet mode, 2026-12-05).
PREVIOUS=043b9f7
OUT=target/previous-release
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
git archive "$PREVIOUS" | tar -x -C "$OUT/src"
# Its own version (build metadata: still matches the `0.1.0` requirements between the
# crates), so that its crates are other packages to cargo than this tree's — their artifacts
# and fingerprints side by side in target/, never taken for one another.
sed -i '0,/^version = "\([^"+]*\)"$/s//version = "\1+previous"/' "$OUT/src/Cargo.toml"
grep -q '^version = ".*+previous"$' "$OUT/src/Cargo.toml" ||
    { echo "ERROR: no workspace version found in $PREVIOUS's Cargo.toml" >&2; exit 1; }
# Into this tree's target directory: the shared dependencies are not built again. The build
# links its binary at target/debug/signalbus, where this tree's is: that one is put back after
# (or none left there), so that no test takes the old binary for the current one.
current=""
if [ -e target/debug/signalbus ]; then
    current="$OUT/current-signalbus"
    cp -p target/debug/signalbus "$current"
fi
built=0
cargo build --manifest-path "$OUT/src/Cargo.toml" --target-dir target \
    -p signalbus-cli --all-features && built=1
if [ $built = 1 ]; then
    cp target/debug/signalbus "$OUT/signalbus"
fi
rm -f target/debug/signalbus
if [ -n "$current" ]; then
    mv "$current" target/debug/signalbus
fi
rm -rf "$OUT/src"
if [ $built = 0 ]; then
    echo "ERROR: could not build the previous release ($PREVIOUS); the rolling-upgrade test needs it" >&2
    exit 1
fi
echo "$PREVIOUS" > "$STAMP"
