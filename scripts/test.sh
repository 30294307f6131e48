#!/usr/bin/env bash
# The test command: starts any local service the tests need that is down (PostgreSQL, MariaDB,
# RabbitMQ, NATS, Redis, a Kafka-protocol broker (tansu) and moto's SQS/SNS server, the last
# two installed on first use), installs what the console's tests run (Chromium, chromedriver,
# Prometheus, schemathesis) and builds the previous release's binary (the rolling-upgrade
# test), then runs the whole test suite. Fails loudly when a service cannot be reached:
# no test is ever skipped for a missing server.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh

command -v kill >/dev/null || { echo "ERROR: the tests need the kill command (Debian package procps)" >&2; exit 1; }
ensure_core_services
# Like the other services, tansu is left running afterwards: runs share the brokers, and
# stopping it at exit would pull it from under a concurrent run (`scripts/kafka.sh stop`).
bash scripts/kafka.sh start
wait_for Kafka 127.0.0.1 9092
# The tools the tests run (Chromium and chromedriver, Prometheus, PgBouncer, systemd-analyze)
# from Debian, installed on first use.
bash scripts/test-tools.sh
bash scripts/schemathesis.sh install
# SQS and SNS: moto's server, installed into a virtual environment on first use.
bash scripts/moto.sh start
wait_for moto 127.0.0.1 "${SIGNALBUS_MOTO_PORT:-4577}"
# The previous release's binary, for the rolling-upgrade test (before this tree's build: it
# shares target/).
bash scripts/previous-release.sh
cargo test --workspace --all-features "$@"
