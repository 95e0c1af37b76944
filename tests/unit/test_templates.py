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

"""The templates of hot/ and environments/.

Lint, Horizon readiness, template version, and validation by heat's own template parser and stack
validation (no cloud: custom constraints that need one are not evaluated here; the local cloud's
functional tests do that).
"""

# tests.unit.base imports heat.tests.common first: importing heat.engine.stack before it selects
# the eventlet backend of oslo.service and HeatTestCase then fails with BackendAlreadySelected.
from tests.unit import base  # isort: skip

import glob
import os
import re
from typing import Optional
from unittest import mock

import fixtures
import testscenarios
import testtools
import yaml
from yamllint import config as yamllint_config
from yamllint import linter

from heat.common import template_format
from heat.engine import function
from heat.engine.hot import functions as hot_funcs
from heat.engine import stack as parser
from heat.engine import template
from heat.tests import utils
from heatclient.common import template_utils
from oslo_serialization import jsonutils

from heat_gpu import catalog
from heat_gpu import templates
from tools import inline_scripts

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PORTABLE_ENV = os.path.join(ROOT, 'environments', 'portable.yaml')

#: Templates a tenant or admin launches (Horizon's Launch Stack form).
LAUNCHABLE = sorted(glob.glob(os.path.join(ROOT, 'hot', '*.yaml'))
                    + glob.glob(os.path.join(ROOT, 'hot', 'examples', '*.yaml')))
#: The nested templates the plugin registers as types (heat_gpu/templates).
NESTED = sorted(glob.glob(os.path.join(ROOT, 'heat_gpu', 'templates', '*.yaml')))
#: Every HOT template of the repository: launchable ones, nested ones, providers, TripleO pieces.
TEMPLATES = sorted(LAUNCHABLE + NESTED
                   + glob.glob(os.path.join(ROOT, 'environments', 'providers', '*.yaml'))
                   + glob.glob(os.path.join(ROOT, 'environments', 'tripleo', 'firstboot',
                                            '*.yaml')))
#: Every YAML file yamllint checks (tools/lint.sh runs yamllint on the same directories).
YAML_FILES = sorted(glob.glob(os.path.join(ROOT, 'hot', '**', '*.yaml'), recursive=True)
                    + NESTED
                    + glob.glob(os.path.join(ROOT, 'environments', '**', '*.yaml'),
                                recursive=True))

#: The custom constraints heat-dashboard turns into drop-downs; any other renders empty.
DROP_DOWNS = {'nova.flavor', 'glance.image', 'nova.keypair', 'neutron.network'}
#: Parameters that name a cloud object, and the drop-down they must have.
CLOUD_OBJECTS = {'flavor': 'nova.flavor', 'image': 'glance.image', 'network': 'neutron.network'}
#: Optional cloud objects: heat-dashboard's drop-downs have no empty entry, so a launchable template
#: takes them as text (empty for none) and the resource that gets them checks them; a nested
#: template, which no form shows, keeps the constraint.
OPTIONAL_OBJECTS = {'key_name': 'nova.keypair'}
#: Templates with shell scripts copied in by tools/inline_scripts.py.
INLINE_COPIES = {os.path.join(ROOT, t) for t in inline_scripts.TEMPLATES}

load_tests = testscenarios.load_tests_apply_scenarios


def rel(path: str) -> str:
    return os.path.relpath(path, ROOT)


def read(path: str) -> str:
    with open(path, encoding='utf-8') as stream:
        return stream.read()


def hot_versions() -> list[tuple[str, type]]:
    """heat's HOT template versions (dated names only), oldest first, with their classes."""
    manager = template._get_template_extension_manager()
    found = []
    for ext in manager:
        kind, _, version = ext.name.partition('.')
        if kind == 'heat_template_version' and re.match(r'^\d{4}-\d{2}-\d{2}$', version):
            found.append((version, ext.plugin))
    return sorted(found)


def walk(node, *, path: str = ''):
    """Yield (path, node) for every node of a parsed template."""
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, path='%s.%s' % (path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk(value, path='%s[%d]' % (path, index))


def usable(cls: type, name: str, *, conditions: bool = False) -> Optional[type]:
    """The function class version *cls* maps *name* to, or None when it has none."""
    table = cls.condition_functions if conditions else cls.functions
    fn = table.get(name)
    if fn is None or issubclass(fn, (hot_funcs.Removed, function.Invalid)):
        return None
    return fn


def needs(cls: type, tmpl: dict) -> list[str]:
    """What *tmpl* uses that HOT version *cls* does not offer (empty: cls suffices)."""
    newest = hot_versions()[-1][1]
    names = set(newest.functions) | set(newest.condition_functions)
    missing = []
    for key in tmpl:
        if key not in cls.SECTIONS:
            missing.append('section %s' % key)
    schema_keys = set(cls.param_schema_class.PARAMETER_KEYS)
    for name, param in (tmpl.get('parameters') or {}).items():
        for key in param:
            if key not in schema_keys:
                missing.append('parameter key %s (%s)' % (key, name))
    for name, res in (tmpl.get('resources') or {}).items():
        for key in res:
            if key not in cls._RESOURCE_KEYS:
                missing.append('resource key %s (%s)' % (key, name))
    for name, out in (tmpl.get('outputs') or {}).items():
        for key in out:
            if key not in cls.OUTPUT_KEYS:
                missing.append('output key %s (%s)' % (key, name))
    for section, conditions in (('conditions', True), ('parameters', None),
                                ('resources', False), ('outputs', False)):
        if conditions is None:
            continue
        for path, node in walk(tmpl.get(section) or {}, path=section):
            if not (isinstance(node, dict) and len(node) == 1):
                continue
            (name, args), = node.items()
            if name not in names:
                continue
            fn = usable(cls, name, conditions=conditions)
            if fn is None:
                missing.append('function %s at %s' % (name, path))
                continue
            missing.extend(_semantics(fn, name, args, path, tmpl.get('parameters') or {}))
    return missing


def _semantics(fn: type, name: str, args, path: str, params: dict) -> list[str]:
    """Uses of a function that only later versions' implementation of it accepts."""
    if name == 'get_attr' and isinstance(args, list) and len(args) == 1:
        if not issubclass(fn, hot_funcs.GetAttAllAttributes):
            return ['get_attr of all attributes at %s' % path]
    if name == 'str_replace' and isinstance(args, dict):
        values = (args.get('params') or {}).values()
        structured = [v for v in values if _structured(v, params)]
        if structured and not issubclass(fn, hot_funcs.ReplaceJson):
            return ['str_replace with map or list values at %s' % path]
    if name == 'list_join' and isinstance(args, list) and len(args) > 2:
        if not issubclass(fn, hot_funcs.JoinMultiple):
            return ['list_join of several lists at %s' % path]
    if name == 'repeat' and isinstance(args, dict):
        if 'permutations' in args and not issubclass(fn, hot_funcs.RepeatWithNestedLoop):
            return ['repeat permutations at %s' % path]
    return []


def _structured(value, params: dict) -> bool:
    """Whether a str_replace parameter value is a map or list (literal or json parameter)."""
    if isinstance(value, list):
        return True
    if not isinstance(value, dict):
        return False
    if len(value) != 1:
        return True
    (key, arg), = value.items()
    newest = hot_versions()[-1][1]
    if key not in newest.functions:
        return True
    if key == 'get_param':
        name = arg[0] if isinstance(arg, list) else arg
        return (params.get(name) or {}).get('type') in ('json', 'comma_delimited_list')
    return False


def load_with_files(path: str, *, env_paths: tuple[str, ...] = ()) -> tuple[dict, dict, dict]:
    """Template, files and environment, collected the way the openstack client does."""
    files, env = template_utils.process_multiple_environments_and_files(env_paths=list(env_paths))
    tfiles, tmpl = template_utils.get_template_contents(template_file=path)
    files.update(tfiles)
    # As heat receives them: the client sends the files as JSON, so bytes arrive as text.
    return tmpl, jsonutils.loads(jsonutils.dumps(files)), env


def validate_stack(tmpl: dict, files: dict, env: dict) -> None:
    """heat's template-validate: every function, reference and property schema is checked.

    No Neutron answers here: heat's check that the network service has the extensions a
    resource needs (security-group, router...) is answered yes; the functional tests validate
    the same templates against the local cloud's real Neutron.
    """
    from heat.engine.clients.os import neutron
    from heat.engine import environment
    stack = parser.Stack(utils.dummy_context(), 'heat_gpu_test',
                         template.Template(tmpl, files=files, env=environment.Environment(env)),
                         strict_validate=False)
    with mock.patch.object(neutron.NeutronClientPlugin, 'has_extension', return_value=True):
        stack.validate(validate_res_tmpl_only=True)


class TestLint(testtools.TestCase):

    def test_yamllint(self):
        conf = yamllint_config.YamlLintConfig(file=os.path.join(ROOT, '.yamllint'))
        problems = []
        for path in YAML_FILES:
            for problem in linter.run(read(path), conf, path):
                problems.append('%s:%d:%d %s' % (rel(path), problem.line, problem.column,
                                                 problem.message))
        self.assertEqual([], problems)
        self.assertGreater(len(YAML_FILES), 10)

    def test_line_length_rule_is_120(self):
        conf = yamllint_config.YamlLintConfig(file=os.path.join(ROOT, '.yamllint'))
        self.assertEqual(120, conf.rules['line-length']['max'])


class TestEachTemplate(testtools.TestCase):

    scenarios = [(rel(p), {'path': p}) for p in TEMPLATES]

    def setUp(self):
        super().setUp()
        self.text = read(self.path)
        self.tmpl = template_format.parse(self.text)

    def test_starts_with_version_and_folded_description(self):
        keys = list(yaml.safe_load(self.text))
        self.assertEqual(['heat_template_version', 'description'], keys[:2])
        self.assertRegex(self.text, r'(?m)^description: >\n  \S')
        self.assertGreater(len(self.tmpl['description'].split()), 8)

    def test_parameters_are_documented(self):
        for name, param in (self.tmpl.get('parameters') or {}).items():
            for key in ('type', 'label', 'description'):
                self.assertIn(key, param, 'parameter %s has no %s' % (name, key))
            self.assertTrue('default' in param or param.get('constraints'),
                            'parameter %s has neither a default nor a constraint' % name)
            for constraint in param.get('constraints') or []:
                custom = constraint.get('custom_constraint')
                if custom is not None:
                    self.assertIn(custom, DROP_DOWNS, 'parameter %s' % name)

    def test_cloud_objects_have_their_drop_down(self):
        launchable = self.path in LAUNCHABLE
        for name, param in (self.tmpl.get('parameters') or {}).items():
            customs = [c['custom_constraint'] for c in param.get('constraints') or []
                       if 'custom_constraint' in c]
            if name in CLOUD_OBJECTS:
                self.assertEqual([CLOUD_OBJECTS[name]], customs, 'parameter %s' % name)
            if name in OPTIONAL_OBJECTS:
                self.assertEqual('string', param['type'], name)
                self.assertEqual('', param['default'], name)
                self.assertEqual([] if launchable else [OPTIONAL_OBJECTS[name]], customs,
                                 'parameter %s' % name)

    def test_external_network_is_text(self):
        # heat-dashboard's neutron.network drop-down lists the project's and the shared networks,
        # not the external ones a floating IP comes from: the floating IP network is text, whose
        # empty value means no floating IP.
        param = (self.tmpl.get('parameters') or {}).get('external_network')
        if param is None:
            self.skipTest('no external_network parameter')
        self.assertEqual('string', param['type'])
        if self.path in LAUNCHABLE:
            self.assertNotIn('custom_constraint', str(param.get('constraints')))

    def test_parameter_groups_cover_every_parameter(self):
        params = list(self.tmpl.get('parameters') or {})
        if not params:
            self.assertNotIn('parameter_groups', self.tmpl)
            return
        grouped = [p for g in self.tmpl['parameter_groups'] for p in g['parameters']]
        self.assertEqual(sorted(params), sorted(grouped))
        for group in self.tmpl['parameter_groups']:
            self.assertTrue(group.get('label') and group.get('description'), group)

    def test_version_is_the_oldest_that_works(self):
        versions = hot_versions()
        declared = str(self.tmpl['heat_template_version'])
        names = [v for v, _ in versions]
        self.assertIn(declared, names, 'use a dated heat_template_version')
        classes = dict(versions)
        self.assertEqual([], needs(classes[declared], self.tmpl))
        older = names[:names.index(declared)]
        if older:
            self.assertNotEqual([], needs(classes[older[-1]], self.tmpl),
                                '%s would do; declare the oldest version that works'
                                % older[-1])

    def test_heat_parses_and_validates_it(self):
        base.init_global_environment()
        tmpl, files, env = load_with_files(self.path)
        for name in files:
            self.assertTrue(name.startswith('file://'), name)
        self.assertEqual(self.tmpl['heat_template_version'], tmpl['heat_template_version'])
        if self.path in LAUNCHABLE or self.path in NESTED:
            tmpl, files, env = load_with_files(self.path, env_paths=(PORTABLE_ENV,))
        validate_stack(tmpl, files, env)

    def test_no_inline_scripts(self):
        # A script in a template is only ever the generated copy of a file (kept current below).
        copies = inline_scripts.inline(self.text) if self.path in INLINE_COPIES else None
        for path, node in walk(self.tmpl):
            if isinstance(node, str) and node.lstrip().startswith('#!'):
                self.assertIsNotNone(copies, 'a script pasted at %s: put it in a file and use '
                                             'get_file, or have tools/inline_scripts.py copy it'
                                     % path)
                self.assertIn(node, {v for _, v in walk(template_format.parse(copies))
                                     if isinstance(v, str)}, path)

    def test_inline_copies_are_current(self):
        if self.path not in INLINE_COPIES:
            self.skipTest('no copied script')
        self.assertEqual(inline_scripts.inline(self.text), self.text,
                         'a copied script is stale: run tools/inline_scripts.py')
        self.assertIn('#!', self.text)

    def test_get_file_targets_exist(self):
        base = os.path.dirname(self.path)
        for path, node in walk(self.tmpl):
            if isinstance(node, dict) and set(node) == {'get_file'}:
                target = os.path.normpath(os.path.join(base, node['get_file']))
                self.assertTrue(os.path.isfile(target), '%s: %s' % (path, rel(target)))
                self.assertTrue(target.startswith(ROOT + os.sep))


class TestVersionCheck(testtools.TestCase):
    """The version check itself: it must reject what a version lacks."""

    def test_conditions_need_newton(self):
        classes = dict(hot_versions())
        tmpl = {'heat_template_version': '2016-04-08', 'description': 'x',
                'conditions': {'c': {'equals': [1, 1]}}, 'resources': {}}
        self.assertIn('section conditions', needs(classes['2016-04-08'], tmpl))
        self.assertEqual([], needs(classes['2016-10-14'], tmpl))

    def test_contains_in_conditions_needs_pike(self):
        classes = dict(hot_versions())
        tmpl = {'conditions': {'c': {'contains': ['a', ['a']]}}}
        self.assertTrue(needs(classes['2017-02-24'], tmpl))
        self.assertEqual([], needs(classes['2017-09-01'], tmpl))

    def test_yaql_needs_newton(self):
        classes = dict(hot_versions())
        tmpl = {'outputs': {'o': {'value': {'yaql': {'expression': '1'}}}}}
        self.assertTrue(needs(classes['2016-04-08'], tmpl))
        self.assertEqual([], needs(classes['2016-10-14'], tmpl))

    def test_str_replace_of_a_map_needs_liberty(self):
        classes = dict(hot_versions())
        tmpl = {'outputs': {'o': {'value': {'str_replace': {'template': 'X',
                                                            'params': {'X': {'a': 1}}}}}}}
        self.assertTrue(needs(classes['2015-04-30'], tmpl))
        self.assertEqual([], needs(classes['2015-10-15'], tmpl))


class TestLaunchable(testtools.TestCase):

    scenarios = [(rel(p), {'path': p}) for p in LAUNCHABLE]

    def setUp(self):
        super().setUp()
        self.tmpl = template_format.parse(read(self.path))

    def test_nothing_the_client_must_send(self):
        # Horizon's Launch Stack sends no file a template names: no get_file, no template type.
        for path, node in walk(self.tmpl):
            if isinstance(node, dict):
                self.assertNotIn('get_file', node, path)
                kind = node.get('type')
                if path.startswith('.resources') and isinstance(kind, str):
                    self.assertFalse(kind.endswith(('.yaml', '.template')), path)

    def test_parameters_a_form_can_carry(self):
        for name, param in self.tmpl['parameters'].items():
            if param['type'] == 'number':
                # heat-dashboard makes a whole-number field of every number.
                values = [param.get('default')] + [
                    v for c in param.get('constraints') or []
                    for v in (c.get('range') or {}).values()]
                for value in values:
                    if value is not None:
                        self.assertIsInstance(value, int, name)
            if param['type'] == 'comma_delimited_list':
                # A list with allowed_values becomes a single choice; a list default shows as
                # its Python text.
                for constraint in param.get('constraints') or []:
                    self.assertNotIn('allowed_values', constraint, name)
                self.assertIsInstance(param.get('default', ''), str, name)

    def test_validates_with_the_plugin(self):
        base.init_global_environment()
        base.register_plugin()
        tmpl, files, env = load_with_files(self.path)
        validate_stack(tmpl, files, env)

    def test_validates_with_the_portable_environment(self):
        base.init_global_environment()
        tmpl, files, env = load_with_files(self.path, env_paths=(PORTABLE_ENV,))
        self.assertEqual({'OS::GPU::Flavor', 'OS::GPU::CudaInstance', 'OS::GPU::SampleJob'}
                         | set(templates.TYPES), set(env['resource_registry']))
        for target in env['resource_registry'].values():
            self.assertIn(target, files)
        validate_stack(tmpl, files, env)


class TestResolvedProperties(testtools.TestCase):
    """Property values heat computes from the parameters, with and without a network."""

    scenarios = [
        ('gpu_instance', {'path': 'hot/gpu_instance.yaml', 'params': {}}),
        ('gpu_multi', {'path': 'hot/gpu_multi.yaml', 'params': {}}),
        ('gpu_jupyter', {'path': 'hot/gpu_jupyter.yaml', 'params': {}}),
        ('cluster_node', {'path': 'heat_gpu/templates/cluster_node.yaml',
                          'params': {'index': '3'}}),
    ]

    def instance_properties(self, **params) -> dict:
        from heat.engine import environment
        base.init_global_environment()
        base.register_plugin()
        tmpl = template_format.parse(read(os.path.join(ROOT, self.path)))
        values = dict(self.params, flavor='gpu.p100', image='ubuntu', **params)
        stack = parser.Stack(utils.dummy_context(), 'resolve',
                             template.Template(tmpl, env=environment.Environment(
                                 {'parameters': values})))
        props = tmpl['resources']['instance']['properties']
        return function.resolve(stack.t.parse(stack, props))

    def test_without_key(self):
        props = self.instance_properties(network='private')
        self.assertIsNone(props['key_name'])
        self.assertEqual('gpu.p100', props['flavor'])

    def test_with_key_on_the_access_port(self):
        props = self.instance_properties(network='private', key_name='mykey')
        tmpl = template_format.parse(read(os.path.join(ROOT, self.path)))
        # The server's one port is the one OS::GPU::ServerAccess makes (its security group and
        # floating IP apply to it).
        self.assertEqual([{'port': {'get_attr': ['access', 'port']}}],
                         tmpl['resources']['instance']['properties']['networks'])
        self.assertEqual('OS::GPU::ServerAccess', tmpl['resources']['access']['type'])
        self.assertEqual(1, len(props['networks']))
        self.assertEqual('mykey', props['key_name'])
        if 'name' in props:
            self.assertEqual('gpu-node-3', props['name'])


class TestExpressions(testtools.TestCase):
    """yaql expressions of the templates, evaluated by heat's yaql function."""

    def evaluate(self, path: str, snippet: dict, data: dict, params: Optional[dict] = None):
        from heat.engine import environment
        base.init_global_environment()
        base.register_plugin()
        tmpl = template_format.parse(read(os.path.join(ROOT, path)))
        stack = parser.Stack(utils.dummy_context(), 'yaql',
                             template.Template(tmpl, env=environment.Environment(
                                 {'parameters': params or {}})))
        expr = {'yaql': {'expression': snippet['yaql']['expression'], 'data': data}}
        return function.resolve(stack.t.parse(stack, expr))

    def test_cluster_all_passed(self):
        tmpl = template_format.parse(read(os.path.join(ROOT, 'hot', 'gpu_cluster.yaml')))
        snippet = tmpl['outputs']['all_passed']['value']
        params = {'flavor': 'f', 'image': 'i'}
        path = 'hot/gpu_cluster.yaml'
        self.assertTrue(self.evaluate(path, snippet, {'passed': [True, True]}, params))
        self.assertFalse(self.evaluate(path, snippet, {'passed': [True, False]}, params))
        self.assertFalse(self.evaluate(path, snippet, {'passed': []}, params))

    def test_node_adds_p2p_with_two_gpus(self):
        path = 'heat_gpu/templates/cluster_node.yaml'
        tmpl = template_format.parse(read(os.path.join(ROOT, path)))
        snippet = tmpl['resources']['samples']['properties']['samples']
        params = {'flavor': 'f', 'image': 'i'}
        self.assertNotIn('p2p', self.evaluate(path, snippet, {'gpus': 1}, params))
        self.assertIn('p2p', self.evaluate(path, snippet, {'gpus': 2}, params))

    def test_flavor_set_count(self):
        path = 'hot/gpu_flavors.yaml'
        tmpl = template_format.parse(read(os.path.join(ROOT, path)))
        snippet = tmpl['resources']['flavors']['properties']['count']
        data = {'models': ['T4', 'L4'], 'counts': ['1', '2', '4']}
        self.assertEqual(6, self.evaluate(path, snippet, data))

    def test_multi_samples_from_the_checkboxes(self):
        path = 'hot/gpu_multi.yaml'
        tmpl = template_format.parse(read(os.path.join(ROOT, path)))
        snippet = tmpl['resources']['sample_job']['properties']['samples']
        params = {'flavor': 'f', 'image': 'i'}
        defaults = [[name, tmpl['parameters']['run_' + name]['default']] for name, _ in
                    snippet['yaql']['data']]
        # The form's defaults run the peer-to-peer test.
        self.assertEqual(['device_query', 'bandwidth', 'gemm', 'p2p'],
                         self.evaluate(path, snippet, defaults, params))
        self.assertEqual(['vector_add'], self.evaluate(
            path, snippet, [['device_query', False], ['vector_add', True], ['p2p', False]], params))

    def test_min_percent_is_the_jobs_min_ratio(self):
        for path, job in (('hot/gpu_instance.yaml', 'samples'),
                          ('hot/gpu_multi.yaml', 'sample_job'),
                          ('heat_gpu/templates/cluster_node.yaml', 'samples')):
            tmpl = template_format.parse(read(os.path.join(ROOT, path)))
            snippet = tmpl['resources'][job]['properties']['min_ratio']
            got = self.evaluate(path, snippet, {'percent': 80}, {'flavor': 'f', 'image': 'i'})
            self.assertEqual(0.8, got, path)
            self.assertEqual(80, tmpl['parameters']['min_percent']['default'], path)

    def test_multi_p2p_results(self):
        path = 'hot/gpu_multi.yaml'
        tmpl = template_format.parse(read(os.path.join(ROOT, path)))
        snippet = tmpl['outputs']['p2p_results']['value']
        results = [{'name': 'p2p', 'gpu_index': 0}, {'name': 'gemm', 'gpu_index': 0}]
        got = self.evaluate(path, snippet, {'results': results}, {'flavor': 'f', 'image': 'i'})
        self.assertEqual([results[0]], got)


class TestHorizonNetwork(testtools.TestCase):
    """Why network is a text box: heat checks neutron.network even for an empty value."""

    def test_neutron_network_constraint_runs_on_empty_value(self):
        base.init_global_environment()
        looked_up = []

        def record(constraint, client, value):
            looked_up.append(value)

        # The lookup needs a neutron endpoint, which this machine has not: record what heat asks
        # the network service instead of asking it.
        self.useFixture(fixtures.MonkeyPatch(
            'heat.engine.clients.os.neutron.neutron_constraints.NetworkConstraint.'
            'validate_with_client', record))
        tmpl = template_format.parse('''
heat_template_version: 2016-10-14
parameters:
  network:
    type: string
    default: ''
    constraints:
      - custom_constraint: neutron.network
resources: {}
''')
        stack = parser.Stack(utils.dummy_context(), 'net', template.Template(tmpl))
        stack.validate()
        self.assertEqual([''], looked_up)


class TestCatalogCopies(testtools.TestCase):
    """Lists in templates that repeat the catalog stay equal to it."""

    def test_flavor_set_models(self):
        member = template_format.parse(read(os.path.join(ROOT, 'heat_gpu', 'templates',
                                                         'flavor_set_member.yaml')))
        allowed = [c['allowed_values'] for c in member['parameters']['gpu_models']['constraints']
                   if 'allowed_values' in c]
        self.assertEqual([catalog.keys()], allowed)
        # The form's help text lists them too (Horizon shows no choices for free text).
        tmpl = template_format.parse(read(os.path.join(ROOT, 'hot', 'gpu_flavors.yaml')))
        described = re.findall(r'[A-Z0-9][A-Z0-9-]+[A-Z0-9]|T4|L4',
                               tmpl['parameters']['gpu_models']['description'].split(':', 1)[1])
        self.assertEqual(catalog.keys(), described)

    def test_provider_model_aliases(self):
        path = os.path.join(ROOT, 'environments', 'providers', 'gpu_flavor.yaml')
        tmpl = template_format.parse(read(path))
        self.assertEqual({m.key: m.alias for m in catalog.models()},
                         tmpl['parameters']['model_aliases']['default'])
