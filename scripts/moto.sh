#!/usr/bin/env bash
# SQS and SNS for the tests: moto's server (the Python package `moto[server]`, which speaks
# the AWS wire protocol to the real AWS SDK) on 127.0.0.1:4577, in memory.
# `scripts/moto.sh start` installs it when absent (a virtual environment cached in
# ~/.cache/signalbus/moto, about a minute), starts it and waits until it listens;
# `scripts/moto.sh stop` stops the one it started. Tests make their own queues and topics.
set -euo pipefail
source "$(dirname "$0")/venv.sh"

HOST=127.0.0.1
PORT=${SIGNALBUS_MOTO_PORT:-4577}
VENV=${SIGNALBUS_MOTO_VENV:-$HOME/.cache/signalbus/moto}
PIDFILE=${TMPDIR:-/tmp}/signalbus-moto.pid
LOG=${TMPDIR:-/tmp}/signalbus-moto.log
MOTO_VERSION=${MOTO_VERSION:-5.2.6}   # the version the tests were written against

listening() { (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null; }

install() {
    [ -x "$VENV/bin/moto_server" ] || rm -rf "$VENV"
    venv_install "$VENV" moto "$MOTO_VERSION" "moto[server]==$MOTO_VERSION" "the SQS and SNS tests need moto"
}

start() {
    if listening; then
        echo "== something already listens on $HOST:$PORT (taken to be moto)"
        return 0
    fi
    install
    echo "== starting moto_server on $HOST:$PORT (log: $LOG)"
    nohup "$VENV/bin/moto_server" -H "$HOST" -p "$PORT" >"$LOG" 2>&1 &
    echo $! >"$PIDFILE"
    for _ in $(seq 1 60); do
        if listening; then
            echo "== moto is up on $HOST:$PORT"
            return 0
        fi
        if ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
            echo "ERROR: moto_server exited at start; its log:" >&2
            cat "$LOG" >&2
            exit 1
        fi
        sleep 1
    done
    echo "ERROR: moto_server does not listen on $HOST:$PORT after 60 s; see $LOG" >&2
    exit 1
}

stop() {
    if [ -f "$PIDFILE" ]; then
        kill "$(cat "$PIDFILE")" 2>/dev/null || true
        rm -f "$PIDFILE"
        echo "== moto stopped"
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    install) install ;;
    *) echo "usage: $0 start|stop|install" >&2; exit 2 ;;
esac
