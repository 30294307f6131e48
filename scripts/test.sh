#!/usr/bin/env bash
# The test command: starts any local service the tests need that is down (PostgreSQL, MariaDB,
# RabbitMQ, NATS), then runs the whole test suite. Fails loudly when a service cannot be
# reached: no test is ever skipped for a missing server.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh

ensure_core_services
cargo test --workspace --all-features "$@"
