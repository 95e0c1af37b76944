#!/bin/bash
# Horizon with heat-dashboard in a virtualenv of its own (.venv-horizon), for the local cloud's
# optional Horizon service and the browser tests: Horizon pins Django and its own libraries, apart
# from the services in .venv. Installs the pinned set (horizon-constraints.txt), enables the
# orchestration panel the way heat-dashboard's install guide says (its enabled files, settings snippet
# and policy files into Horizon's local/ and conf/), links the local cloud's settings snippet, then
# collects and compresses the static files once, so no request compiles SCSS. Safe to rerun: skipped
# while the stamp matches.
set -eu -o pipefail
[ -n "${HEAT_GPU_TRACE:-}" ] && set -x

top=$(cd "$(dirname "$0")/.." && pwd)
: "${HORIZON_VENV:=$top/.venv-horizon}"
: "${PYTHON:=python3}"

stamp="$HORIZON_VENV/.heat-gpu-stamp"
want=$(cat "$top/horizon-requirements.txt" "$top/horizon-constraints.txt" \
    "$top/tools/localcloud/horizon_site/heat_gpu_settings.py" "$0" | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
if [ ! -x "$HORIZON_VENV/bin/python" ]; then
    echo "bootstrap: creating $HORIZON_VENV"
    "$PYTHON" -m venv "$HORIZON_VENV"
fi
echo "bootstrap: installing Horizon and heat-dashboard (pinned by horizon-constraints.txt)"
"$HORIZON_VENV/bin/pip" install -q --disable-pip-version-check -U pip
"$HORIZON_VENV/bin/pip" install -q --disable-pip-version-check -c "$top/horizon-constraints.txt" \
    -r "$top/horizon-requirements.txt"

site=$("$HORIZON_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
dashboard=$site/openstack_dashboard
heat_dashboard=$site/heat_dashboard
mkdir -p "$dashboard/local/enabled" "$dashboard/local/local_settings.d" \
    "$dashboard/conf/default_policies"
cp "$heat_dashboard"/enabled/_16*.py "$dashboard/local/enabled/"
cp "$heat_dashboard/local_settings.d/_1699_orchestration_settings.py" \
    "$dashboard/local/local_settings.d/"
cp "$heat_dashboard/conf/heat_policy.yaml" "$dashboard/conf/"
cp "$heat_dashboard/conf/default_policies/heat.yaml" "$dashboard/conf/default_policies/"
# After heat-dashboard's snippet (_1699), so the local cloud's values win.
ln -sf "$top/tools/localcloud/horizon_site/heat_gpu_settings.py" \
    "$dashboard/local/local_settings.d/_1700_heat_gpu_localcloud.py"

echo "bootstrap: collecting and compressing Horizon's static files"
export DJANGO_SETTINGS_MODULE=openstack_dashboard.settings
rm -rf "$HORIZON_VENV/static"
"$HORIZON_VENV/bin/python" -m django collectstatic --noinput -v 0
"$HORIZON_VENV/bin/python" -m django compress --force -v 0
echo "$want" > "$stamp"
