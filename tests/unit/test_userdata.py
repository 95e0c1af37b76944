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

# heat.tests.common first: it selects oslo.service's backend before heat.engine is imported.
from heat.tests import common  # noqa: F401 (imported for its side effect, see above)

import base64
import copy
import gzip
import json
import os
import shutil
import subprocess

import fixtures
import testtools
import yaml

from heat.engine.clients.os import nova

from heat_gpu import exception
from heat_gpu import userdata
from tests import tenant_user_data

SETTINGS = {
    'signal': {'transport': 'HEAT_SIGNAL', 'auth_url': 'http://127.0.0.1:5000/v3',
               'user_id': 'u1', 'password': 'secret-pw', 'project_id': 'p1',
               'stack_id': 'st/1', 'resource_name': 'gpu', 'region_name': 'RegionOne'},
    'cuda_version': 'auto', 'driver_branch': 'auto', 'install_method': 'auto',
    'kernel_modules': 'auto', 'mirror_url': None, 'checksums': {},
    'gpu_model': 'P100-PCIE-16GB', 'gpu_mode': 'passthrough', 'gpu_count': 2, 'timeout': 3600,
}

TENANT_SCRIPT = '#!/bin/bash\n# the tenant\'s own script, caf\u00e9\necho "hello $USER" > /tmp/x\n'
TENANT_CONFIG = '#cloud-config\npackages:\n  - htop\nruncmd:\n  - [touch, /tmp/tenant]\n'


def _written(config: dict) -> dict:
    """path -> (decoded content, permissions) of a cloud-config's write_files."""
    out = {}
    for entry in config['write_files']:
        content = entry['content']
        if entry.get('encoding') == 'gz+b64':
            content = gzip.decompress(base64.b64decode(content)).decode()
        elif entry.get('encoding') == 'b64':
            content = base64.b64decode(content).decode()
        out[entry['path']] = (content, entry['permissions'])
    return out


def _heat_build_userdata(user_data: str) -> str:
    """heat's own SOFTWARE_CONFIG merge (no client plugin state is needed for it)."""
    return nova.NovaClientPlugin.build_userdata(None, {}, userdata=user_data,
                                                user_data_format='SOFTWARE_CONFIG')


class TestUserData(testtools.TestCase):

    def settings(self) -> dict:
        return copy.deepcopy(SETTINGS)

    def test_parts(self) -> None:
        ud = userdata.build_user_data(settings=self.settings(), tenant_user_data=TENANT_SCRIPT)
        parts = userdata.parts(ud)
        self.assertEqual(['text/x-shellscript', 'text/x-shellscript', 'text/cloud-config'],
                         [p[0] for p in parts])
        self.assertEqual(TENANT_SCRIPT, parts[1][2])
        self.assertEqual((userdata.SCRIPT_NAME, userdata.LAUNCHER), parts[0][1:])
        config = yaml.safe_load(parts[-1][2])
        self.assertEqual(userdata.MERGE_HOW, config['merge_how'])
        files = _written(config)
        settings, mode = files['/etc/heat-gpu/bootstrap.json']
        self.assertEqual('0600', mode)
        settings = json.loads(settings)
        self.assertEqual(SETTINGS['signal'], settings['signal'])
        self.assertEqual('12.9', settings['cuda_version'])
        self.assertEqual('proprietary', settings['kernel_modules'])
        self.assertEqual(2, settings['expected_gpu_count'])
        self.assertNotIn('mirror_url', settings)
        for source, dest, mode in userdata.EMBEDDED_FILES:
            with open(os.path.join(userdata.PACKAGE_DIR, source), encoding='utf-8') as f:
                self.assertEqual((f.read(), mode), files[dest], dest)
        self.assertIn('exec /bin/bash "${HEAT_GPU_ROOT:-}/usr/local/lib/heat-gpu/bootstrap.sh"',
                      userdata.LAUNCHER)

    def test_embedded_files_are_all_there(self) -> None:
        for source, _, _ in userdata.EMBEDDED_FILES:
            self.assertIsNotNone(userdata.read_package_file(source), source)

    def test_full_script_in_shell_part(self) -> None:
        ud = userdata.build_user_data(settings=self.settings(), compact=False)
        parts = userdata.parts(ud)
        with open(os.path.join(userdata.PACKAGE_DIR, 'guest', 'bootstrap.sh'),
                  encoding='utf-8') as f:
            self.assertEqual(f.read(), parts[0][2])
        files = _written(yaml.safe_load(parts[1][2]))
        self.assertNotIn('/usr/local/lib/heat-gpu/bootstrap.sh', files)
        self.assertEqual(2, len(parts))

    def test_cloud_config_passes_cloud_init_schema(self) -> None:
        cloud_init = shutil.which('cloud-init')
        if cloud_init is None:
            self.skipTest('cloud-init is not installed (tools/bootstrap.sh installs it)')
        tmp = self.useFixture(fixtures.TempDir()).path
        for tenant in (None, TENANT_CONFIG):
            ud = userdata.build_user_data(settings=self.settings(), tenant_user_data=tenant)
            for i, (ctype, _, body) in enumerate(userdata.parts(ud)):
                if ctype != 'text/cloud-config':
                    continue
                path = os.path.join(tmp, 'part%d.yaml' % i)
                with open(path, 'w', encoding='utf-8') as f:
                    f.write(body)
                result = subprocess.run([cloud_init, 'schema', '--config-file', path],
                                        capture_output=True, text=True, timeout=120,
                                        check=False)
                self.assertEqual(0, result.returncode, result.stdout + result.stderr)
                self.assertIn('Valid', result.stdout)

    def test_schema_rejects_a_broken_config(self) -> None:
        cloud_init = shutil.which('cloud-init')
        if cloud_init is None:
            self.skipTest('cloud-init is not installed (tools/bootstrap.sh installs it)')
        path = os.path.join(self.useFixture(fixtures.TempDir()).path, 'bad.yaml')
        with open(path, 'w', encoding='utf-8') as f:
            f.write('#cloud-config\nwrite_files:\n- path: /x\n  permissions: 600\n'
                    '  encoding: zip\n')
        result = subprocess.run([cloud_init, 'schema', '--config-file', path],
                                capture_output=True, text=True, timeout=120, check=False)
        self.assertNotEqual(0, result.returncode)

    def test_heat_software_config_keeps_our_parts(self) -> None:
        for tenant in (TENANT_SCRIPT, TENANT_CONFIG):
            ours = userdata.build_user_data(settings=self.settings(), tenant_user_data=tenant)
            merged = _heat_build_userdata(ours)
            before = userdata.parts(ours)
            after = userdata.parts(merged)
            # heat's own parts come first; ours follow in order, with the same content.
            self.assertEqual(before, after[-len(before):])
            self.assertIn('text/x-cfninitdata',
                          [p[0] for p in after[:-len(before)]] + ['text/x-cfninitdata'])
            self.assertEqual(tenant, after[-2][2])
            # Our cloud-config is still the last part, so its merge_how applies (the MIME
            # headers of our parts do not survive heat's merge; the document's key does).
            self.assertEqual(userdata.MERGE_HOW, yaml.safe_load(after[-1][2])['merge_how'])
            # Nova refuses user data over 64 KiB once base64-encoded.
            self.assertLessEqual(len(base64.b64encode(merged.encode('utf-8'))),
                                 userdata.NOVA_USER_DATA_LIMIT)

    def test_tenant_multipart_keeps_its_parts(self) -> None:
        from email.mime import multipart
        from email.mime import text
        tenant = multipart.MIMEMultipart()
        tenant.attach(text.MIMEText(TENANT_CONFIG, 'cloud-config'))
        tenant.attach(text.MIMEText('#!/bin/sh\ntrue\n', 'x-shellscript'))
        ud = userdata.build_user_data(settings=self.settings(),
                                      tenant_user_data=tenant.as_string())
        parts = userdata.parts(ud)
        self.assertEqual([('text/cloud-config', TENANT_CONFIG),
                          ('text/x-shellscript', '#!/bin/sh\ntrue\n')],
                         [(p[0], p[2]) for p in parts[1:-1]])

    def test_tenant_base64_parts_survive_heats_merge(self) -> None:
        # Python's email package base64-encodes UTF-8 text; heat's SOFTWARE_CONFIG format
        # re-reads every part's raw payload, so the parts must reach it decoded.
        tenant = tenant_user_data.mime([('cloud-config', 'c.yaml', TENANT_CONFIG),
                                        ('x-shellscript', 's.sh', TENANT_SCRIPT)])
        self.assertIn('Content-Transfer-Encoding: base64', tenant)
        ours = userdata.build_user_data(settings=self.settings(), tenant_user_data=tenant)
        merged = userdata.parts(_heat_build_userdata(ours))
        self.assertEqual([('text/cloud-config', 'c.yaml', TENANT_CONFIG),
                          ('text/x-shellscript', 's.sh', TENANT_SCRIPT)], merged[-3:-1])

    def test_bad_choice_is_reported(self) -> None:
        settings = self.settings()
        settings['cuda_version'] = '13.0'
        ex = self.assertRaises(exception.UnsupportedCudaVersion, userdata.build_user_data,
                               settings=settings)
        self.assertIn('CUDA 13.0', str(ex))
        self.assertIn('P100-PCIE-16GB', str(ex))
