#!/usr/bin/env bash
# Kafka-protocol broker for the tests: tansu (Debian has no Kafka) on 127.0.0.1:9092,
# in memory. `scripts/kafka.sh start` installs tansu when absent (cached in ~/.cargo/bin,
# about 7 minutes on 2 cores), starts it and waits until it listens; `scripts/kafka.sh stop`
# stops the one it started. Tests create their own topics (tansu does not auto-create).
set -euo pipefail

HOST=127.0.0.1
PORT=${SIGNALBUS_KAFKA_PORT:-9092}
PIDFILE=${TMPDIR:-/tmp}/signalbus-tansu.pid
LOG=${TMPDIR:-/tmp}/signalbus-tansu.log
TANSU_VERSION=${TANSU_VERSION:-0.6.0}   # the version the tests were written against

listening() { (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null; }

install() {
    export PATH="$HOME/.cargo/bin:$PATH"
    # libsql: the fault-injection harness (scripts/chaos.sh) restarts a private tansu that
    # keeps its topics in an SQLite file; an older install without that engine is replaced.
    if command -v tansu >/dev/null && grep -q '"tansu [^"]*".*"libsql"' "$HOME/.cargo/.crates2.json" 2>/dev/null; then
        return 0
    fi
    echo "== installing tansu (cargo install tansu --locked --features dynostore,libsql)"
    local version=()
    [ -n "$TANSU_VERSION" ] && version=(--version "$TANSU_VERSION")
    nice -n 10 cargo install tansu --locked --features dynostore,libsql "${version[@]}" ||
        { echo "ERROR: cargo install tansu failed; the Kafka tests need it" >&2; exit 1; }
}

start() {
    if listening; then
        echo "== a Kafka broker already listens on $HOST:$PORT"
        return 0
    fi
    install
    echo "== starting tansu on $HOST:$PORT (log: $LOG)"
    nohup "$HOME/.cargo/bin/tansu" broker \
        --listener-url "tcp://$HOST:$PORT" \
        --advertised-listener-url "tcp://$HOST:$PORT" \
        --storage-engine memory://tansu/ >"$LOG" 2>&1 &
    echo $! >"$PIDFILE"
    for _ in $(seq 1 60); do
        if listening; then
            echo "== tansu is up on $HOST:$PORT"
            return 0
        fi
        if ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
            echo "ERROR: tansu exited at start; its log:" >&2
            cat "$LOG" >&2
            exit 1
        fi
        sleep 1
    done
    echo "ERROR: tansu does not listen on $HOST:$PORT after 60 s; see $LOG" >&2
    exit 1
}

stop() {
    if [ -f "$PIDFILE" ]; then
        kill "$(cat "$PIDFILE")" 2>/dev/null || true
        rm -f "$PIDFILE"
        echo "== tansu stopped"
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    install) install ;;
    *) echo "usage: $0 start|stop|install" >&2; exit 2 ;;
esac
