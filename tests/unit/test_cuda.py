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

import testscenarios
import testtools

from heat_gpu import catalog
from heat_gpu import cuda
from heat_gpu import exception

load_tests = testscenarios.load_tests_apply_scenarios


class TestReleaseTable(testtools.TestCase):

    def test_minimum_drivers_from_the_release_notes(self) -> None:
        self.assertEqual('525.60.13', cuda.min_driver('12.0'))
        self.assertEqual('550.54.14', cuda.min_driver('12.4'))
        self.assertEqual('570.26', cuda.min_driver('12.8'))
        self.assertEqual('575.51.03', cuda.min_driver('12.9'))
        self.assertEqual('580.65.06', cuda.min_driver('13.0'))

    def test_table_is_ordered_and_consistent(self) -> None:
        keys = [r.key for r in cuda.releases()]
        self.assertEqual(sorted(keys), keys)
        for rel in cuda.releases():
            self.assertEqual(rel.branch, int(rel.min_driver.split('.')[0]), rel.version)
            self.assertGreaterEqual(int(rel.runfile_driver.split('.')[0]), rel.branch)
            self.assertTrue(rel.runfile_version.startswith(rel.version + '.'))
            self.assertEqual('cuda_%s_%s_linux.run' % (rel.runfile_version, rel.runfile_driver),
                             rel.runfile)
            self.assertGreaterEqual(rel.branch, cuda.MAJOR_MIN_BRANCH[rel.major])

    def test_13_drops_pascal_and_volta(self) -> None:
        self.assertEqual((7, 5), cuda.release('13.0').min_cc)
        self.assertIn('Pascal', cuda.release('13.0').dropped)
        self.assertEqual((5, 0), cuda.release('12.9').min_cc)

    def test_unknown_version_names_the_accepted_ones(self) -> None:
        ex = self.assertRaises(exception.InvalidGpuRequest, cuda.min_driver, '12.7')
        self.assertIn('12.7', str(ex))
        self.assertIn('12.8', str(ex))


class TestAuto(testtools.TestCase):

    scenarios = [
        ('P100', {'model': 'P100-PCIE-16GB', 'major': 12, 'modules': 'proprietary'}),
        ('V100', {'model': 'V100-SXM2-32GB', 'major': 12, 'modules': 'proprietary'}),
        ('T4', {'model': 'T4', 'major': 13, 'modules': 'open'}),
        ('A100', {'model': 'A100-SXM4-80GB', 'major': 13, 'modules': 'open'}),
        ('H100', {'model': 'H100-SXM5-80GB', 'major': 13, 'modules': 'open'}),
    ]

    def test_auto_picks_newest_supported_line(self) -> None:
        sel = cuda.select(gpu_model=self.model)
        model = catalog.get(self.model)
        newest = max((r for r in cuda.releases()
                      if r.major <= model.max_cuda_major
                      and r.min_cc <= model.compute_capability_tuple), key=lambda r: r.key)
        self.assertEqual(newest.version, sel.cuda_version)
        self.assertEqual(self.major, int(sel.cuda_version.split('.')[0]))
        self.assertEqual(str(newest.branch), sel.driver_branch)
        self.assertEqual(self.modules, sel.kernel_modules)
        self.assertTrue(sel.cuda_auto)
        self.assertEqual('packages', sel.install_method)
        # Candidates: newest first, every one supported, the runfile named.
        versions = [c['cuda'] for c in sel.candidates]
        self.assertEqual(cuda.supported_versions(self.model), versions)
        self.assertEqual(sorted(versions, key=lambda v: tuple(map(int, v.split('.'))),
                                reverse=True), versions)
        self.assertEqual(cuda.release(versions[0]).runfile, sel.candidates[0]['runfile'])


class TestSelect(testtools.TestCase):

    def test_pascal_auto_is_12(self) -> None:
        sel = cuda.select(gpu_model='P100-PCIE-16GB')
        self.assertEqual('12.9', sel.cuda_version)
        self.assertEqual('575', sel.driver_branch)
        self.assertNotIn('13.0', [c['cuda'] for c in sel.candidates])

    def test_13_on_p100_is_refused(self) -> None:
        ex = self.assertRaises(exception.UnsupportedCudaVersion, cuda.select,
                               gpu_model='P100-PCIE-16GB', cuda_version='13.0')
        text = str(ex)
        self.assertIn('CUDA 13.0', text)
        self.assertIn('P100-PCIE-16GB', text)
        self.assertIn('Pascal', text)
        self.assertIn('12.9, 12.8', text)
        self.assertNotIn('13.1', ex.accepted)

    def test_check_cuda_version_names_the_property(self) -> None:
        ex = self.assertRaises(exception.InvalidGpuRequest, cuda.check_cuda_version,
                               '12', catalog.get('T4'), prop='cuda_version')
        self.assertIn('cuda_version', str(ex))
        self.assertIn("'12'", str(ex))
        cuda.check_cuda_version('auto', catalog.get('P100-PCIE-16GB'))
        cuda.check_cuda_version('12.4', catalog.get('P100-PCIE-16GB'))

    def test_explicit_version(self) -> None:
        sel = cuda.select(gpu_model='A100-SXM4-80GB', cuda_version='12.4')
        self.assertEqual(('12.4', '550', 'proprietary'),
                         (sel.cuda_version, sel.driver_branch, sel.kernel_modules))
        self.assertEqual(1, len(sel.candidates))
        self.assertFalse(sel.cuda_auto)

    def test_driver_branch_limits_the_candidates(self) -> None:
        sel = cuda.select(gpu_model='T4', driver_branch='550')
        self.assertEqual('12.4', sel.cuda_version)
        self.assertEqual({'550'}, {c['branch'] for c in sel.candidates})
        ex = self.assertRaises(exception.InvalidGpuRequest, cuda.select, gpu_model='T4',
                               cuda_version='12.8', driver_branch='550')
        self.assertIn('driver_branch', str(ex))
        self.assertIn('570', str(ex))

    def test_newer_branches_drop_pascal(self) -> None:
        ex = self.assertRaises(exception.InvalidGpuRequest, cuda.select,
                               gpu_model='P100-PCIE-16GB', driver_branch='590')
        self.assertIn('580', str(ex))
        self.assertIn('Pascal', str(ex))

    def test_open_modules_refused_on_volta(self) -> None:
        ex = self.assertRaises(exception.InvalidGpuRequest, cuda.select,
                               gpu_model='V100-PCIE-16GB', kernel_modules='open')
        self.assertIn('kernel_modules', str(ex))
        self.assertIn('Volta', str(ex))
        self.assertEqual('open', cuda.select(gpu_model='T4', kernel_modules='open',
                                             cuda_version='12.4').kernel_modules)

    def test_unknown_gpu_gets_the_safe_line(self) -> None:
        sel = cuda.select(gpu_model=None)
        self.assertEqual('12.9', sel.cuda_version)
        self.assertEqual('proprietary', sel.kernel_modules)
        self.assertTrue(sel.kernel_modules_auto)
        self.assertIsNone(sel.gpu_model)

    def test_bad_choices_name_property_value_and_accepted(self) -> None:
        for kwargs, prop in (({'install_method': 'rpm'}, 'install_method'),
                             ({'kernel_modules': 'nouveau'}, 'kernel_modules'),
                             ({'driver_branch': '55'}, 'driver_branch')):
            ex = self.assertRaises(exception.InvalidGpuRequest, cuda.select, gpu_model='T4',
                                   **kwargs)
            self.assertEqual(prop, ex.prop)
            self.assertIn(list(kwargs.values())[0], str(ex))

    def test_guest_settings(self) -> None:
        s = cuda.select(gpu_model='P100-PCIE-16GB', install_method='runfile').guest_settings()
        self.assertEqual('runfile', s['install_method'])
        self.assertEqual('cuda_12.9.1_575.57.08_linux.run', s['cuda_candidates'][0]['runfile'])
        self.assertEqual('575.51.03', s['cuda_candidates'][0]['min_driver'])
