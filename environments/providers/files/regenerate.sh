#!/bin/bash
# Regenerates the gzip+base64 copies of the guest files that providers/cuda_instance.yaml writes with
# cloud-init (encoding gz+b64). Nova takes at most 65535 bytes of base64-encoded user data and plain
# HOT cannot compress, so the provider carries these copies; tests/unit/test_environments.py checks
# they decode to the current files. Run it after changing heat_gpu/guest/bootstrap.sh or the agent.
set -eu -o pipefail
[ -n "${HEAT_GPU_TRACE:-}" ] && set -x

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
guest=$(cd "$here/../../../heat_gpu/guest" && pwd)

for name in bootstrap.sh heat-gpu-agent; do
    gzip -9 -n -c "$guest/$name" | base64 -w 76 > "$here/$name.gz.b64.new"
    mv "$here/$name.gz.b64.new" "$here/$name.gz.b64"
    echo "regenerated $name.gz.b64"
done
