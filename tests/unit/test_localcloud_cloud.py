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

"""The local cloud keeps its generated passwords out of its logs and error messages.

Setup commands such as ``keystone-manage bootstrap --bootstrap-password`` and ``rabbitmqctl
add_user`` take a password as an argument; ``tools/localcloud/cloud.py`` logs every setup command
with its output. No services are started here: the commands are harmless stand-ins.
"""

import importlib.util
import os
import stat

import fixtures
import testtools

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load_cloud_module():
    path = os.path.join(REPO, 'tools', 'localcloud', 'cloud.py')
    spec = importlib.util.spec_from_file_location('heat_gpu_localcloud_unit', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


localcloud = _load_cloud_module()


class TestSetupLogs(testtools.TestCase):

    def setUp(self) -> None:
        super().setUp()
        state = self.useFixture(fixtures.TempDir()).path
        self.cloud = localcloud.Cloud(state_dir=state)
        os.makedirs(self.cloud.path('log'))
        self.secrets = self.cloud.secrets

    def log(self, name: str) -> str:
        with open(self.cloud.path('log', name + '.log'), encoding='utf-8') as f:
            return f.read()

    def test_secrets_file_is_private(self) -> None:
        mode = stat.S_IMODE(os.stat(self.cloud.path('secrets.json')).st_mode)
        self.assertEqual(0o600, mode)
        self.assertEqual(len(self.secrets), len(set(self.secrets.values())))

    def test_command_line_and_output_are_masked(self) -> None:
        password = self.secrets['rabbit']
        out = self.cloud._run(['echo', 'add_user', 'heat_gpu', password], log='rabbitmqctl')
        # The caller still gets the real output.
        self.assertEqual('add_user heat_gpu %s\n' % password, out)
        text = self.log('rabbitmqctl')
        self.assertNotIn(password, text)
        self.assertIn('$ echo add_user heat_gpu ***', text)
        self.assertIn('\nadd_user heat_gpu ***\n', text)

    def test_failure_message_is_masked(self) -> None:
        password = self.secrets['admin']
        error = self.assertRaises(
            localcloud.CloudError, self.cloud._run,
            ['sh', '-c', 'echo "bad password $1" >&2; exit 3', 'sh', password],
            log='keystone-manage')
        self.assertIn('failed with exit code 3', str(error))
        self.assertIn('bad password ***', str(error))
        self.assertNotIn(password, str(error))
        self.assertNotIn(password, self.log('keystone-manage'))

    def test_every_generated_password_is_masked(self) -> None:
        self.cloud._run(['echo'] + sorted(self.secrets.values()), log='setup')
        text = self.log('setup')
        self.assertEqual([], [name for name, value in self.secrets.items() if value in text])
