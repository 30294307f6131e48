#!/usr/bin/env bash
# The fault-injection harness (docs/reliability.md):
#   scripts/chaos.sh --seconds N [--seed S] [--bus amqp|nats|kafka|redis|webhook|sqs|sns|all|a,b…]
#                    [--db postgres|mysql|sqlite|all] [--cluster] [--capture wal] [--pgbouncer]
#                    [--fleet N] [--dir D]
#   scripts/chaos.sh --soak --minutes N [--bus …]   (a long steady run, sampled and plotted)
# starts a world of its own — a private PostgreSQL cluster or MariaDB server (or SQLite files),
# RabbitMQ node, nats-server, tansu, redis-server and moto for SQS and SNS (with --cluster
# three-node RabbitMQ and NATS clusters), each behind a fault-injecting proxy; the machine's
# shared services are not touched; with --pgbouncer, writers and relays reach PostgreSQL
# through a private PgBouncer;
# with --fleet N, each bus has N tenant databases and each relay is a fleet over them —
# runs writers, relays and a recording consumer per bus, injects faults drawn from the seed
# for N seconds, heals, drains and checks. Prints one JSON line per database; exits 1 when a signal was
# lost, delivered out of order or delivered without a commit. `--bus all` (the default) runs
# the seven buses at once; `--db all` runs PostgreSQL, MariaDB and SQLite one after the other
# (default: PostgreSQL). `signalbus-chaos run --help` lists the other settings.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
[ -x "${pg_bin:-/nonexistent}/initdb" ] || command -v initdb >/dev/null || missing+=("initdb and pg_ctl (Debian package postgresql)")
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || missing+=("rabbitmq-server (Debian package rabbitmq-server)")
# MariaDB only for the runs that use it (--db mysql or --db all).
if [[ " $* " == *" --db mysql "* || " $* " == *" --db all "* || " $* " == *" --db=mysql "* || " $* " == *" --db=all "* ]]; then
    [ -x /usr/sbin/mariadbd ] && command -v mariadb-install-db >/dev/null || missing+=("mariadbd and mariadb-install-db (Debian package mariadb-server)")
fi
if [[ " $* " == *" --pgbouncer "* ]]; then
    command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ] || missing+=("pgbouncer (Debian package pgbouncer; scripts/test-tools.sh installs it)")
fi
command -v nats-server >/dev/null || missing+=("nats-server (Debian package nats-server)")
command -v redis-server >/dev/null || missing+=("redis-server (Debian package redis-server)")
command -v kill >/dev/null || missing+=("kill (Debian package procps)")
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing+=("the DejaVu font for the soak's plot (Debian package fonts-dejavu-core)")
if [ ${#missing[@]} -gt 0 ]; then
    printf 'ERROR: the fault-injection harness needs %s\n' "${missing[@]}" >&2
    exit 1
fi
# tansu with its SQLite engine, so that a restarted broker keeps its topics; moto for SQS and SNS.
bash scripts/kafka.sh install
bash scripts/moto.sh install

# --workspace --all-features: the same feature set as the test build, so its artifacts serve.
cargo build --workspace --all-features --bin signalbus-chaos
# Where cargo built it: the target directory may be elsewhere (CARGO_TARGET_DIR, a shared
# target in .cargo/config.toml).
target_dir=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
exec "$target_dir/debug/signalbus-chaos" run "$@"
