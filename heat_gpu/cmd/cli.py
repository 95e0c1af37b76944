#
#    Licensed under the Apache License, Version 2.0 (the "License"); you may
#    not use this file except in compliance with the License. You may obtain
#    a copy of the License at
#
#         http://www.apache.org/licenses/LICENSE-2.0
#
#    Unless required by applicable law or agreed to in writing, software
#    distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
#    WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
#    License for the specific language governing permissions and limitations
#    under the License.

"""``heat-gpu``: what an operator runs to put heat-gpu and GPU passthrough in place.

Sub-commands:

* ``plugin-dir`` prints (or links) the directory heat's ``plugin_dirs`` must include;
* ``policy`` prints the heat policy line that keeps OS::GPU::Flavor for admins;
* ``operator-config`` prints nova's PCI passthrough settings for a nova release, as nova.conf
  lines, a TripleO environment or kolla-ansible overrides;
* ``check-host`` checks a compute host: IOMMU on, NVIDIA GPUs bound to vfio-pci, IOMMU groups.

No Heat import: the commands run on hosts without heat installed.
"""

import argparse
import dataclasses
import importlib.util
import json
import os
import sys
from typing import Iterable, Optional, Sequence, TextIO

from oslo_config import cfg
from oslo_log import log as logging

from heat_gpu import catalog
from heat_gpu import exception
from heat_gpu import gpu_request
from heat_gpu import releases

LOG = logging.getLogger(__name__)

FLAVOR_TYPE = 'OS::GPU::Flavor'
POLICY_RULE = 'rule:project_admin'
POLICY_LINE = '"resource_types:%s": "%s"' % (FLAVOR_TYPE, POLICY_RULE)
#: Why the line alone is not enough (seen on heat 26.0.2: a demo user passed heat's check).
POLICY_NOTE = (
    '# heat 26 (2026.1) checks resource types only against rules registered in its code, so this\n'
    '# policy.yaml line has no effect there; OS::GPU::Flavor itself refuses users who are not\n'
    '# admins (heat\'s context_is_admin rule), and nova allows flavor creation to admins only.')
LINK_NAME = 'heat_gpu'

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_USAGE = 2


# --- nova releases and the names of their options ----------------------------------------------

#: OpenStack release series and their nova major versions, oldest first (heat_gpu.releases, with
#: its sources); the newest is the default.
RELEASES = releases.SERIES
CURRENT_RELEASE = releases.NEWEST


def _nova_major(name: str) -> int:
    return releases.find_series(name).nova_major


ZED, TRAIN, QUEENS, PIKE, WALLABY, ANTELOPE, CARACAL = (
    _nova_major(name) for name in ('zed', 'train', 'queens', 'pike', 'wallaby', '2023.1', '2024.1'))

#: The release -> option name table. Sources, per row:
#: - ``[pci] device_spec``: nova 26.0.0 (Zed) renamed ``[pci] passthrough_whitelist`` to
#:   ``device_spec``; the installed nova still lists ``[pci] passthrough_whitelist`` and
#:   ``DEFAULT/pci_passthrough_whitelist`` as its deprecated names (nova/conf/pci.py).
#: - ``[pci] passthrough_whitelist`` and ``[pci] alias`` from Ocata: puppet-nova's stable/ocata
#:   change 482033 ("Set pci/alias and pci/passthrough_whitelist instead of DEFAULT/pci_alias and
#:   DEFAULT/pci_passthrough_whitelist"), cited by the "Deploying GPUs in OpenStack Ocata via
#:   Tripleo" guide: Ocata's nova reads the [pci] names; ``DEFAULT/pci_alias`` and
#:   ``DEFAULT/pci_passthrough_whitelist`` are their deprecated names (the installed nova still
#:   lists them as such).
#: - ``[filter_scheduler] enabled_filters``: nova's "add-scheduler-config-to-scheduler-group"
#:   release note (Ocata) moved ``DEFAULT/scheduler_default_filters`` there (kolla-ansible bug
#:   1680307 followed it); the installed nova defines the option.
#: - ``[pci] report_in_placement`` (Zed) and ``[filter_scheduler] pci_in_placement`` (2023.1):
#:   nova's pci-device-tracking-in-placement spec (Zed, finished in 2023.1).
WHITELIST_OLD = ('pci', 'passthrough_whitelist')
WHITELIST_NEW = ('pci', 'device_spec')
ALIAS = ('pci', 'alias')
FILTERS = ('filter_scheduler', 'enabled_filters')
REPORT_IN_PLACEMENT = ('pci', 'report_in_placement')
PCI_IN_PLACEMENT = ('filter_scheduler', 'pci_in_placement')

#: Filters every release from Ocata on has (the installed nova's default list).
BASE_FILTERS = ('ComputeFilter', 'ComputeCapabilitiesFilter', 'ImagePropertiesFilter',
                'ServerGroupAntiAffinityFilter', 'ServerGroupAffinityFilter')
#: The filters GPU passthrough needs on top.
GPU_FILTERS = ('PciPassthroughFilter', 'NUMATopologyFilter')
#: RamFilter was deprecated in Stein and removed in Train (nova 20.0.0): placement checks RAM.
#: AvailabilityZoneFilter was removed in 2024.1 Caracal (nova 29.0.0): placement's availability
#: zone prefilter does its work (StackHPC's Caracal upgrade notes: the filter "will cause errors
#: in Caracal and halt the Nova scheduler"); the installed nova has neither.
RAM_FILTER_UNTIL = TRAIN
AZ_FILTER_UNTIL = CARACAL

#: Kernel arguments for the compute hosts, by CPU vendor.
KERNEL_ARGS = {
    'intel': 'intel_iommu=on iommu=pt',
    'amd': 'amd_iommu=on iommu=pt',
}
NOUVEAU_ARGS = 'rd.driver.blacklist=nouveau modprobe.blacklist=nouveau'

FORMATS = ('nova.conf', 'tripleo', 'kolla')
#: tripleo-heat-templates has release notes up to Wallaby (its last stable series).
TRIPLEO_LAST = WALLABY


def find_release(name: str, *, prop: str = '--release') -> releases.Series:
    """Return the release *name* (series or code name, any case); raise ValueError naming it."""
    release = releases.find_series(name)
    if release is not None:
        return release
    raise ValueError('%s %r is not a release heat-gpu knows; accepted: %s'
                     % (prop, name, ', '.join(r.name for r in RELEASES)))


def whitelist_option(release: releases.Series) -> tuple[str, str]:
    return WHITELIST_NEW if release.nova_major >= ZED else WHITELIST_OLD


def scheduler_filters(release: releases.Series) -> list[str]:
    names = []
    if release.nova_major < AZ_FILTER_UNTIL:
        names.append('AvailabilityZoneFilter')
    if release.nova_major < RAM_FILTER_UNTIL:
        names.append('RamFilter')
    names.extend(BASE_FILTERS)
    names.extend(GPU_FILTERS)
    return names


def option_names(release: releases.Series, *, placement: bool = False) -> list[tuple[str, str]]:
    """Every (group, option) operator-config prints for *release*."""
    names = [whitelist_option(release), ALIAS, FILTERS]
    if placement:
        names.extend([REPORT_IN_PLACEMENT, PCI_IN_PLACEMENT])
    return names


# --- operator-config ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class GpuType:
    """A GPU model the operator passes through, and the alias flavors name it by."""

    model: catalog.GpuModel
    alias: str

    def device_spec(self) -> dict:
        return {'vendor_id': self.model.vendor_id, 'product_id': self.model.device_id}

    def alias_spec(self) -> dict:
        return {'name': self.alias, 'vendor_id': self.model.vendor_id,
                'product_id': self.model.device_id, 'device_type': 'type-PCI'}


def gpu_types(*, models: Sequence[str], aliases: Sequence[str]) -> list[GpuType]:
    """Pair each model (catalog key, alias or PCI id) with its alias (default: the catalog's)."""
    if not models:
        raise ValueError('--model is missing; accepted: one or more of %s'
                         % ', '.join(catalog.keys()))
    if len(aliases) > len(models):
        raise ValueError('--alias is given %d times for %d --model; accepted: at most one alias '
                         'per model, in the same order' % (len(aliases), len(models)))
    types = []
    for index, ident in enumerate(models):
        model = catalog.get(ident, prop='--model')
        alias = aliases[index] if index < len(aliases) else model.alias
        gpu_request.validate_alias_name(alias, prop='--alias')
        types.append(GpuType(model=model, alias=alias))
    names = [t.alias for t in types]
    if len(set(names)) != len(names):
        raise ValueError('--alias names %s more than once; accepted: one alias name per model'
                         % ', '.join(sorted({n for n in names if names.count(n) > 1})))
    return types


def _json(value: dict) -> str:
    return json.dumps(value, sort_keys=False)


def _ini_lines(options: Iterable[tuple[tuple[str, str], list[str]]]) -> list[str]:
    lines, section = [], None
    for (group, name), values in options:
        if group != section:
            if section is not None:
                lines.append('')
            lines.append('[%s]' % group)
            section = group
        lines.extend('%s = %s' % (name, value) for value in values)
    return lines


def nova_conf(*, types: Sequence[GpuType], release: releases.Series, cpu: str,
              placement: bool) -> list[str]:
    specs = [_json(t.device_spec()) for t in types]
    aliases = [_json(t.alias_spec()) for t in types]
    filters = [','.join(scheduler_filters(release))]
    compute = [(whitelist_option(release), specs), (ALIAS, aliases)]
    scheduler = [(FILTERS, filters)]
    if placement:
        compute.append((REPORT_IN_PLACEMENT, ['True']))
        scheduler.append((PCI_IN_PLACEMENT, ['True']))
    out = ['# nova %s: nova.conf settings for GPU passthrough' % release.label,
           '',
           '# --- nova-compute on the GPU hosts (/etc/nova/nova.conf)']
    out += _ini_lines(compute)
    out += ['', '# --- nova-api (controllers) (/etc/nova/nova.conf)']
    out += _ini_lines([(ALIAS, aliases)])
    out += ['', '# --- nova-scheduler (/etc/nova/nova.conf)']
    out += _ini_lines(scheduler)
    out += _host_notes(cpu=cpu)
    return out


def kolla(*, types: Sequence[GpuType], release: releases.Series, cpu: str,
          placement: bool) -> list[str]:
    specs = [_json(t.device_spec()) for t in types]
    aliases = [_json(t.alias_spec()) for t in types]
    options = [(whitelist_option(release), specs), (ALIAS, aliases),
               (FILTERS, [','.join(scheduler_filters(release))])]
    if placement:
        options.insert(2, (REPORT_IN_PLACEMENT, ['True']))
        options.append((PCI_IN_PLACEMENT, ['True']))
    out = ['# nova %s: kolla-ansible overrides for GPU passthrough' % release.label,
           '# /etc/kolla/config/nova.conf (merged into every nova service; then run',
           '# "kolla-ansible reconfigure -t nova")']
    out += _ini_lines(sorted(options, key=lambda item: item[0][0] != 'pci'))
    out += _host_notes(cpu=cpu)
    return out


def tripleo(*, types: Sequence[GpuType], release: releases.Series, cpu: str,
            role: str) -> list[str]:
    if release.nova_major > TRIPLEO_LAST:
        raise ValueError('--format tripleo has no release %s: TripleO\'s last release is wallaby; '
                         'accepted for %s: --format nova.conf or --format kolla'
                         % (release.name, release.name))
    passthrough = [t.device_spec() for t in types]
    aliases = [t.alias_spec() for t in types]
    filters = scheduler_filters(release)
    kernel = '%s %s' % (KERNEL_ARGS[cpu], NOUVEAU_ARGS)
    out = ['# nova %s: TripleO environment for GPU passthrough (role %s)' % (release.label, role)]
    if release.nova_major < QUEENS:
        out += ['# KernelArgs came in Queens: set the kernel arguments with a first-boot script',
                '# (environments/tripleo/ocata-gpu-passthrough.yaml maps OS::TripleO::NodeUserData',
                '# to one): %s' % kernel,
                'resource_registry:',
                '  OS::TripleO::NodeUserData: firstboot/gpu-kernel-args.yaml',
                '']
    out.append('parameter_defaults:')
    if release.nova_major >= QUEENS:
        out += ['  %sParameters:' % role,
                '    KernelArgs: "%s"' % kernel,
                '    NovaPCIPassthrough:']
        out += _yaml_list(passthrough, indent=6)
    else:
        out.append('  NovaPCIPassthrough:')
        out += _yaml_list(passthrough, indent=4)
    filter_param = ('NovaSchedulerEnabledFilters' if release.nova_major >= WALLABY
                    else 'NovaSchedulerDefaultFilters')
    out.append('  %s:' % filter_param)
    out += ['    - %s' % name for name in filters]
    if release.nova_major >= PIKE:
        for target in ('Controller', role):
            out += ['  %sExtraConfig:' % target, '    nova::pci::aliases:']
            out += _yaml_list(aliases, indent=6)
    else:
        out += ['  ControllerExtraConfig:', '    nova::api::pci_alias:']
        out += _yaml_list(aliases, indent=6)
        out += ['  ComputeExtraConfig:', '    nova::config::nova_config:', '      pci/alias:']
        if len(aliases) == 1:
            out.append("        value: '%s'" % _json(aliases[0]))
        else:
            out.append('        value:')
            out += ["          - '%s'" % _json(a) for a in aliases]
    out += ['', '# heat policy (heat-api policy.yaml): %s' % POLICY_LINE]
    return out


def _yaml_list(items: Sequence[dict], *, indent: int) -> list[str]:
    pad = ' ' * indent
    lines = []
    for item in items:
        first = True
        for key, value in item.items():
            lines.append('%s%s %s: "%s"' % (pad, '-' if first else ' ', key, value))
            first = False
    return lines


def _host_notes(*, cpu: str) -> list[str]:
    return ['',
            '# --- kernel command line of the GPU hosts (reboot; then run heat-gpu check-host):',
            '# %s %s' % (KERNEL_ARGS[cpu], NOUVEAU_ARGS),
            '',
            '# --- heat policy (heat-api policy.yaml): only admins may create GPU flavors',
            POLICY_LINE]


# --- check-host --------------------------------------------------------------------------------

NVIDIA_VENDOR = '0x10de'
GOOD_DRIVER = 'vfio-pci'


@dataclasses.dataclass
class Finding:
    level: str
    message: str


@dataclasses.dataclass
class HostReport:
    cmdline: str = ''
    findings: list[Finding] = dataclasses.field(default_factory=list)

    def add(self, level: str, message: str) -> None:
        self.findings.append(Finding(level=level, message=message))

    @property
    def problems(self) -> int:
        return sum(1 for f in self.findings if f.level == 'FAIL')

    @property
    def warnings(self) -> int:
        return sum(1 for f in self.findings if f.level == 'WARN')


def _read(path: str) -> Optional[str]:
    try:
        with open(path, encoding='utf-8') as stream:
            return stream.read().strip()
    except OSError:
        return None


def _link_name(path: str) -> Optional[str]:
    try:
        return os.path.basename(os.readlink(path))
    except OSError:
        return None


def _device_name(pci_id: str) -> str:
    model = catalog.by_pci_id(pci_id)
    if model is not None:
        return model.name
    try:
        description = catalog.describe(pci_id)
    except exception.HeatGpuError:
        return 'unknown NVIDIA device'
    return description.name or 'unknown NVIDIA device'


def check_host(*, root: str = '/') -> HostReport:
    """Check IOMMU and the NVIDIA devices of the host whose file system starts at *root*."""
    report = HostReport()
    report.cmdline = _read(os.path.join(root, 'proc/cmdline')) or ''
    args = report.cmdline.split()
    cpuinfo = _read(os.path.join(root, 'proc/cpuinfo')) or ''
    amd = 'AuthenticAMD' in cpuinfo
    iommu_arg = [a for a in args if a in ('intel_iommu=on', 'amd_iommu=on')]
    groups_dir = os.path.join(root, 'sys/kernel/iommu_groups')
    groups = sorted(os.listdir(groups_dir)) if os.path.isdir(groups_dir) else []
    wanted = KERNEL_ARGS['amd' if amd else 'intel']
    if iommu_arg:
        report.add('OK', 'IOMMU: %s on the kernel command line' % iommu_arg[0])
    elif amd and groups:
        report.add('OK', 'IOMMU: the AMD IOMMU is on by default (IOMMU groups exist)')
    else:
        report.add('FAIL', 'IOMMU: the kernel command line has no %s; add "%s" (GRUB_CMDLINE_LINUX '
                   'in /etc/default/grub, or KernelArgs with TripleO) and reboot'
                   % ('amd_iommu=on' if amd else 'intel_iommu=on', wanted))
    if 'iommu=pt' not in args:
        report.add('WARN', 'IOMMU: no iommu=pt on the kernel command line; it spares host devices '
                   'the IOMMU translation cost (recommended: "%s")' % wanted)
    if groups:
        report.add('OK', 'IOMMU groups: %d in /sys/kernel/iommu_groups' % len(groups))
    else:
        report.add('FAIL', 'IOMMU groups: /sys/kernel/iommu_groups is empty, so the IOMMU is off '
                   '(kernel argument missing, or VT-d/AMD-Vi disabled in the firmware settings)')
    _check_devices(report, root=root)
    return report


def _check_devices(report: HostReport, *, root: str) -> None:
    devices_dir = os.path.join(root, 'sys/bus/pci/devices')
    addresses = sorted(os.listdir(devices_dir)) if os.path.isdir(devices_dir) else []
    nvidia = [a for a in addresses
              if _read(os.path.join(devices_dir, a, 'vendor')) == NVIDIA_VENDOR]
    if not nvidia:
        report.add('FAIL', 'GPUs: no NVIDIA device (vendor 0x10de) under /sys/bus/pci/devices')
        return
    for address in nvidia:
        path = os.path.join(devices_dir, address)
        device = (_read(os.path.join(path, 'device')) or '0x????')[2:]
        pci_id = '10de:%s' % device
        group = _link_name(os.path.join(path, 'iommu_group'))
        driver = _link_name(os.path.join(path, 'driver'))
        where = '%s %s %s, IOMMU group %s' % (address, pci_id, _device_name(pci_id),
                                              group if group is not None else 'none')
        if driver == GOOD_DRIVER:
            report.add('OK', '%s: bound to vfio-pci' % where)
        elif driver is None:
            report.add('WARN', '%s: bound to no driver; libvirt binds vfio-pci when an instance '
                       'starts, but binding it at boot keeps host drivers off it (options vfio-pci '
                       'ids=%s in /etc/modprobe.d)' % (where, pci_id))
        else:
            report.add('FAIL', '%s: bound to the host driver %s; it must be free for vfio-pci: '
                       'blacklist %s (e.g. kernel arguments "%s"), add "options vfio-pci ids=%s" '
                       'to /etc/modprobe.d, rebuild the initramfs and reboot'
                       % (where, driver, driver, NOUVEAU_ARGS, pci_id))
        if group is None:
            report.add('FAIL', '%s: no IOMMU group, so it cannot be passed through (IOMMU off)'
                       % address)
            continue
        _check_group(report, root=root, address=address, group=group)


def _check_group(report: HostReport, *, root: str, address: str, group: str) -> None:
    members_dir = os.path.join(root, 'sys/kernel/iommu_groups', group, 'devices')
    members = sorted(os.listdir(members_dir)) if os.path.isdir(members_dir) else []
    for member in members:
        if member == address:
            continue
        path = os.path.join(root, 'sys/bus/pci/devices', member)
        cls = _read(os.path.join(path, 'class')) or ''
        if cls.startswith('0x0604'):
            continue
        driver = _link_name(os.path.join(path, 'driver'))
        if driver not in (None, GOOD_DRIVER):
            report.add('FAIL', '%s: shares IOMMU group %s with %s, which is bound to %s; every '
                       'device of a group goes to the same instance, so bind %s to vfio-pci too'
                       % (address, group, member, driver, member))


def format_report(report: HostReport, *, root: str) -> list[str]:
    lines = ['heat-gpu check-host (root %s)' % root,
             'kernel command line: %s' % (report.cmdline or '(unreadable)')]
    lines += ['[%-4s] %s' % (f.level, f.message) for f in report.findings]
    if report.problems:
        lines.append('result: %d problem(s), %d warning(s): this host is not ready for GPU '
                     'passthrough' % (report.problems, report.warnings))
    else:
        lines.append('result: ready for GPU passthrough (%d warning(s))' % report.warnings)
    return lines


# --- plugin-dir and policy ---------------------------------------------------------------------

def plugin_dir() -> str:
    """The installed heat_gpu/resources directory (found without importing heat)."""
    spec = importlib.util.find_spec('heat_gpu.resources')
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError('the heat_gpu.resources package is not installed in %s' % sys.prefix)
    return os.path.realpath(list(spec.submodule_search_locations)[0])


def link_plugin_dir(*, directory: str) -> str:
    """Make DIRECTORY/heat_gpu a symbolic link to the plugin directory; return the link."""
    if not os.path.isdir(directory):
        raise ValueError('--link %r is not a directory; accepted: an existing directory that '
                         'heat\'s plugin_dirs lists, e.g. /usr/lib/heat' % directory)
    target = plugin_dir()
    link = os.path.join(directory, LINK_NAME)
    if os.path.islink(link):
        if os.path.realpath(link) == target:
            return link
        os.unlink(link)
    elif os.path.exists(link):
        raise ValueError('--link %r: %s exists and is not a link; accepted: a directory without '
                         'a %s entry' % (directory, link, LINK_NAME))
    os.symlink(target, link)
    return link


# --- the command line --------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='heat-gpu', description='Operator tools for heat-gpu and NVIDIA GPU passthrough.')
    parser.add_argument('--debug', action='store_true', help='log debugging messages')
    sub = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')

    pdir = sub.add_parser('plugin-dir', help='print the directory heat\'s plugin_dirs must list')
    pdir.add_argument('--link', metavar='DIR',
                      help='also make DIR/%s a link to it (DIR: a plugin_dirs entry, e.g. '
                           '/usr/lib/heat)' % LINK_NAME)

    sub.add_parser('policy', help='print the heat policy line for OS::GPU::Flavor')

    oper = sub.add_parser('operator-config',
                          help='print nova\'s GPU passthrough settings for a release')
    oper.add_argument('--model', action='append', default=[], metavar='MODEL',
                      help='GPU model: catalog key (e.g. P100-PCIE-16GB), alias or PCI id; '
                           'repeat for several')
    oper.add_argument('--alias', action='append', default=[], metavar='NAME',
                      help='PCI alias name for the --model at the same position (default: the '
                           'catalog\'s alias, e.g. p100)')
    oper.add_argument('--release', default=CURRENT_RELEASE.name,
                      help='nova release: %s (default %s)'
                           % (', '.join(r.name for r in RELEASES), CURRENT_RELEASE.name))
    oper.add_argument('--format', default='nova.conf', choices=FORMATS,
                      help='nova.conf lines, a TripleO environment or kolla-ansible overrides')
    oper.add_argument('--cpu', default='intel', choices=sorted(KERNEL_ARGS),
                      help='CPU vendor of the GPU hosts (the IOMMU kernel argument)')
    oper.add_argument('--role', default='ComputeGpu',
                      help='TripleO role of the GPU hosts (default ComputeGpu)')
    oper.add_argument('--placement', action='store_true',
                      help='also track PCI devices in placement (Zed and newer)')

    check = sub.add_parser('check-host', help='check this compute host for GPU passthrough')
    check.add_argument('--root', default='/',
                       help='root of the file system to inspect (default /)')
    return parser


def _setup_logging(*, debug: bool) -> None:
    conf = cfg.ConfigOpts()
    logging.register_options(conf)
    conf([], project='heat-gpu', default_config_files=[], default_config_dirs=[])
    conf.set_override('debug', debug)
    logging.setup(conf, 'heat-gpu')


def _operator_config(args: argparse.Namespace) -> list[str]:
    release = find_release(args.release)
    if args.placement and release.nova_major < ANTELOPE:
        raise ValueError('--placement needs nova 2023.1 or newer (PCI devices in placement); '
                         '--release is %s' % release.name)
    types = gpu_types(models=args.model, aliases=args.alias)
    if args.format == 'tripleo':
        if args.placement:
            raise ValueError('--placement is not offered with --format tripleo; accepted: '
                             '--format nova.conf or kolla')
        return tripleo(types=types, release=release, cpu=args.cpu, role=args.role)
    if args.format == 'kolla':
        return kolla(types=types, release=release, cpu=args.cpu, placement=args.placement)
    return nova_conf(types=types, release=release, cpu=args.cpu, placement=args.placement)


def run(argv: Sequence[str], *, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Run the command line *argv* (without the program name); return the exit status."""
    parser = build_parser()
    args = parser.parse_args(list(argv))
    _setup_logging(debug=args.debug)
    try:
        if args.command == 'plugin-dir':
            print(plugin_dir(), file=out)
            if args.link:
                link = link_plugin_dir(directory=args.link)
                print('linked %s -> %s' % (link, plugin_dir()), file=out)
            return EXIT_OK
        if args.command == 'policy':
            print(POLICY_NOTE, file=out)
            print(POLICY_LINE, file=out)
            return EXIT_OK
        if args.command == 'operator-config':
            print('\n'.join(_operator_config(args)), file=out)
            return EXIT_OK
        report = check_host(root=args.root)
        print('\n'.join(format_report(report, root=args.root)), file=out)
        return EXIT_PROBLEMS if report.problems else EXIT_OK
    except (ValueError, RuntimeError, OSError, exception.HeatGpuError) as exc:
        LOG.debug('heat-gpu %s failed', args.command, exc_info=True)
        print('heat-gpu %s: %s' % (args.command, exc), file=err)
        return EXIT_USAGE


def main() -> None:
    sys.exit(run(sys.argv[1:]))


if __name__ == '__main__':
    main()
