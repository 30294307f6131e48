#!/usr/bin/env bash
# What the console's tests need besides the shared services, installed on first use from the
# Debian registry: headless Chromium and its WebDriver (`chromium`, `chromium-driver`) for the
# browser journey, and Prometheus (`prometheus`, which brings `promtool`) for the alert rules.
# Fails loudly when one cannot be installed: those tests never skip.
set -euo pipefail

need=()
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
{ command -v promtool >/dev/null && command -v prometheus >/dev/null; } || need+=(prometheus)
if [ ${#need[@]} -gt 0 ]; then
    echo "== installing ${need[*]} (Debian packages; the console's tests need them)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends "${need[@]}" >/dev/null 2>&1 ||
        { apt-get update >/dev/null && apt-get install -y --no-install-recommends "${need[@]}" >/dev/null; } ||
        { echo "ERROR: apt-get install ${need[*]} failed; the console's browser and alert-rule tests need them" >&2; exit 1; }
fi
# The Debian prometheus package starts a service on :9090 when systemd runs; the tests start
# their own server on a port of their own and need none.
for tool in chromium chromedriver promtool prometheus; do
    command -v "$tool" >/dev/null || { echo "ERROR: $tool is missing after the install" >&2; exit 1; }
done
