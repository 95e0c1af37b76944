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

"""Local-cloud instances boot a real Debian userland; the real cloud-init runs their user data.

Each test boots ``tools/localcloud/guest.py`` on a temporary instance directory (a config drive as
nova writes it, the PCI devices nova assigned) over the guest root (``guestroot.py``, built once
and cached), and reads what the guest wrote in its own disk layer. How MIME parts are split and
merged, in which order scripts run and what runs again after a reboot is cloud-init's decision;
the tests state what cloud-init 22.4 (Debian 12) does, and our user data must live with it.
"""

# heat.tests.common first: it selects oslo.service's backend before heat.engine is imported.
from heat.tests import common  # noqa: F401 (imported for its side effect, see above)

import base64
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import typing
import urllib.request

import fixtures
import testscenarios
import testtools

from heat.engine.clients.os import nova

from heat_gpu import userdata
from tests import tenant_user_data
from tools.localcloud import guest as guest_machine
from tools.localcloud import guestroot
from tools.localcloud import mirror

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GUEST = os.path.join(REPO, 'tools', 'localcloud', 'guest.py')
MIRROR = os.path.join(REPO, 'tools', 'localcloud', 'mirror.py')
JUPYTER_SH = os.path.join(REPO, 'hot', 'scripts', 'jupyter.sh')
UUID = '5a0f7c0e-0000-4000-8000-000000000001'
#: Written by cloud-init at the end of its last stage.
BOOT_FINISHED = '/var/lib/cloud/data/result.json'
P100 = {'pci_address': '0000:04:00.0', 'vendor_id': '10de', 'product_id': '15f8',
        'numa_node': 0}

REBOOTING_SCRIPT = textwrap.dedent('''\
    #!/bin/bash
    set -eu
    echo first-boot >> /order.log
    lspci -n -d 10de: > /lspci.txt
    cat > /usr/local/sbin/resume <<'EOF'
    #!/bin/sh
    echo "resumed $(lsmod | grep -c nouveau)" >> /order.log
    EOF
    chmod +x /usr/local/sbin/resume
    cat > /etc/systemd/system/resume.service <<'EOF'
    [Unit]
    Description=resume
    [Service]
    Type=oneshot
    ExecStart=/usr/local/sbin/resume
    [Install]
    WantedBy=multi-user.target
    EOF
    systemctl enable resume.service
    reboot
    sleep 20
    echo not-reached >> /order.log
    ''')

PART_HANDLER = textwrap.dedent('''\
    #part-handler
    def list_types():
        return ['text/x-demo']


    def handle_part(data, ctype, filename, payload):
        if ctype == 'text/x-demo':
            with open('/demo-handled.txt', 'a') as f:
                f.write('%s %s\\n' % (filename, payload.strip()))
    ''')


def heat_user_data(tenant: typing.Optional[str], *, mirror_url: str,
                   fingerprint: str) -> str:
    """What nova gets for a CudaInstance: our user data through heat's SOFTWARE_CONFIG format."""
    settings = {'gpu_model': 'P100-PCIE-16GB', 'gpu_count': 1, 'mirror_url': mirror_url,
                'keyring_fingerprints': [fingerprint]}
    ours = userdata.build_user_data(settings=settings, tenant_user_data=tenant)
    return nova.NovaClientPlugin.build_userdata(None, {}, userdata=ours,
                                                user_data_format='SOFTWARE_CONFIG')


class GuestTestCase(testtools.TestCase):

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        for tool in ('mmdebstrap', 'systemd-nspawn', 'unshare'):
            if shutil.which(tool) is None:
                raise cls.skipException('%s is missing (tools/bootstrap.sh installs it)' % tool)
        cls.guest_root = guestroot.build(log=lambda message: None)
        tmp = tempfile.mkdtemp(prefix='heat-gpu-guest-test-')
        cls.addClassCleanup(shutil.rmtree, tmp, ignore_errors=True)
        cls.mirror_dir = os.path.join(tmp, 'mirror')
        mirror.build(cls.mirror_dir, log=lambda message: None)
        server = subprocess.Popen([sys.executable, MIRROR, 'serve', '--dir', cls.mirror_dir,
                                   '--port', '0'], stdout=subprocess.PIPE, text=True)
        cls.addClassCleanup(cls._stop_mirror, server)
        # "mirror: serving https://127.0.0.1:PORT/ from ..."
        cls.mirror_url = server.stdout.readline().split()[2].rstrip('/')

    @staticmethod
    def _stop_mirror(server: subprocess.Popen) -> None:
        server.terminate()
        server.wait(timeout=10)
        server.stdout.close()

    def setUp(self) -> None:
        super().setUp()
        self.dir = self.useFixture(fixtures.TempDir()).path
        self.disk = guest_machine.disk_dir(self.dir)

    def boot(self, user_data: str, *, distro: str = 'debian', version: str = '12',
             devices: typing.Optional[list] = None,
             until: typing.Callable[[], bool] = None, timeout: float = 120) -> str:
        """Boot the instance until *until* holds, power it off; return the console.

        *until* defaults to: cloud-init finished its first boot.
        """
        info = {
            'uuid': UUID, 'name': 'instance-00000001', 'display_name': 'test',
            'hostname': 'test', 'host': 'gpu-host-1',
            'image': {'os_distro': distro, 'os_version': version, 'heat_gpu_prebaked': None},
            'metadata': {}, 'flavor': {},
            'pci_devices': [P100] if devices is None else devices,
        }
        with open(os.path.join(self.dir, 'instance.json'), 'w', encoding='utf-8') as f:
            json.dump(info, f)
        drive = os.path.join(self.dir, 'config-drive', 'openstack', 'latest')
        os.makedirs(drive)
        with open(os.path.join(drive, 'meta_data.json'), 'w', encoding='utf-8') as f:
            json.dump({'uuid': UUID, 'hostname': 'test', 'name': 'test', 'meta': {},
                       'launch_index': 0, 'availability_zone': 'nova'}, f)
        with open(os.path.join(drive, 'user_data'), 'w', encoding='utf-8') as f:
            f.write(user_data)
        console = os.path.join(self.dir, 'console.log')
        with open(console, 'wb') as out:
            proc = subprocess.Popen([sys.executable, GUEST, '--guest-dir', self.dir,
                                     '--root', self.guest_root,
                                     '--mirror-dir', self.mirror_dir,
                                     '--mirror-url', self.mirror_url],
                                    stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.addCleanup(self._kill, proc)
        deadline = time.monotonic() + timeout
        until = until or (lambda: os.path.exists(self.on_disk(BOOT_FINISHED)))
        while not until():
            self.assertIsNone(proc.poll(), self._read(console))
            self.assertLess(time.monotonic(), deadline, self._read(console))
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(0, proc.wait(timeout=30))
        text = self._read(console)
        self.assertIn('guest: powered off', text)
        return text

    @staticmethod
    def _kill(proc) -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    @staticmethod
    def _read(path: str) -> str:
        with open(path, encoding='utf-8', errors='replace') as f:
            return f.read()

    def on_disk(self, path: str) -> str:
        return os.path.join(self.disk, path.lstrip('/'))

    def lines(self, path: str) -> list[str]:
        return self._read(self.on_disk(path)).splitlines()


class TestGuestMachine(GuestTestCase):

    def test_cloud_init_merges_and_orders_the_parts(self):
        user_data = tenant_user_data.mime([
            ('part-handler', 'demo-handler.py', PART_HANDLER),
            ('cloud-config', 'one.yaml', textwrap.dedent('''\
                #cloud-config
                write_files:
                  - path: /etc/demo/a.txt
                    content: "A\\n"
                    permissions: '0600'
                runcmd:
                  - echo runcmd-1 >> /order.log
                ''')),
            ('x-shellscript', 'second.sh', '#!/bin/sh\necho script-two >> /order.log\n'),
            ('cloud-config', 'two.yaml', textwrap.dedent('''\
                #cloud-config
                merge_how: 'dict(recurse_array)+list(append)'
                write_files:
                  - path: /etc/demo/b.txt
                    encoding: b64
                    content: %s
                runcmd:
                  - [sh, -c, 'echo runcmd-2 >> /order.log']
                ''' % base64.b64encode(b'B\n').decode())),
            ('x-shellscript', 'first.sh', '#!/bin/sh\necho script-one >> /order.log\n'),
            ('x-demo', 'demo-data', 'payload\n'),
        ])
        self.boot(user_data)
        # scripts-user runs the shell parts and runcmd by file name; the second cloud-config
        # appended its lists by its own merge_how.
        self.assertEqual(['script-one', 'runcmd-1', 'runcmd-2', 'script-two'],
                         self.lines('/order.log'))
        self.assertEqual(['A'], self.lines('/etc/demo/a.txt'))
        self.assertEqual(0o600, os.stat(self.on_disk('/etc/demo/a.txt')).st_mode & 0o777)
        self.assertEqual(['B'], self.lines('/etc/demo/b.txt'))
        self.assertEqual(['demo-data payload'], self.lines('/demo-handled.txt'))

    def test_a_reboot_runs_the_enabled_units_and_not_the_scripts_again(self):
        console = self.boot(REBOOTING_SCRIPT, until=lambda: os.path.exists(self.on_disk(
            '/order.log')) and 'resumed' in self._read(self.on_disk('/order.log')))
        # The reboot stops the script; the unit it enabled runs at the next boot, when the
        # simulated kernel has loaded nouveau again (no blacklist was written), and cloud-init
        # does not run the instance's scripts a second time.
        self.assertEqual(['first-boot', 'resumed 1'], self.lines('/order.log'))
        self.assertEqual(1, console.count('guest: the guest rebooted'), console)
        self.assertEqual(1, len(self.lines('/lspci.txt')))
        self.assertIn('10de:15f8', self.lines('/lspci.txt')[0])

    def test_the_guest_sees_only_the_devices_nova_assigned(self):
        script = '#!/bin/sh\nlspci -n -d 10de: > /lspci.txt\nhostname > /hostname.txt\n'
        devices = [{'pci_address': '0000:17:00.0', 'vendor_id': '10de', 'product_id': '20b5',
                    'numa_node': 0},
                   {'pci_address': '0000:31:00.0', 'vendor_id': '10de', 'product_id': '20b5',
                    'numa_node': 0}]
        self.boot(script, distro='ubuntu', version='22.04', devices=devices)
        seen = self.lines('/lspci.txt')
        self.assertEqual(2, len(seen), seen)
        self.assertEqual({'10de:20b5'}, {line.split()[2] for line in seen})
        self.assertEqual(['test'], self.lines('/hostname.txt'))
        self.assertIn('ID=ubuntu', self.lines('/etc/os-release'))


class TestBootstrapOnTheMirror(GuestTestCase):
    """The boot script installs with the guest's own apt, dpkg, gpg and curl from the mirror."""

    def install(self, *, mirror_path: str = '', distro: str = 'debian',
                version: str = '12') -> str:
        user_data = heat_user_data(None, mirror_url=self.mirror_url + mirror_path,
                                   fingerprint=mirror.key_fingerprint(self.mirror_dir))
        log = self.on_disk('/var/log/heat-gpu-bootstrap.log')
        self.boot(user_data, distro=distro, version=version,
                  until=lambda: os.path.exists(log) and (
                      'heat-gpu: done:' in self._read(log) or
                      'heat-gpu: FAILED' in self._read(log)))
        return self._read(log)

    def simulated(self) -> set:
        """The commands the simulator answered (its stubs record every call)."""
        with open(self.on_disk('/.gpusim/commands.jsonl'), encoding='utf-8') as f:
            return {json.loads(line)['cmd'] for line in f if line.strip()}

    def test_driver_and_cuda_from_the_mirror(self):
        log = self.install()
        self.assertIn('done: 1 GPU(s) ready: 1 Tesla P100-PCIE-16GB, driver 575.64.05, '
                      'CUDA 12.9 (packages)', log)
        self.assertIn('keyring of %s verified: key(s) %s trusted' % (
            mirror.KEYRING_DEB, mirror.key_fingerprint(self.mirror_dir)), log)
        self.assertIn('Setting up linux-headers-6.1.0-26-amd64', log)
        self.assertIn('Setting up nvidia-driver-575', log)
        # The guest's own package tools and systemd did the work; the simulator only the
        # silicon and the kernel, told by the packages' maintainer scripts.
        simulated = self.simulated()
        self.assertFalse(simulated & {'apt-get', 'apt', 'dpkg', 'dpkg-deb', 'dpkg-query', 'gpg',
                                      'curl', 'wget', 'systemctl', 'reboot'}, simulated)
        self.assertIn('gpusim-pkg-hook', simulated)

    def test_an_untrusted_keyring_is_refused_naming_the_key(self):
        log = self.install(mirror_path='/faults/keyring-untrusted')
        reason = self.lines('/var/lib/heat-gpu/failure_reason')[0]
        self.assertIn('untrusted repository key in %s' % mirror.KEYRING_DEB, reason)
        self.assertIn(mirror.fault_key_fingerprint(self.mirror_dir), reason)
        self.assertIn('expected only %s' % mirror.key_fingerprint(self.mirror_dir), reason)
        self.assertNotIn('Setting up nvidia-driver', log)

    def test_a_repository_signed_by_another_key_is_refused_by_apt(self):
        self.install(mirror_path='/faults/bad-signature')
        reason = self.lines('/var/lib/heat-gpu/failure_reason')[0]
        # apt names the signing key by its long id: the fingerprint's last 16 digits.
        other = mirror.fault_key_fingerprint(self.mirror_dir)[-16:]
        self.assertIn("apt refused the signature of NVIDIA's repository debian12 at %s/faults/"
                      'bad-signature (NO_PUBKEY %s)' % (self.mirror_url, other), reason)
        self.assertIn('trusted: %s' % mirror.key_fingerprint(self.mirror_dir), reason)

    def test_a_rhel_image_reads_the_served_repository_file(self):
        # RHEL packages cannot be had here: dnf stays simulated, the repository file is real.
        log = self.install(mirror_path='/tag/rhel-test', distro='rocky', version='9')
        self.assertIn('repository file cuda-rhel9.repo verified', log)
        self.assertIn('done: 1 GPU(s) ready', log)
        repo_file = self._read(self.on_disk('/etc/yum.repos.d/cuda-rhel9.repo'))
        self.assertIn('baseurl=%s/tag/rhel-test/compute/cuda/repos/rhel9/x86_64'
                      % self.mirror_url, repo_file)


class TestJupyterOnTheMirror(GuestTestCase):
    """hot/scripts/jupyter.sh on the booted guest, installing from the mirror only.

    A venv from Debian's packages of the distribution repository, JupyterLab from the mirror's PyPI
    index, served by a unit of the guest's systemd.
    """

    def test_jupyterlab_installs_and_answers(self):
        with socket.socket() as s:  # the guest shares this network namespace
            s.bind(('127.0.0.1', 0))
            port = s.getsockname()[1]
        token = 'a1' * 16
        with open(JUPYTER_SH, 'rb') as f:
            script = base64.b64encode(f.read()).decode()
        user_data = textwrap.dedent('''\
            #!/bin/bash
            echo %s | base64 -d > /root/jupyter.sh
            start=$(date +%%s)
            JUPYTER_PORT=%d JUPYTER_TOKEN=%s heat_outputs_path=/root/out \\
                bash /root/jupyter.sh > /root/jupyter.log 2>&1
            echo "$? $(( $(date +%%s) - start ))" > /root/jupyter.rc
            ''') % (script, port, token)
        answers = []

        def answered() -> bool:
            if not os.path.exists(self.on_disk('/root/jupyter.rc')):
                return False
            rc = self._read(self.on_disk('/root/jupyter.rc')).split()[0]
            self.assertEqual('0', rc, self._read(self.on_disk('/root/jupyter.log')))
            try:
                with urllib.request.urlopen('http://127.0.0.1:%d/api/status?token=%s'
                                            % (port, token), timeout=5) as r:
                    answers.append((r.status, json.loads(r.read())))
                    return True
            except OSError:
                return False

        self.boot(user_data, until=answered, timeout=600)
        status, body = answers[-1]
        self.assertEqual(200, status)
        self.assertIn('started', body)
        url = self._read(self.on_disk('/root/out.url'))
        self.assertRegex(url, r'^http://\S+:%d/lab\?token=%s$' % (port, token))
        # The image's default user runs it, under a unit of the guest's systemd.
        unit = self._read(self.on_disk('/etc/systemd/system/heat-gpu-jupyter.service'))
        self.assertIn('User=debian\n', unit)
        self.assertTrue(os.path.islink(self.on_disk(
            '/etc/systemd/system/multi-user.target.wants/heat-gpu-jupyter.service')))
        pin = next(r for r in mirror.PYPI_REQUIREMENTS if r.startswith('jupyterlab=='))
        self.assertTrue(glob.glob(self.on_disk('/opt/jupyter/lib/python3.11/site-packages/'
                                               'jupyterlab-%s.dist-info' % pin.split('==')[1])))


class TestTenantUserData(testscenarios.WithScenarios, GuestTestCase):
    """A CudaInstance's boot script survives whatever user data the tenant adds."""

    scenarios = [(kind, {'tenant': data, 'files': files})
                 for kind, (data, files) in tenant_user_data.KINDS.items()]

    def test_boot_script_and_tenant_part_both_apply(self):
        user_data = heat_user_data(self.tenant, mirror_url=self.mirror_url,
                                   fingerprint=mirror.key_fingerprint(self.mirror_dir))
        log = self.on_disk('/var/log/heat-gpu-bootstrap.log')
        console = self.boot(user_data, until=lambda: os.path.exists(log) and (
            'heat-gpu: done:' in self._read(log) or 'heat-gpu: FAILED' in self._read(log)))
        self.assertTrue(os.path.isfile(self.on_disk(userdata.SETTINGS_PATH)), console)
        log = self.lines('/var/log/heat-gpu-bootstrap.log')
        self.assertIn('done: 1 GPU(s) ready', log[-1], '\n'.join(log[-20:]))
        for path, content in self.files.items():
            self.assertEqual(content, self._read(self.on_disk(path)), path)


def load_tests(loader, tests, pattern):
    return testscenarios.load_tests_apply_scenarios(loader, tests, pattern)
