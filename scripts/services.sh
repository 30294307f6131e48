# Sourced by scripts/test.sh and .ci/run: check, and start when down, the local services the
# tests talk to. Each start command is the one documented in DEVELOPERS.md.

log() { printf '== %s\n' "$*"; }

listening() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# wait_for NAME HOST PORT: true once something listens there (up to 60 s).
wait_for() {
    local name=$1 host=$2 port=$3
    for _ in $(seq 1 60); do
        if listening "$host" "$port"; then
            log "$name is up on $host:$port"
            return 0
        fi
        sleep 1
    done
    echo "ERROR: $name is not reachable on $host:$port after 60 s; the tests need it." >&2
    echo "       Start it by hand (see DEVELOPERS.md) or point the SIGNALBUS_TEST_* variables at one." >&2
    return 1
}

# ensure NAME HOST PORT START-COMMAND...: start the service if nothing listens, then wait.
ensure() {
    local name=$1 host=$2 port=$3
    shift 3
    if ! listening "$host" "$port"; then
        log "$name is down; starting it: $*"
        "$@" || { echo "ERROR: could not start $name with: $*" >&2; return 1; }
    fi
    wait_for "$name" "$host" "$port"
}

ensure_core_services() {
    ensure PostgreSQL 127.0.0.1 5432 pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
    ensure MariaDB 127.0.0.1 3306 start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
    ensure RabbitMQ 127.0.0.1 5672 rabbitmq-server -detached
    ensure NATS 127.0.0.1 4222 start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server
    # Redis: the shared server for the Redis Streams tests; the outage tests start private
    # redis-server processes of their own, so the binary must be there either way.
    command -v redis-server >/dev/null || {
        log "redis-server is missing; installing the Debian package redis-server"
        apt-get install -y redis-server >/dev/null || { apt-get update >/dev/null && apt-get install -y redis-server >/dev/null; } ||
            { echo "ERROR: could not install redis-server (apt-get install redis-server)" >&2; return 1; }
    }
    ensure Redis 127.0.0.1 6379 start-stop-daemon --start --oknodo --background --exec /usr/bin/redis-server -- --bind 127.0.0.1 --port 6379
}
