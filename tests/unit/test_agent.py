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

"""The guest agent against a local HTTP server that answers like Keystone and the Heat API."""

import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import threading
from typing import Optional

import fixtures
import testtools

from tests.unit import native_http

AGENT = os.path.join(os.path.dirname(__file__), '..', '..', 'heat_gpu', 'guest', 'heat-gpu-agent')

STACK_PATH = 'gpu-stack/5d3a0c1e-7a3e-4b7e-9f57-3f0f2d7c9a10'
SERVER_CREDS = {'auth_url': None, 'user_id': 'server-user', 'password': 'server-pw',
                'project_id': 'stack-project', 'stack_id': STACK_PATH,
                'resource_name': 'gpu_vm', 'region_name': 'RegionOne'}

CONFIG = """#!/bin/sh
echo "samples=$HEAT_GPU_SAMPLES ratio=$HEAT_GPU_MIN_RATIO action=$deploy_action"
echo "a warning" >&2
echo ran >> "$RUN_LOG"
printf 'out-value' > "$heat_outputs_path.result"
exit $EXIT_CODE
"""


def deployment(*, config_id: str, action: str = 'CREATE', exit_code: int = 0,
               run_log: str) -> dict:
    return {
        'id': config_id, 'name': 'job', 'group': 'script', 'config': CONFIG,
        'options': {}, 'outputs': [{'name': 'result'}],
        'inputs': [
            {'name': 'HEAT_GPU_SAMPLES', 'value': 'vector_add,gemm'},
            {'name': 'HEAT_GPU_MIN_RATIO', 'value': 0.8},
            {'name': 'EXIT_CODE', 'value': str(exit_code)},
            {'name': 'RUN_LOG', 'value': run_log},
            {'name': 'deploy_action', 'value': action},
            {'name': 'deploy_signal_transport', 'value': 'HEAT_SIGNAL'},
            {'name': 'deploy_auth_url', 'value': None},
            {'name': 'deploy_user_id', 'value': 'job-user'},
            {'name': 'deploy_password', 'value': 'job-pw'},
            {'name': 'deploy_project_id', 'value': 'stack-project'},
            {'name': 'deploy_stack_id', 'value': STACK_PATH},
            {'name': 'deploy_resource_name', 'value': 'samples'},
        ]}


def write_credentials(root: str, heat: dict) -> None:
    """Write what heat's part handler writes: the cfn-init-data with the polling credentials."""
    cfn = os.path.join(root, 'var/lib/heat-cfntools')
    os.makedirs(cfn, exist_ok=True)
    with open(os.path.join(cfn, 'cfn-init-data'), 'w') as f:
        json.dump({'deployments': [], 'os-collect-config': {
            'collectors': ['ec2', 'heat', 'local'], 'heat': heat}}, f)


def run_agent_once(*, root: str, path: Optional[str] = None) -> subprocess.CompletedProcess:
    """Run the real agent once in a clean environment rooted at *root*."""
    env = {'PATH': path or os.environ.get('PATH', '/usr/bin:/bin'), 'HEAT_GPU_ROOT': root,
           'HEAT_GPU_AGENT_TIMEOUT': '60'}
    return subprocess.run([sys.executable, AGENT, '--once'], env=env, capture_output=True,
                          text=True, timeout=90, check=False)


class FakeCloud:
    """Keystone (``/identity/v3``) and Heat (``/heat/v1/<project>``) on one ephemeral port.

    *server* is the (user id, password) that may read *server_resource*'s metadata; *signallers*
    are the credentials that may signal resources of the stack.
    """

    def __init__(self, *, project: str = 'stack-project', stack_path: str = STACK_PATH,
                 server_resource: str = 'gpu_vm',
                 server: tuple = ('server-user', 'server-pw'),
                 signallers: tuple = (('job-user', 'job-pw'),)) -> None:
        self.requests = []
        self.signals = []
        self.signalled = []
        self.metadata = {'deployments': [], 'os-collect-config': {}}
        self.tokens = {}
        self.signal_status = 200
        cloud = self
        heat_prefix = '/heat/v1/%s/stacks/%s/resources/' % (project, stack_path)

        http_server = native_http.http_server()

        class Handler(http_server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, code, doc=None, headers=None):
                raw = json.dumps(doc).encode() if doc is not None else b''
                self.send_response(code)
                self.send_header('Content-Type', 'application/json')
                self.send_header('Content-Length', str(len(raw)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(raw)

            def _body(self):
                length = int(self.headers.get('Content-Length') or 0)
                return json.loads(self.rfile.read(length)) if length else None

            def do_POST(self):
                body = self._body()
                cloud.requests.append(('POST', self.path, body))
                if self.path == '/identity/v3/auth/tokens':
                    return self._token(body)
                principal = cloud.tokens.get(self.headers.get('X-Auth-Token'))
                name, _, action = self.path[len(heat_prefix):].partition('/')
                if (self.path.startswith(heat_prefix) and action == 'signal'
                        and principal in signallers):
                    if cloud.signal_status == 200:
                        cloud.signals.append(body)
                        cloud.signalled.append(name)
                    return self._reply(cloud.signal_status)
                return self._reply(401 if principal is None else 404, {'error': self.path})

            def do_GET(self):
                cloud.requests.append(('GET', self.path, None))
                principal = cloud.tokens.get(self.headers.get('X-Auth-Token'))
                if self.path == heat_prefix + server_resource + '/metadata' and \
                        principal == server:
                    return self._reply(200, {'metadata': cloud.metadata})
                return self._reply(401 if principal is None else 404, {'error': self.path})

            def _token(self, body):
                ident = body['auth']['identity']['password']['user']
                scope = body['auth']['scope']['project']['id']
                principal = (ident['id'], ident['password'])
                if principal not in (server,) + tuple(signallers) or scope != project:
                    return self._reply(401, {'error': 'bad credentials'})
                token = 'tok-%d' % len(cloud.tokens)
                cloud.tokens[token] = principal
                heat = 'http://127.0.0.1:%d/heat/v1/%s' % (cloud.port, project)
                catalog = [{'type': 'orchestration', 'name': 'heat', 'endpoints': [
                    {'interface': 'internal', 'region_id': 'RegionOne', 'url': 'http://bad'},
                    {'interface': 'public', 'region_id': 'RegionOne', 'url': heat}]}]
                doc = {'token': {'expires_at': '2099-01-01T00:00:00.000000Z',
                                 'catalog': catalog}}
                return self._reply(201, doc, {'X-Subject-Token': token})

        self.server = http_server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def auth_url(self) -> str:
        return 'http://127.0.0.1:%d/identity/v3' % self.port

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


class AgentTestBase(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.cloud = self._start_cloud()
        self.root = tempfile.mkdtemp()
        self.addCleanup(subprocess.run, ['rm', '-rf', self.root], check=False)
        self.run_log = os.path.join(self.root, 'runs.log')
        write_credentials(self.root, dict(SERVER_CREDS, auth_url=self.cloud.auth_url))

    def _start_cloud(self):
        cloud = FakeCloud()
        cloud.__enter__()
        self.addCleanup(cloud.__exit__)
        return cloud

    def _deployment(self, **kwargs):
        dep = deployment(run_log=self.run_log, **kwargs)
        for item in dep['inputs']:
            if item['name'] == 'deploy_auth_url':
                item['value'] = self.cloud.auth_url
        return dep

    def run_agent(self):
        return run_agent_once(root=self.root)

    def runs(self):
        if not os.path.exists(self.run_log):
            return 0
        with open(self.run_log) as f:
            return len(f.read().splitlines())


class AgentTest(AgentTestBase):

    def test_runs_deployment_and_signals_result(self):
        self.cloud.metadata['deployments'] = [self._deployment(config_id='cfg-1')]
        proc = self.run_agent()
        self.assertEqual(0, proc.returncode, proc.stderr)
        self.assertEqual(['samples'], self.cloud.signalled)
        signal = self.cloud.signals[0]
        self.assertEqual('samples=vector_add,gemm ratio=0.8 action=CREATE\n',
                         signal['deploy_stdout'])
        self.assertEqual('a warning\n', signal['deploy_stderr'])
        self.assertEqual(0, signal['deploy_status_code'])
        self.assertEqual('out-value', signal['result'])
        token_users = [r[2]['auth']['identity']['password']['user']['id']
                       for r in self.cloud.requests if r[1].endswith('/auth/tokens')]
        self.assertEqual(['server-user', 'job-user'], token_users)

    def test_never_reruns_a_finished_deployment(self):
        self.cloud.metadata['deployments'] = [self._deployment(config_id='cfg-1')]
        self.assertEqual(0, self.run_agent().returncode)
        self.assertEqual(0, self.run_agent().returncode)
        self.assertEqual(1, self.runs())
        self.assertEqual(1, len(self.cloud.signals))

    def test_reruns_when_action_changes(self):
        self.cloud.metadata['deployments'] = [self._deployment(config_id='cfg-1')]
        self.assertEqual(0, self.run_agent().returncode)
        self.cloud.metadata['deployments'] = [self._deployment(config_id='cfg-1',
                                                               action='UPDATE')]
        self.assertEqual(0, self.run_agent().returncode)
        self.assertEqual(2, self.runs())
        self.assertEqual('samples=vector_add,gemm ratio=0.8 action=UPDATE\n',
                         self.cloud.signals[-1]['deploy_stdout'])

    def test_failing_script_signals_status_code(self):
        self.cloud.metadata['deployments'] = [self._deployment(config_id='cfg-2',
                                                               exit_code=3)]
        self.assertEqual(0, self.run_agent().returncode)
        self.assertEqual(3, self.cloud.signals[0]['deploy_status_code'])

    def test_other_groups_are_left_alone(self):
        dep = self._deployment(config_id='cfg-3')
        dep['group'] = 'ansible'
        self.cloud.metadata['deployments'] = [dep]
        self.assertEqual(0, self.run_agent().returncode)
        self.assertEqual(0, self.runs())
        self.assertEqual([], self.cloud.signals)

    def test_signal_failure_is_retried_without_rerun(self):
        self.cloud.metadata['deployments'] = [self._deployment(config_id='cfg-4')]
        self.cloud.signal_status = 503
        proc = self.run_agent()
        self.assertEqual(1, proc.returncode)
        self.assertIn('signalling deployment cfg-4 failed', proc.stderr)
        self.assertEqual([], self.cloud.signals)
        self.cloud.signal_status = 200
        self.assertEqual(0, self.run_agent().returncode)
        self.assertEqual(1, self.runs())
        self.assertEqual(0, self.cloud.signals[0]['deploy_status_code'])

    def test_wrong_signal_credentials_fail(self):
        dep = self._deployment(config_id='cfg-5')
        for item in dep['inputs']:
            if item['name'] == 'deploy_password':
                item['value'] = 'wrong'
        self.cloud.metadata['deployments'] = [dep]
        proc = self.run_agent()
        self.assertEqual(1, proc.returncode)
        self.assertIn('HTTP Error 401', proc.stderr)

    def test_missing_credentials_named(self):
        with open(os.path.join(self.root, 'var/lib/heat-cfntools/cfn-init-data'), 'w') as f:
            json.dump({'os-collect-config': {'collectors': ['local']}}, f)
        proc = self.run_agent()
        self.assertEqual(1, proc.returncode)
        self.assertIn('POLL_SERVER_HEAT', proc.stderr)


class AgentSessionReuseTest(AgentTestBase):
    """The agent logs in once and reuses its token across polls (in-process, several polls)."""

    def setUp(self):
        super().setUp()
        self.useFixture(fixtures.EnvironmentVariable('HEAT_GPU_ROOT', self.root))
        self.useFixture(fixtures.EnvironmentVariable('HEAT_GPU_AGENT_TIMEOUT', '60'))
        loader = importlib.machinery.SourceFileLoader('heat_gpu_agent_under_test', AGENT)
        spec = importlib.util.spec_from_loader(loader.name, loader)
        self.agent = importlib.util.module_from_spec(spec)
        loader.exec_module(self.agent)

    def logins(self) -> list:
        return [r[2]['auth']['identity']['password']['user']['id']
                for r in self.cloud.requests if r[1].endswith('/auth/tokens')]

    def test_one_login_for_many_polls(self):
        state = self.agent.State(self.agent.state_dir())
        self.cloud.metadata['deployments'] = [self._deployment(config_id='cfg-1')]
        for _ in range(5):
            self.agent.poll_once(state)
        self.assertEqual(5, sum(1 for r in self.cloud.requests if r[0] == 'GET'))
        self.assertEqual(['server-user', 'job-user'], self.logins())
        # A second deployment signalled with the same credentials reuses that login too.
        self.cloud.metadata['deployments'].append(self._deployment(config_id='cfg-2'))
        self.agent.poll_once(state)
        self.assertEqual(['server-user', 'job-user'], self.logins())
        self.assertEqual(2, len(self.cloud.signals))

    def test_logs_in_again_when_heat_rejects_the_token(self):
        state = self.agent.State(self.agent.state_dir())
        self.agent.poll_once(state)
        self.cloud.tokens.clear()  # Keystone revoked or forgot the token: Heat answers 401.
        self.agent.poll_once(state)
        self.agent.poll_once(state)
        self.assertEqual(['server-user', 'server-user'], self.logins())

    def test_new_credentials_replace_the_session(self):
        state = self.agent.State(self.agent.state_dir())
        self.agent.poll_once(state)
        write_credentials(self.root, dict(SERVER_CREDS, auth_url=self.cloud.auth_url,
                                          password='wrong'))
        self.assertRaises(self.agent.AgentError, self.agent.poll_once, state)
        self.assertEqual(['server-user', 'server-user'], self.logins())
