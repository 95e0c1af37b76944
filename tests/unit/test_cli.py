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

"""The heat-gpu console script: its output is checked against the installed nova and heat."""

import io
import json
import os
import subprocess
import sys
import tempfile
from typing import Optional

import fixtures
import testscenarios
import testtools
import yaml

from heat_gpu import catalog
from heat_gpu.cmd import cli
from heat_gpu import releases

HERE = os.path.dirname(os.path.abspath(__file__))
SYSFS_FIXTURES = os.path.join(HERE, 'fixtures', 'sysfs')

load_tests = testscenarios.load_tests_apply_scenarios


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = cli.run(list(argv), out=out, err=err)
    return rc, out.getvalue(), err.getvalue()


#: Runs in a child process: nova and heat register options of the same name (host, ...) on
#: oslo.config's global CONF, so nova is never imported into the test process, where heat is.
NOVA_PROBE = r"""
import json, sys
from nova.conf import opts
from nova.scheduler import filters
import nova.version
request = json.loads(sys.stdin.read())
out = {'version': nova.version.version_string(), 'options': [],
       'filters': sorted(c.__name__ for c in filters.all_filters())}
for group, options in opts.list_opts():
    group_name = getattr(group, 'name', group)
    for opt in options:
        out['options'].append([group_name, opt.name,
                               [[d.group or group_name, d.name or opt.name]
                                for d in opt.deprecated_opts]])
if request.get('device_spec') is not None:
    import nova.conf
    from nova.pci import request as pci_request
    from nova.pci import whitelist
    out['device_specs'] = len(whitelist.Whitelist(request['device_spec']).specs)
    nova.conf.CONF.set_override('alias', request['alias'], 'pci')
    aliases = getattr(pci_request, request['alias_parser'])()
    out['aliases'] = {name: specs for name, (policy, specs) in aliases.items()}
print(json.dumps(out))
"""

#: nova's parser of ``[pci] alias``: ``_get_alias_from_config`` up to nova 30 (2024.2),
#: ``get_alias_from_config`` from nova 31 (2025.1) on (nova/pci/request.py of nova 29.4.0,
#: 30.2.1, 31.3.1).
ALIAS_PARSER_PUBLIC_FROM = 31

_NOVA = {}


def installed_nova_major() -> int:
    from importlib import metadata
    return int(metadata.version('nova').split('.')[0])


def alias_parser(nova_major: int) -> str:
    if nova_major >= ALIAS_PARSER_PUBLIC_FROM:
        return 'get_alias_from_config'
    return '_get_alias_from_config'


def nova_probe(*, device_spec: Optional[list] = None, alias: Optional[list] = None) -> dict:
    """Ask the installed nova (in a child process) for its options, filters and parsers."""
    key = json.dumps([device_spec, alias])
    if key not in _NOVA:
        request = {'device_spec': device_spec, 'alias': alias,
                   'alias_parser': alias_parser(installed_nova_major())}
        proc = subprocess.run([sys.executable, '-c', NOVA_PROBE], input=json.dumps(request),
                              capture_output=True, text=True, timeout=120, check=True)
        _NOVA[key] = json.loads(proc.stdout)
    return _NOVA[key]


def installed_release() -> releases.Series:
    """The series of the installed nova (the release matrix installs each supported line's)."""
    major = int(nova_probe()['version'].split('.')[0])
    return releases.series_of_nova(major)


def nova_options() -> set[tuple[str, str]]:
    """Every (group, name) the installed nova registers."""
    return {(g, n) for g, n, _ in nova_probe()['options']}


def deprecated_names() -> dict[tuple[str, str], tuple[str, str]]:
    """Deprecated (group, name) -> current (group, name), from the installed nova."""
    names = {}
    for group, name, olds in nova_probe()['options']:
        for old_group, old_name in olds:
            names[(old_group, old_name)] = (group, name)
    return names


def nova_filter_names() -> set[str]:
    return set(nova_probe()['filters'])


def ini_options(text: str) -> list[tuple[str, str, str]]:
    """(group, name, value) of every option line of nova.conf-style output, in order."""
    found, section = [], None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith('#') or line.startswith('"'):
            continue
        if line.startswith('[') and line.endswith(']'):
            section = line[1:-1]
            continue
        name, _, value = line.partition(' = ')
        found.append((section, name, value))
    return found


class TestPolicyAndPluginDir(testtools.TestCase):

    def test_policy_line_names_a_heat_rule(self):
        from heat.policies import base
        rc, out, _ = run_cli('policy')
        self.assertEqual(0, rc)
        lines = [line for line in out.splitlines() if not line.startswith('#')]
        self.assertIn('# policy.yaml line has no effect there', out)
        key, value = json.loads('{%s}' % lines[0]).popitem()
        self.assertEqual('resource_types:OS::GPU::Flavor', key)
        rules = {rule.name for rule in base.list_rules()}
        self.assertIn(value[len('rule:'):], rules)

    def test_plugin_dir_is_the_resources_package(self):
        rc, out, _ = run_cli('plugin-dir')
        self.assertEqual(0, rc)
        path = out.strip()
        self.assertTrue(os.path.isfile(os.path.join(path, 'cuda_instance.py')), path)
        self.assertTrue(os.path.isfile(os.path.join(path, '__init__.py')))

    def test_plugin_dir_link(self):
        target = self.useFixture(fixtures.TempDir()).path
        rc, out, _ = run_cli('plugin-dir', '--link', target)
        self.assertEqual(0, rc, out)
        link = os.path.join(target, cli.LINK_NAME)
        self.assertTrue(os.path.islink(link))
        self.assertEqual(cli.plugin_dir(), os.path.realpath(link))
        rc, _, _ = run_cli('plugin-dir', '--link', target)
        self.assertEqual(0, rc)

    def test_plugin_dir_link_refuses_a_missing_directory(self):
        missing = os.path.join(self.useFixture(fixtures.TempDir()).path, 'nope')
        rc, _, err = run_cli('plugin-dir', '--link', missing)
        self.assertEqual(2, rc)
        self.assertIn('--link', err)
        self.assertIn(missing, err)
        self.assertIn('accepted', err)

    def test_console_script_runs(self):
        proc = subprocess.run([sys.executable, '-m', 'heat_gpu.cmd.cli', 'policy'],
                              capture_output=True, text=True, timeout=60, check=False)
        self.assertEqual(0, proc.returncode, proc.stderr)
        self.assertEqual(cli.POLICY_LINE, proc.stdout.strip().splitlines()[-1])


class TestReleaseTable(testtools.TestCase):

    def test_installed_nova_is_a_supported_line(self):
        self.assertEqual(installed_nova_major(), int(nova_probe()['version'].split('.')[0]))
        self.assertIn(installed_release(), [line.series for line in releases.SUPPORTED])

    def test_current_release_is_the_newest_supported_line(self):
        self.assertIs(releases.SUPPORTED[-1].series, cli.CURRENT_RELEASE)
        self.assertIs(cli.RELEASES[-1], cli.CURRENT_RELEASE)
        rc, out, err = run_cli('operator-config', '--model', 'T4')
        self.assertEqual(0, rc, err)
        self.assertEqual('# nova %s: nova.conf settings for GPU passthrough'
                         % cli.CURRENT_RELEASE.label, out.splitlines()[0])

    def test_supported_lines_are_known_releases(self):
        for line in releases.SUPPORTED:
            self.assertIs(line.series, cli.find_release(line.name))
            self.assertEqual(line.series.nova_major, int(line.nova.split('.')[0]))
            self.assertEqual(line.series.heat_major, int(line.heat.split('.')[0]))

    def test_releases_are_consecutive(self):
        majors = [r.nova_major for r in cli.RELEASES]
        self.assertEqual(list(range(15, 15 + len(majors))), majors)

    def test_find_release_by_code_name(self):
        self.assertEqual('2023.1', cli.find_release('Antelope').name)
        error = self.assertRaises(ValueError, cli.find_release, 'havana')
        self.assertIn("'havana'", str(error))
        self.assertIn('ocata', str(error))


class TestOperatorConfigOptionNames(testtools.TestCase):

    scenarios = [(r.name, {'release': r}) for r in cli.RELEASES]

    def test_names_exist_in_nova(self):
        current = nova_options()
        deprecated = deprecated_names()
        for fmt in ('nova.conf', 'kolla'):
            rc, out, err = run_cli('operator-config', '--model', 'P100-PCIE-16GB',
                                   '--release', self.release.name, '--format', fmt)
            self.assertEqual(0, rc, err)
            printed = {(g, n) for g, n, _ in ini_options(out)}
            self.assertEqual(set(cli.option_names(self.release)), printed)
            for key in printed:
                if self.release is installed_release():
                    self.assertIn(key, current, 'not an option of the installed nova')
                else:
                    self.assertTrue(key in current or key in deprecated,
                                    '%s/%s is neither an option of the installed nova nor a '
                                    'deprecated name of one' % key)

    def test_filters_exist_where_printed(self):
        available = nova_filter_names()
        rc, out, err = run_cli('operator-config', '--model', 'T4', '--release', self.release.name)
        self.assertEqual(0, rc, err)
        values = {(g, n): v for g, n, v in ini_options(out)}
        filters = values[cli.FILTERS].split(',')
        self.assertIn('PciPassthroughFilter', filters)
        removed = {'RamFilter': cli.RAM_FILTER_UNTIL,
                   'AvailabilityZoneFilter': cli.AZ_FILTER_UNTIL}
        for name in filters:
            if name in removed:
                self.assertLess(self.release.nova_major, removed[name])
                self.assertNotIn(name, available, 'the installed nova still has %s' % name)
            else:
                self.assertIn(name, available)
        if self.release.nova_major >= cli.TRAIN:
            self.assertNotIn('RamFilter', filters)


class TestOperatorConfigValues(testtools.TestCase):

    def test_values_parse_with_the_installed_nova(self):
        rc, out, err = run_cli('operator-config', '--model', 'P100-PCIE-16GB',
                               '--model', 'A100-PCIE-80GB', '--alias', 'gpu-p100',
                               '--release', installed_release().name)
        self.assertEqual(0, rc, err)
        compute_part = out.split('# --- nova-api')[0]
        options = ini_options(compute_part)
        specs = [v for g, n, v in options if (g, n) == cli.WHITELIST_NEW]
        aliases = [v for g, n, v in options if (g, n) == cli.ALIAS]
        self.assertEqual(2, len(specs))
        parsed = nova_probe(device_spec=specs, alias=aliases)
        self.assertEqual(2, parsed['device_specs'])
        self.assertEqual({'gpu-p100', catalog.get('A100-PCIE-80GB').alias},
                         set(parsed['aliases']))
        self.assertEqual([{'vendor_id': '10de', 'product_id': '15f8'}],
                         [{k: spec[k] for k in ('vendor_id', 'product_id')}
                          for spec in parsed['aliases']['gpu-p100']])

    def test_kernel_args_and_policy_are_printed(self):
        rc, out, _ = run_cli('operator-config', '--model', 'L4', '--cpu', 'amd')
        self.assertEqual(0, rc)
        self.assertIn('amd_iommu=on iommu=pt', out)
        self.assertIn(cli.POLICY_LINE, out)

    def test_placement_options(self):
        rc, out, _ = run_cli('operator-config', '--model', 'L4', '--placement')
        self.assertEqual(0, rc)
        printed = {(g, n) for g, n, _ in ini_options(out)}
        self.assertIn(cli.REPORT_IN_PLACEMENT, printed)
        self.assertIn(cli.PCI_IN_PLACEMENT, printed)
        for key in (cli.REPORT_IN_PLACEMENT, cli.PCI_IN_PLACEMENT):
            self.assertIn(key, nova_options())
        rc, _, err = run_cli('operator-config', '--model', 'L4', '--placement',
                             '--release', 'yoga')
        self.assertEqual(2, rc)
        self.assertIn('--placement', err)
        self.assertIn('yoga', err)

    def test_unknown_model(self):
        rc, out, err = run_cli('operator-config', '--model', 'GTX-9999')
        self.assertEqual(2, rc)
        self.assertEqual('', out)
        self.assertIn('GTX-9999', err)
        self.assertIn('--model', err)
        self.assertIn('P100-PCIE-16GB', err)

    def test_bad_alias(self):
        rc, _, err = run_cli('operator-config', '--model', 'T4', '--alias', 'a:b')
        self.assertEqual(2, rc)
        self.assertIn('--alias', err)
        self.assertIn('a:b', err)

    def test_duplicate_alias(self):
        rc, _, err = run_cli('operator-config', '--model', 'T4', '--model', 'L4',
                             '--alias', 'gpu', '--alias', 'gpu')
        self.assertEqual(2, rc)
        self.assertIn('--alias', err)
        self.assertIn('gpu', err)

    def test_unknown_release(self):
        rc, _, err = run_cli('operator-config', '--model', 'T4', '--release', 'diablo')
        self.assertEqual(2, rc)
        self.assertIn('diablo', err)
        self.assertIn('2026.1', err)


class TestOperatorConfigTripleo(testtools.TestCase):

    def _environment(self, release: str, *models: str) -> dict:
        argv = ['operator-config', '--format', 'tripleo', '--release', release]
        for model in models:
            argv += ['--model', model]
        rc, out, err = run_cli(*argv)
        self.assertEqual(0, rc, err)
        return yaml.safe_load(out)

    def test_wallaby(self):
        env = self._environment('wallaby', 'P100-PCIE-16GB')
        params = env['parameter_defaults']
        self.assertIn('intel_iommu=on', params['ComputeGpuParameters']['KernelArgs'])
        self.assertEqual([{'vendor_id': '10de', 'product_id': '15f8'}],
                         params['ComputeGpuParameters']['NovaPCIPassthrough'])
        self.assertIn('PciPassthroughFilter', params['NovaSchedulerEnabledFilters'])
        self.assertNotIn('RamFilter', params['NovaSchedulerEnabledFilters'])
        for role in ('Controller', 'ComputeGpu'):
            aliases = params['%sExtraConfig' % role]['nova::pci::aliases']
            self.assertEqual('p100', aliases[0]['name'])

    def test_ocata(self):
        env = self._environment('ocata', 'P100-PCIE-16GB', 'V100-PCIE-32GB')
        self.assertEqual('firstboot/gpu-kernel-args.yaml',
                         env['resource_registry']['OS::TripleO::NodeUserData'])
        params = env['parameter_defaults']
        self.assertIn('PciPassthroughFilter', params['NovaSchedulerDefaultFilters'])
        self.assertEqual(['p100', 'v100-32g'],
                         [a['name'] for a in params['ControllerExtraConfig']
                          ['nova::api::pci_alias']])
        values = params['ComputeExtraConfig']['nova::config::nova_config']['pci/alias']['value']
        self.assertEqual(['p100', 'v100-32g'], [json.loads(v)['name'] for v in values])

    def test_after_wallaby_is_refused(self):
        rc, _, err = run_cli('operator-config', '--format', 'tripleo', '--model', 'T4',
                             '--release', '2024.1')
        self.assertEqual(2, rc)
        self.assertIn('2024.1', err)
        self.assertIn('nova.conf', err)


def build_host(root: str, spec: dict) -> None:
    """Write the /proc and /sys files check-host reads, from a fixture description."""
    os.makedirs(os.path.join(root, 'proc'))
    with open(os.path.join(root, 'proc', 'cmdline'), 'w', encoding='utf-8') as f:
        f.write(spec['cmdline'] + '\n')
    with open(os.path.join(root, 'proc', 'cpuinfo'), 'w', encoding='utf-8') as f:
        f.write('processor\t: 0\nvendor_id\t: %s\n' % spec['cpu_vendor'])
    sys_dir = os.path.join(root, 'sys')
    devices = os.path.join(sys_dir, 'bus', 'pci', 'devices')
    drivers = os.path.join(sys_dir, 'bus', 'pci', 'drivers')
    groups = os.path.join(sys_dir, 'kernel', 'iommu_groups')
    for path in (devices, drivers, groups):
        os.makedirs(path)
    for dev in spec['devices']:
        path = os.path.join(devices, dev['address'])
        os.makedirs(path)
        for name in ('vendor', 'device', 'class'):
            with open(os.path.join(path, name), 'w', encoding='utf-8') as f:
                f.write(dev[name] + '\n')
        if dev['driver']:
            os.makedirs(os.path.join(drivers, dev['driver']), exist_ok=True)
            os.symlink(os.path.join('..', '..', 'drivers', dev['driver']),
                       os.path.join(path, 'driver'))
        if dev['iommu_group'] is not None:
            members = os.path.join(groups, dev['iommu_group'], 'devices')
            os.makedirs(members, exist_ok=True)
            os.symlink(path, os.path.join(members, dev['address']))
            os.symlink(os.path.join(groups, dev['iommu_group']), os.path.join(path, 'iommu_group'))


class TestCheckHost(testtools.TestCase):

    scenarios = [
        ('good_host', {'fixture': 'good_host', 'rc': 0,
                       'expect': ['[OK  ] IOMMU: intel_iommu=on', 'IOMMU groups: 3',
                                  '0000:04:00.0 10de:15f8 Tesla P100-PCIE-16GB, IOMMU group 30: '
                                  'bound to vfio-pci',
                                  'ready for GPU passthrough (0 warning(s))']}),
        ('no_iommu', {'fixture': 'no_iommu', 'rc': 1,
                      'expect': ['[FAIL] IOMMU: the kernel command line has no intel_iommu=on',
                                 '[FAIL] IOMMU groups: /sys/kernel/iommu_groups is empty',
                                 '0000:04:00.0: no IOMMU group',
                                 '3 problem(s)']}),
        ('nouveau', {'fixture': 'nouveau', 'rc': 1,
                     'expect': ['[FAIL] 0000:17:00.0 10de:1eb8 Tesla T4, IOMMU group 12: bound to '
                                'the host driver nouveau',
                                'shares IOMMU group 12 with 0000:17:00.1, which is bound to ahci',
                                '2 problem(s)']}),
        ('amd_default_iommu', {'fixture': 'amd_default_iommu', 'rc': 0,
                               'expect': ['[OK  ] IOMMU: the AMD IOMMU is on by default',
                                          '[WARN] 0000:c1:00.0 10de:20b5 NVIDIA A100 80GB PCIe',
                                          'ready for GPU passthrough (1 warning(s))']}),
    ]

    def test_check_host(self):
        with open(os.path.join(SYSFS_FIXTURES, self.fixture + '.json'), encoding='utf-8') as f:
            spec = json.load(f)
        root = self.useFixture(fixtures.TempDir()).path
        build_host(root, spec)
        rc, out, err = run_cli('check-host', '--root', root)
        self.assertEqual(self.rc, rc, out + err)
        for text in self.expect:
            self.assertIn(text, out)
        self.assertIn(spec['cmdline'], out)


class TestCheckHostRoot(testtools.TestCase):

    def test_fixture_is_read_not_the_real_host(self):
        with tempfile.TemporaryDirectory() as root:
            rc, out, _ = run_cli('check-host', '--root', root)
        self.assertEqual(1, rc)
        self.assertIn('no NVIDIA device', out)
        self.assertIn('(unreadable)', out)
