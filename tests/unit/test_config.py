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

import os
import subprocess
import sys

import fixtures
from oslo_config import cfg
import testtools

from heat_gpu import config

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
SAMPLE = os.path.join(ROOT, 'etc', 'heat-gpu.conf.sample')


class ConfigTest(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.conf = cfg.ConfigOpts()
        config.register_opts(self.conf)
        self.useFixture(fixtures.EnvironmentVariable(config.PCI_IDS_ENV))

    def load(self, text):
        path = os.path.join(self.useFixture(fixtures.TempDir()).path, 'heat.conf')
        with open(path, 'w', encoding='utf-8') as stream:
            stream.write(text)
        self.conf(args=[], default_config_files=[path])
        self.addCleanup(self.conf.reset)

    def test_defaults(self):
        group = self.conf.heat_gpu
        self.assertIsNone(group.pci_ids_path)
        self.assertEqual('auto', group.default_cuda_version)
        self.assertEqual('auto', group.default_driver_branch)
        self.assertEqual(3600, group.bootstrap_timeout)
        self.assertEqual(0.8, group.sample_min_ratio)
        self.assertEqual(1800, group.sample_timeout)
        self.assertIsNone(group.mirror_url)
        self.assertEqual({}, group.alias_map)

    def test_every_option_has_help(self):
        [(group, opts)] = config.list_opts()
        self.assertEqual('heat_gpu', group.name)
        names = {opt.name for opt in opts}
        self.assertEqual({'pci_ids_path', 'default_cuda_version', 'default_driver_branch',
                          'bootstrap_timeout', 'api_outage_tolerance', 'server_poll_interval',
                          'no_valid_host_retries',
                          'sample_min_ratio',
                          'sample_timeout', 'mirror_url', 'trusted_keyring_fingerprints',
                          'alias_map'}, names)
        for opt in opts:
            self.assertTrue(opt.help and opt.help.endswith('.'), opt.name)

    def test_register_twice(self):
        config.register_opts(self.conf)
        config.register_opts(cfg.CONF)
        config.register_opts(cfg.CONF)
        self.assertEqual('auto', cfg.CONF.heat_gpu.default_cuda_version)

    def test_values_from_file(self):
        self.load('[heat_gpu]\n'
                  'alias_map = gpu-big:A100-SXM4-80GB,small:T4\n'
                  'default_cuda_version = 12.4\n'
                  'default_driver_branch = 550\n'
                  'mirror_url = https://mirror.example.org/nvidia\n'
                  'sample_min_ratio = 0.5\n')
        self.assertEqual({'gpu-big': 'A100-SXM4-80GB', 'small': 'T4'},
                         config.alias_map(conf=self.conf))
        self.assertEqual('12.4', self.conf.heat_gpu.default_cuda_version)
        self.assertEqual('550', self.conf.heat_gpu.default_driver_branch)
        self.assertEqual('https://mirror.example.org/nvidia', self.conf.heat_gpu.mirror_url)
        self.assertEqual(0.5, self.conf.heat_gpu.sample_min_ratio)

    def test_bad_values_refused(self):
        for name, value in (('default_cuda_version', '12'), ('default_cuda_version', 'latest'),
                            ('default_driver_branch', '55'), ('bootstrap_timeout', 10),
                            ('sample_min_ratio', 1.5), ('mirror_url', 'ftp://mirror/x')):
            self.assertRaises(ValueError, self.conf.set_override, name, value, group='heat_gpu')

    def test_trusted_keyring_fingerprints(self):
        from heat_gpu import cuda
        # Unset: NVIDIA's repository key, as the catalog has it and the help text names it.
        self.assertIsNone(self.conf.heat_gpu.trusted_keyring_fingerprints)
        self.assertEqual(list(cuda.NVIDIA_REPO_KEY_FINGERPRINTS),
                         config.trusted_keyring_fingerprints(conf=self.conf))
        self.assertEqual(', '.join(cuda.NVIDIA_REPO_KEY_FINGERPRINTS),
                         config.DEFAULT_KEYRING_FINGERPRINTS_TEXT)
        # A list replaces the default (upper-cased); a value that is not 40 hex digits is refused.
        self.load('[heat_gpu]\ntrusted_keyring_fingerprints = '
                  'EB693B3035CD5710E231E123A4B469963BF863CC,%s\n' % ('ab' * 20))
        self.assertEqual(['EB693B3035CD5710E231E123A4B469963BF863CC', 'AB' * 20],
                         config.trusted_keyring_fingerprints(conf=self.conf))
        for bad in (['3bf863cc'], ['EB69 3B30 35CD 5710 E231  E123 A4B4 6996 3BF8 63CC']):
            self.assertRaises(ValueError, self.conf.set_override,
                              'trusted_keyring_fingerprints', bad, group='heat_gpu')

    def test_pci_ids_candidates(self):
        self.assertEqual(list(config.DEFAULT_PCI_IDS_PATHS),
                         config.pci_ids_candidates(conf=self.conf))
        self.conf.set_override('pci_ids_path', '/srv/pci.ids', group='heat_gpu')
        self.assertEqual(['/srv/pci.ids'], config.pci_ids_candidates(conf=self.conf))
        self.useFixture(fixtures.EnvironmentVariable(config.PCI_IDS_ENV, '/opt/pci.ids'))
        self.assertEqual(['/opt/pci.ids'], config.pci_ids_candidates(conf=self.conf))


class SampleConfigTest(testtools.TestCase):
    """etc/heat-gpu.conf.sample is what oslo-config-generator makes of the options now."""

    def test_sample_is_fresh(self):
        out = os.path.join(self.useFixture(fixtures.TempDir()).path, 'sample.conf')
        result = subprocess.run(
            [sys.executable, '-m', 'oslo_config.generator', '--namespace', 'heat_gpu',
             '--output-file', out], capture_output=True, text=True, timeout=120)
        self.assertEqual(0, result.returncode, result.stderr)
        with open(out, encoding='utf-8') as stream:
            generated = stream.read()
        with open(SAMPLE, encoding='utf-8') as stream:
            committed = stream.read()
        self.assertIn('[heat_gpu]', generated)
        self.assertIn('#alias_map =', generated)
        self.assertEqual(generated, committed,
                         'etc/heat-gpu.conf.sample is stale: run make sample-config')
