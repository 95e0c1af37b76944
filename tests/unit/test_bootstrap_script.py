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

"""The real heat_gpu/guest/bootstrap.sh, run in a simulated guest (tools/gpusim)."""

import json
import os
import subprocess
import sys
import time

import fixtures
import testscenarios
import testtools

from tests.unit import guest_sandbox as sandbox

load_tests = testscenarios.load_tests_apply_scenarios

PACKAGE_CMDS = ('apt-get', 'apt', 'dpkg', 'dnf', 'yum', 'rpm', 'yum-config-manager')
PHASES = ['detect', 'prepare-kernel', 'install-driver', 'reboot', 'install-cuda', 'verify']


def _installs(commands: list) -> list:
    """Every package name the guest asked a package manager to install."""
    out = []
    for c in commands:
        args = [a for a in c['args'] if not a.startswith('-')]
        if c['cmd'] in ('apt-get', 'dnf', 'yum') and args[:1] == ['install']:
            out += args[1:]
    return out


def _v(version: str) -> tuple:
    return tuple(int(x) for x in version.split('.'))


def _downloads(b) -> list:
    """curl calls that are downloads (not the signals to 127.0.0.1)."""
    return [c for c in b.commands('curl') if '127.0.0.1' not in ' '.join(c['args'])]


class _Base(testtools.TestCase):

    def setUp(self) -> None:
        super().setUp()
        self.root = self.useFixture(fixtures.TempDir()).path

    def boot(self, **kwargs):
        result = sandbox.boot(self.root, **kwargs)
        self.addCleanup(sandbox.gpusim.stop_services, self.root)
        return result


class TestDistros(_Base):
    """Every distribution: packages, nouveau, initramfs, one reboot, resume without repeats."""

    scenarios = [
        ('ubuntu-20.04', {'distro': 'ubuntu', 'version': '20.04', 'repo': 'ubuntu2004'}),
        ('ubuntu-22.04', {'distro': 'ubuntu', 'version': '22.04', 'repo': 'ubuntu2204'}),
        ('ubuntu-24.04', {'distro': 'ubuntu', 'version': '24.04', 'repo': 'ubuntu2404'}),
        ('debian-12', {'distro': 'debian', 'version': '12', 'repo': 'debian12'}),
        ('rhel-7', {'distro': 'rhel', 'version': '7', 'repo': 'rhel7'}),
        ('rhel-8', {'distro': 'rhel', 'version': '8', 'repo': 'rhel8'}),
        ('rhel-9', {'distro': 'rhel', 'version': '9', 'repo': 'rhel9'}),
        ('centos-7', {'distro': 'centos', 'version': '7', 'repo': 'rhel7'}),
        ('centos-8', {'distro': 'centos', 'version': '8', 'repo': 'rhel8'}),
        ('centos-9', {'distro': 'centos', 'version': '9', 'repo': 'rhel9'}),
        ('rocky-8', {'distro': 'rocky', 'version': '8', 'repo': 'rhel8'}),
        ('rocky-9', {'distro': 'rocky', 'version': '9', 'repo': 'rhel9'}),
        ('almalinux-8', {'distro': 'almalinux', 'version': '8', 'repo': 'rhel8'}),
        ('almalinux-9', {'distro': 'almalinux', 'version': '9', 'repo': 'rhel9'}),
    ]

    def test_install(self) -> None:
        settings = sandbox.base_settings()
        b = self.boot(distro=self.distro, version=self.version, settings=settings)
        self.assertEqual('SUCCESS', b.final_status(), b.log())
        st = b.state()
        kernel = st['kernel']
        # CUDA: the newest candidate NVIDIA's repository for this distro offers (RHEL 7 ends
        # at 12.4); the P100 gets the 12.x line.
        want = next(c for c in settings['cuda_candidates']
                    if self.repo != 'rhel7' or _v(c['cuda']) <= (12, 4))
        cuda, branch = want['cuda'], want['branch']
        self.assertEqual('12', cuda.split('.')[0])
        installs = _installs(b.commands())
        dash = cuda.replace('.', '-')
        if st['family'] == 'debian':
            self.assertIn('linux-headers-%s' % kernel, installs)
            self.assertIn('cuda-drivers-%s' % branch, installs)
            self.assertIn('cuda-toolkit-%s' % dash, installs)
            keyring = [c for c in b.commands('curl') if c['args'][-1].endswith('.deb')]
            self.assertEqual('https://developer.download.nvidia.com/compute/cuda/repos/%s/'
                             'x86_64/cuda-keyring_1.1-1_all.deb' % self.repo,
                             keyring[0]['args'][-1])
            self.assertEqual(1, len(b.commands('dpkg')))
            initramfs = b.commands('update-initramfs')
        else:
            self.assertIn('kernel-devel-%s' % kernel, installs)
            self.assertIn('kernel-headers-%s' % kernel, installs)
            self.assertIn('cuda-toolkit-%s' % dash, installs)
            repo = [c for c in b.commands('curl') if c['args'][-1].endswith('.repo')]
            self.assertEqual('https://developer.download.nvidia.com/compute/cuda/repos/%s/'
                             'x86_64/cuda-%s.repo' % (self.repo, self.repo),
                             repo[0]['args'][-1])
            modules = [c['args'] for c in b.commands('dnf')
                       if c['args'][:2] == ['module', 'install']]
            if self.version == '7':
                self.assertEqual([], b.commands('dnf'))
                self.assertIn('cuda-drivers-%s' % branch, installs)
            else:
                self.assertEqual([['module', 'install', '-y', 'nvidia-driver:%s-dkms' % branch]],
                                 modules)
            initramfs = b.commands('dracut')
        self.assertEqual('blacklist nouveau\noptions nouveau modeset=0\n',
                         b.file('/etc/modprobe.d/blacklist-nouveau.conf'))
        self.assertEqual(1, len(initramfs))
        self.assertEqual(1, initramfs[0]['boot'])
        # One reboot; the second boot does only the remaining work.
        self.assertEqual(1, len(b.commands('reboot')))
        self.assertEqual(2, st['boot'])
        second = [c for c in b.commands() if c['boot'] == 2]
        self.assertEqual(['cuda-toolkit-%s' % dash], _installs(second))
        self.assertNotIn('dpkg', [c['cmd'] for c in second])
        self.assertNotIn('update-initramfs', [c['cmd'] for c in second])
        self.assertNotIn('dracut', [c['cmd'] for c in second])
        self.assertNotIn('curl', [c['cmd'] for c in second])
        # The driver is proprietary (Pascal) and loaded; CUDA is on PATH at its real prefix.
        self.assertEqual('proprietary', st['driver']['flavour'])
        self.assertIn('nvidia', st['modules'])
        self.assertNotIn('nouveau', st['modules'])
        self.assertEqual([cuda], st['toolkits'])
        self.assertIn('export PATH=/usr/local/cuda-%s/bin${PATH:+:$PATH}' % cuda,
                      b.file('/etc/profile.d/heat-gpu-cuda.sh'))
        self.assertTrue(os.path.isdir(os.path.join(self.root, 'usr/local/cuda-%s' % cuda)))
        self.assertEqual(0o600, os.stat(b.env['HEAT_GPU_SETTINGS']).st_mode & 0o777)


class TestSignals(_Base):
    """Keystone token, then Heat signals: one IN_PROGRESS per phase and the final report."""

    def setUp(self) -> None:
        super().setUp()
        self.cloud = sandbox.FakeCloud()
        self.addCleanup(self.cloud.stop)

    def test_heat_signal(self) -> None:
        password = 'Pw-9d1f0c2e-not-on-disk'
        settings = sandbox.base_settings(signal=self.cloud.heat_signal(password=password))
        b = self.boot(settings=settings)
        self.assertEqual('SUCCESS', b.final_status(), b.log())

        token_requests = [r for r in self.cloud.requests if r.path.endswith('/auth/tokens')]
        self.assertEqual(2, len(token_requests))  # one per boot
        self.assertEqual({'auth': {
            'identity': {'methods': ['password'],
                         'password': {'user': {'id': settings['signal']['user_id'],
                                               'password': password}}},
            'scope': {'project': {'id': self.cloud.project_id}}}}, token_requests[0].body)

        signals = self.cloud.signals()
        path = '/orchestration/v1/%s/stacks/gpu-stack/3c5a-11ee-9f00/resources/gpu_server/signal'
        for r in signals:
            self.assertEqual(path % self.cloud.project_id, r.path)
            self.assertIn(r.headers['X-Auth-Token'], self.cloud.tokens)
            self.assertEqual('application/json', r.headers['Content-Type'])
            self.assertEqual('heat-gpu', r.body['id'])
        self.assertEqual(['IN_PROGRESS'] * 6 + ['SUCCESS'], [r.body['status'] for r in signals])
        self.assertEqual(['phase %s started' % p for p in PHASES],
                         [r.body['reason'] for r in signals[:6]])

        report = json.loads(signals[-1].body['data'])
        dev = sandbox.gpusim.state(self.root)
        self.assertEqual([{'index': 0, 'name': 'Tesla P100-PCIE-16GB',
                           'pci_address': '0000:00:05.0', 'memory_mib': 16384,
                           'uuid': sandbox.gpusim._gpu_uuid('0000:00:05.0'),
                           'pci_id': '10de:15f8'}], report['gpus'])
        self.assertEqual(dev['driver']['version'], report['driver_version'])
        self.assertEqual(settings['cuda_version'], report['cuda_version'])
        self.assertEqual('packages', report['method'])
        self.assertEqual('ubuntu-22.04', report['distro'])
        self.assertEqual('verify', report['phase'])
        self.assertEqual(PHASES, list(report['phases']))
        self.assertTrue(all(isinstance(v, float) and v >= 0 for v in report['phases'].values()))
        self.assertIn('Tesla P100-PCIE-16GB', signals[-1].body['reason'])
        self.assertTrue(report['log_tail'])
        self.assertLessEqual(len(report['log_tail']), 20)

        # The password lives only in the settings file; the token only in memory.
        for dirpath, _, files in os.walk(self.root):
            for name in files:
                path = os.path.join(dirpath, name)
                if path == b.env['HEAT_GPU_SETTINGS'] or os.path.islink(path):
                    continue
                with open(path, 'rb') as f:
                    data = f.read()
                self.assertNotIn(password.encode(), data, path)
                for token in self.cloud.tokens:
                    self.assertNotIn(token.encode(), data, path)

    def test_token_signal_sends_only_the_final_report(self) -> None:
        settings = sandbox.base_settings(signal=self.cloud.token_signal(token='wc-token-1'))
        b = self.boot(settings=settings)
        self.assertEqual('SUCCESS', b.final_status(), b.log())
        signals = self.cloud.signals()
        self.assertEqual(1, len(signals))
        self.assertEqual('wc-token-1', signals[0].headers['X-Auth-Token'])
        self.assertEqual('SUCCESS', signals[0].body['status'])
        self.assertEqual([], [r for r in self.cloud.requests if 'auth/tokens' in r.path])


class TestPaths(_Base):
    """Pre-baked images, the runfile route, open modules, the agent, reruns."""

    def test_prebaked_image_skips_the_installation(self) -> None:
        start = time.monotonic()
        b = self.boot(prebaked=True)
        elapsed = time.monotonic() - start
        self.assertEqual('SUCCESS', b.final_status(), b.log())
        cmds = [c['cmd'] for c in b.commands()]
        self.assertEqual([], [c for c in cmds if c in PACKAGE_CMDS + ('curl', 'reboot')])
        self.assertEqual('preinstalled\n', b.file('/var/lib/heat-gpu/method'))
        self.assertEqual('12.8\n', b.file('/var/lib/heat-gpu/cuda_version'))
        self.assertEqual(1, len(b.runs))
        self.assertLess(elapsed, 20)

    def test_rerun_after_success_repeats_nothing(self) -> None:
        b = self.boot()
        self.assertEqual('SUCCESS', b.final_status(), b.log())
        before = len(b.commands())
        rerun = subprocess.run(['bash', sandbox.SCRIPT], env=b.env, capture_output=True,
                               text=True, timeout=60, check=False)
        self.assertEqual(0, rerun.returncode)
        self.assertEqual(before, len(b.commands()))
        self.assertFalse(os.path.lexists(os.path.join(
            self.root, 'etc/systemd/system/multi-user.target.wants/heat-gpu-bootstrap.service')))

    def test_runfile_route(self) -> None:
        base = sandbox.base_settings(install_method='runfile')
        runfile = base['cuda_candidates'][0]['runfile']
        version = runfile.split('_')[1]
        url = ('https://developer.download.nvidia.com/compute/cuda/%s/local_installers/%s'
               % (version, runfile))
        base['checksums'] = {runfile: sandbox.gpusim.download_sha256(url)}
        b = self.boot(settings=base)
        self.assertEqual('SUCCESS', b.final_status(), b.log())
        self.assertEqual([url], [c['args'][-1] for c in b.commands('curl')])
        runs = b.commands('gpusim-runfile')
        self.assertEqual([[runfile, '--silent', '--driver', '--toolkit']],
                         [c['args'] for c in runs])
        # The runfile refuses to install while nouveau is loaded: it runs after the reboot.
        self.assertEqual(2, runs[0]['boot'])
        self.assertIn('sha256 of %s verified' % runfile, b.log())
        self.assertEqual([], [c for c in _installs(b.commands()) if c.startswith('cuda')])
        self.assertEqual('runfile', b.state()['driver']['method'])

    def test_branch_auto_installs_the_newest_driver(self) -> None:
        # What the plain-HOT provider template writes for cuda_version 12.4 not in its table.
        settings = {'install_method': 'auto', 'kernel_modules': 'proprietary',
                    'kernel_modules_auto': True, 'cuda_auto': False,
                    'cuda_candidates': [{'cuda': '12.4', 'branch': 'auto'}],
                    'mirror_url': '', 'checksums': {}, 'gpu_model': ''}
        b = self.boot(distro='rocky', version='9', settings=settings)
        self.assertEqual('SUCCESS', b.final_status(), b.log())
        self.assertIn(['module', 'install', '-y', 'nvidia-driver:latest-dkms'],
                      [c['args'] for c in b.commands('dnf')])
        self.assertIn('cuda-toolkit-12-4', _installs(b.commands()))

    def test_mirror_replaces_nvidia_host(self) -> None:
        mirror = 'https://mirror.example.org/nvidia'
        b = self.boot(settings=sandbox.base_settings(mirror_url=mirror + '/'))
        self.assertEqual('SUCCESS', b.final_status(), b.log())
        self.assertEqual([mirror + '/compute/cuda/repos/ubuntu2204/x86_64/'
                          'cuda-keyring_1.1-1_all.deb'],
                         [c['args'][-1] for c in _downloads(b)])
        sources = b.file('/etc/apt/sources.list.d/cuda-ubuntu2204-x86_64.list')
        self.assertIn(mirror + '/compute/cuda/repos/ubuntu2204/x86_64/ /', sources)
        self.assertNotIn('developer.download.nvidia.com', sources)

    def test_open_modules_for_turing(self) -> None:
        settings = sandbox.base_settings(gpu_model='T4')
        self.assertEqual('open', settings['kernel_modules'])
        b = self.boot(distro='ubuntu', version='24.04', devices=[sandbox.T4],
                      settings=settings)
        self.assertEqual('SUCCESS', b.final_status(), b.log())
        cand = settings['cuda_candidates'][0]
        self.assertIn('nvidia-open-%s' % cand['branch'], _installs(b.commands()))
        self.assertEqual('open', b.state()['driver']['flavour'])
        self.assertEqual('13', cand['cuda'].split('.')[0])

    def test_agent_started_after_success(self) -> None:
        marker = os.path.join(self.root, 'agent-ran')

        def setup(root: str) -> None:
            path = os.path.join(root, 'usr/local/lib/heat-gpu/heat-gpu-agent')
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, 'w', encoding='utf-8') as f:
                f.write('import os, time\nopen(os.path.join(os.environ["HEAT_GPU_ROOT"], '
                        '"agent-ran"), "w").close()\ntime.sleep(60)\n')

        b = self.boot(setup=setup)
        self.assertEqual('SUCCESS', b.final_status(), b.log())
        self.assertIn(['enable', '--now', 'heat-gpu-agent.service'],
                      [c['args'] for c in b.commands('systemctl')])
        self.assertIn('ExecStart=/usr/bin/python3 /usr/local/lib/heat-gpu/heat-gpu-agent',
                      b.file('/etc/systemd/system/heat-gpu-agent.service'))
        for _ in range(100):
            if os.path.exists(marker):
                break
            time.sleep(0.05)
        self.assertTrue(os.path.exists(marker))


class TestFailures(_Base):
    """Every failure ends in one FAILURE report that says why."""

    def setUp(self) -> None:
        super().setUp()
        self.cloud = sandbox.FakeCloud()
        self.addCleanup(self.cloud.stop)

    def failed(self, **kwargs) -> tuple:
        settings = kwargs.pop('settings', None) or sandbox.base_settings()
        settings['signal'] = self.cloud.token_signal(token='wc-token-2')
        b = self.boot(settings=settings, **kwargs)
        self.assertEqual('FAILURE', b.final_status(), b.log())
        self.assertNotEqual(0, b.runs[-1].returncode)
        signals = self.cloud.signals()
        self.assertEqual(['FAILURE'], [s.body['status'] for s in signals])
        report = json.loads(signals[0].body['data'])
        self.assertIn('FAILED in phase', '\n'.join(report['log_tail']))
        return b, signals[0].body['reason'], report

    def test_no_gpu(self) -> None:
        b, reason, report = self.failed(faults=['no-gpu'])
        self.assertIn('no NVIDIA GPU on the PCI bus', reason)
        self.assertIn("nova's [pci] alias", reason)
        self.assertIn('pci_passthrough:alias', reason)
        self.assertEqual('detect', report['phase'])
        self.assertEqual([], [c for c in b.commands() if c['cmd'] in PACKAGE_CMDS])

    def test_package_install_fails(self) -> None:
        b, reason, report = self.failed(faults=['package-install-fails'])
        self.assertIn('cuda-drivers-575', reason)
        self.assertEqual('install-driver', report['phase'])
        self.assertIn('503  Service Unavailable', '\n'.join(report['log_tail']))
        self.assertEqual(0, len(b.commands('reboot')))
        # Once the repository works again, a rerun finishes without redoing the kernel steps.
        sandbox.gpusim.set_faults(self.root, [])
        subprocess.run(['bash', sandbox.SCRIPT], env=b.env, capture_output=True, text=True,
                       timeout=60, check=False)
        self.assertTrue(sandbox.gpusim.reboot_pending(self.root))
        self.assertEqual(1, len(b.commands('update-initramfs')))
        self.assertEqual(1, len(b.commands('dpkg')))
        self.assertEqual(['cuda-drivers-575'],
                         [p for p in _installs(b.commands()) if p.startswith('cuda-drivers')][1:])

    def test_checksum_mismatch(self) -> None:
        settings = sandbox.base_settings()
        url = ('https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2204/x86_64/'
               'cuda-keyring_1.1-1_all.deb')
        good = sandbox.gpusim.download_sha256(url)
        settings['checksums'] = {'cuda-keyring_1.1-1_all.deb': good}
        b, reason, report = self.failed(settings=settings, faults=['checksum-mismatch'])
        self.assertIn('checksum mismatch for cuda-keyring_1.1-1_all.deb', reason)
        self.assertIn('expected sha256 %s' % good, reason)
        self.assertEqual([], b.commands('dpkg'))

    def test_download_keeps_failing(self) -> None:
        settings = sandbox.base_settings(download_retries=3, retry_delay=0)
        b, reason, report = self.failed(settings=settings, faults=['download-fails'])
        self.assertIn('failed 3 times', reason)
        self.assertIn('mirror_url', reason)
        self.assertEqual(3, len(_downloads(b)))

    def test_plain_http_mirror_is_refused(self) -> None:
        settings = sandbox.base_settings(mirror_url='http://mirror.example.org/nvidia')
        b, reason, report = self.failed(settings=settings)
        self.assertIn('mirror_url http://mirror.example.org/nvidia is not an https:// URL',
                      reason)
        self.assertEqual([], _downloads(b))

    def test_open_modules_on_pascal_fail_to_load(self) -> None:
        settings = sandbox.base_settings()
        settings['kernel_modules'] = 'open'  # what a hand-written settings file could say
        b, reason, report = self.failed(settings=settings)
        self.assertIn('modprobe nvidia failed', reason)
        self.assertIn('kernel_modules proprietary', reason)
        self.assertEqual('reboot', report['phase'])


class TestDownloadTrust(_Base):
    """What the script installs or runs from a download is verified first (issue #7)."""

    KEYRING = 'cuda-keyring_1.1-1_all.deb'
    NVIDIA_FPR = 'EB693B3035CD5710E231E123A4B469963BF863CC'

    def setUp(self) -> None:
        super().setUp()
        self.cloud = sandbox.FakeCloud()
        self.addCleanup(self.cloud.stop)

    def failed(self, **kwargs) -> tuple:
        return TestFailures.failed(self, **kwargs)

    def order(self, b) -> list:
        """(cmd, first argument) of every command, in order."""
        return [(c['cmd'], (c['args'] or [''])[0]) for c in b.commands()]

    def test_trusted_keyring_is_checked_before_dpkg_runs(self) -> None:
        self.assertEqual((self.NVIDIA_FPR, 'cudatools <cudatools@nvidia.com>'),
                         sandbox.gpusim.NVIDIA_KEY)
        b = self.boot()
        self.assertEqual('SUCCESS', b.final_status(), b.log())
        self.assertIn('keyring of %s verified: key(s) %s trusted'
                      % (self.KEYRING, self.NVIDIA_FPR), b.log())
        order = self.order(b)
        unpack = order.index(('dpkg-deb', '-x'))
        show = next(i for i, c in enumerate(b.commands()) if c['cmd'] == 'gpg' and
                    '--show-keys' in c['args'] and c['rc'] == 0)
        install = order.index(('dpkg', '-i'))
        self.assertLess(unpack, show)
        self.assertLess(show, install)
        # Ubuntu has gpg: no gnupg package; the keyring dpkg installed is the one checked.
        self.assertNotIn('gnupg', _installs(b.commands()))
        self.assertEqual(sandbox.gpusim.keyring([sandbox.gpusim.NVIDIA_KEY]).decode(),
                         b.file('/usr/share/keyrings/cuda-archive-keyring.gpg'))

    def test_gnupg_installed_from_the_distribution_when_gpg_is_missing(self) -> None:
        b = self.boot(distro='debian', version='12')
        self.assertEqual('SUCCESS', b.final_status(), b.log())
        order = self.order(b)
        gnupg = next(i for i, c in enumerate(b.commands())
                     if c['cmd'] == 'apt-get' and 'gnupg' in c['args'])
        self.assertLess(gnupg, order.index(('gpg', '--batch')))
        self.assertLess(order.index(('gpg', '--batch')), order.index(('dpkg', '-i')))
        self.assertIn('installing the distribution\'s gnupg package', b.log())

    def test_untrusted_keyring_is_refused_and_dpkg_never_runs(self) -> None:
        rogue = sandbox.gpusim.ROGUE_KEY[0]
        self.assertNotEqual(self.NVIDIA_FPR, rogue)
        b, reason, report = self.failed(faults=['keyring-untrusted'])
        self.assertIn('untrusted repository key in %s' % self.KEYRING, reason)
        self.assertIn('expected only %s' % self.NVIDIA_FPR, reason)
        self.assertIn('found %s (/usr/share/keyrings/cuda-archive-keyring.gpg)' % rogue, reason)
        self.assertIn('[heat_gpu] trusted_keyring_fingerprints', reason)
        self.assertIn('use a mirror that serves NVIDIA\'s cuda-keyring unchanged', reason)
        self.assertEqual('install-driver', report['phase'])
        self.assertEqual(['-x'], [c['args'][0] for c in b.commands('dpkg-deb')])
        self.assertEqual([], b.commands('dpkg'))
        self.assertFalse(os.path.exists(os.path.join(
            self.root, 'usr/share/keyrings/cuda-archive-keyring.gpg')))
        self.assertEqual([], b.state()['repos'])
        self.assertEqual([], [p for p in _installs(b.commands()) if p.startswith('cuda')])

    def test_fingerprints_come_from_the_settings(self) -> None:
        # An operator who trusts the mirror's key (trusted_keyring_fingerprints) gets through...
        rogue = sandbox.gpusim.ROGUE_KEY[0]
        settings = sandbox.base_settings(keyring_fingerprints=[self.NVIDIA_FPR, rogue.lower()])
        b = self.boot(settings=settings, faults=['keyring-untrusted'])
        self.assertEqual('SUCCESS', b.final_status(), b.log())
        self.assertEqual(1, len(b.commands('dpkg')))

    def test_nvidia_keyring_refused_when_the_settings_trust_another_key(self) -> None:
        settings = sandbox.base_settings(keyring_fingerprints=['AB' * 20])
        b, reason, report = self.failed(settings=settings)
        self.assertIn('expected only %s (keyring_fingerprints), found %s'
                      % ('AB' * 20, self.NVIDIA_FPR), reason)
        self.assertEqual([], b.commands('dpkg'))

    def test_settings_without_fingerprints_refuse_the_keyring(self) -> None:
        settings = sandbox.base_settings()
        del settings['keyring_fingerprints']
        b, reason, report = self.failed(settings=settings)
        self.assertIn('the settings name no trusted repository key (keyring_fingerprints)',
                      reason)
        self.assertEqual([], b.commands('dpkg'))

    def test_keyring_checksum_still_applies(self) -> None:
        # A checksum in checksums is checked as well: a wrong one stops even NVIDIA's keyring.
        settings = sandbox.base_settings(checksums={self.KEYRING: 'ab' * 32})
        b, reason, report = self.failed(settings=settings)
        self.assertIn('checksum mismatch for %s' % self.KEYRING, reason)
        self.assertEqual([], b.commands('dpkg'))
        self.assertEqual([], b.commands('dpkg-deb'))

    def test_repo_file_without_gpgcheck_is_refused(self) -> None:
        b, reason, report = self.failed(distro='rocky', version='9', faults=['repo-no-gpgcheck'])
        self.assertIn('refusing the repository file cuda-rhel9.repo', reason)
        self.assertIn('[cuda-rhel9-x86_64] gpgcheck=0, no gpgkey=', reason)
        self.assertIn('gpgcheck=1 and a gpgkey= on https://', reason)
        self.assertEqual([], [c for c in b.commands('dnf') if c['args'][:1] == ['config-manager']])
        self.assertFalse(os.path.exists(os.path.join(self.root, 'etc/yum.repos.d')))

    def test_repo_file_with_gpgcheck_passes(self) -> None:
        b = self.boot(distro='rhel', version='7')
        self.assertEqual('SUCCESS', b.final_status(), b.log())
        repo = b.file('/etc/yum.repos.d/cuda-rhel7.repo')
        self.assertIn('gpgcheck=1\n', repo)
        self.assertIn('gpgkey=https://', repo)
        self.assertIn('repository file cuda-rhel7.repo verified', b.log())

    def test_repo_file_check_reads_every_section(self) -> None:
        # A second section with a plain-http key (on a continuation line) is caught too.
        script = os.path.join(self.root, 'check-repo.sh')
        repo = os.path.join(self.root, 'extra.repo')
        with open(repo, 'w', encoding='utf-8') as f:
            f.write('[a]\nbaseurl=https://x/a\ngpgcheck=1\ngpgkey=https://x/k.pub\n'
                    '[b]\nbaseurl=https://x/b\ngpgcheck = 1\n'
                    'gpgkey=https://x/k.pub\n  http://x/other.pub\n')
        with open(script, 'w', encoding='utf-8') as f:
            f.write('fail() { echo "FAIL: $1"; exit 1; }\nlog() { echo "LOG: $1"; }\n')
            f.write(self._function('verify_repo_file'))
            f.write('verify_repo_file "$1"\n')
        out = subprocess.run(['bash', script, repo], capture_output=True, text=True,
                             timeout=60, check=False)
        self.assertEqual(1, out.returncode, out.stdout + out.stderr)
        self.assertIn('found: [b] gpgkey=http://x/other.pub is not https://', out.stdout)
        self.assertNotIn('[a]', out.stdout)

    @staticmethod
    def _function(name: str) -> str:
        """The text of shell function *name* of the boot script."""
        with open(sandbox.SCRIPT, encoding='utf-8') as f:
            text = f.read()
        start = text.index('\n%s() {\n' % name) + 1
        return text[start:text.index('\n}\n', start) + 3]

    def test_runfile_without_checksum_is_refused_before_any_download(self) -> None:
        settings = sandbox.base_settings(install_method='runfile')
        runfile = settings['cuda_candidates'][0]['runfile']
        b, reason, report = self.failed(settings=settings)
        self.assertIn('refusing to run the CUDA runfile %s as root without a known sha256'
                      % runfile, reason)
        self.assertIn('add checksums: {%s: <sha256>}' % runfile, reason)
        self.assertIn("NVIDIA lists checksums on the runfile's download page", reason)
        self.assertEqual('detect', report['phase'])
        self.assertEqual([], _downloads(b))
        self.assertEqual([], b.commands('gpusim-runfile'))
        self.assertEqual([], b.commands('reboot'))


class TestShellcheck(testtools.TestCase):

    def test_shellcheck_clean(self) -> None:
        shellcheck = os.path.join(sys.prefix, 'bin', 'shellcheck')
        result = subprocess.run([shellcheck, '-x', sandbox.SCRIPT], capture_output=True,
                                text=True, timeout=120, check=False)
        self.assertEqual(0, result.returncode, result.stdout + result.stderr)
