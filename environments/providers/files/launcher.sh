#!/bin/bash
# heat-gpu (no-plugin path): run the boot script that the cloud-config part wrote.
exec /bin/bash "${HEAT_GPU_ROOT:-}/usr/local/lib/heat-gpu/bootstrap.sh"
