#!/bin/bash
# Static checks: flake8 over Python, yamllint over templates and environments, shellcheck over every
# shell script, and the user-facing-description check over every OS::GPU::* resource.
set -eu -o pipefail
[ -n "${HEAT_GPU_TRACE:-}" ] && set -x
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
: "${VENV:=$top/.venv}"
export PATH="$VENV/bin:$PATH"

echo "lint: flake8"
py_paths=(heat_gpu tests tools heat_gpu/guest/heat-gpu-agent)
[ -d benchmarks ] && py_paths+=(benchmarks)
flake8 "${py_paths[@]}"

echo "lint: yamllint"
yamllint -s hot environments heat_gpu/templates

echo "lint: shellcheck"
mapfile -t scripts < <(git ls-files -co --exclude-standard | while read -r f; do
    [ -f "$f" ] || continue
    case "$f" in
        *.sh) echo "$f" ;;
        *) head -c 64 "$f" 2>/dev/null | head -n1 | grep -qE '^#!.*(ba)?sh' && echo "$f" ;;
    esac
done)
shellcheck -x "${scripts[@]}"

echo "lint: resource descriptions"
python tools/check_descriptions.py
