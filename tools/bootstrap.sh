#!/bin/bash
# Prepare this checkout on a machine that has only Python: Debian packages the tests and the local
# cloud need, one virtualenv (.venv) holding the plugin, heat and the local cloud's services at the
# pinned versions in constraints.txt, and Horizon's own (.venv-horizon, tools/bootstrap-horizon.sh).
# Safe to rerun: each step is skipped when already done.
set -eu -o pipefail
[ -n "${HEAT_GPU_TRACE:-}" ] && set -x

top=$(cd "$(dirname "$0")/.." && pwd)
: "${VENV:=$top/.venv}"
: "${PYTHON:=python3}"
: "${HEAT_GPU_SKIP_APT:=}"

# Debian packages: the message broker and database of the local cloud, the PCI id database the
# catalog falls back on, cloud-init (its schema validator checks our user data), what builds and
# boots the local cloud's guest root (mmdebstrap, systemd-nspawn; bubblewrap enters it in the mirror's
# tests), and the browser the Horizon tests drive.
apt_packages=(rabbitmq-server mariadb-server pciutils pci.ids cloud-init curl mmdebstrap
    systemd-container bubblewrap chromium chromium-driver)

missing_apt() {
    local p
    for p in "${apt_packages[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"
    done
}

if [ -z "$HEAT_GPU_SKIP_APT" ] && command -v apt-get >/dev/null; then
    mapfile -t need < <(missing_apt)
    if [ "${#need[@]}" -gt 0 ]; then
        echo "bootstrap: installing Debian packages: ${need[*]}"
        sudo_cmd=()
        [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
        "${sudo_cmd[@]}" apt-get update -qq
        # Services are started by the local cloud itself, on loopback, never by the package scripts.
        printf '#!/bin/sh\nexit 101\n' > /tmp/heat-gpu-policy-rc.d
        chmod +x /tmp/heat-gpu-policy-rc.d
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            "${sudo_cmd[@]}" cp /tmp/heat-gpu-policy-rc.d /usr/sbin/policy-rc.d
            trap '"${sudo_cmd[@]}" rm -f /usr/sbin/policy-rc.d' EXIT
        fi
        DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq \
            --no-install-recommends "${need[@]}" >/dev/null
    fi
fi

HORIZON_VENV="${HORIZON_VENV:-$top/.venv-horizon}" PYTHON="$PYTHON" "$top/tools/bootstrap-horizon.sh"

stamp="$VENV/.heat-gpu-stamp"
want=$(cat "$top/constraints.txt" "$top/requirements.txt" "$top/test-requirements.txt" \
    "$top/unit-requirements.txt" "$top/cuda-requirements.txt" "$top/cloud-requirements.txt" \
    "$top/setup.cfg" | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
    echo "bootstrap: creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
echo "bootstrap: installing Python packages (pinned by constraints.txt)"
"$VENV/bin/pip" install -q --disable-pip-version-check -U pip
"$VENV/bin/pip" install -q --disable-pip-version-check -c "$top/constraints.txt" \
    -r "$top/requirements.txt" -r "$top/test-requirements.txt" -r "$top/cloud-requirements.txt"
"$VENV/bin/pip" install -q --disable-pip-version-check -c "$top/constraints.txt" --no-deps -e "$top"
echo "$want" > "$stamp"
