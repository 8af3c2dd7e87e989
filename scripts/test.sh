#!/usr/bin/env bash
# Runs the whole test suite. The integration tests start their own servers:
# MariaDB (mariadbd in temp dirs on free loopback ports) and Prometheus (for
# the dashboard and alert tests), so their Debian packages must be installed,
# not running. This installs whichever is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || missing+=(mariadb-server)
command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || missing+=(prometheus)

if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing ${missing[*]} with apt" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

cargo test --all-targets "$@"
