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
import os
import subprocess
import time

import fixtures
import testtools

from heat_gpu import catalog
from tests.unit import guest_sandbox as sandbox

gpusim = sandbox.gpusim

TWO = [sandbox.P100, dict(sandbox.P100, pci_address='0000:00:06.0', numa_node=1)]


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

    def run_cmd(self, *argv: str, stdin: str | None = None) -> subprocess.CompletedProcess:
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
