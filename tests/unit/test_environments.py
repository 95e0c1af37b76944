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

"""environments/: the no-plugin provider path and the TripleO operator environments.

The providers' interface is checked against the plugin's, their expressions are evaluated by heat
and the guest report is decoded the way heat decodes it; the TripleO parameter names are checked
against the real tripleo-heat-templates.
"""

# tests.unit.base imports heat.tests.common first: importing heat.engine.stack before it selects
# the eventlet backend of oslo.service and HeatTestCase then fails with BackendAlreadySelected.
from tests.unit import base  # isort: skip

import base64
import glob
import gzip
import json
import os
import re
import subprocess
import sys
import tarfile
from typing import Optional

import fixtures
import testscenarios
import testtools
import yaml

from heat.common import template_format
from heat.engine import environment
from heat.engine import function
from heat.engine.hot import parameters as hot_parameters
from heat.engine import parameters
from heat.engine import stack as parser
from heat.engine import template
from heat.tests import utils
from oslo_serialization import jsonutils

from heat_gpu import catalog
from heat_gpu import gpu_request
from heat_gpu import templates

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV_DIR = os.path.join(ROOT, 'environments')
PROVIDERS = os.path.join(ENV_DIR, 'providers')
TRIPLEO = os.path.join(ENV_DIR, 'tripleo')
BOOTSTRAP = os.path.join(ROOT, 'heat_gpu', 'guest', 'bootstrap.sh')

#: The tripleo-heat-templates release the TripleO names are checked against: the newest on PyPI.
#: Its sdist ships the templates (the wheel does not). Older sdists (6.x for Ocata, 14.x for
#: Wallaby) no longer build their metadata with current setuptools, so pip cannot fetch them.
THT_VERSION = '18.0.0'
THT_CACHE = os.path.join(sys.prefix, 'cache', 'tripleo-heat-templates')

#: Provider parameters the plugin does not have (the plugin computes these itself).
PROVIDER_ONLY = {'OS::GPU::CudaInstance': {'cuda_candidates'},
                 'OS::GPU::Flavor': {'model_aliases'},
                 'OS::GPU::SampleJob': set()}

load_tests = testscenarios.load_tests_apply_scenarios


def read(path: str) -> str:
    with open(path, encoding='utf-8') as stream:
        return stream.read()


def load(path: str) -> dict:
    return template_format.parse(read(path))


def registry() -> dict:
    return yaml.safe_load(read(os.path.join(ENV_DIR, 'portable.yaml')))['resource_registry']


def provider(type_name: str) -> dict:
    return load(os.path.join(ENV_DIR, registry()[type_name]))


def plugin_class(type_name: str) -> type:
    from heat_gpu.resources import cuda_instance
    from heat_gpu.resources import gpu_flavor
    from heat_gpu.resources import sample_job
    for module in (cuda_instance, gpu_flavor, sample_job):
        mapping = module.resource_mapping()
        if type_name in mapping:
            return mapping[type_name]
    raise KeyError(type_name)


def make_stack(tmpl: dict, params: Optional[dict] = None, *, files: Optional[dict] = None):
    base.init_global_environment()
    env = environment.Environment({'parameters': params or {}})
    return parser.Stack(utils.dummy_context(), 'envtest',
                        template.Template(tmpl, files=files or {}, env=env))


def resolve(stack, snippet):
    """Resolve *snippet* with heat's own functions, in the context of *stack*."""
    return function.resolve(stack.t.parse(stack, snippet))


def decode_json_param(value):
    """What a json parameter of a nested stack makes of *value* (json_value.yaml relies on it)."""
    schema = hot_parameters.HOTParamSchema.from_dict('value', {'type': 'json'})
    return parameters.Parameter('value', schema, value).value()


class TestRegistry(testtools.TestCase):

    def test_maps_every_plugin_type_to_a_provider(self):
        reg = registry()
        # The plugin's classes, and the nested templates it registers as types.
        self.assertEqual({'OS::GPU::Flavor', 'OS::GPU::CudaInstance', 'OS::GPU::SampleJob'}
                         | set(templates.TYPES), set(reg))
        for target in reg.values():
            self.assertTrue(os.path.isfile(os.path.join(ENV_DIR, target)), target)


class TestProviderInterface(testtools.TestCase):

    scenarios = [(t, {'type_name': t}) for t in
                 ('OS::GPU::Flavor', 'OS::GPU::CudaInstance', 'OS::GPU::SampleJob')]

    def test_parameters_are_plugin_properties(self):
        cls = plugin_class(self.type_name)
        extra = set(provider(self.type_name)['parameters']) - set(cls.properties_schema)
        self.assertEqual(PROVIDER_ONLY[self.type_name], extra)

    def test_outputs_cover_plugin_attributes(self):
        cls = plugin_class(self.type_name)
        outputs = set(provider(self.type_name)['outputs'])
        self.assertEqual(set(), set(cls.ATTRIBUTES) - outputs)
        self.assertIn('OS::stack_id', outputs)

    def test_templates_use_only_what_the_provider_has(self):
        prov = provider(self.type_name)
        params, outputs = set(prov['parameters']), set(prov['outputs'])
        used = 0
        for path in (glob.glob(os.path.join(ROOT, 'hot', '**', '*.yaml'), recursive=True)
                     + glob.glob(os.path.join(ROOT, 'heat_gpu', 'templates', '*.yaml'))):
            tmpl = load(path)
            names = [n for n, r in (tmpl.get('resources') or {}).items()
                     if r.get('type') == self.type_name]
            for name in names:
                used += 1
                props = set(tmpl['resources'][name].get('properties') or {})
                self.assertEqual(set(), props - params, '%s: %s' % (path, name))
                for attr in self._attributes_of(tmpl, name):
                    self.assertIn(attr, outputs, '%s: get_attr %s.%s' % (path, name, attr))
        self.assertGreater(used, 0)

    @staticmethod
    def _attributes_of(tmpl: dict, name: str):
        def walk(node):
            if isinstance(node, dict):
                if set(node) == {'get_attr'} and node['get_attr'][0] == name:
                    yield node['get_attr'][1]
                for value in node.values():
                    yield from walk(value)
            elif isinstance(node, list):
                for value in node:
                    yield from walk(value)
        yield from walk(tmpl)


class TestCudaInstanceProvider(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.tmpl = provider('OS::GPU::CudaInstance')
        content = (self.tmpl['resources']['settings']['properties']['cloud_config']
                   ['write_files'][0])
        self.assertEqual('/etc/heat-gpu/bootstrap.json', content['path'])
        self.settings_snippet = content['content']

    def settings(self, **params) -> dict:
        params.setdefault('flavor', 'gpu.p100')
        params.setdefault('image', 'ubuntu-22.04')
        stack = make_stack(self.tmpl, params)
        return json.loads(resolve(stack, self.settings_snippet))

    def test_settings_signal_a_wait_condition_handle(self):
        settings = self.settings()
        self.assertEqual('TOKEN_SIGNAL', settings['signal']['transport'])
        self.assertEqual({'transport', 'endpoint', 'token'}, set(settings['signal']))

    def test_settings_keys_are_read_by_the_boot_script(self):
        script = read(BOOTSTRAP)
        read_keys = set(re.findall(r"\bs\.get\('([a-z_]+)'", script))
        signal_keys = set(re.findall(r"\bsig(?:\.get\(|\[)'([a-z_]+)'", script))
        signal_keys |= set(re.findall(r"\['signal'\]\['([a-z_]+)'\]", script))
        settings = self.settings()
        self.assertEqual(set(), set(settings) - read_keys - {'signal'})
        self.assertEqual(set(), set(settings['signal']) - signal_keys - {'transport'})

    def test_keyring_fingerprints_are_the_catalog_ones(self):
        from heat_gpu import cuda
        self.assertEqual(list(cuda.NVIDIA_REPO_KEY_FINGERPRINTS),
                         self.settings()['keyring_fingerprints'])

    def test_cuda_auto(self):
        settings = self.settings()
        self.assertTrue(settings['cuda_auto'])
        table = self.tmpl['parameters']['cuda_candidates']['default']
        self.assertEqual(table, settings['cuda_candidates'])
        self.assertEqual({'cuda': '12.8', 'branch': '570'}, settings['cuda_candidates'][0])
        self.assertEqual('proprietary', settings['kernel_modules'])
        self.assertTrue(settings['kernel_modules_auto'])

    def test_cuda_version_takes_its_branch(self):
        settings = self.settings(cuda_version='12.4')
        self.assertFalse(settings['cuda_auto'])
        self.assertEqual([{'cuda': '12.4', 'branch': '550'}], settings['cuda_candidates'])

    def test_driver_branch_wins(self):
        settings = self.settings(cuda_version='12.4', driver_branch='560')
        self.assertEqual([{'cuda': '12.4', 'branch': '560'}], settings['cuda_candidates'])

    def test_auto_cuda_with_a_branch_keeps_matching_pairs(self):
        settings = self.settings(driver_branch='535')
        self.assertEqual([{'cuda': '12.2', 'branch': '535'}], settings['cuda_candidates'])

    def test_open_modules_and_mirror(self):
        settings = self.settings(kernel_modules='open', mirror_url='https://mirror.example/nv',
                                 checksums={'cuda.run': 'ab' * 32}, install_method='runfile')
        self.assertEqual('open', settings['kernel_modules'])
        self.assertFalse(settings['kernel_modules_auto'])
        self.assertEqual('https://mirror.example/nv', settings['mirror_url'])
        self.assertEqual({'cuda.run': 'ab' * 32}, settings['checksums'])
        self.assertEqual('runfile', settings['install_method'])

    def test_report_is_decoded_like_heat_decodes_it(self):
        report = {'phase': 'verify', 'phases': {'detect': 1.2, 'verify': 3.4},
                  'gpus': [{'index': 0, 'name': 'Tesla P100-PCIE-16GB',
                            'pci_address': '0000:00:05.0', 'memory_mib': 16384,
                            'uuid': 'GPU-1', 'pci_id': '10de:15f8'},
                           {'index': 1, 'name': 'Tesla P100-PCIE-16GB',
                            'pci_address': '0000:00:06.0', 'memory_mib': 16384,
                            'uuid': 'GPU-2', 'pci_id': '10de:15f8'}],
                  'driver_version': '550.163.01', 'cuda_version': '12.4',
                  'method': 'packages', 'distro': 'ubuntu-22.04', 'log_tail': ['done']}
        # OS::Heat::WaitCondition's data attribute: {signal id: signal data}, JSON-encoded.
        data = str(jsonutils.dumps({'heat-gpu': json.dumps(report)}))
        outer = decode_json_param(data)
        decoded = decode_json_param(outer['heat-gpu'])
        self.assertEqual(report, decoded)
        stack = make_stack(self.tmpl, {'flavor': 'f', 'image': 'i'})
        count = self.tmpl['outputs']['gpu_count']['value']['yaql']['expression']
        snippet = {'yaql': {'expression': count, 'data': {'gpus': decoded['gpus']}}}
        self.assertEqual(2, resolve(stack, snippet))

    def test_boot_script_is_the_plugin_one(self):
        files = self.tmpl['resources']['settings']['properties']['cloud_config']['write_files']
        by_path = {f['path']: f for f in files}
        for guest_path, source in (('/usr/local/lib/heat-gpu/bootstrap.sh', 'bootstrap.sh'),
                                   ('/usr/local/lib/heat-gpu/heat-gpu-agent', 'heat-gpu-agent')):
            entry = by_path[guest_path]
            self.assertEqual('gz+b64', entry['encoding'])
            copy = os.path.join(PROVIDERS, entry['content']['get_file'])
            decoded = gzip.decompress(base64.b64decode(read(copy))).decode('utf-8')
            self.assertEqual(read(os.path.join(ROOT, 'heat_gpu', 'guest', source)), decoded,
                             '%s is stale: run environments/providers/files/regenerate.sh'
                             % os.path.relpath(copy, ROOT))
        parts = self.tmpl['resources']['user_data_parts']['properties']['parts']['if']
        launcher = os.path.join(PROVIDERS, 'files', 'launcher.sh')
        self.assertIn('/usr/local/lib/heat-gpu/bootstrap.sh', read(launcher))
        from heat_gpu import userdata
        for branch in parts[1:]:
            # heat_gpu.userdata's order and names: the launcher first (it sorts after the
            # tenant's scripts), our cloud-config last, merged by its merge_how.
            self.assertEqual({'config': {'get_file': 'files/launcher.sh'},
                              'filename': userdata.SCRIPT_NAME,
                              'subtype': 'x-shellscript'}, branch[0])
            self.assertEqual({'config': {'get_resource': 'settings'},
                              'subtype': 'cloud-config'}, branch[-1])
        self.assertEqual(userdata.MERGE_HOW,
                         self.tmpl['resources']['settings']['properties']['cloud_config']
                         ['merge_how'])

    def test_user_data_fits_nova_limit(self):
        from email.mime import multipart
        from email.mime import text as mime_text
        from heat.engine.clients import Clients
        from heat.engine.clients.os import nova
        from heatclient.common import template_utils
        path = os.path.join(PROVIDERS, 'cuda_instance.yaml')
        files, tmpl = template_utils.get_template_contents(template_file=path)
        # As heat receives them: the client sends the files as JSON, so bytes arrive as text.
        files = jsonutils.loads(jsonutils.dumps(files))
        stack = make_stack(tmpl, {'flavor': 'f', 'image': 'i'}, files=files)
        config = resolve(stack, tmpl['resources']['settings']['properties']['cloud_config'])
        cloud_config = '#cloud-config\n' + template_format.yaml.dump(
            config, Dumper=template_format.yaml_dumper)
        mime = multipart.MIMEMultipart()
        mime.attach(mime_text.MIMEText(cloud_config, 'cloud-config'))
        mime.attach(mime_text.MIMEText(read(os.path.join(PROVIDERS, 'files', 'launcher.sh')),
                                       'x-shellscript'))
        metadata = {'os-collect-config': {'heat': {
            'auth_url': 'https://keystone.example.com:5000/v3', 'user_id': 'u' * 32,
            'password': 'p' * 32, 'project_id': 'p' * 32, 'stack_id': 's' * 80,
            'resource_name': 'instance', 'region_name': 'RegionOne'},
            'collectors': ['heat', 'local']}, 'deployments': []}
        plugin = Clients(utils.dummy_context()).client_plugin('nova')
        user_data = nova.NovaClientPlugin.build_userdata(
            plugin, metadata, mime.as_string(), instance_user='cloud-user',
            user_data_format='SOFTWARE_CONFIG')
        self.assertIn('H4sI', user_data)
        size = len(base64.b64encode(user_data.encode('utf-8')))
        # Room for the tenant's own user data, too.
        self.assertLess(size, 65535 - 16384, 'user data is %d bytes base64-encoded' % size)
        self.assertGreater(size, 20000)


class TestSampleJobProvider(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.tmpl = provider('OS::GPU::SampleJob')
        self.stack = make_stack(self.tmpl, {'instance': 'server-1'})

    def output(self, name: str, results: list):
        expr = self.tmpl['outputs'][name]['value']['yaql']['expression']
        return resolve(self.stack, {'yaql': {'expression': expr, 'data': {'results': results}}})

    def test_summary_and_passed(self):
        results = [{'name': 'device_query', 'gpu_index': 0, 'passed': True},
                   {'name': 'bandwidth', 'gpu_index': 0, 'passed': False},
                   {'name': 'bandwidth', 'gpu_index': 1, 'passed': False},
                   {'name': 'gemm', 'gpu_index': 0, 'passed': True}]
        self.assertEqual('2/4 samples passed; failed: bandwidth', self.output('summary', results))
        self.assertFalse(self.output('passed', results))
        good = [r for r in results if r['passed']]
        self.assertEqual('2/2 samples passed', self.output('summary', good))
        self.assertTrue(self.output('passed', good))
        self.assertFalse(self.output('passed', []))

    def test_every_sample_source_is_deployed(self):
        res = self.tmpl['resources']
        values = res['sources_deployment']['properties']['input_values']
        inputs = {i['name'] for i in res['sources']['properties']['inputs']}
        self.assertEqual(inputs, set(values))
        sources = {os.path.splitext(os.path.basename(p))[0] for p in
                   glob.glob(os.path.join(ROOT, 'heat_gpu', 'samples', '*.cu'))}
        self.assertEqual({'HEAT_GPU_SRC_%s' % name for name in sources},
                         {n for n in values if n.startswith('HEAT_GPU_SRC_')})
        for name in sources:
            self.assertEqual({'get_file': '../../heat_gpu/samples/%s.cu' % name},
                             values['HEAT_GPU_SRC_%s' % name])
        # The header the sources include travels with them.
        self.assertEqual({'HEAT_GPU_HDR_sample_common':
                          {'get_file': '../../heat_gpu/samples/sample_common.cuh'}},
                         {n: v for n, v in values.items() if n.startswith('HEAT_GPU_HDR_')})
        self.assertEqual(values['HEAT_GPU_SAMPLES_DIR'],
                         res['deployment']['properties']['input_values']['HEAT_GPU_SAMPLES_DIR'])
        self.assertEqual('sources_deployment', res['deployment']['depends_on'])

    def test_write_samples_script(self):
        root = self.useFixture(fixtures.TempDir()).path
        env = dict(os.environ, HEAT_GPU_ROOT=root, HEAT_GPU_SAMPLES_DIR='/src',
                   HEAT_GPU_SRC_gemm='int main() { return 0; }', HEAT_GPU_SRC_p2p='// p2p',
                   HEAT_GPU_HDR_sample_common='#pragma once')
        script = os.path.join(PROVIDERS, 'files', 'write-samples.sh')
        proc = subprocess.run(['bash', script], env=env, capture_output=True, text=True,
                              timeout=60, check=False)
        self.assertEqual(0, proc.returncode, proc.stderr)
        self.assertEqual(['gemm.cu', 'p2p.cu', 'sample_common.cuh'],
                         sorted(os.listdir(os.path.join(root, 'src'))))
        self.assertEqual('int main() { return 0; }\n', read(os.path.join(root, 'src', 'gemm.cu')))
        self.assertEqual('#pragma once\n', read(os.path.join(root, 'src', 'sample_common.cuh')))
        env = {k: v for k, v in env.items() if not k.startswith(('HEAT_GPU_SRC_', 'HEAT_GPU_HDR_'))}
        proc = subprocess.run(['bash', script], env=env, capture_output=True, text=True,
                              timeout=60, check=False)
        self.assertEqual(1, proc.returncode)
        self.assertIn('HEAT_GPU_SRC_', proc.stderr)

    def test_runner_inputs(self):
        deployment = self.tmpl['resources']['deployment']['properties']
        stack = make_stack(self.tmpl, {'instance': 'server-1', 'samples': 'gemm,p2p',
                                       'thresholds': {'p2p': 0.5}})
        values = resolve(stack, deployment['input_values'])
        self.assertEqual('gemm p2p', values['HEAT_GPU_SAMPLES'])
        self.assertEqual({'p2p': 0.5}, json.loads(values['HEAT_GPU_THRESHOLDS']))
        runner = read(os.path.join(ROOT, 'heat_gpu', 'samples', 'run-samples.sh'))
        for name in values:
            if name.startswith('HEAT_GPU_'):
                self.assertTrue('${%s:=' % name in runner or '${%s:-' % name in runner,
                                'run-samples.sh does not read %s' % name)
        self.assertEqual('HEAT_SIGNAL', deployment['signal_transport'])


class TestFlavorProvider(testtools.TestCase):
    """The provider's extra specs equal the plugin's (gpu_request) for the same properties."""

    scenarios = [
        ('model', {'props': {'gpu_model': 'P100-PCIE-16GB', 'gpu_count': 2}}),
        ('alias', {'props': {'pci_alias': 'gpu-a100', 'gpu_count': 1}}),
        ('model_alias_numa', {'props': {'gpu_model': 'T4', 'pci_alias': 't4-pool',
                                        'gpu_count': 4, 'numa_affinity_policy': 'preferred'}}),
        ('hidden', {'props': {'gpu_model': 'L4', 'hide_hypervisor_id': True}}),
        ('vgpu', {'props': {'gpu_mode': 'vgpu', 'gpu_count': 1}}),
        ('vgpu_trait', {'props': {'gpu_mode': 'vgpu', 'gpu_count': 1,
                                  'vgpu_trait': 'CUSTOM_NVIDIA_11'}}),
    ]

    def test_extra_specs_match_the_plugin(self):
        tmpl = provider('OS::GPU::Flavor')
        params = dict(self.props, vcpus=8, ram=16384)
        stack = make_stack(tmpl, params)
        specs = resolve(stack, tmpl['resources']['flavor']['properties']['extra_specs'])
        request = gpu_request.build_request(
            mode=self.props.get('gpu_mode', 'passthrough'), model=self.props.get('gpu_model'),
            alias=self.props.get('pci_alias'), count=self.props.get('gpu_count', 1),
            vgpu_trait=self.props.get('vgpu_trait'),
            numa_affinity_policy=self.props.get('numa_affinity_policy'),
            hide_hypervisor_id=self.props.get('hide_hypervisor_id'))
        self.assertEqual(request.to_extra_specs(), specs)

    def test_user_extra_specs_are_kept(self):
        tmpl = provider('OS::GPU::Flavor')
        stack = make_stack(tmpl, {'gpu_model': 'A10', 'vcpus': 4, 'ram': 8192,
                                  'extra_specs': {'hw:cpu_policy': 'dedicated'}})
        specs = resolve(stack, tmpl['resources']['flavor']['properties']['extra_specs'])
        self.assertEqual({'hw:cpu_policy': 'dedicated', 'pci_passthrough:alias': 'a10:1'}, specs)


class TestFlavorSetMember(testtools.TestCase):

    def test_members_cover_every_model_and_count(self):
        tmpl = load(os.path.join(ROOT, 'heat_gpu', 'templates', 'flavor_set_member.yaml'))
        props = tmpl['resources']['flavor']['properties']
        seen = []
        for index in range(6):
            stack = make_stack(tmpl, {'index': index, 'gpu_models': 'P100-PCIE-16GB,A100-SXM4-80GB',
                                      'gpu_counts': '1,2,4', 'vcpus_per_gpu': 6,
                                      'ram_per_gpu': 1000})
            got = resolve(stack, {k: props[k] for k in ('name', 'gpu_model', 'gpu_count',
                                                        'vcpus', 'ram')})
            self.assertEqual(6 * got['gpu_count'], got['vcpus'])
            self.assertEqual(1000 * got['gpu_count'], got['ram'])
            catalog.get(got['gpu_model'])
            seen.append((got['gpu_model'], got['gpu_count'], got['name']))
        self.assertEqual([('P100-PCIE-16GB', 1, 'gpu.p100-pcie-16gb.x1'),
                          ('P100-PCIE-16GB', 2, 'gpu.p100-pcie-16gb.x2'),
                          ('P100-PCIE-16GB', 4, 'gpu.p100-pcie-16gb.x4'),
                          ('A100-SXM4-80GB', 1, 'gpu.a100-sxm4-80gb.x1'),
                          ('A100-SXM4-80GB', 2, 'gpu.a100-sxm4-80gb.x2'),
                          ('A100-SXM4-80GB', 4, 'gpu.a100-sxm4-80gb.x4')], seen)


# --- TripleO ----------------------------------------------------------------------------------

_THT = {}


def tht_tree(test: testtools.TestCase) -> str:
    """The tripleo-heat-templates sdist, fetched once with pip into the venv's cache."""
    tree = os.path.join(THT_CACHE, 'tripleo-heat-templates-%s' % THT_VERSION)
    if os.path.isfile(os.path.join(tree, 'overcloud.j2.yaml')):
        return tree
    sdist = os.path.join(THT_CACHE, 'tripleo-heat-templates-%s.tar.gz' % THT_VERSION)
    if not os.path.isfile(sdist):
        os.makedirs(THT_CACHE, exist_ok=True)
        proc = subprocess.run(
            [sys.executable, '-m', 'pip', 'download', '--quiet', '--disable-pip-version-check',
             '--no-binary', ':all:', '--no-deps', '--dest', THT_CACHE,
             'tripleo-heat-templates==%s' % THT_VERSION],
            capture_output=True, text=True, timeout=300, check=False)
        if proc.returncode != 0 or not os.path.isfile(sdist):
            test.skipTest('pip could not fetch tripleo-heat-templates %s from PyPI: %s'
                          % (THT_VERSION, proc.stderr.strip().splitlines()[-1:]))
    with tarfile.open(sdist) as tar:
        tar.extractall(THT_CACHE, filter='data')
    return tree


def tht_names(test: testtools.TestCase) -> dict:
    """Parameter names, role-specific ones, role-templated patterns and service names."""
    if _THT:
        return _THT
    tree = tht_tree(test)
    params, role_specific = set(), set()
    patterns = []
    files = (glob.glob(os.path.join(tree, 'deployment', '**', '*.yaml'), recursive=True)
             + glob.glob(os.path.join(tree, '*.yaml')))
    for path in files:
        text = read(path)
        for name in _parameter_names(text):
            if '{{' in name:
                patterns.append(re.compile(
                    '^' + re.escape(name).replace(re.escape('{{role.name}}'), '[A-Z][A-Za-z0-9]*')
                    + '$'))
            else:
                params.add(name)
        if path.endswith('.j2.yaml') or 'role_specific' not in text:
            continue
        data = yaml.load(text, Loader=getattr(yaml, 'CSafeLoader', yaml.SafeLoader))
        if not isinstance(data, dict):
            continue
        for name, param in (data.get('parameters') or {}).items():
            if 'role_specific' in (param or {}).get('tags', []):
                role_specific.add(name)
    registry_text = read(os.path.join(tree, 'overcloud-resource-registry-puppet.j2.yaml'))
    services = set(re.findall(r'(?m)^  (OS::TripleO::Services::[A-Za-z0-9]+):', registry_text))
    _THT.update(params=params, role_specific=role_specific, patterns=patterns,
                services=services)
    return _THT


def _parameter_names(text: str) -> list[str]:
    """Keys of the top-level parameters section (Jinja2 lines inside it are skipped)."""
    names, inside = [], False
    for line in text.splitlines():
        if re.match(r'^[A-Za-z_]', line):
            inside = line.rstrip() == 'parameters:'
            continue
        if inside:
            match = re.match(r'^  ([A-Za-z0-9_{}.]+):', line)
            if match:
                names.append(match.group(1))
    return names


class TestTripleo(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.names = tht_names(self)

    def known(self, name: str) -> bool:
        return (name in self.names['params']
                or any(p.match(name) for p in self.names['patterns']))

    def test_the_parser_finds_what_it_should(self):
        self.assertIn('KernelArgs', self.names['role_specific'])
        self.assertIn('NovaPCIPassthrough', self.names['role_specific'])
        self.assertIn('NovaSchedulerEnabledFilters', self.names['params'])
        self.assertTrue(self.known('ComputeExtraConfig'))
        self.assertFalse(self.known('NovaPciPassthrough'))
        self.assertFalse(self.known('ComputeGpuExtraConfigs'))
        self.assertIn('OS::TripleO::Services::NovaCompute', self.names['services'])

    def test_gpu_passthrough_names(self):
        env = yaml.safe_load(read(os.path.join(TRIPLEO, 'gpu-passthrough.yaml')))
        params = env['parameter_defaults']
        for name in params:
            self.assertTrue(self.known(name), '%s is not a tripleo-heat-templates %s parameter'
                            % (name, THT_VERSION))
        for name in params['ComputeGpuParameters']:
            self.assertIn(name, self.names['role_specific'])
        self.assertIn('intel_iommu=on', params['ComputeGpuParameters']['KernelArgs'])
        self.assertIn('iommu=pt', params['ComputeGpuParameters']['KernelArgs'])
        for role in ('Controller', 'ComputeGpu'):
            aliases = params['%sExtraConfig' % role]['nova::pci::aliases']
            self.assertEqual(['p100'], [a['name'] for a in aliases])
        for spec in params['ComputeGpuParameters']['NovaPCIPassthrough']:
            self.assertEqual({'vendor_id', 'product_id'}, set(spec))
            self.assertIsNotNone(catalog.by_pci_id('%(vendor_id)s:%(product_id)s' % spec))

    def test_gpu_passthrough_filters_exist_in_nova(self):
        env = yaml.safe_load(read(os.path.join(TRIPLEO, 'gpu-passthrough.yaml')))
        names = env['parameter_defaults']['NovaSchedulerEnabledFilters']
        # In a child process: nova and heat both register "host" on oslo.config's global CONF.
        proc = subprocess.run(
            [sys.executable, '-c', 'from nova.scheduler import filters; '
             'print("\\n".join(c.__name__ for c in filters.all_filters()))'],
            capture_output=True, text=True, timeout=120, check=True)
        available = set(proc.stdout.split())
        self.assertEqual(set(), set(names) - available)
        self.assertIn('PciPassthroughFilter', names)

    def test_role_services_exist(self):
        roles = yaml.safe_load(read(os.path.join(TRIPLEO, 'roles', 'ComputeGpu.yaml')))
        self.assertEqual(['ComputeGpu'], [r['name'] for r in roles])
        services = roles[0]['ServicesDefault']
        self.assertEqual(set(), set(services) - self.names['services'])
        self.assertIn('OS::TripleO::Services::BootParams', services)
        self.assertIn('OS::TripleO::Services::NovaCompute', services)

    def test_ocata_names(self):
        env = yaml.safe_load(read(os.path.join(TRIPLEO, 'ocata-gpu-passthrough.yaml')))
        params = env['parameter_defaults']
        # Still defined (NovaSchedulerDefaultFilters as deprecated) in the newest release; the
        # Ocata sdist cannot be fetched (see THT_VERSION), so this is the check that remains.
        for name in params:
            self.assertTrue(self.known(name), name)
        self.assertNotIn('RamFilter', params['NovaSchedulerDefaultFilters'])
        self.assertIn('PciPassthroughFilter', params['NovaSchedulerDefaultFilters'])
        alias = json.loads(params['ComputeExtraConfig']['nova::config::nova_config']
                           ['pci/alias']['value'])
        self.assertEqual(params['ControllerExtraConfig']['nova::api::pci_alias'], [alias])
        target = env['resource_registry']['OS::TripleO::NodeUserData']
        self.assertTrue(os.path.isfile(os.path.join(TRIPLEO, target)))


class TestFirstBootScript(testtools.TestCase):
    """The Ocata first-boot script, run for real on a fixture root with stub commands."""

    def run_script(self, *, vendors: list[str], cpu: str = 'GenuineIntel'):
        root = self.useFixture(fixtures.TempDir()).path
        os.makedirs(os.path.join(root, 'proc'))
        with open(os.path.join(root, 'proc', 'cpuinfo'), 'w', encoding='utf-8') as f:
            f.write('vendor_id\t: %s\n' % cpu)
        for index, vendor in enumerate(vendors):
            dev = os.path.join(root, 'sys', 'bus', 'pci', 'devices', '0000:0%d:00.0' % index)
            os.makedirs(dev)
            with open(os.path.join(dev, 'vendor'), 'w', encoding='utf-8') as f:
                f.write(vendor + '\n')
        stubs = os.path.join(root, 'stubs')
        os.makedirs(stubs)
        calls = os.path.join(root, 'calls')
        for name in ('grubby', 'dracut', 'reboot', 'logger'):
            path = os.path.join(stubs, name)
            with open(path, 'w', encoding='utf-8') as f:
                f.write('#!/bin/sh\necho "%s $*" >> "%s"\n' % (name, calls))
            os.chmod(path, 0o755)
        env = dict(os.environ, HEAT_GPU_ROOT=root, PATH=stubs + os.pathsep + os.environ['PATH'])
        script = os.path.join(TRIPLEO, 'firstboot', 'gpu-kernel-args.sh')
        proc = subprocess.run(['bash', script], env=env, capture_output=True, text=True,
                              timeout=60, check=False)
        made = read(calls).splitlines() if os.path.exists(calls) else []
        return proc, [c for c in made if not c.startswith('logger ')], root

    def test_gpu_node(self):
        proc, calls, root = self.run_script(vendors=['0x8086', '0x10de'])
        self.assertEqual(0, proc.returncode, proc.stderr)
        self.assertEqual(['grubby --update-kernel=ALL --args=intel_iommu=on iommu=pt '
                          'rd.driver.blacklist=nouveau modprobe.blacklist=nouveau',
                          'dracut -f', 'reboot '], calls)
        self.assertIn('blacklist nouveau',
                      read(os.path.join(root, 'etc', 'modprobe.d', 'heat-gpu-nouveau.conf')))
        proc, calls, _ = self.run_script(vendors=['0x10de'], cpu='AuthenticAMD')
        self.assertIn('amd_iommu=on', calls[0])

    def test_other_node_is_left_alone(self):
        proc, calls, root = self.run_script(vendors=['0x8086', '0x15b3'])
        self.assertEqual(0, proc.returncode, proc.stderr)
        self.assertEqual([], calls)
        self.assertIn('nothing to do', proc.stdout)
        self.assertFalse(os.path.exists(os.path.join(root, 'etc')))
