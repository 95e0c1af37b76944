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

``tools/localcloud/cloud.py`` logs every setup command with its output, and masks the generated
passwords there; it hands passwords to setup commands through the environment or stdin, never as
arguments (visible in ps). No services are started here: the commands are harmless stand-ins.
"""

import os
import stat

import fixtures
import testtools

from tools.localcloud import cloud as localcloud


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

    def test_stdin_reaches_the_command(self) -> None:
        out = self.cloud._run(['cat'], stdin='fed through stdin\n', log='setup')
        self.assertEqual('fed through stdin\n', out)

    def test_rabbitmq_password_goes_through_stdin_not_argv(self) -> None:
        os.makedirs(self.cloud.path('run'))
        calls = []

        def run(argv, **kwargs):
            calls.append((argv, kwargs.get('stdin')))
            return ''

        self.patch(self.cloud, '_run', run)
        self.patch(self.cloud, '_wait_for', lambda *args, **kwargs: None)
        self.cloud._setup_rabbitmq()
        password = self.secrets['rabbit']
        self.assertIn(['add_user', 'heat_gpu'], [argv[-2:] for argv, _ in calls])
        self.assertEqual([], [argv for argv, _ in calls if password in ' '.join(argv)])
        self.assertEqual([password + '\n'], [stdin for _, stdin in calls if stdin])

    def test_every_generated_password_is_masked(self) -> None:
        self.cloud._run(['echo'] + sorted(self.secrets.values()), log='setup')
        text = self.log('setup')
        self.assertEqual([], [name for name, value in self.secrets.items() if value in text])
