#!/usr/bin/env bash
# Proves the OpenAPI documents exact: Schemathesis runs every phase against a
# running engine, once for the public document and once for the admin one,
# and fails on any server error, rejected valid request, accepted invalid
# request, undocumented status, content type or header, or response that does
# not match its schema; an undeclared method must be 405 with `Allow`.
#
#   tests/openapi/fuzz.sh PUBLIC_BASE_URL ADMIN_BASE_URL ADMIN_TOKEN
#   e.g. tests/openapi/fuzz.sh http://127.0.0.1:18080 http://127.0.0.1:19091 t0k
#
# Environment:
#   FUZZ_SEED          replay a run: the seed it printed (default: a new one)
#   FUZZ_MAX_EXAMPLES  examples per operation in fuzzing, scenarios in the
#                      stateful phase (default 400: about 2 minutes)
#   FUZZ_PHASES        default examples,coverage,fuzzing,stateful
#   FUZZ_WORKERS       default 1 (2 crashed the coverage phase once, in
#                      Hypothesis' lambda printing under Python 3.11)
#   FUZZ_PUBLIC_SPEC, FUZZ_ADMIN_SPEC
#                      test a document file instead of the one the engine
#                      serves (e.g. a draft of the next one)
#   FUZZ_REPORT_DIR    where the JUnit reports go (default: a new temp dir)
#   SCHEMATHESIS       the executable (default: schemathesis on PATH);
#                      pip install -r tests/openapi/requirements.txt
#
# Exits 0 only when both documents pass; 1 when checks failed; 2 when a run
# could not test (unreachable engine, invalid document, bad hooks).
set -euo pipefail

if [[ $# -ne 3 ]]; then
    sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
fi
public=${1%/}
admin=${2%/}
token=$3

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
st=${SCHEMATHESIS:-schemathesis}
seed=${FUZZ_SEED:-$(( (RANDOM << 30) | (RANDOM << 15) | RANDOM ))}
max_examples=${FUZZ_MAX_EXAMPLES:-400}
workers=${FUZZ_WORKERS:-1}
phases=${FUZZ_PHASES:-examples,coverage,fuzzing,stateful}
reports=${FUZZ_REPORT_DIR:-$(mktemp -d -t oe-openapi.XXXXXX)}
mkdir -p "$reports"
# Absolute paths: the runs start in the report directory.
spec_path() { [[ -z $1 ]] || realpath "$1"; }
public_spec=$(spec_path "${FUZZ_PUBLIC_SPEC:-}")
admin_spec=$(spec_path "${FUZZ_ADMIN_SPEC:-}")

# The "order-id"/"order-cursor" formats and the two stricter checks.
export SCHEMATHESIS_HOOKS="$here/hooks.py"

echo "openapi fuzz: seed $seed (replay: FUZZ_SEED=$seed), max examples $max_examples, reports in $reports"

# With schemathesis.toml's settings only Hypothesis' Unicode table cache
# (./.hypothesis) lands in the working directory: keep it out of the checkout.
cd "$reports"

# run NAME BASE_URL SPEC_FILE [extra schemathesis options]
run() {
    local name=$1 base=$2 spec=$3
    shift 3
    local location=$base/openapi.json
    local where=()
    if [[ -n $spec ]]; then
        location=$spec
        where=(--url "$base")
    fi
    echo
    echo "=== $name: $location"
    local started=$SECONDS status=0
    "$st" --config-file "$here/schemathesis.toml" run "$location" "${where[@]}" \
        --seed "$seed" \
        --max-examples "$max_examples" \
        --workers "$workers" \
        --phases "$phases" \
        --wait-for-schema 30 \
        --request-timeout 10 \
        --no-color \
        --report junit --report-junit-path "$reports/$name.xml" \
        "$@" || status=$?
    echo "=== $name: exit $status in $((SECONDS - started)) s"
    return "$status"
}

public_status=0
admin_status=0
run public "$public" "$public_spec" || public_status=$?
# The token goes in a header (not an [auth] section) so that `ignored_auth`
# takes it as the explicit credential and checks that a request without it,
# or with another one, gets 401.
run admin "$admin" "$admin_spec" --header "Authorization: Bearer $token" || admin_status=$?

echo
echo "openapi fuzz: public exit $public_status, admin exit $admin_status in $SECONDS s (seed $seed)"
if (( public_status == 0 && admin_status == 0 )); then
    exit 0
fi
# 2 (could not test) wins over 1 (checks failed): a broken run proves nothing.
if (( public_status == 2 || admin_status == 2 )); then
    exit 2
fi
exit 1
