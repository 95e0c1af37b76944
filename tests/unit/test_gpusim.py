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

"""The GPU and guest simulator (tools/gpusim) behaves like the commands it stands in for."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from typing import Optional

import fixtures
import testtools

from heat_gpu import catalog
from heat_gpu import results
from tests.unit import guest_sandbox as sandbox
from tests.unit.test_samples_compile import format_keys
from tests.unit.test_samples_compile import program_source

gpusim = sandbox.gpusim

TWO = [sandbox.P100, dict(sandbox.P100, pci_address='0000:00:06.0', numa_node=1)]
A100 = {'pci_address': '0000:00:06.0', 'vendor_id': '10de', 'product_id': '20f1',
        'numa_node': 0}
TWO_A100 = [A100, dict(A100, pci_address='0000:00:07.0')]


class TestGpusim(testtools.TestCase):

    def setUp(self) -> None:
        super().setUp()
        self.root = self.useFixture(fixtures.TempDir()).path

    def guest(self, **kwargs) -> dict:
        kwargs.setdefault('distro', 'ubuntu')
        kwargs.setdefault('version', '22.04')
        kwargs.setdefault('devices', TWO)
        env = gpusim.make_guest(self.root, **kwargs)
        self.addCleanup(gpusim.stop_services, self.root)
        self.env = dict(os.environ)
        self.env.update(env)
        return env

    def run_cmd(self, *argv: str, stdin: Optional[str] = None) -> subprocess.CompletedProcess:
        return subprocess.run(list(argv), env=self.env, capture_output=True, text=True,
                              timeout=60, check=False, input=stdin)

    def test_os_release_and_path(self) -> None:
        env = self.guest(distro='rocky', version='9')
        with open(os.path.join(self.root, 'etc/os-release'), encoding='utf-8') as f:
            text = f.read()
        self.assertIn('ID=rocky\n', text)
        self.assertIn('VERSION_ID="9"\n', text)
        self.assertTrue(env['PATH'].startswith(os.path.join(self.root, '.gpusim', 'bin')))
        self.assertEqual(self.root, env['HEAT_GPU_ROOT'])
        self.assertEqual('5.14.0-427.13.1.el9_4.x86_64\n', self.run_cmd('uname', '-r').stdout)
        # Only the guest family's package manager exists.
        self.assertEqual(0, self.run_cmd('bash', '-c', 'command -v dnf').returncode)
        self.assertNotEqual(0, self.run_cmd('bash', '-c', 'command -v apt-get').returncode)

    def test_unknown_distro_and_fault(self) -> None:
        ex = self.assertRaises(ValueError, gpusim.make_guest, self.root, distro='arch',
                               version='1', devices=[])
        self.assertIn('ubuntu 22.04', str(ex))
        ex = self.assertRaises(ValueError, gpusim.make_guest, self.root, distro='ubuntu',
                               version='22.04', devices=[], faults=['flaky'])
        self.assertIn('download-fails', str(ex))

    def test_lspci(self) -> None:
        self.guest()
        out = self.run_cmd('lspci', '-D', '-n', '-d', '10de:').stdout.splitlines()
        self.assertEqual(['0000:00:05.0 0302: 10de:15f8 (rev a1)',
                          '0000:00:06.0 0302: 10de:15f8 (rev a1)'], out)
        self.assertEqual('', self.run_cmd('lspci', '-n', '-d', '1002:').stdout)
        gpusim.set_faults(self.root, ['no-gpu'])
        self.assertEqual('', self.run_cmd('lspci', '-D', '-n', '-d', '10de:').stdout)

    def test_driver_lifecycle(self) -> None:
        self.guest()
        self.assertEqual(127, self.run_cmd('nvidia-smi').returncode)
        self.assertIn('nouveau', self.run_cmd('lsmod').stdout)
        # NVIDIA packages need NVIDIA's repository first.
        r = self.run_cmd('apt-get', 'install', '-y', 'cuda-drivers-570')
        self.assertEqual(100, r.returncode)
        self.assertIn('Unable to locate package cuda-drivers-570', r.stderr)
        deb = os.path.join(self.root, 'keyring.deb')
        url = ('https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2204/x86_64/'
               'cuda-keyring_1.1-1_all.deb')
        self.assertEqual(0, self.run_cmd('curl', '-fsSL', '-o', deb, url).returncode)
        self.assertEqual(0, self.run_cmd('dpkg', '-i', deb).returncode)
        self.assertTrue(os.path.exists(os.path.join(
            self.root, 'etc/apt/sources.list.d/cuda-ubuntu2204-x86_64.list')))
        self.assertEqual(0, self.run_cmd('apt-get', 'install', '-y', 'cuda-drivers-570')
                         .returncode)
        r = self.run_cmd('nvidia-smi')
        self.assertEqual(9, r.returncode)
        self.assertIn("couldn't communicate with the NVIDIA driver", r.stdout)
        r = self.run_cmd('modprobe', 'nvidia')
        self.assertNotEqual(0, r.returncode)
        self.assertIn('nouveau', r.stderr)
        # A reboot without the blacklist brings nouveau back; with it (and a new initramfs) not.
        gpusim.reboot(self.root)
        self.assertIn('nouveau', self.run_cmd('lsmod').stdout)
        os.makedirs(os.path.join(self.root, 'etc/modprobe.d'), exist_ok=True)
        with open(os.path.join(self.root, 'etc/modprobe.d/bl.conf'), 'w',
                  encoding='utf-8') as f:
            f.write('blacklist nouveau\n')
        self.assertEqual(0, self.run_cmd('update-initramfs', '-u').returncode)
        self.run_cmd('reboot')
        self.assertTrue(gpusim.reboot_pending(self.root))
        gpusim.reboot(self.root)
        self.assertFalse(gpusim.reboot_pending(self.root))
        self.assertNotIn('nouveau', self.run_cmd('lsmod').stdout)
        self.assertEqual(0, self.run_cmd('modprobe', 'nvidia').returncode)
        r = self.run_cmd('nvidia-smi', '--query-gpu=index,name,pci.bus_id,memory.total,uuid,'
                         'driver_version,compute_cap', '--format=csv,noheader,nounits')
        self.assertEqual(0, r.returncode, r.stderr)
        p100 = catalog.get('P100-PCIE-16GB')
        rows = [line.split(', ') for line in r.stdout.splitlines()]
        self.assertEqual([['0', p100.name, '00000000:00:05.0', str(p100.memory_mib),
                           gpusim._gpu_uuid('0000:00:05.0'), '570.195.03', '6.0'],
                          ['1', p100.name, '00000000:00:06.0', str(p100.memory_mib),
                           gpusim._gpu_uuid('0000:00:06.0'), '570.195.03', '6.0']], rows)
        self.assertEqual(2, len(self.run_cmd('nvidia-smi', '-L').stdout.splitlines()))
        recorded = [(c['cmd'], c['args']) for c in gpusim.commands(self.root)]
        self.assertIn(('modprobe', ['nvidia']), recorded)
        self.assertIn(('reboot', []), recorded)

    def test_uuids_are_stable_per_address(self) -> None:
        other = self.useFixture(fixtures.TempDir()).path
        a = gpusim.make_guest(self.root, distro='debian', version='12', devices=TWO,
                              prebaked=True)
        b = gpusim.make_guest(other, distro='ubuntu', version='24.04', devices=TWO[:1],
                              prebaked=True)
        outs = []
        for env in (a, b):
            full = dict(os.environ)
            full.update(env)
            outs.append(subprocess.run(['nvidia-smi', '-L'], env=full, capture_output=True,
                                       text=True, timeout=60, check=True).stdout.splitlines())
        self.assertEqual(outs[0][0], outs[1][0])
        self.assertNotEqual(outs[0][0], outs[0][1])

    def test_open_modules_do_not_drive_pascal(self) -> None:
        self.guest(distro='rhel', version='9')
        self.run_cmd('dnf', 'config-manager', '--add-repo', 'https://developer.download.nvidia'
                     '.com/compute/cuda/repos/rhel9/x86_64/cuda-rhel9.repo')
        self.assertEqual(0, self.run_cmd('dnf', 'module', 'install', '-y',
                                         'nvidia-driver:575-open').returncode)
        self.assertEqual('open', gpusim.state(self.root)['driver']['flavour'])
        with open(os.path.join(self.root, 'etc/modprobe.d/bl.conf'), 'w',
                  encoding='utf-8') as f:
            f.write('blacklist nouveau\n')
        self.run_cmd('dracut', '-f')
        gpusim.reboot(self.root)
        r = self.run_cmd('modprobe', 'nvidia')
        self.assertNotEqual(0, r.returncode)
        self.assertIn('open kernel modules do not support', r.stderr)

    def test_faults(self) -> None:
        self.guest(faults=['checksum-mismatch'])
        url = 'https://developer.download.nvidia.com/compute/cuda/12.8.1/local_installers/x.run'
        r = subprocess.run(['curl', '-fsSL', url], env=self.env, capture_output=True,
                           timeout=60, check=False)
        self.assertEqual(0, r.returncode)
        self.assertNotEqual(gpusim.download_sha256(url), hashlib.sha256(r.stdout).hexdigest())
        gpusim.set_faults(self.root, [])
        r = subprocess.run(['curl', '-fsSL', url], env=self.env, capture_output=True,
                           timeout=60, check=False)
        self.assertEqual(gpusim.download_sha256(url), hashlib.sha256(r.stdout).hexdigest())
        gpusim.set_faults(self.root, ['download-fails'])
        self.assertEqual(28, self.run_cmd('curl', '-fsSL', url).returncode)
        gpusim.set_faults(self.root, ['package-install-fails'])
        self.run_cmd('curl', '-fsSL', '-o', os.path.join(self.root, 'k.deb'), url)
        self.run_cmd('dpkg', '-i', os.path.join(self.root, 'k.deb'))
        gpusim.state(self.root)
        self.assertEqual(0, self.run_cmd('apt-get', 'install', '-y', 'gcc').returncode)

    def test_keyring_deb_dpkg_deb_and_gpg(self) -> None:
        self.guest()
        url = ('https://mirror.example.org/nv/compute/cuda/repos/ubuntu2204/x86_64/'
               'cuda-keyring_1.1-1_all.deb')
        deb = os.path.join(self.root, 'k.deb')
        out = os.path.join(self.root, 'unpacked')
        keyring = os.path.join(out, 'usr/share/keyrings/cuda-archive-keyring.gpg')
        shown = {}
        for faults, key in (((), gpusim.NVIDIA_KEY), (('keyring-untrusted',), gpusim.ROGUE_KEY)):
            gpusim.set_faults(self.root, list(faults))
            self.assertEqual(0, self.run_cmd('curl', '-fsSL', '-o', deb, url).returncode)
            r = self.run_cmd('dpkg-deb', '-x', deb, out)
            self.assertEqual(0, r.returncode, r.stderr)
            r = self.run_cmd('gpg', '--batch', '--homedir', self.root, '--show-keys',
                             '--with-colons', keyring)
            self.assertEqual(0, r.returncode, r.stderr)
            fprs = [line.split(':')[9] for line in r.stdout.splitlines()
                    if line.startswith('fpr:')]
            self.assertEqual([key[0]], fprs)
            self.assertIn(key[1], r.stdout)
            shown[faults] = fprs
        self.assertEqual(['EB693B3035CD5710E231E123A4B469963BF863CC'], shown[()])
        self.assertNotEqual(shown[()], shown[('keyring-untrusted',)])
        # Not a keyring / not a package: refused as gpg and dpkg-deb refuse them.
        release = os.path.join(self.root, 'etc/os-release')
        r = self.run_cmd('gpg', '--show-keys', '--with-colons', release)
        self.assertEqual(2, r.returncode)
        self.assertIn('no valid OpenPGP data found', r.stderr)
        r = self.run_cmd('dpkg-deb', '-x', release, out)
        self.assertEqual(2, r.returncode)
        self.assertIn('is not a Debian format archive', r.stderr)

    def test_keyring_deb_is_a_debian_package(self) -> None:
        dpkg_deb = shutil.which('dpkg-deb')
        if dpkg_deb is None:
            self.skipTest('dpkg-deb is not installed on this host')
        url = ('https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64/'
               'cuda-keyring_1.1-1_all.deb')
        deb = os.path.join(self.root, 'k.deb')
        with open(deb, 'wb') as f:
            f.write(gpusim.download_content(url))
        r = subprocess.run([dpkg_deb, '-f', deb, 'Package'], capture_output=True, text=True,
                           timeout=60, check=False)
        self.assertEqual('cuda-keyring\n', r.stdout, r.stderr)
        r = subprocess.run([dpkg_deb, '-c', deb], capture_output=True, text=True, timeout=60,
                           check=False)
        self.assertIn('./usr/share/keyrings/cuda-archive-keyring.gpg', r.stdout)
        self.assertIn('./etc/apt/sources.list.d/cuda-debian12-x86_64.list', r.stdout)

    def test_gpg_comes_with_gnupg_on_debian(self) -> None:
        self.guest(distro='debian', version='12')
        self.assertEqual(127, self.run_cmd('sh', '-c', 'command -v gpg').returncode)
        self.assertEqual(0, self.run_cmd('apt-get', 'install', '-y', 'gnupg').returncode)
        self.assertEqual(0, self.run_cmd('sh', '-c', 'command -v gpg').returncode)

    def test_repo_file_fault(self) -> None:
        url = ('https://developer.download.nvidia.com/compute/cuda/repos/rhel9/x86_64/'
               'cuda-rhel9.repo')
        good = gpusim.download_content(url).decode()
        self.assertIn('gpgcheck=1\n', good)
        self.assertIn('gpgkey=https://developer.download.nvidia.com/compute/cuda/repos/rhel9/',
                      good)
        bad = gpusim.download_content(url, ['repo-no-gpgcheck']).decode()
        self.assertIn('gpgcheck=0\n', bad)
        self.assertNotIn('gpgkey', bad)

    def test_curl_passes_loopback_to_the_real_curl(self) -> None:
        cloud = sandbox.FakeCloud()
        self.addCleanup(cloud.stop)
        self.guest()
        r = self.run_cmd('curl', '-sS', '-m', '10', '-X', 'POST', '-H',
                         'Content-Type: application/json', '--data-binary', '@-',
                         cloud.url + '/x/signal', stdin='{"status": "SUCCESS"}')
        self.assertEqual(0, r.returncode, r.stderr)
        self.assertEqual([{'status': 'SUCCESS'}], [q.body for q in cloud.signals()])
        self.assertEqual('curl', gpusim.commands(self.root)[-1]['cmd'])

    def test_nvcc_and_cuda_programs(self) -> None:
        self.guest(devices=[sandbox.P100], prebaked=True)
        nvcc = os.path.join(self.root, 'usr/local/cuda-12.8/bin/nvcc')
        self.assertIn('release 12.8', self.run_cmd(nvcc, '--version').stdout)
        src = os.path.join(self.root, 'p.cu')
        with open(src, 'w', encoding='utf-8') as f:
            f.write('int main() { return 0; }\n')
        out = os.path.join(self.root, 'p')
        self.assertEqual(0, self.run_cmd(nvcc, '-arch=sm_60', '-o', out, src).returncode)
        r = self.run_cmd(out)
        self.assertEqual(0, r.returncode)
        self.assertEqual('heat-gpu-check 0 00000000:00:05.0 6.0 Tesla P100-PCIE-16GB OK\n',
                         r.stdout)
        # Built for a newer architecture only: no kernel image for the P100.
        self.assertEqual(0, self.run_cmd(nvcc, '-arch=sm_80', '-o', out, src).returncode)
        self.assertIn('no kernel image', self.run_cmd(out).stdout)
        # A toolkit that dropped Pascal refuses to compile for it.
        gpusim.install_toolkit(self.root, '13.0')
        self.assertIn('13.0', gpusim.state(self.root)['toolkits'])
        r = self.run_cmd(os.path.join(self.root, 'usr/local/cuda-13.0/bin/nvcc'),
                         '-arch=sm_60', '-o', out, src)
        self.assertEqual(1, r.returncode)
        self.assertIn("Unsupported gpu architecture 'compute_60'", r.stderr)

    def test_nvcc_finds_the_header_the_samples_include(self) -> None:
        self.guest(devices=[sandbox.P100], prebaked=True)
        nvcc = os.path.join(self.root, 'usr/local/cuda-12.8/bin/nvcc')
        src_dir = os.path.join(self.root, 'src')
        os.makedirs(src_dir)
        src = os.path.join(src_dir, 'vector_add.cu')
        shutil.copy(os.path.join(results.SAMPLES_DIR, 'vector_add.cu'), src)
        out = os.path.join(self.root, 'vector_add')
        # Without the header beside the source or on the include path: the preprocessor's error.
        r = self.run_cmd(nvcc, '-arch=sm_60', '-o', out, src)
        self.assertEqual(1, r.returncode)
        self.assertIn('fatal error: %s: No such file or directory' % results.SAMPLE_HEADER,
                      r.stderr)
        self.assertFalse(os.path.exists(out))
        # On the include path (-I DIR), or beside the source, it builds the sample program.
        shutil.copy(os.path.join(results.SAMPLES_DIR, results.SAMPLE_HEADER), self.root)
        r = self.run_cmd(nvcc, '-arch=sm_60', '-I', self.root, '-o', out, src)
        self.assertEqual(0, r.returncode, r.stderr)
        self.assertEqual('vector_add', json.loads(self.run_cmd(out).stdout)['program'])
        os.rename(os.path.join(self.root, results.SAMPLE_HEADER),
                  os.path.join(src_dir, results.SAMPLE_HEADER))
        self.assertEqual(0, self.run_cmd(nvcc, '-arch=sm_60', '-o', out, src).returncode)
        # The header is no program of its own; the source is one by its marker line.
        self.assertIsNone(gpusim._sample_program(os.path.join(src_dir, results.SAMPLE_HEADER)))
        self.assertEqual('vector_add', gpusim._sample_program(src))

    def test_systemctl_runs_units_in_the_background(self) -> None:
        self.guest()
        unit_dir = os.path.join(self.root, 'etc/systemd/system')
        with open(os.path.join(unit_dir, 'demo.service'), 'w', encoding='utf-8') as f:
            f.write('[Service]\nExecStart=/bin/sh -c "touch $HEAT_GPU_ROOT/ran; sleep 60"\n'
                    '[Install]\nWantedBy=multi-user.target\n')
        self.assertEqual(0, self.run_cmd('systemctl', 'enable', '--now', 'demo.service')
                         .returncode)
        self.assertTrue(os.path.islink(os.path.join(unit_dir,
                                                    'multi-user.target.wants/demo.service')))
        for _ in range(100):
            if os.path.exists(os.path.join(self.root, 'ran')):
                break
            time.sleep(0.05)
        self.assertTrue(os.path.exists(os.path.join(self.root, 'ran')))
        self.assertEqual('active\n', self.run_cmd('systemctl', 'is-active', 'demo').stdout)
        self.assertEqual([['/bin/sh', '-c', 'touch $HEAT_GPU_ROOT/ran; sleep 60']],
                         gpusim.boot_commands(self.root))
        gpusim.stop_services(self.root)
        self.assertEqual('inactive\n', self.run_cmd('systemctl', 'is-active', 'demo').stdout)


class TestGpusimSamplePrograms(testtools.TestCase):
    """The real sample job (``results.runner_script()``, as a SampleJob deploys it) in gpusim."""

    def setUp(self) -> None:
        super().setUp()
        self.root = self.useFixture(fixtures.TempDir()).path
        self.work = os.path.join(self.root, 'var', 'lib', 'heat-gpu', 'samples')

    def run_job(self, devices: list[dict], *, faults: tuple[str, ...] = (),
                samples: Optional[list[str]] = None, **extra: str) -> tuple[int, dict]:
        env = gpusim.make_guest(self.root, distro='ubuntu', version='22.04', devices=devices,
                                prebaked=True, faults=faults)
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(('HEAT_GPU', 'CUDA'))}
        self.env.update(env)
        # The inputs a SampleJob on this instance deploys: the instance's gpus attribute.
        gpus = [{'index': i, 'pci_id': '%s:%s' % (d['vendor_id'], d['product_id'])}
                for i, d in enumerate(devices)]
        self.env.update(results.runner_inputs(samples=samples, gpus=gpus, min_ratio=0.8))
        self.env.update(extra)
        config = os.path.join(self.root, 'tmp', 'config')
        with open(config, 'w', encoding='utf-8') as f:
            f.write(results.runner_script())
        os.chmod(config, 0o700)
        proc = subprocess.run([config], env=self.env, capture_output=True, text=True,
                              timeout=60, check=False)
        lines = proc.stdout.strip().splitlines()
        self.assertEqual(1, len(lines), 'stdout: %r\nstderr: %s' % (proc.stdout, proc.stderr))
        return proc.returncode, json.loads(lines[0])

    def program_output(self, name: str, **env: str) -> tuple[int, str]:
        """Run the program the job built again, as it is, with *env* added: (rc, stdout)."""
        proc = subprocess.run([os.path.join(self.work, 'bin', name)],
                              env=dict(self.env, **env), capture_output=True, text=True,
                              timeout=60, check=False)
        return proc.returncode, proc.stdout

    def recorded_output(self, name: str) -> str:
        """What program *name* printed in the job."""
        with open(os.path.join(self.work, name + '.json'), encoding='utf-8') as f:
            return f.read()

    def assert_program_format(self, name: str, text: str) -> None:
        """*text* is one JSON line with the keys of a printf format of NAME, in its order."""
        source = program_source(name)
        formats = format_keys(source)
        entry_formats = [keys for keys in formats if 'gpu_index' in keys]
        doc_formats = [keys for keys in formats if 'results' in keys]
        self.assertEqual(1, len(entry_formats), name)
        self.assertEqual(1, len(text.strip().splitlines()), text)
        doc = json.loads(text)
        self.assertIn(set(doc), doc_formats, name)
        self.assertEqual(name, doc['program'])
        for entry in doc['results']:
            self.assertEqual(entry_formats[0], set(entry), name)
        # The same order as the program's format strings.
        ordered = [re.findall(r'\\"([a-z_0-9]+)\\": ', literal) for literal in
                   re.findall(r'printf\((?:[^"]*?)((?:"(?:[^"\\]|\\.)*"\s*)+)', source)]
        pairs = json.loads(text, object_pairs_hook=lambda items: items)
        self.assertIn([k for k, _ in pairs], ordered, name)
        for entry in dict(pairs)['results']:
            self.assertIn([k for k, _ in entry], ordered, name)

    def by(self, report: results.Report, name: str, metric: Optional[str] = None) -> list:
        return [s for s in report.samples
                if s.name == name and (metric is None or s.metric == metric)]

    def test_one_p100_passes_with_healthy_figures(self) -> None:
        rc, doc = self.run_job([sandbox.P100])
        self.assertEqual(0, rc, doc)
        report = results.evaluate(json.dumps(doc), min_ratio=0.8)
        self.assertTrue(report.passed, results.failure_reason(report))
        self.assertTrue(report.summary.startswith('4/4 passed (p2p skipped); H2D '),
                        report.summary)
        p100 = catalog.get('P100-PCIE-16GB')
        gpu, = doc['gpus']
        self.assertEqual({'index': 0, 'name': p100.name, 'pci_address': '0000:00:05.0',
                          'uuid': gpusim._gpu_uuid('0000:00:05.0'),
                          'compute_capability': '6.0', 'pcie_link_gen': 3,
                          'pcie_link_width': 16, 'pcie_link_gen_max': 3,
                          'pcie_link_width_max': 16, 'pcie_source': 'nvml',
                          'ecc_enabled': True},
                         {k: gpu[k] for k in ('index', 'name', 'pci_address', 'uuid',
                                              'compute_capability', 'pcie_link_gen',
                                              'pcie_link_width', 'pcie_link_gen_max',
                                              'pcie_link_width_max', 'pcie_source',
                                              'ecc_enabled')})
        self.assertAlmostEqual(p100.memory_bandwidth_gbps, gpu['memory_bandwidth_gbps'],
                               delta=1)
        # The documented model: each figure is a share of the catalog's figure, +- the spread.
        spread = gpusim.SIM_SPREAD + 0.001
        h2d, = self.by(report, 'bandwidth', 'h2d_bandwidth')
        self.assertAlmostEqual(1, h2d.measured / (catalog.expected_h2d_gbps(p100)
                                                  * gpusim.SIM_H2D), delta=spread)
        self.assertEqual('PCIe Gen3 x16', h2d.detail['basis'])
        d2d, = self.by(report, 'bandwidth', 'd2d_bandwidth')
        self.assertAlmostEqual(1, d2d.measured / (p100.memory_bandwidth_gbps * gpusim.SIM_D2D),
                               delta=spread)
        sgemm, = self.by(report, 'gemm')
        self.assertAlmostEqual(1, sgemm.measured / (p100.fp32_tflops * gpusim.SIM_SGEMM),
                               delta=spread)
        for result in report.samples:
            if result.ratio is not None:
                self.assertGreaterEqual(result.ratio, 0.9, result)
        memory, = self.by(report, 'device_query')
        self.assertLess(memory.measured, p100.memory_mib)
        p2p, = self.by(report, 'p2p')
        self.assertTrue(p2p.skipped)
        # Built once each by the guest's nvcc, for the P100's own architecture.
        builds = [c['args'] for c in gpusim.commands(self.root)
                  if c['cmd'] == 'nvcc' and '--version' not in c['args']]
        self.assertEqual(5, len(builds))
        self.assertTrue(all('-arch=sm_60' in args for args in builds), builds)
        # What each program printed has the keys its .cu prints; so have the failure documents.
        for name in results.SAMPLES:
            self.assert_program_format(name, self.recorded_output(name))
            rc, failed = self.program_output(name, CUDA_VISIBLE_DEVICES='-1')
            self.assertEqual(1, rc, name)
            self.assert_program_format(name, failed)
            self.assertIn('cudaErrorNoDevice: no CUDA-capable device is detected',
                          json.loads(failed)['error'])

    def test_two_a100_with_peer_to_peer_pass(self) -> None:
        rc, doc = self.run_job(TWO_A100)
        self.assertEqual(0, rc, doc)
        report = results.evaluate(json.dumps(doc), min_ratio=0.8)
        self.assertTrue(report.passed, results.failure_reason(report))
        self.assertTrue(report.summary.startswith('5/5 passed on 2 GPUs; '), report.summary)
        self.assertEqual(['0000:00:06.0', '0000:00:07.0'],
                         [g['pci_address'] for g in doc['gpus']])
        p2p = self.by(report, 'p2p')
        self.assertEqual([(0, 1, True), (1, 0, True)],
                         [(r.gpu_index, r.detail['peer_index'], r.detail['peer_access'])
                          for r in p2p])
        self.assertTrue(all(r.measured > 0 for r in p2p))
        self.assertEqual([0, 1], [r.gpu_index for r in self.by(report, 'gemm')])
        # Per-GPU variation is small and deterministic.
        h2d = [r.measured for r in self.by(report, 'bandwidth', 'h2d_bandwidth')]
        self.assertNotEqual(h2d[0], h2d[1])
        self.assertLess(abs(h2d[0] - h2d[1]) / h2d[0], 2 * gpusim.SIM_SPREAD + 0.01)
        self.assertEqual((0, self.recorded_output('bandwidth')), self.program_output('bandwidth'))
        for name in results.SAMPLES:
            self.assert_program_format(name, self.recorded_output(name))

    def test_pcie_degraded_fails_on_host_bandwidth(self) -> None:
        rc, doc = self.run_job(TWO_A100, faults=('pcie-degraded',), samples=['bandwidth'])
        self.assertEqual(1, rc)
        report = results.evaluate(json.dumps(doc), min_ratio=0.8)
        self.assertFalse(report.passed)
        reason = results.failure_reason(report)
        h2d, d2h = (r for r in self.by(report, 'bandwidth') if r.gpu_index == 0
                    and r.metric in ('h2d_bandwidth', 'd2h_bandwidth'))
        self.assertIn('bandwidth GPU0 H2D %.1f GB/s = %d%% of expected (< 80%%)'
                      % (h2d.measured, round(h2d.ratio * 100)), reason)
        self.assertTrue(0.4 < h2d.ratio < 0.55, h2d)
        self.assertTrue(0.4 < d2h.ratio < 0.55, d2h)
        self.assertNotIn('GPU1', reason)
        self.assertNotIn('D2D', reason)
        # device_query reports the link as trained: x8 of x16.
        self.assertEqual([(4, 8, 4, 16), (4, 16, 4, 16)],
                         [(g['pcie_link_gen'], g['pcie_link_width'], g['pcie_link_gen_max'],
                           g['pcie_link_width_max']) for g in doc['gpus']])

    def test_wrong_result_fails_vector_add(self) -> None:
        rc, doc = self.run_job([sandbox.P100], faults=('wrong-result',), samples=['vector_add'])
        self.assertEqual(1, rc)
        report = results.evaluate(json.dumps(doc))
        self.assertFalse(report.passed)
        self.assertEqual('vector_add GPU0 max error: wrong result',
                         results.failure_reason(report))
        result, = self.by(report, 'vector_add')
        self.assertEqual(gpusim.SIM_WRONG_ERROR, result.measured)
        self.assertEqual((1 << 24) // 4096, result.detail['mismatches'])

    def test_gpu_missing(self) -> None:
        # The only GPU: on the PCI bus, but the driver does not bring it up.
        rc, doc = self.run_job([sandbox.P100], faults=('gpu-missing',),
                               samples=['device_query'])
        self.assertEqual(1, rc)
        self.assertEqual('00:05.0 0302: 10de:15f8 (rev a1)\n', subprocess.run(
            ['lspci', '-n'], env=self.env, capture_output=True, text=True, timeout=60,
            check=False).stdout)
        report = results.evaluate(json.dumps(doc))
        self.assertFalse(report.passed)
        self.assertEqual([], list(report.gpus))
        self.assertEqual('device_query memory: cudaErrorNoDevice: no CUDA-capable device is '
                         'detected', results.failure_reason(report))

    def test_gpu_missing_of_two_leaves_one_gpu(self) -> None:
        rc, doc = self.run_job(TWO_A100, faults=('gpu-missing',), samples=['device_query'])
        report = results.evaluate(json.dumps(doc))
        # One of the two assigned GPUs reaches CUDA: the GPU count is what shows it.
        self.assertEqual(['0000:00:06.0'], [g['pci_address'] for g in report.gpus])
        self.assertNotIn('on 2 GPUs', report.summary)
        smi = subprocess.run(['nvidia-smi', '--query-gpu=pci.bus_id,count',
                              '--format=csv,noheader'], env=self.env, capture_output=True,
                             text=True, timeout=60, check=False)
        self.assertEqual('00000000:00:06.0, 1\n', smi.stdout)

    def test_ecc_errors_make_the_gpu_unusable(self) -> None:
        rc, doc = self.run_job([sandbox.P100], faults=('ecc-errors',),
                               samples=['device_query', 'vector_add'])
        self.assertEqual(1, rc)
        report = results.evaluate(json.dumps(doc))
        self.assertEqual('device_query GPU0 memory: cudaErrorECCUncorrectable: uncorrectable '
                         'ECC error encountered; vector_add GPU0 max error: cudaSetDevice: '
                         'cudaErrorECCUncorrectable: uncorrectable ECC error encountered',
                         results.failure_reason(report))

    def test_built_for_another_architecture(self) -> None:
        # Built for sm_80 only (SASS and PTX of 8.0): nothing a 6.0 GPU can run. The programs
        # without kernels of their own still work, as on real silicon.
        rc, doc = self.run_job([sandbox.P100], samples=['vector_add', 'bandwidth', 'gemm'],
                               HEAT_GPU_CUDA_ARCH='80')
        self.assertEqual(1, rc)
        report = results.evaluate(json.dumps(doc))
        no_image = 'cudaErrorNoKernelImageForDevice: no kernel image is available for ' \
            'execution on the device'
        self.assertEqual([('vector_add', 'kernel launch: ' + no_image),
                          ('gemm', 'fill: ' + no_image)],
                         [(r.name, r.detail['message']) for r in report.failures()])
        self.assertTrue(all(r.passed for r in self.by(report, 'bandwidth')))
