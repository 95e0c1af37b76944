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

import fixtures
from oslo_config import cfg
import testscenarios
import testtools

from heat_gpu import catalog
from heat_gpu import config
from heat_gpu import exception

load_tests = testscenarios.load_tests_apply_scenarios

# A small pci.ids in the real format: vendor lines, tab-indented devices, double-tab subsystems,
# and the class list that follows the vendors.
PCI_IDS = (
    '# test database\n'
    '#\tVersion: 2099.01.01\n'
    '10de  NVIDIA Corporation\n'
    '\t1b38  GP102GL [Tesla P40]\n'
    '\t\t10de 11d9  Tesla P40\n'
    '\t15f8  GP100GL [Tesla P100 PCIe 16GB]\n'
    '1af4  Red Hat, Inc.\n'
    '\t1000  Virtio network device\n'
    'C 03  Display controller\n'
    '\t00  VGA compatible controller\n'
)


class ModelLookupTest(testtools.TestCase):
    """Every way of naming a model finds the same entry."""

    scenarios = [
        ('key', dict(ident='P100-PCIE-16GB', key='P100-PCIE-16GB')),
        ('key lower case', dict(ident='p100-pcie-16gb', key='P100-PCIE-16GB')),
        ('alias', dict(ident='p100', key='P100-PCIE-16GB')),
        ('alias upper case', dict(ident='A100-80G', key='A100-PCIE-80GB')),
        ('pci id', dict(ident='10de:15f8', key='P100-PCIE-16GB')),
        ('pci id upper case', dict(ident='10DE:20B2', key='A100-SXM4-80GB')),
        ('pci id with 0x', dict(ident='0x10de:0x1eb8', key='T4')),
        ('nvidia-smi device id', dict(ident='0x233010DE', key='H100-SXM5-80GB')),
        ('blank padded', dict(ident='  l40s ', key='L40S')),
    ]

    def test_find(self):
        self.assertEqual(self.key, catalog.get(self.ident).key)


class CatalogContentTest(testtools.TestCase):

    def test_required_models_present(self):
        wanted = {'P100-PCIE-12GB', 'P100-PCIE-16GB', 'P100-SXM2-16GB', 'V100-PCIE-16GB',
                  'V100-PCIE-32GB', 'V100-SXM2-16GB', 'V100-SXM2-32GB', 'T4', 'A10', 'A30',
                  'A40', 'A100-PCIE-40GB', 'A100-PCIE-80GB', 'A100-SXM4-40GB',
                  'A100-SXM4-80GB', 'L4', 'L40S', 'H100-PCIE-80GB', 'H100-SXM5-80GB',
                  'H200-SXM5-141GB'}
        self.assertEqual(set(), wanted - set(catalog.keys()))

    def test_keys_aliases_and_ids_are_unique(self):
        models = catalog.models()
        for field in ('key', 'alias', 'pci_id', 'name'):
            values = [getattr(m, field).lower() for m in models]
            self.assertEqual(len(values), len(set(values)), field)

    def test_an_alias_never_names_another_models_key(self):
        keys = {k.lower(): k for k in catalog.keys()}
        for model in catalog.models():
            owner = keys.get(model.alias)
            self.assertIn(owner, (None, model.key))

    def test_figures_are_sane(self):
        for model in catalog.models():
            self.assertIn(model.architecture, catalog.ARCHITECTURES)
            self.assertRegex(model.device_id, r'^[0-9a-f]{4}$')
            self.assertEqual('10de', model.vendor_id)
            self.assertGreaterEqual(model.memory_mib, 12 * 1024)
            self.assertGreater(model.memory_bandwidth_gbps, 100)
            self.assertGreater(model.fp32_tflops, 5)
            self.assertIn(model.pcie_gen, (3, 4, 5))
            self.assertEqual(16, model.pcie_lanes)

    def test_p100_pcie_16gb(self):
        p100 = catalog.by_pci_id('10de:15f8')
        self.assertEqual('Tesla P100-PCIE-16GB', p100.name)
        self.assertEqual('Pascal', p100.architecture)
        self.assertEqual('6.0', p100.compute_capability)
        self.assertEqual('sm_60', p100.sm)
        self.assertEqual(16384, p100.memory_mib)
        self.assertEqual(732, p100.memory_bandwidth_gbps)
        self.assertEqual(9.3, p100.fp32_tflops)
        self.assertFalse(p100.open_kernel_modules)
        self.assertEqual(12, p100.max_cuda_major)
        self.assertEqual('p100', p100.alias)

    def test_compute_capability_by_architecture(self):
        expected = {'Pascal': {'6.0'}, 'Volta': {'7.0'}, 'Turing': {'7.5'},
                    'Ampere': {'8.0', '8.6'}, 'Ada Lovelace': {'8.9'}, 'Hopper': {'9.0'}}
        for arch, ccs in expected.items():
            found = {m.compute_capability for m in catalog.by_architecture(arch)}
            self.assertEqual(ccs, found, arch)

    def test_open_modules_and_cuda_line_follow_architecture(self):
        for model in catalog.models():
            old = model.architecture in ('Pascal', 'Volta')
            self.assertEqual(not old, model.open_kernel_modules, model.key)
            self.assertEqual(12 if old else 13, model.max_cuda_major, model.key)

    def test_match_nvidia_smi_name(self):
        self.assertEqual('A100-PCIE-80GB', catalog.match_name('NVIDIA A100 80GB PCIe').key)
        self.assertIsNone(catalog.match_name('NVIDIA GeForce RTX 4090'))

    def test_as_dict(self):
        data = catalog.get('t4').as_dict()
        self.assertEqual('10de:1eb8', data['pci_id'])
        self.assertEqual('sm_75', data['sm'])
        self.assertTrue(data['open_kernel_modules'])
        self.assertEqual(13, data['max_cuda_major'])


class UnknownModelTest(testtools.TestCase):

    scenarios = [
        ('unknown key', dict(ident='X100')),
        ('not in catalog pci id', dict(ident='10de:1b38')),
        ('empty', dict(ident='')),
        ('malformed pci id', dict(ident='10de:15f')),
    ]

    def test_get_raises_with_accepted_values(self):
        exc = self.assertRaises(exception.UnknownGpuModel, catalog.get, self.ident)
        self.assertEqual(self.ident, exc.value)
        self.assertIn('P100-PCIE-16GB', str(exc))
        self.assertIn('gpu_model', str(exc))
        self.assertIsNone(catalog.find(self.ident))


class FiguresTest(testtools.TestCase):

    scenarios = [
        ('gen3 x16', dict(gen=3, lanes=16, gbps=15.754)),
        ('gen4 x16', dict(gen=4, lanes=16, gbps=31.508)),
        ('gen5 x16', dict(gen=5, lanes=16, gbps=63.015)),
        ('gen3 x8', dict(gen=3, lanes=8, gbps=7.877)),
    ]

    def test_pcie_theoretical(self):
        measured = catalog.pcie_theoretical_gbps(gen=self.gen, lanes=self.lanes)
        self.assertAlmostEqual(self.gbps, measured, 2)


class HelpersTest(testtools.TestCase):

    def test_expected_h2d(self):
        # Gen3 x16 theoretical 15.75 GB/s times the documented 0.75.
        self.assertEqual(11.82, catalog.expected_h2d_gbps('p100'))
        self.assertEqual(23.63, catalog.expected_h2d_gbps('A100-SXM4-80GB'))
        self.assertEqual(47.26, catalog.expected_h2d_gbps(catalog.get('h200')))
        self.assertEqual(15.75, catalog.expected_h2d_gbps('p100', efficiency=1.0))

    def test_bandwidth_and_fp32(self):
        self.assertEqual(2039.0, catalog.memory_bandwidth_gbps('a100-sxm4-80g'))
        self.assertEqual(67.0, catalog.fp32_tflops('H100-SXM5-80GB'))

    def test_bad_link(self):
        self.assertRaises(ValueError, catalog.pcie_theoretical_gbps, gen=7, lanes=16)
        self.assertRaises(ValueError, catalog.pcie_theoretical_gbps, gen=3, lanes=3)

    def test_unknown_model_in_helpers(self):
        self.assertRaises(exception.UnknownGpuModel, catalog.expected_h2d_gbps, 'nope')

    def test_normalize(self):
        self.assertEqual('10de:15f8', catalog.normalize_pci_id('10DE:15F8'))
        self.assertEqual('10de:15f8', catalog.normalize_pci_id('0x15F810DE'))
        self.assertIsNone(catalog.normalize_pci_id('10de15f8'))
        self.assertIsNone(catalog.normalize_pci_id(None))


class DescribeTest(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.useFixture(fixtures.EnvironmentVariable(config.PCI_IDS_ENV))
        self.tmp = self.useFixture(fixtures.TempDir()).path
        self.db = os.path.join(self.tmp, 'pci.ids')
        with open(self.db, 'w', encoding='utf-8') as stream:
            stream.write(PCI_IDS)

    def test_catalog_model(self):
        desc = catalog.describe('10de:15f8', path=self.db)
        self.assertEqual('catalog', desc.source)
        self.assertTrue(desc.known)
        self.assertEqual('Tesla P100-PCIE-16GB', desc.name)
        self.assertEqual('P100-PCIE-16GB', desc.model.key)

    def test_unknown_to_catalog_named_from_pci_ids(self):
        desc = catalog.describe('10DE:1B38', path=self.db)
        self.assertEqual('pci.ids', desc.source)
        self.assertFalse(desc.known)
        self.assertIsNone(desc.model)
        self.assertEqual('GP102GL [Tesla P40]', desc.name)
        self.assertEqual('NVIDIA Corporation', desc.vendor_name)
        self.assertEqual('10de:1b38', desc.pci_id)

    def test_other_vendor(self):
        desc = catalog.describe('1af4:1000', path=self.db)
        self.assertEqual(('pci.ids', 'Virtio network device', 'Red Hat, Inc.'),
                         (desc.source, desc.name, desc.vendor_name))

    def test_class_section_is_not_a_device(self):
        self.assertEqual((None, None), catalog.lookup_pci_ids('0300:0000', path=self.db))

    def test_absent_from_database(self):
        desc = catalog.describe('10de:ffff', path=self.db)
        self.assertEqual('unknown', desc.source)
        self.assertIsNone(desc.name)
        self.assertFalse(desc.known)

    def test_no_database(self):
        desc = catalog.describe('10de:1b38', path=os.path.join(self.tmp, 'missing'))
        self.assertEqual(('unknown', None), (desc.source, desc.name))

    def test_environment_variable_overrides(self):
        self.useFixture(fixtures.EnvironmentVariable(config.PCI_IDS_ENV, self.db))
        self.assertEqual('GP102GL [Tesla P40]', catalog.describe('10de:1b38').name)

    def test_config_option_overrides(self):
        conf = self.useFixture(_ConfFixture()).conf
        conf.set_override('pci_ids_path', self.db, group='heat_gpu')
        self.assertEqual([self.db], config.pci_ids_candidates(conf=conf))
        self.assertEqual('GP102GL [Tesla P40]', catalog.describe('10de:1b38').name)

    def test_database_change_is_seen(self):
        self.assertEqual('GP102GL [Tesla P40]', catalog.describe('10de:1b38', path=self.db).name)
        with open(self.db, 'w', encoding='utf-8') as stream:
            stream.write(PCI_IDS.replace('Tesla P40', 'Tesla P40 renamed'))
        os.utime(self.db, (1, 1))
        self.assertEqual('GP102GL [Tesla P40 renamed]',
                         catalog.describe('10de:1b38', path=self.db).name)

    def test_malformed_id(self):
        self.assertEqual('unknown', catalog.describe('nvidia', path=self.db).source)


class SystemDatabaseTest(testtools.TestCase):
    """The real pci.ids of this machine (the pci.ids Debian package) names a non-catalog GPU."""

    def setUp(self):
        super().setUp()
        self.useFixture(fixtures.EnvironmentVariable(config.PCI_IDS_ENV))
        path = catalog.pci_ids_path()
        if path is None:
            self.skipTest('no system pci.ids (install the pci.ids package)')

    def test_p40_from_system_database(self):
        desc = catalog.describe('10de:1b38')
        self.assertEqual('pci.ids', desc.source)
        self.assertIn('P40', desc.name)

    def test_catalog_ids_agree_with_system_database(self):
        # Every catalog id the database knows is an NVIDIA device whose name mentions the
        # model's product (e.g. "GA100 [A100 SXM4 80GB]" for A100-SXM4-80GB).
        for model in catalog.models():
            vendor, name = catalog.lookup_pci_ids(model.pci_id)
            self.assertEqual('NVIDIA Corporation', vendor)
            if name is None:
                continue  # newer than this copy of pci.ids
            product = model.key.split('-')[0]
            self.assertIn(product, name.replace(' ', ''), model.key)


class _ConfFixture(fixtures.Fixture):
    """The global config with the [heat_gpu] options, reset afterwards."""

    def _setUp(self):
        self.conf = cfg.CONF
        config.register_opts(self.conf)
        self.addCleanup(self.conf.clear_override, 'pci_ids_path', group='heat_gpu')
