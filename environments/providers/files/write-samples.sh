#!/bin/bash
# heat-gpu (no-plugin path): a software deployment that writes the CUDA sample sources, which arrive
# as the inputs HEAT_GPU_SRC_<name> (written as <name>.cu), and the header they include, input
# HEAT_GPU_HDR_<name> (written as <name>.cuh), to HEAT_GPU_SAMPLES_DIR for the sample runner's
# deployment.
set -eu -o pipefail
[ -n "${HEAT_GPU_TRACE:-}" ] && set -x

: "${HEAT_GPU_ROOT:=}"
: "${HEAT_GPU_SAMPLES_DIR:=/var/lib/heat-gpu/samples/src}"

dir=$HEAT_GPU_ROOT$HEAT_GPU_SAMPLES_DIR
mkdir -p "$dir"
mapfile -t vars < <(compgen -v HEAT_GPU_SRC_ || true; compgen -v HEAT_GPU_HDR_ || true)
count=0
for var in "${vars[@]}"; do
    case "$var" in
        HEAT_GPU_SRC_*) file=${var#HEAT_GPU_SRC_}.cu ;;
        *) file=${var#HEAT_GPU_HDR_}.cuh ;;
    esac
    printf '%s\n' "${!var}" > "$dir/$file.new"
    mv "$dir/$file.new" "$dir/$file"
    count=$((count + 1))
done
if [ "$count" -eq 0 ]; then
    echo "write-samples: no HEAT_GPU_SRC_* or HEAT_GPU_HDR_* input; the deployment carries the" \
        "sample sources" >&2
    exit 1
fi
echo "write-samples: wrote $count sample file(s) to $dir" >&2
