#!/usr/bin/env bash
# The console API's fuzzer: schemathesis (Python registry) in a virtual environment cached in
# ~/.cache/signalbus/schemathesis, installed on first use. `scripts/schemathesis.sh install`
# is what scripts/test.sh runs; crates/signalbus-console/tests/openapi_fuzz.rs runs the tool.
set -euo pipefail
source "$(dirname "$0")/venv.sh"

VENV=${SIGNALBUS_SCHEMATHESIS_VENV:-$HOME/.cache/signalbus/schemathesis}
VERSION=${SCHEMATHESIS_VERSION:-4.32.5}   # the version the test was written against

case "${1:-install}" in
install)
    [ -x "$VENV/bin/schemathesis" ] || rm -rf "$VENV"
    venv_install "$VENV" schemathesis "$VERSION" "schemathesis==$VERSION" \
        "the console's API fuzz test needs schemathesis"
    ;;
*)
    echo "usage: $0 install" >&2
    exit 2
    ;;
esac
