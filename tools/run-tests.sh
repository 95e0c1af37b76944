#!/bin/bash
# The whole suite, as `make test` and CI run it: static checks, unit tests (sample programs compiled
# for real with nvcc among them), the release matrix (the plugin and the unit suite on every other
# supported heat release, tools/release_matrix.py) and the end-to-end tests on the local cloud,
# which this script starts and stops itself; the matrix runs beside the end-to-end tests and its
# output is printed after theirs. Every phase runs even when an earlier one failed; the exit code
# and the closing line count them all.
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

# The release matrix, in the background: it writes its output, exit status and counts to files
# that finish_matrix reads. Beside the end-to-end phase it runs at a lower priority: those tests
# mostly wait for the cloud (about a quarter of two cores busy), so the matrix takes the idle time.
start_matrix() {
    matrix_dir=$(mktemp -d)
    trap 'rm -f "$failed_tests"; rm -rf "$matrix_dir"' EXIT
    matrix_t0=$SECONDS
    (
        rc=0
        nice -n 10 python -m tools.release_matrix --counts "$matrix_dir/counts" \
            --failures "$matrix_dir/failures" >"$matrix_dir/log" 2>&1 || rc=$?
        echo "$rc" >"$matrix_dir/rc"
    ) &
    matrix_pid=$!
}

finish_matrix() {
    local rc p f s
    wait "$matrix_pid" || true
    echo "=== matrix"
    cat "$matrix_dir/log"
    rc=$(cat "$matrix_dir/rc" 2>/dev/null || echo 1)
    cat "$matrix_dir/failures" >>"$failed_tests" 2>/dev/null || true
    if read -r p f s <"$matrix_dir/counts"; then
        passed=$((passed + p))
        failed=$((failed + f))
        skipped=$((skipped + s))
    else
        failed=$((failed + 1))
    fi
    if [ "$rc" -eq 0 ]; then
        echo "=== matrix: ok ($((SECONDS - matrix_t0)) s, beside the end-to-end tests)"
    else
        echo "=== matrix: FAILED ($((SECONDS - matrix_t0)) s, beside the end-to-end tests)"
        failures+=(matrix)
    fi
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

# The matrix starts where it stands in the phase list and is collected after the next phase that
# is not lint or unit (the end-to-end one), or at the end.
matrix_pid=
for p in $HEAT_GPU_TEST_PHASES; do
    case "$p" in
        lint) phase lint tools/lint.sh || true ;;
        unit) phase unit run_unit || true ;;
        matrix) start_matrix ;;
        functional)
            phase functional run_functional || true
            if [ -n "$matrix_pid" ]; then finish_matrix; matrix_pid=; fi
            ;;
        *) echo "unknown test phase: $p (known: lint unit matrix functional)" >&2; exit 2 ;;
    esac
done
if [ -n "$matrix_pid" ]; then finish_matrix; fi

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
