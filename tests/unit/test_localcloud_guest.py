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

"""The local cloud's guest stand-in boots user data the way cloud-init would.

The real ``tools/localcloud/guest.py`` runs as a process on a temporary guest directory, with the
real GPU simulator; the tests read what it left in the sandbox root.
"""

import base64
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import fixtures
import testtools

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GUEST = os.path.join(REPO, 'tools', 'localcloud', 'guest.py')

SCRIPT = textwrap.dedent('''\
    #!/bin/bash
    set -eu
    echo "script $1" >> "$HEAT_GPU_ROOT/order.log"
    ''')

REBOOTING_SCRIPT = textwrap.dedent('''\
    #!/bin/bash
    set -eu
    echo first-boot >> "$HEAT_GPU_ROOT/order.log"
    lspci -n -d 10de: > "$HEAT_GPU_ROOT/lspci.txt"
    mkdir -p "$HEAT_GPU_ROOT/usr/local/sbin"
    cat > "$HEAT_GPU_ROOT/usr/local/sbin/resume" <<'EOF'
    #!/bin/sh
    echo "resumed $(lsmod | grep -c nouveau)" >> "$HEAT_GPU_ROOT/order.log"
    EOF
    chmod +x "$HEAT_GPU_ROOT/usr/local/sbin/resume"
    cat > "$HEAT_GPU_ROOT/etc/systemd/system/resume.service" <<'EOF'
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
    echo not-reached >> "$HEAT_GPU_ROOT/order.log"
    ''')


def _mime(parts: list[tuple[str, str, str]]) -> bytes:
    message = MIMEMultipart()
    for subtype, filename, text in parts:
        part = MIMEText(text, subtype, 'utf-8')
        part.add_header('Content-Disposition', 'attachment', filename=filename)
        message.attach(part)
    return message.as_bytes()


class TestGuestStandIn(testtools.TestCase):

    def setUp(self) -> None:
        super().setUp()
        self.dir = self.useFixture(fixtures.TempDir()).path
        self.root = os.path.join(self.dir, 'root')

    def boot(self, user_data: bytes, *, distro: str = 'rocky', version: str = '9',
             devices: list | None = None) -> str:
        """Boot the guest, wait for the end of its boot, power it off; return the console."""
        info = {
            'uuid': '5a0f7c0e-0000-4000-8000-000000000001', 'name': 'instance-00000001',
            'display_name': 'test', 'hostname': 'test', 'host': 'gpu-host-1',
            'image': {'os_distro': distro, 'os_version': version, 'heat_gpu_prebaked': None},
            'metadata': {}, 'flavor': {},
            'user_data': base64.b64encode(user_data).decode(),
            'pci_devices': devices if devices is not None else [
                {'pci_address': '0000:04:00.0', 'vendor_id': '10de', 'product_id': '15f8',
                 'numa_node': 0}],
        }
        with open(os.path.join(self.dir, 'instance.json'), 'w', encoding='utf-8') as f:
            json.dump(info, f)
        console = os.path.join(self.dir, 'console.log')
        with open(console, 'wb') as out:
            proc = subprocess.Popen([sys.executable, GUEST, '--guest-dir', self.dir],
                                    stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.addCleanup(self._kill, proc)
        deadline = time.monotonic() + 90
        while 'guest: boot finished' not in self._read(console):
            self.assertIsNone(proc.poll(), self._read(console))
            self.assertLess(time.monotonic(), deadline, self._read(console))
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(0, proc.wait(timeout=20))
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

    def in_root(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip('/'))

    def lines(self, path: str) -> list[str]:
        return self._read(self.in_root(path)).splitlines()

    def test_mime_parts_run_in_cloud_init_order(self):
        user_data = _mime([
            ('cloud-config', 'one.yaml', textwrap.dedent('''\
                #cloud-config
                write_files:
                  - path: /etc/demo/a.txt
                    content: "A\\n"
                    permissions: '0600'
                runcmd:
                  - echo runcmd-1 >> "$HEAT_GPU_ROOT/order.log"
                ''')),
            ('x-shellscript', 'first.sh', SCRIPT.replace('$1', 'one')),
            ('cloud-config', 'two.yaml', textwrap.dedent('''\
                #cloud-config
                merge_how: 'dict(recurse_array)+list(append)'
                write_files:
                  - path: /etc/demo/b.txt
                    encoding: b64
                    content: %s
                runcmd:
                  - [sh, -c, 'echo runcmd-2 >> "$HEAT_GPU_ROOT/order.log"']
                ''' % base64.b64encode(b'B\n').decode())),
            ('x-shellscript', 'second.sh', SCRIPT.replace('$1', 'two')),
            ('x-cfninitdata', 'cfn-init-data', '{"AWS::CloudFormation::Init": {}}'),
            ('part-handler', 'part-handler.py', '#part-handler\n'),
        ])
        console = self.boot(user_data)
        self.assertEqual(['script one', 'script two', 'runcmd-1', 'runcmd-2'],
                         self.lines('/order.log'))
        self.assertEqual(['A'], self.lines('/etc/demo/a.txt'))
        self.assertEqual(0o600, os.stat(self.in_root('/etc/demo/a.txt')).st_mode & 0o777)
        self.assertEqual(['B'], self.lines('/etc/demo/b.txt'))
        self.assertEqual(['{"AWS::CloudFormation::Init": {}}'],
                         self.lines('/var/lib/heat-cfntools/cfn-init-data'))
        self.assertIn('ID=rocky', self.lines('/etc/os-release'))
        self.assertIn('VERSION_ID="9"', self.lines('/etc/os-release'))
        self.assertIn('skipping text/part-handler part part-handler.py', console)

    def test_reboot_runs_the_enabled_units(self):
        console = self.boot(REBOOTING_SCRIPT.encode())
        # The script stops at the reboot; the unit it enabled runs at the next boot, when the
        # simulator brought nouveau back (no blacklist was written).
        self.assertEqual(['first-boot', 'resumed 1'], self.lines('/order.log'))
        self.assertIn('rebooted (1)', console)
        self.assertEqual(1, len(self.lines('/lspci.txt')))
        self.assertIn('10de:15f8', self.lines('/lspci.txt')[0])

    def test_the_guest_sees_only_the_devices_nova_assigned(self):
        script = '#!/bin/sh\nlspci -n -d 10de: > "$HEAT_GPU_ROOT/lspci.txt"\n'
        devices = [{'pci_address': '0000:17:00.0', 'vendor_id': '10de', 'product_id': '20b5',
                    'numa_node': 0},
                   {'pci_address': '0000:31:00.0', 'vendor_id': '10de', 'product_id': '20b5',
                    'numa_node': 0}]
        self.boot(script.encode(), distro='ubuntu', version='22.04', devices=devices)
        seen = self.lines('/lspci.txt')
        self.assertEqual(2, len(seen), seen)
        self.assertEqual({'10de:20b5'}, {line.split()[2] for line in seen})
