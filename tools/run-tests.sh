#!/bin/bash
# The whole suite, as `make test` and CI run it: static checks, unit tests (sample programs compiled
# for real with nvcc among them), the release matrix (the plugin and the unit suite on every other
# supported heat release, tools/release_matrix.py), then the end-to-end tests on the local cloud,
# which this script starts and stops itself. Every phase runs even when an earlier one failed; the
# exit code and the closing line count them all.
set -eu -o pipefail
[ -n "${HEAT_GPU_TRACE:-}" ] && set -x
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
: "${VENV:=$top/.venv}"
export PATH="$VENV/bin:$PATH"
: "${HEAT_GPU_TEST_PHASES:=lint unit matrix functional}"
: "${HEAT_GPU_TEST_CONCURRENCY:=2}"

passed=0
failed=0
skipped=0
failures=()
started=$SECONDS
# The failed tests of every phase, a few lines each, printed again at the very end.
failed_tests=$(mktemp)
trap 'rm -f "$failed_tests"' EXIT

count_last_run() {
    local totals p f s
    totals=$(stestr last 2>/dev/null | sed -n '/^Totals/,$p' || true)
    p=$(sed -n 's/^ - Passed: \([0-9]*\).*/\1/p' <<<"$totals")
    f=$(sed -n 's/^ - Failed: \([0-9]*\).*/\1/p' <<<"$totals")
    s=$(sed -n 's/^ - Skipped: \([0-9]*\).*/\1/p' <<<"$totals")
    if [ "${f:-0}" -gt 0 ]; then
        stestr last --subunit 2>/dev/null | python -m tools.failure_summary >>"$failed_tests" || true
    fi
    passed=$((passed + ${p:-0}))
    failed=$((failed + ${f:-0}))
    skipped=$((skipped + ${s:-0}))
}

phase() {
    local name=$1
    shift
    local t0=$SECONDS
    echo "=== $name"
    if "$@"; then
        echo "=== $name: ok ($((SECONDS - t0)) s)"
    else
        echo "=== $name: FAILED ($((SECONDS - t0)) s)"
        failures+=("$name")
    fi
}

run_unit() {
    local rc=0
    stestr --test-path tests/unit run --concurrency "$HEAT_GPU_TEST_CONCURRENCY" || rc=$?
    count_last_run
    return "$rc"
}

run_matrix() {
    local rc=0 counts p f s
    counts=$(mktemp)
    python -m tools.release_matrix --counts "$counts" --failures "$failed_tests" || rc=$?
    if read -r p f s <"$counts"; then
        passed=$((passed + p))
        failed=$((failed + f))
        skipped=$((skipped + s))
    else
        failed=$((failed + 1))
    fi
    rm -f "$counts"
    return "$rc"
}

run_functional() {
    local rc=0
    python tools/localcloud/cloud.py start || { failed=$((failed + 1)); return 1; }
    stestr --test-path tests/functional run --concurrency 1 || rc=$?
    count_last_run
    if [ -z "${HEAT_GPU_KEEP_CLOUD:-}" ]; then
        python tools/localcloud/cloud.py stop || true
    fi
    return "$rc"
}

for p in $HEAT_GPU_TEST_PHASES; do
    case "$p" in
        lint) phase lint tools/lint.sh || true ;;
        unit) phase unit run_unit || true ;;
        matrix) phase matrix run_matrix || true ;;
        functional) phase functional run_functional || true ;;
        *) echo "unknown test phase: $p (known: lint unit matrix functional)" >&2; exit 2 ;;
    esac
done

if [ "${#failures[@]}" -gt 0 ] && [ "$failed" -eq 0 ]; then
    # A phase without test counts (lint, cloud start) failed: count it as one failed test.
    failed=${#failures[@]}
fi
if [ -s "$failed_tests" ]; then
    echo "=== failed tests"
    cat "$failed_tests"
fi
echo "wall time: $((SECONDS - started)) s; failed phases: ${failures[*]:-none}"
echo "heat-gpu: $passed passed, $failed failed, $skipped skipped"
[ "${#failures[@]}" -eq 0 ]
