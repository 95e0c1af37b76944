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

"""Heat's own engine code loads the plugin from plugin_dirs, and the description check works."""

# heat.tests.common must be imported before heat.engine.stack (oslo.service backend selection);
# it is imported for that side effect only, hence the noqa.
from heat.tests import common  # noqa: F401

import ast
import importlib.util
import logging
import os
import subprocess
import sys
import textwrap

import fixtures
from heat.common.i18n import _
from heat.engine import attributes
from heat.engine import environment
from heat.engine import plugin_manager
from heat.engine import properties
from heat.engine import resource
from heat.engine import resources
from heat.engine.resources import template_resource
from oslo_config import cfg
import testtools

import heat_gpu.resources
import heat_gpu.templates

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
PLUGIN_DIR = os.path.dirname(os.path.abspath(heat_gpu.resources.__file__))
TOOL = os.path.join(ROOT, 'tools', 'check_descriptions.py')


def load_tool():
    spec = importlib.util.spec_from_file_location('check_descriptions', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FreshPluginPackage(fixtures.Fixture):
    """Forget heat.engine.plugins.* so each test imports the plugin modules afresh."""

    def _setUp(self):
        saved = {n: m for n, m in sys.modules.items()
                 if n == 'heat.engine.plugins' or n.startswith('heat.engine.plugins.')}
        for name in saved:
            del sys.modules[name]

        def restore():
            for name in [n for n in sys.modules
                         if n == 'heat.engine.plugins' or n.startswith('heat.engine.plugins.')]:
                del sys.modules[name]
            sys.modules.update(saved)
        self.addCleanup(restore)


class PluginLoadingTest(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.useFixture(FreshPluginPackage())
        self.useFixture(fixtures.FakeLogger(level=logging.WARNING))
        # heat-engine parses its configuration before it loads plugins. Do the same (no files):
        # oslo.policy 4.6 and older (2025.2 and before) look up the policy file when heat makes
        # its ResourceEnforcer in env.get_types(), and fail on a configuration never parsed.
        cfg.CONF([], project='heat', default_config_files=[], default_config_dirs=[])
        self.addCleanup(cfg.CONF.reset)
        cfg.CONF.import_opt('plugin_dirs', 'heat.common.config')
        cfg.CONF.set_override('plugin_dirs', [PLUGIN_DIR])
        self.addCleanup(cfg.CONF.clear_override, 'plugin_dirs')

    def plugin_module_names(self):
        return sorted('heat.engine.plugins.%s' % f[:-3] for f in os.listdir(PLUGIN_DIR)
                      if f.endswith('.py') and f != '__init__.py')

    def test_plugin_manager_imports_our_modules_as_heat_plugins(self):
        manager = plugin_manager.PluginManager()
        names = sorted(m.__name__ for m in manager.modules)
        self.assertEqual(self.plugin_module_names(), names)
        self.assertIn('heat.engine.plugins.gpu_flavor', names)

    def test_global_environment_path_registers_every_gpu_type(self):
        # The same steps as heat.engine.resources.initialise(), on a fresh environment: heat's
        # in-tree resources, then every module of plugin_dirs.
        env = environment.Environment({}, user_env=False)
        resources._load_global_resources(env)
        gpu_types = sorted(t for t in env.get_types() if t.startswith('OS::GPU::'))
        self.assertIn('OS::GPU::Flavor', gpu_types)
        self.assertIn('OS::Nova::Flavor', env.get_types())
        flavor_cls = env.get_class('OS::GPU::Flavor')
        self.assertEqual('heat.engine.plugins.gpu_flavor', flavor_cls.__module__)
        self.assertTrue(issubclass(flavor_cls, resource.Resource))
        # The nested templates the plugin registers: template resources of the global registry,
        # which heat-engine reads from the package itself (file://, allowed only there).
        infos = {t: env.registry.get_resource_info(t) for t in gpu_types}
        templates = sorted(t for t, info in infos.items()
                           if isinstance(info, environment.TemplateResourceInfo))
        self.assertEqual(sorted(heat_gpu.templates.TYPES), templates)
        for name in templates:
            self.assertFalse(infos[name].user_resource, name)
            url = infos[name].template_name
            self.assertTrue(url.startswith('file://'), url)
            self.assertTrue(os.path.isfile(url[len('file://'):]), url)
            node_cls = env.get_class(name)
            self.assertTrue(issubclass(node_cls, template_resource.TemplateResource), name)
        self.assertIn('min_percent', env.get_class('OS::GPU::ClusterNode').properties_schema)
        self.assertIn('flavor_id', env.get_class('OS::GPU::FlavorSetMember').attributes_schema)
        modules = {env.get_class(t).__module__ for t in gpu_types if t not in templates}
        for module in modules:
            self.assertTrue(module.startswith('heat.engine.plugins.'), module)
        # Every plugin module contributes at least one OS::GPU::* type.
        manager = plugin_manager.PluginManager()
        mapping = plugin_manager.PluginMapping(['available_resource', 'resource'])
        contributing = {m.__name__ for m in manager.modules
                        if any(t.startswith('OS::GPU::') for t in mapping.load_from_module(m))}
        self.assertEqual(set(self.plugin_module_names()), contributing)

    def test_plugin_mapping_of_each_module(self):
        manager = plugin_manager.PluginManager()
        mapping = plugin_manager.PluginMapping(['available_resource', 'resource'])
        by_module = {m.__name__: mapping.load_from_module(m) for m in manager.modules}
        self.assertEqual(['OS::GPU::Flavor'],
                         sorted(by_module['heat.engine.plugins.gpu_flavor']))


class PluginModuleSourceTest(testtools.TestCase):
    """heat's plugin loader runs a module before it puts it in sys.modules.

    A dataclass with string annotations then fails as the class is made (``dataclasses`` looks
    the annotations up in ``sys.modules[cls.__module__]``), on every Python: so no
    ``from __future__ import annotations`` and no quoted field types in plugin modules; the
    ``typing`` names keep the annotations loadable on Python 3.9.
    """

    def test_dataclass_fields_are_evaluated_annotations(self):
        for name in sorted(os.listdir(PLUGIN_DIR)):
            if not name.endswith('.py'):
                continue
            with open(os.path.join(PLUGIN_DIR, name), encoding='utf-8') as stream:
                tree = ast.parse(stream.read(), name)
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module == '__future__':
                    self.assertNotIn('annotations', [a.name for a in node.names], name)
                if isinstance(node, ast.AnnAssign) and isinstance(node.annotation, ast.Constant):
                    self.fail('%s:%d: quoted annotation %r' % (name, node.lineno,
                                                               node.annotation.value))

    def test_a_quoted_dataclass_field_fails_heats_loader(self):
        # The failure the rule above avoids, through heat's own loader.
        plugin_dir = self.useFixture(fixtures.TempDir()).path
        with open(os.path.join(plugin_dir, 'quoted_gpu.py'), 'w', encoding='utf-8') as stream:
            stream.write(textwrap.dedent('''
                import dataclasses


                @dataclasses.dataclass
                class Wait:
                    deadline: 'int'
            '''))
        self.useFixture(FreshPluginPackage())
        cfg.CONF.import_opt('plugin_dirs', 'heat.common.config')
        cfg.CONF.set_override('plugin_dirs', [plugin_dir])
        self.addCleanup(cfg.CONF.clear_override, 'plugin_dirs')
        self.assertRaises(AttributeError, plugin_manager.PluginManager)


class BadResource(resource.Resource):
    """a resource without a proper summary"""

    PROPERTIES = (SIZE, TAGS, OPTIONS) = ('size', 'tags', 'options')
    ATTRIBUTES = (RESULT,) = ('result',)

    properties_schema = {
        SIZE: properties.Schema(properties.Schema.INTEGER),
        TAGS: properties.Schema(
            properties.Schema.LIST, _('Tags.'),
            schema=properties.Schema(
                properties.Schema.MAP,
                schema={'key': properties.Schema(properties.Schema.STRING),
                        'value': properties.Schema(properties.Schema.STRING,
                                                   _('value of the tag'))})),
        OPTIONS: properties.Schema(
            properties.Schema.MAP, _('options of the thing'),
            schema={'depth': properties.Schema(properties.Schema.INTEGER, _('Depth.'))}),
    }

    attributes_schema = {
        RESULT: attributes.Schema(_('The  result')),
    }

    def handle_create(self):
        """creates nothing"""


class GoodResource(resource.Resource):
    """A resource that does nothing.

    It exists to show what passes.
    """

    properties_schema = {
        'size': properties.Schema(properties.Schema.INTEGER, _('Size in GiB.')),
    }
    attributes_schema = {}


class CheckDescriptionsTest(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.tool = load_tool()

    def test_real_package_passes(self):
        result = subprocess.run([sys.executable, TOOL], capture_output=True, text=True,
                                timeout=300, cwd=ROOT)
        self.assertEqual(0, result.returncode, result.stdout + result.stderr)
        self.assertIn('OS::GPU::Flavor', result.stdout)

    def test_bad_class_is_caught(self):
        report = self.tool.check_classes({'OS::GPU::Bad': BadResource,
                                          'OS::GPU::Good': GoodResource})
        self.assertEqual(['OS::GPU::Bad'], list(report))
        problems = report['OS::GPU::Bad']
        for expected in (
                'docstring: summary should start with an upper-case letter',
                'docstring: summary should end with a period',
                'docstring: description missing: add a blank line and what the resource does '
                'and needs after the summary',
                'property size: description missing',
                'property tags.*.key: description missing',
                'property tags.*.value: description should start with an upper-case letter',
                'property tags.*.value: description should end with a period',
                'property options: description should start with an upper-case letter',
                'property options: description should end with a period',
                'attribute result: description holds a run of blanks',
                'method handle_create: docstring summary should end with a period'):
            self.assertIn(expected, problems)
        self.assertNotIn('property options.depth: description missing', problems)
        self.assertNotIn('property tags: description missing', problems)
        # Heat's rule: a list's item schema may go without a description of its own.
        self.assertNotIn('property tags.*: description missing', problems)

    def test_bad_plugin_dir_fails_with_offenders(self):
        plugin_dir = self.useFixture(fixtures.TempDir()).path
        with open(os.path.join(plugin_dir, 'bad_gpu.py'), 'w', encoding='utf-8') as stream:
            stream.write(textwrap.dedent('''
                from heat.engine import properties
                from heat.engine import resource


                class Bad(resource.Resource):
                    properties_schema = {
                        'size': properties.Schema(properties.Schema.INTEGER),
                    }


                def resource_mapping():
                    return {'OS::GPU::Bad': Bad}
            '''))
        result = subprocess.run([sys.executable, TOOL, '--plugin-dir', plugin_dir],
                                capture_output=True, text=True, timeout=300, cwd=ROOT)
        self.assertEqual(1, result.returncode, result.stdout + result.stderr)
        self.assertIn('OS::GPU::Bad (heat.engine.plugins.bad_gpu.Bad): docstring: class '
                      'docstring missing', result.stdout)
        self.assertIn('OS::GPU::Bad (heat.engine.plugins.bad_gpu.Bad): property size: '
                      'description missing', result.stdout)

    def test_empty_plugin_dir_fails(self):
        self.useFixture(FreshPluginPackage())
        plugin_dir = self.useFixture(fixtures.TempDir()).path
        self.assertEqual(1, self.tool.main(['--plugin-dir', plugin_dir]))
