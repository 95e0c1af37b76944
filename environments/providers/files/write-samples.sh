#!/bin/bash
# heat-gpu (no-plugin path): a software deployment that writes the CUDA sample sources, which arrive
# as the inputs HEAT_GPU_SRC_<name>, to HEAT_GPU_SAMPLES_DIR for the sample runner's deployment.
set -eu -o pipefail
[ -n "${HEAT_GPU_TRACE:-}" ] && set -x

: "${HEAT_GPU_ROOT:=}"
: "${HEAT_GPU_SAMPLES_DIR:=/var/lib/heat-gpu/samples/src}"

dir=$HEAT_GPU_ROOT$HEAT_GPU_SAMPLES_DIR
mkdir -p "$dir"
mapfile -t vars < <(compgen -v HEAT_GPU_SRC_ || true)
count=0
for var in "${vars[@]}"; do
    name=${var#HEAT_GPU_SRC_}
    printf '%s\n' "${!var}" > "$dir/$name.cu.new"
    mv "$dir/$name.cu.new" "$dir/$name.cu"
    count=$((count + 1))
done
if [ "$count" -eq 0 ]; then
    echo "write-samples: no HEAT_GPU_SRC_* input; the deployment carries the sample sources" >&2
    exit 1
fi
echo "write-samples: wrote $count sample source(s) to $dir" >&2
