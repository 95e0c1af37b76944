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

"""The local cloud's package mirror, used by the real apt, dpkg, gpg and curl of the guest root.

Every guest is a throwaway copy-on-write layer over the local cloud's guest root (Debian 12, built
by ``tools/localcloud/guestroot.py``) whose commands run under bubblewrap (no boot: the booted
machine and the boot script on it are tests/unit/test_localcloud_guest.py's), with the GPU simulator
installed as ``make_guest('/', real_userland=True)`` installs it.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

import fixtures
import testtools

from tests.unit import guest_sandbox as sandbox
from tools.gpusim import gpusim
from tools.localcloud import guestroot
from tools.localcloud import mirror

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MIRROR = os.path.join(REPO, 'tools', 'localcloud', 'mirror.py')
GUEST_GPUSIM = '/usr/lib/gpusim/gpusim.py'
NVIDIA_LIST = '/etc/apt/sources.list.d/cuda-debian12-x86_64.list'

#: What the boot script's add_repo does, by hand: cuda-keyring from BASE, apt pointed at BASE.
ADD_REPO = '''\
curl -fsSL -o /tmp/cuda-keyring.deb "$BASE/compute/cuda/repos/debian12/x86_64/%s"
dpkg -i /tmp/cuda-keyring.deb
sed -i "s#https://developer.download.nvidia.com#$BASE#" %s
apt-get update -q
''' % (mirror.KEYRING_DEB, NVIDIA_LIST)


def _missing() -> str | None:
    """Why these tests cannot run here, or None."""
    for tool in ('bwrap', 'mmdebstrap', 'unshare'):
        if shutil.which(tool) is None:
            return '%s is not installed (tools/bootstrap.sh installs it)' % tool
    if not guestroot.is_built(guestroot.root_path()):
        return ('the guest root is not built: python tools/localcloud/guestroot.py build (the '
                'local cloud builds it at its first start)')
    return None


class Overlay:
    """A copy-on-write root over *lowers*, mounted afresh (in a mount namespace) by every run."""

    def __init__(self, directory: str, lowers: list[str]) -> None:
        self.upper = os.path.join(directory, 'upper')
        self.work = os.path.join(directory, 'work')
        self.merged = os.path.join(directory, 'merged')
        for d in (self.upper, self.work, self.merged):
            os.makedirs(d, exist_ok=True)
        self.lowers = lowers
        self.env: dict = {}

    def write(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Put a file into the root (before a run)."""
        full = os.path.join(self.upper, path.lstrip('/'))
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, 'wb') as f:
            f.write(data)
        os.chmod(full, mode)

    def read(self, path: str) -> str:
        """A file the guest wrote."""
        with open(os.path.join(self.upper, path.lstrip('/')), encoding='utf-8') as f:
            return f.read()

    def run(self, script: str, *, env: dict | None = None,
            timeout: int = 120) -> subprocess.CompletedProcess:
        """Run bash *script* as root of the guest (own pid namespace: nothing outlives it)."""
        opts = 'lowerdir=%s,upperdir=%s,workdir=%s' % (':'.join(self.lowers), self.upper,
                                                       self.work)
        variables = {'PATH': gpusim.REAL_PATH, 'HOME': '/root', 'LC_ALL': 'C.UTF-8',
                     **self.env, **(env or {})}
        setenv = [x for k, v in sorted(variables.items()) for x in ('--setenv', k, v)]
        argv = ['unshare', '--mount', '--propagation', 'private', '--',
                'sh', '-c', 'mount -t overlay overlay -o "$1" "$2" && shift 2 && exec "$@"',
                'sh', opts, self.merged,
                'bwrap', '--bind', self.merged, '/', '--dev', '/dev', '--proc', '/proc',
                '--tmpfs', '/run', '--unshare-pid', '--die-with-parent', '--clearenv',
                *setenv, '--', '/bin/bash', '-c', script]
        return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout, check=False)


class TestBuild(testtools.TestCase):
    """The mirror's repositories: built once, rebuilt when what they hold changes."""

    def setUp(self) -> None:
        super().setUp()
        for tool in ('dpkg-deb', 'gpg', 'openssl'):
            if shutil.which(tool) is None:
                self.skipTest('%s is not installed (tools/bootstrap.sh installs it)' % tool)
        self.dir = os.path.join(self.useFixture(fixtures.TempDir()).path, 'mirror')

    def test_build_is_idempotent_and_follows_its_recipe(self) -> None:
        self.assertTrue(mirror.build(self.dir, log=lambda m: None))
        fpr = mirror.key_fingerprint(self.dir)
        self.assertRegex(fpr, r'^[0-9A-F]{40}$')
        self.assertFalse(mirror.build(self.dir, log=lambda m: None))
        self.patch(mirror, 'FORMAT', mirror.FORMAT + 1)
        self.assertTrue(mirror.build(self.dir, log=lambda m: None))
        # The keys stay: guests that trust them keep working.
        self.assertEqual(fpr, mirror.key_fingerprint(self.dir))
        www = os.path.join(self.dir, 'www')
        for repo in ('ubuntu2004', 'ubuntu2204', 'ubuntu2404', 'debian12'):
            base = os.path.join(www, 'compute', 'cuda', 'repos', repo, 'x86_64')
            for name in ('Packages', 'Packages.gz', 'Release', 'InRelease', 'Release.gpg',
                         mirror.KEYRING_DEB):
                self.assertTrue(os.path.isfile(os.path.join(base, name)), (repo, name))
        with open(os.path.join(www, 'compute/cuda/repos/debian12/x86_64/Packages'),
                  encoding='utf-8') as f:
            packages = f.read()
        full = gpusim.DRIVER_VERSIONS['575']
        self.assertIn('Package: cuda-drivers-575\nVersion: %s-1\n' % full, packages)
        self.assertIn('Depends: nvidia-driver-575 (>= %s)\n' % full, packages)
        self.assertIn('Package: cuda-toolkit-12-9\nVersion: 12.9.1-1\n', packages)
        # debian12 starts at CUDA 12.2 (the boot script's distro_repo): no 11.8 there.
        self.assertNotIn('cuda-toolkit-11-8', packages)
        headers = os.listdir(os.path.join(www, 'distro', 'debian12'))
        self.assertIn('linux-headers-%s_6.1.0-1_amd64.deb' % gpusim.DISTROS['debian']['12'][1],
                      headers)

    def test_debian_packages_and_the_pypi_index(self) -> None:
        self.assertTrue(mirror.build(self.dir, log=lambda m: None))
        www = os.path.join(self.dir, 'www')
        with open(os.path.join(www, 'distro', 'debian12', 'Packages'), encoding='utf-8') as f:
            packages = f.read()
        # Debian's own packages with Debian's control fields, next to the simulated headers.
        for name in mirror.DEBIAN_PACKAGES:
            self.assertIn('\nPackage: %s\n' % name, '\n' + packages)
        self.assertRegex(packages, r'Package: python3-venv\n(.+\n)*Maintainer: .*@.*debian\.org')
        self.assertRegex(packages, r'Package: python3.11-venv\n(.+\n)*Depends: .*python3.11 \(= ')
        # The PEP 503 index: one page per project, links with the wheel's hash.
        with open(os.path.join(www, 'pypi', 'simple', 'index.html'), encoding='utf-8') as f:
            self.assertIn('<a href="jupyterlab/">jupyterlab</a>', f.read())
        with open(os.path.join(www, 'pypi', 'simple', 'jupyterlab', 'index.html'),
                  encoding='utf-8') as f:
            page = f.read()
        pin = next(r for r in mirror.PYPI_REQUIREMENTS if r.startswith('jupyterlab=='))
        wheel = 'jupyterlab-%s-py3-none-any.whl' % pin.split('==')[1]
        self.assertRegex(page, r'href="../../files/%s#sha256=[0-9a-f]{64}"' % re.escape(wheel))
        files = os.listdir(os.path.join(www, 'pypi', 'files'))
        self.assertIn(wheel, files)
        self.assertTrue(all(f.endswith('.whl') for f in files), files)
        # Binary wheels for the guest's CPython 3.11 on x86_64 only.
        for f in files:
            python, abi, platform = f[:-len('.whl')].split('-')[-3:]
            self.assertLessEqual(set(abi.split('.')), {'none', 'abi3', 'cp311'}, f)
            self.assertTrue(all(p == 'any' or p.startswith('manylinux') and
                                p.endswith('_x86_64') for p in platform.split('.')), f)
            self.assertTrue(all(re.fullmatch(r'py3\d*|py2|cp3\d*', p) and
                                (not p.startswith('cp') or int(p[2:]) <= 311)
                                for p in python.split('.')), f)
        conf = mirror.guest_files(self.dir, url='https://127.0.0.1:1/', distro='debian',
                                  version='12')[mirror.GUEST_PIP_CONF].decode()
        self.assertIn('index-url = https://127.0.0.1:1/pypi/simple/\n', conf)
        self.assertIn('cert = /etc/ssl/certs/ca-certificates.crt\n', conf)

    def test_the_boot_scripts_repositories(self) -> None:
        self.assertEqual({'ubuntu2004': ('11.0', '12.9'), 'ubuntu2204': ('11.7', '99.9'),
                          'ubuntu2404': ('12.5', '99.9'), 'debian12': ('12.2', '99.9')},
                         mirror.debian_repos())
        self.assertEqual('ubuntu2204', mirror.repo_for('ubuntu', '22.04'))
        self.assertEqual('debian12', mirror.repo_for('debian', '12'))
        self.assertEqual('rhel9', mirror.repo_for('rocky', '9'))


class TestInTheGuestRoot(testtools.TestCase):
    """Real apt, dpkg and gpg of the guest root against the mirror; real bootstrap.sh."""

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        reason = _missing()
        if reason:
            raise unittest.SkipTest(reason)
        cls.tmp = tempfile.mkdtemp(prefix='heat-gpu-mirror-test-')
        cls.addClassCleanup(shutil.rmtree, cls.tmp, ignore_errors=True)
        cls.mirror_dir = os.path.join(cls.tmp, 'mirror')
        mirror.build(cls.mirror_dir, log=lambda m: None)
        server = subprocess.Popen([sys.executable, MIRROR, 'serve', '--dir', cls.mirror_dir,
                                   '--port', '0'], stdout=subprocess.PIPE, text=True)
        cls.addClassCleanup(cls._stop, server)
        line = server.stdout.readline()
        cls.url = line.split()[2].rstrip('/')
        assert cls.url.startswith('https://127.0.0.1:'), line
        base = Overlay(os.path.join(cls.tmp, 'base'), [guestroot.root_path()])
        for path, data in mirror.guest_files(cls.mirror_dir, url=cls.url, distro='debian',
                                             version='12').items():
            base.write(path, data)
        with open(gpusim.__file__, 'rb') as f:
            base.write(GUEST_GPUSIM, f.read())
        r = base.run('update-ca-certificates')
        assert r.returncode == 0, r.stdout + r.stderr
        cls.layers = [base.upper, guestroot.root_path()]

    @staticmethod
    def _stop(server: subprocess.Popen) -> None:
        server.terminate()
        server.wait(timeout=10)
        server.stdout.close()

    def guest(self, distro: str = 'debian', version: str = '12') -> Overlay:
        """A fresh guest with a P100, the simulator installed as the local cloud installs it."""
        g = Overlay(tempfile.mkdtemp(dir=self.tmp), self.layers)
        g.write('/root/devices.json', json.dumps([sandbox.P100]).encode())
        r = g.run('python3 %s make-guest / --distro %s --version %s --devices '
                  '/root/devices.json --real-userland' % (GUEST_GPUSIM, distro, version))
        self.assertEqual(0, r.returncode, r.stderr)
        g.env = json.loads(r.stdout)
        return g

    def run_in(self, g: Overlay, script: str, **env: str) -> subprocess.CompletedProcess:
        return g.run('set -eu\n' + script, env=env)

    def access_log(self) -> list[dict]:
        with open(mirror.access_log_path(self.mirror_dir), encoding='utf-8') as f:
            return [json.loads(line) for line in f]

    def test_apt_installs_the_driver_and_the_toolkit_and_purges_them(self) -> None:
        g = self.guest()
        base = self.url + '/tag/apt-test'
        r = self.run_in(g, ADD_REPO + 'apt-get install -y -q cuda-drivers-575 cuda-toolkit-12-9\n'
                        'dpkg -S /usr/bin/nvidia-smi\n'
                        'nvidia-smi || echo "nvidia-smi exit $?"\n'
                        'nvcc=$(readlink -f /usr/local/cuda)/bin/nvcc; $nvcc --version\n',
                        BASE=base)
        self.assertEqual(0, r.returncode, r.stdout + r.stderr)
        self.assertIn('The following additional packages will be installed:\n  nvidia-driver-575',
                      r.stdout)
        self.assertIn('nvidia-driver-575: /usr/bin/nvidia-smi', r.stdout)
        # Installed, not loaded: nouveau holds the GPU until a reboot.
        self.assertIn("couldn't communicate with the NVIDIA driver", r.stdout)
        self.assertIn('nvidia-smi exit 9', r.stdout)
        self.assertIn('Cuda compilation tools, release 12.9', r.stdout)
        st = gpusim.state(g.upper)
        self.assertEqual({'version': gpusim.DRIVER_VERSIONS['575'], 'flavour': 'proprietary',
                          'package': 'nvidia-driver-575', 'method': 'packages'}, st['driver'])
        self.assertEqual(['12.9'], st['toolkits'])
        self.assertEqual('/etc/alternatives/cuda', os.readlink(
            os.path.join(g.upper, 'usr/local/cuda')))

        r = self.run_in(g, 'apt-get purge -y -q cuda-drivers-575 nvidia-driver-575 '
                        'cuda-toolkit-12-9\n'
                        'if command -v nvidia-smi; then exit 3; fi\n'
                        'test ! -e /usr/local/cuda-12.9/bin/nvcc\n')
        self.assertEqual(0, r.returncode, r.stdout + r.stderr)
        self.assertIn('Purging configuration files for nvidia-driver-575', r.stdout)
        st = gpusim.state(g.upper)
        self.assertIsNone(st['driver'])
        self.assertEqual([], st['toolkits'])
        # The access log counts each instance's bytes by the tag in its mirror URL.
        mine = [e for e in self.access_log() if e['tag'] == 'apt-test']
        debs = [e for e in mine if e['path'].endswith('.deb') and e['status'] == 200]
        self.assertEqual(4, len(debs), debs)  # the keyring, two driver packages, the toolkit
        self.assertTrue(all(e['bytes'] > 0 for e in debs))
        self.assertIn('Debian APT', ' '.join(e['agent'] for e in debs))

    def test_apt_resolves_names_and_versions(self) -> None:
        g = self.guest()
        r = self.run_in(g, ADD_REPO + 'apt-get install -s -q cuda-drivers\n'
                        'apt-get install -s -q nvidia-open-575\n', BASE=self.url)
        self.assertEqual(0, r.returncode, r.stdout + r.stderr)
        # The unversioned meta-package is the newest branch; the open one needs the -open driver.
        newest = max(mirror.driver_versions(), key=int)
        self.assertIn('Inst nvidia-driver-%s ' % newest, r.stdout)
        self.assertIn('Inst nvidia-driver-575-open ', r.stdout)
        for wrong, message in (
                ('cuda-drivers-576', 'E: Unable to locate package cuda-drivers-576'),
                ('cuda-toolkit-12-7', 'E: Unable to locate package cuda-toolkit-12-7'),
                ('cuda-drivers=575.1-1', "E: Version '575.1-1' for 'cuda-drivers' was not found")):
            r = self.run_in(g, 'apt-get install -y -q %s' % wrong)
            self.assertEqual(100, r.returncode, r.stdout + r.stderr)
            self.assertIn(message, r.stderr)

    def test_apt_refuses_a_repository_signed_by_another_key(self) -> None:
        g = self.guest()
        r = self.run_in(g, ADD_REPO, BASE=self.url + '/faults/bad-signature')
        self.assertEqual(100, r.returncode, r.stdout + r.stderr)
        self.assertIn('NO_PUBKEY', r.stderr)
        self.assertIn('is not signed', r.stderr)

    def test_a_virtualenv_with_jupyterlab_from_the_mirror(self) -> None:
        # What hot/scripts/jupyter.sh needs: Debian's venv packages from the distribution
        # repository, then pip (in the venv, with the image's pip.conf) from the PyPI index.
        g = self.guest()
        r = self.run_in(g, 'apt-get update -q\n'
                        'apt-get install -y -q python3-venv\n'
                        'python3 -m venv /opt/venv\n'
                        '/opt/venv/bin/pip install -q --upgrade pip\n'
                        '/opt/venv/bin/pip --version\n'
                        '/opt/venv/bin/pip download -q --no-deps -d /tmp/w jupyterlab\n'
                        'ls /tmp/w\n')
        self.assertEqual(0, r.returncode, r.stdout + r.stderr)
        self.assertIn('Setting up python3.11-venv', r.stdout)
        pin = next(x for x in mirror.PYPI_REQUIREMENTS if x.startswith('jupyterlab=='))
        self.assertIn('jupyterlab-%s-py3-none-any.whl' % pin.split('==')[1], r.stdout)
        log = self.access_log()
        self.assertIn('/pypi/simple/jupyterlab/', [e['path'] for e in log if e['status'] == 200])
        self.assertTrue(any(e['path'].startswith('/distro/debian12/') and 'python3-venv_'
                            in e['path'] and e['status'] == 200 for e in log))

    def test_package_downloads_that_fail(self) -> None:
        g = self.guest()
        # No retries (apt retries a 503 three times, waiting longer each time).
        r = self.run_in(g, ADD_REPO + 'apt-get install -y -q -o Acquire::Retries=0 '
                        'cuda-drivers-575', BASE=self.url + '/faults/package-install-fails')
        self.assertEqual(100, r.returncode, r.stdout + r.stderr)
        self.assertIn('503  Service Unavailable', r.stderr)
        self.assertIsNone(gpusim.state(g.upper)['driver'])
