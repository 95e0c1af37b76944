#!/bin/bash
# Installs JupyterLab in a virtualenv, starts it as a systemd service on the GPU server and reports
# its URL. Runs as a Heat software deployment (group script): the inputs arrive as environment
# variables and the outputs are written to ${heat_outputs_path}.<name>. hot/gpu_jupyter.yaml carries
# a copy (tools/inline_scripts.py writes it): run that tool after every change here.
# Inputs: JUPYTER_PORT (TCP port), JUPYTER_TOKEN (the login token), JUPYTER_USER (the account that
# runs it; default: the image's first regular user).
set -eu -o pipefail
[ -n "${HEAT_GPU_TRACE:-}" ] && set -x

: "${JUPYTER_PORT:=8888}"
: "${JUPYTER_TOKEN:?JUPYTER_TOKEN is empty; the template passes a random token}"
: "${JUPYTER_USER:=}"
: "${HEAT_GPU_ROOT:=}"
: "${heat_outputs_path:=/tmp/heat-gpu-jupyter}"

venv=$HEAT_GPU_ROOT/opt/jupyter
unit=$HEAT_GPU_ROOT/etc/systemd/system/heat-gpu-jupyter.service

fail() {
    echo "jupyter: $*" >&2
    exit 1
}

if [ -z "$JUPYTER_USER" ]; then
    JUPYTER_USER=$(awk -F: '$3 >= 1000 && $3 < 60000 { print $1; exit }' "$HEAT_GPU_ROOT/etc/passwd")
fi
[ -n "$JUPYTER_USER" ] || fail "no regular user on the image; set the template's jupyter_user"
home=$(awk -F: -v u="$JUPYTER_USER" '$1 == u { print $6 }' "$HEAT_GPU_ROOT/etc/passwd")
[ -n "$home" ] || fail "user $JUPYTER_USER does not exist on the image"

# Debian and Ubuntu ship venv without ensurepip (python3 -m venv --help works, creating one fails).
if ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        # Cloud images ship without package lists; the image's sources may be a mirror of the
        # cloud's own.
        apt-get update -q >&2 || fail "apt-get update failed for the image's sources"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >&2 \
            || fail "python3-venv is missing and apt-get could not install it from the image's sources"
    elif command -v dnf >/dev/null 2>&1; then
        dnf install -y -q python3 >&2 || fail "dnf could not install python3 from the image's sources"
    else
        fail "python3 -m venv is missing and no package manager (apt-get, dnf) was found"
    fi
fi

if [ ! -x "$venv/bin/jupyter" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip >&2
    "$venv/bin/pip" install -q jupyterlab >&2
fi

mkdir -p "$(dirname "$unit")"
cat > "$unit" <<UNIT
[Unit]
Description=JupyterLab on the GPU (heat-gpu)
After=network-online.target

[Service]
User=$JUPYTER_USER
WorkingDirectory=$home
Environment=PATH=/usr/local/cuda/bin:$venv/bin:/usr/bin:/bin
ExecStart=$venv/bin/jupyter lab --no-browser --ip=0.0.0.0 --port=$JUPYTER_PORT \
    --IdentityProvider.token=$JUPYTER_TOKEN
Restart=on-failure

[Install]
WantedBy=multi-user.target
UNIT

if command -v systemctl >/dev/null 2>&1; then
    systemctl daemon-reload
    systemctl enable --now heat-gpu-jupyter.service
    systemctl restart heat-gpu-jupyter.service
fi

address=$(hostname -I 2>/dev/null | awk '{ print $1 }')
[ -n "$address" ] || address=$(hostname)
printf 'http://%s:%s/lab?token=%s' "$address" "$JUPYTER_PORT" "$JUPYTER_TOKEN" > "${heat_outputs_path}.url"
echo "jupyter: serving on port $JUPYTER_PORT as $JUPYTER_USER" >&2
