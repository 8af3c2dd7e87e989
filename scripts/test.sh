#!/usr/bin/env bash
# Runs the whole test suite. The integration tests start their own servers:
# MariaDB (mariadbd in temp dirs on free loopback ports), Prometheus (for
# the dashboard and alert tests) and NATS with JetStream (nats-server, for the
# change-event relay), so their Debian packages must be installed,
# not running; and the OpenAPI fuzz test runs schemathesis (PyPI) from a
# virtualenv under target/. This installs whichever is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || missing+=(mariadb-server)
command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || missing+=(nats-server)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)

if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing ${missing[*]} with apt" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# schemathesis, pinned, for tests/api/openapi_fuzz.rs (tests/openapi/).
venv=target/openapi-venv
if ! "$venv/bin/schemathesis" --version >/dev/null 2>&1; then
  echo "== installing schemathesis into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r tests/openapi/requirements.txt
fi
export SCHEMATHESIS="$PWD/$venv/bin/schemathesis"

cargo test --all-targets "$@"
