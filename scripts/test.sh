#!/usr/bin/env bash
# Runs the whole test suite. The integration tests start their own MariaDB
# servers (mariadbd in temp dirs on free loopback ports), so MariaDB's server
# package must be installed, not running; this installs it when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

have_mariadbd() {
  command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || [ -x /usr/sbin/mysqld ]
}

if ! have_mariadbd; then
  echo "== mariadbd not found: installing mariadb-server with apt" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends mariadb-server
fi

cargo test --all-targets "$@"
