#!/bin/bash
# First boot of a TripleO overcloud node (pre-Queens, where the KernelArgs parameter does not exist):
# when the node has an NVIDIA GPU, turn the IOMMU on for PCI passthrough, keep nouveau off the GPUs
# and reboot once so the arguments take effect. Nodes without an NVIDIA GPU are left alone.
# HEAT_GPU_ROOT prefixes every path (tests); HEAT_GPU_NO_REBOOT=1 skips the reboot.
set -eu -o pipefail
[ -n "${HEAT_GPU_TRACE:-}" ] && set -x

: "${HEAT_GPU_ROOT:=}"
: "${HEAT_GPU_NO_REBOOT:=}"
R=$HEAT_GPU_ROOT
marker=$R/var/lib/heat-gpu/firstboot-kernel-args.done

log() {
    echo "heat-gpu firstboot: $*"
    if command -v logger >/dev/null 2>&1; then
        logger -t heat-gpu-firstboot -- "$*" || true
    fi
}

[ -e "$marker" ] && { log "kernel arguments already set"; exit 0; }

gpus=()
for dev in "$R"/sys/bus/pci/devices/*; do
    [ -r "$dev/vendor" ] || continue
    if [ "$(cat "$dev/vendor")" = 0x10de ]; then
        gpus+=("$(basename "$dev")")
    fi
done
if [ "${#gpus[@]}" -eq 0 ]; then
    log "no NVIDIA device on the PCI bus: nothing to do"
    exit 0
fi
log "NVIDIA devices: ${gpus[*]}"

iommu=intel_iommu=on
if grep -q AuthenticAMD "$R/proc/cpuinfo" 2>/dev/null; then
    iommu=amd_iommu=on
fi
args="$iommu iommu=pt rd.driver.blacklist=nouveau modprobe.blacklist=nouveau"

mkdir -p "$R/etc/modprobe.d"
printf 'blacklist nouveau\noptions nouveau modeset=0\n' > "$R/etc/modprobe.d/heat-gpu-nouveau.conf"

if command -v grubby >/dev/null 2>&1; then
    grubby --update-kernel=ALL --args="$args"
else
    grub=$R/etc/default/grub
    [ -w "$grub" ] || { log "neither grubby nor $grub: cannot set $args"; exit 1; }
    if ! grep -q "$iommu" "$grub"; then
        sed -i "s/^GRUB_CMDLINE_LINUX=\"\\(.*\\)\"/GRUB_CMDLINE_LINUX=\"\\1 $args\"/" "$grub"
    fi
    if command -v grub2-mkconfig >/dev/null 2>&1; then
        grub2-mkconfig -o "$R/etc/grub2.cfg"
    fi
fi
if command -v dracut >/dev/null 2>&1; then
    dracut -f
fi

mkdir -p "$(dirname "$marker")"
echo "$args" > "$marker"
log "kernel arguments set: $args"
if [ -z "$HEAT_GPU_NO_REBOOT" ]; then
    log "rebooting so they take effect"
    reboot
fi
