#!/usr/bin/env bash
# System packages the test suite needs beyond the Python virtualenv (`make test` runs this
# first; CI runs `make test`). Idempotent: does nothing when every tool is already on PATH.
#
#   prometheus  tests/integration/test_prometheus_dashboards.py scrapes a live worker with a
#               real Prometheus and evaluates every Grafana panel query through its HTTP API.
#
# Installs with apt-get (Debian/Ubuntu) as root, or through sudo when that works without a
# password. Otherwise it prints what to install and exits 0, so `make test` still runs; the
# Prometheus test then fails naming this script (set GENRE_SKIP_PROMETHEUS=1 to skip it).
set -euo pipefail

missing=()
command -v prometheus > /dev/null 2>&1 || missing+=(prometheus)

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo > /dev/null 2>&1 && sudo -n true 2> /dev/null; then
    SUDO=(sudo -n)
else
    SUDO=unavailable
fi

if ! command -v apt-get > /dev/null 2>&1 || [ "${SUDO[*]}" = unavailable ]; then
    echo "install-system-deps: missing ${missing[*]}; install it (Debian/Ubuntu: as root," \
        "apt-get install -y ${missing[*]}) or set GENRE_SKIP_PROMETHEUS=1 to skip the" \
        "Prometheus dashboard test." >&2
    exit 0
fi

echo "install-system-deps: installing ${missing[*]} with apt-get" >&2
# The Debian package starts a prometheus service on :9090 where an init system runs;
# the tests start their own server on a free port, so that service does not matter.
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null

for tool in "${missing[@]}"; do
    if ! command -v "$tool" > /dev/null 2>&1; then
        echo "install-system-deps: apt-get ran but $tool is still not on PATH" >&2
        exit 1
    fi
done
echo "install-system-deps: $(prometheus --version 2>&1 | head -n 1)" >&2
