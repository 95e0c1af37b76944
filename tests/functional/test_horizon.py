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

"""Every template of hot/ launched from Horizon's Launch Stack in a real browser.

As the user a template is meant for (the ``demo`` tenant, or the admin for the flavor set): log in
to Horizon (heat-dashboard's orchestration panel, started by the local cloud on request), give the
template by file upload (and by URL, served from 127.0.0.1, for one), compare every parameter's
widget with the table in hot/README.md, choose only what has no default (flavor, image), launch,
wait for Create_Complete on the stack's own Overview page and read the outputs there. A screenshot
of each form and each finished stack goes to ``<cloud>/log/browser/``; the browser's console shows
no error and Horizon's log no traceback.
"""

import functools
import http.server
import os
import re
import threading
import urllib.request

import testscenarios
import testtools
import yaml

from tests.functional import base
from tests.functional import browser
from tools.localcloud import cloud as localcloud
from tools.localcloud import horizon as localcloud_horizon

load_tests = testscenarios.load_tests_apply_scenarios

README = os.path.join(base.REPO, 'hot', 'README.md')
IMAGE = 'ubuntu-22.04-gpu'
STACK_TIMEOUT = float(os.environ.get('HEAT_GPU_BROWSER_STACK_TIMEOUT', '600'))

# Who launches each template, the GPU flavor it gets (alias, count; None: no flavor parameter),
# and how it is given to Launch Stack.
TEMPLATES = {
    'gpu_instance.yaml': {'as_admin': False, 'gpus': ('p100', 1), 'source': 'file'},
    'gpu_multi.yaml': {'as_admin': False, 'gpus': ('p100', 2), 'source': 'file'},
    'gpu_cluster.yaml': {'as_admin': False, 'gpus': ('p100', 1), 'source': 'url'},
    'gpu_jupyter.yaml': {'as_admin': False, 'gpus': ('p100', 1), 'source': 'file'},
    'gpu_flavors.yaml': {'as_admin': True, 'gpus': None, 'source': 'file'},
}


def readme_forms(path: str = README) -> dict:
    """hot/README.md's table of the Launch Stack forms, in the order of the table.

    ``{template: [(parameter, label, widget, what the field holds as the form opens)]}``.
    """
    forms: dict = {}
    with open(path, encoding='utf-8') as f:
        for line in f:
            cells = [c.strip() for c in line.strip().strip('|').split('|')]
            if len(cells) != 5 or not cells[0].startswith('`gpu_'):
                continue
            template, parameter, label, widget, opens = cells
            forms.setdefault(template.strip('`'), []).append(
                (parameter.strip('`'), label, widget, opens))
    return forms


class _QuietHandler(http.server.SimpleHTTPRequestHandler):

    def log_message(self, *args) -> None:
        pass


class TemplateServer:
    """hot/ over plain HTTP on 127.0.0.1, for Launch Stack's Template URL."""

    def __init__(self) -> None:
        handler = functools.partial(_QuietHandler, directory=os.path.join(base.REPO, 'hot'))
        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return 'http://127.0.0.1:%d/%s' % (self.httpd.server_address[1], name)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class TestLaunchStackInHorizon(base.FunctionalTestCase):

    scenarios = [(name[:-len('.yaml')], dict(template=name, **spec))
                 for name, spec in TEMPLATES.items()]

    @classmethod
    def setUpClass(cls) -> None:
        chromium, driver = browser.find_browser()
        if not chromium or not driver:
            raise testtools.TestCase.skipException(
                'Debian\'s chromium and chromium-driver are not installed (tools/bootstrap.sh '
                'installs them): no browser to drive Horizon with')
        if base.FunctionalTestCase.cloud is None:
            base.FunctionalTestCase.cloud = localcloud.ensure_running(horizon=True)
        else:
            base.FunctionalTestCase.cloud.start(horizon=True)
        super().setUpClass()

    def setUp(self) -> None:
        super().setUp()
        self.shots = os.path.join(self.cloud.logs, 'browser')
        self.horizon_log = os.path.join(self.cloud.logs, 'horizon.log')
        self.log_offset = os.path.getsize(self.horizon_log)
        self.web = browser.Horizon(url=localcloud_horizon.url(self.cloud), shots=self.shots)
        self.addCleanup(self.web.close)
        self.addCleanup(self.assert_no_browser_or_horizon_errors)
        user = 'admin' if self.as_admin else localcloud.DEMO_USER
        self.client = self.heat_admin if self.as_admin else self.heat_demo
        self.conn = self.cloud.connection(admin=self.as_admin)
        self.web.login(user=user, password=self.cloud.secrets[user])
        with open(os.path.join(base.REPO, 'hot', self.template), encoding='utf-8') as f:
            self.tmpl = yaml.safe_load(f)
        self.slug = self.template[:-len('.yaml')]

    def assert_no_browser_or_horizon_errors(self) -> None:
        self.assertEqual([], self.web.console_errors(), 'errors in the browser console')
        with open(self.horizon_log, encoding='utf-8', errors='replace') as f:
            f.seek(self.log_offset)
            new = f.read()
        self.assertNotIn('Traceback', new, 'Horizon logged a traceback:\n%s' % new[-4000:])
        self.assertIsNone(re.search(r'" 5\d\d ', new), 'Horizon answered 5xx:\n%s' % new[-4000:])

    # The form

    def open_form(self, *, source: str) -> list:
        self.web.open_launch_stack()
        if source == 'url':
            server = TemplateServer()
            self.addCleanup(server.close)
            self.web.give_template(url=server.url(self.template))
        else:
            self.web.give_template(path=os.path.join(base.REPO, 'hot', self.template))
        return self.web.fields()

    def widget(self, field: browser.Field) -> str:
        """How hot/README.md names a widget; drop-downs of cloud objects are checked here."""
        if field.widget == 'drop-down':
            constraint = [c.get('custom_constraint') for c in
                          self.tmpl['parameters'][field.name].get('constraints') or []
                          if c.get('custom_constraint')]
            # The user's own flavors and images (the API is asked after the form was built, so
            # what other tests on the cloud made meanwhile is in it too).
            if constraint == ['nova.flavor']:
                names = {f.id: f.name for f in self.conn.compute.flavors()}
                self.assertLessEqual({v: t for v, t in field.choices}.items(), names.items())
                if self.gpu_flavor is not None:
                    self.assertIn(self.gpu_flavor, [v for v, _ in field.choices])
                return 'drop-down of your flavors'
            if constraint == ['glance.image']:
                names = {i.id: i.name for i in self.conn.image.images()}
                shown = {v: re.sub(r' \(.*\)$', '', t) for v, t in field.choices}
                self.assertLessEqual(shown.items(), names.items())
                self.assertIn(IMAGE, shown.values())
                return 'drop-down of your images'
            if constraint == ['neutron.network']:
                # The project's own and the shared networks that have a subnet.
                names = {n.id: n.name for n in self.conn.network.networks()}
                self.assertLessEqual({v: t for v, t in field.choices}.items(), names.items())
                self.assertIn(localcloud.PRIVATE_NETWORK['name'], [t for _, t in field.choices])
                return 'drop-down of your networks'
            return 'drop-down: %s' % ', '.join(t for _, t in field.choices)
        if field.widget == 'whole number':
            if field.minimum and field.maximum:
                return 'whole number, %s to %s' % (field.minimum, field.maximum)
            if field.minimum:
                return 'whole number, at least %s' % field.minimum
            return 'whole number'
        return field.widget

    @staticmethod
    def opens_with(field: browser.Field) -> str:
        if field.widget == 'checkbox':
            return field.value
        if field.required and field.widget == 'drop-down':
            return 'your choice'
        return '`%s`' % field.value if field.value else 'empty'

    def observed_rows(self, fields: list) -> list:
        return [(f.name, f.label, self.widget(f), self.opens_with(f)) for f in fields]

    def assert_form_matches_readme(self, fields: list) -> None:
        observed = self.observed_rows(fields)
        table = '\n'.join('| `%s` | `%s` | %s | %s | %s |' % ((self.template,) + row)
                          for row in observed)
        self.assertEqual(readme_forms().get(self.template), observed,
                         'hot/README.md does not describe the form Horizon shows; it shows:\n'
                         + table)
        # Every parameter of the template is on the form, in the order of its groups.
        grouped = [p for g in self.tmpl.get('parameter_groups', []) for p in g['parameters']]
        self.assertEqual(grouped, [f.name for f in fields])

    # Launching

    def required_choices(self) -> dict:
        values = {}
        params = self.tmpl['parameters']
        self.gpu_flavor = None
        if 'flavor' in params:
            alias, count = self.gpus
            values['flavor'] = self.gpu_flavor = self.create_gpu_flavor(alias=alias,
                                                                        count=count).id
        if 'image' in params:
            values['image'] = self.conn.image.find_image(IMAGE, ignore_missing=False).id
        if 'network' in params:
            values['network'] = self.conn.network.find_network(
                localcloud.PRIVATE_NETWORK['name'], ignore_missing=False).id
        if 'name_prefix' in params and self.template == 'gpu_flavors.yaml':
            # Flavor names are global: this run's own prefix keeps them apart (and leak-checked).
            values['name_prefix'] = self.unique_name('fl')
        return values

    def test_launch_stack_with_the_defaults(self):
        # The GPU flavor exists before the form opens, as the operator's flavors would.
        choices = self.required_choices()
        fields = self.open_form(source=self.source)
        self.web.screenshot('%s-form' % self.slug)
        self.assert_form_matches_readme(fields)

        stack_name = self.unique_name('stack')
        self.web.fill(stack_name=stack_name, values=choices)
        self.web.launch()
        stack_id = self.web.stack_id(stack_name)
        self.addCleanup(self.delete_stack, stack_id, client=self.client)
        cannot_complete = getattr(self, 'cannot_complete', None)
        try:
            if cannot_complete:
                # Recorded as an expected failure; it turns into an error once the stack completes.
                self.expectFailure(cannot_complete, self.web.wait_for_status, stack_id,
                                   status='Create_Complete', timeout=STACK_TIMEOUT)
                return
            page = self.web.wait_for_status(stack_id, status='Create_Complete',
                                            timeout=STACK_TIMEOUT)
        finally:
            self.web.screenshot('%s-stack' % self.slug)
        # Every output, as Horizon shows it. (In the order heat-engine gives them: heat 26 keeps a
        # stack's output names in a set, so no template can order them.)
        self.assertEqual(sorted(self.tmpl['outputs']), sorted(k for k, _ in page['outputs']))
        outputs = dict(page['outputs'])
        getattr(self, 'check_' + self.slug)(outputs)

    # What each finished stack shows

    def check_gpu_instance(self, outputs: dict) -> None:
        self.assertRegex(outputs['sample_summary'], r'^(\d+)/\1 passed\b')
        self.assertIn('Tesla P100', outputs['gpus'])
        self.assertRegex(outputs['driver_version'], r'^\d+\.\d+')
        self.assertRegex(outputs['cuda_version'], r'^\d+\.\d+')
        self.assert_reachable(outputs)

    def assert_reachable(self, outputs: dict) -> None:
        # The form's default floating IP network is the cloud's external one.
        public = self.conn.network.find_network(localcloud.PUBLIC_NETWORK['name'],
                                                ignore_missing=False)
        floating = [ip.floating_ip_address for ip in self.conn.network.ips(
            floating_network_id=public.id, fixed_ip_address=outputs['fixed_ip'])]
        self.assertIn(outputs['floating_ip'], floating)
        self.assertEqual('ssh USER@%s' % outputs['floating_ip'], outputs['ssh'])

    def check_gpu_multi(self, outputs: dict) -> None:
        self.assertEqual('2', outputs['gpu_count'])
        self.assertRegex(outputs['sample_summary'], r'^(\d+)/\1 passed\b')
        # The peer-to-peer test ran from the form's defaults.
        self.assertIn('p2p', outputs['p2p_results'])
        self.assertNotEqual('[]', outputs['p2p_results'].replace(' ', ''))
        self.assert_reachable(outputs)

    def check_gpu_cluster(self, outputs: dict) -> None:
        self.assertEqual('True', outputs['all_passed'])
        self.assertEqual(2, len(re.findall(r'\d+/\d+ passed', outputs['summaries'])))
        # The first node has the cluster's floating IP; every node an address on the network.
        self.assertEqual(2, len(re.findall(r'10\.\d+\.\d+\.\d+', outputs['addresses'])))
        self.assertEqual('ssh USER@%s' % outputs['floating_ip'], outputs['ssh'])

    def check_gpu_jupyter(self, outputs: dict) -> None:
        url = re.fullmatch(r'http://\S+:(8888)/lab\?token=([A-Za-z0-9]{32})', outputs['url'])
        self.assertIsNotNone(url, outputs['url'])
        self.assertRegex(outputs['gpu_check'], r'^(\d+)/\1 passed\b')
        # JupyterLab answers with the token (the guest shares this host's network namespace).
        port, token = url.groups()
        for path in ('/api/status', '/lab'):
            with urllib.request.urlopen('http://127.0.0.1:%s%s?token=%s' % (port, path, token),
                                        timeout=30) as reply:
                self.assertEqual(200, reply.status, path)

    def check_gpu_flavors(self, outputs: dict) -> None:
        names = re.findall(r'[\w.-]+\.p100-pcie-16gb\.x\d', outputs['flavor_names'])
        self.assertEqual(2, len(names), outputs['flavor_names'])
        self.assertIn('p100:1', outputs['extra_specs'])
        self.assertIn('p100:2', outputs['extra_specs'])
