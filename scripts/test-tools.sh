#!/usr/bin/env bash
# The tools the tests run besides the shared services, installed on first use from the
# Debian registry: headless Chromium and its WebDriver (`chromium`, `chromium-driver`) for the
# console's browser journey, Prometheus (`prometheus`, which brings `promtool`) for the alert
# rules, PgBouncer (`pgbouncer`) for transaction pooling, `systemd-analyze` (`systemd`) for the
# example unit, and the DejaVu font (`fonts-dejavu-core`) for the soak's plot. Fails loudly
# when one cannot be installed: those tests never skip.
set -euo pipefail

need=()
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
{ command -v promtool >/dev/null && command -v prometheus >/dev/null; } || need+=(prometheus)
# Debian keeps pgbouncer in /usr/sbin.
command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ] || need+=(pgbouncer)
command -v systemd-analyze >/dev/null || need+=(systemd)
font=/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf
[ -f "$font" ] || need+=(fonts-dejavu-core)
if [ ${#need[@]} -gt 0 ]; then
    echo "== installing ${need[*]} (Debian packages the tests run)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends "${need[@]}" >/dev/null 2>&1 ||
        { apt-get update >/dev/null && apt-get install -y --no-install-recommends "${need[@]}" >/dev/null; } ||
        { echo "ERROR: apt-get install ${need[*]} failed; the console, alert-rule, PgBouncer, systemd-unit and soak-plot tests need them" >&2; exit 1; }
fi
# The Debian prometheus package starts a service on :9090 when systemd runs; the tests start
# their own server on a port of their own and need none.
# The Debian pgbouncer package starts no server here either (the tests start their own).
for tool in chromium chromedriver promtool prometheus systemd-analyze; do
    command -v "$tool" >/dev/null || { echo "ERROR: $tool is missing after the install" >&2; exit 1; }
done
command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ] ||
    { echo "ERROR: pgbouncer is missing after the install" >&2; exit 1; }
[ -f "$font" ] || { echo "ERROR: $font is missing after the install" >&2; exit 1; }
