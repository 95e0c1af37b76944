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

"""Every template in hot/ validates on the running Heat engine, with the plugin and without it.

The request is what ``openstack orchestration template validate -t hot/X.yaml [-e
environments/portable.yaml]`` sends. What comes back is what Horizon's Launch Stack form is built
from: each parameter must carry a label and a description, cloud objects must use one of the
constraints heat-dashboard turns into drop-downs, and the parameter groups must cover every
parameter once.
"""

import os

from heatclient import exc as heat_exc
import testscenarios

from heat_gpu import templates as heat_gpu_templates
from tests.functional import base
from tests.functional import test_gpu_stacks

load_tests = testscenarios.load_tests_apply_scenarios

TEMPLATES = sorted(name for name in os.listdir(os.path.join(base.REPO, 'hot'))
                   if name.endswith('.yaml'))
ENVIRONMENTS = {'plugin': [], 'portable': [test_gpu_stacks.PORTABLE_ENV]}
# The custom constraints heat-dashboard renders as drop-downs; any other renders an empty one.
HORIZON_CONSTRAINTS = {'nova.flavor', 'glance.image', 'nova.keypair', 'neutron.network'}
# The nested templates the plugin registers as types (heat_gpu/templates): nested stacks by design.
TEMPLATE_TYPES = set(heat_gpu_templates.TYPES)


class TestTemplatesValidateLive(base.FunctionalTestCase):

    scenarios = [('%s-%s' % (template[:-len('.yaml')], env), {'template': template, 'env': env})
                 for template in TEMPLATES for env in sorted(ENVIRONMENTS)]

    def _inventory(self) -> dict:
        # Validation creates nothing: skip the leak check's inventory (many API calls per test,
        # and stacks other test runs create meanwhile would count against this test).
        return {}

    def validate(self, **extra: object) -> dict:
        fields = test_gpu_stacks.template_fields(os.path.join('hot', self.template),
                                                 environments=ENVIRONMENTS[self.env])
        return self.heat_demo.stacks.validate(**fields, **extra)

    def test_validates(self):
        result = self.validate(show_nested=True)
        self.assertTrue(result['Description'].strip())
        registry = result['Environment'].get('resource_registry', {})
        gpu_types = {k: v for k, v in registry.items() if k.startswith('OS::GPU::')}
        nested = self._nested_gpu_resources(result)
        if self.env == 'portable':
            self.assertEqual({'OS::GPU::Flavor', 'OS::GPU::CudaInstance', 'OS::GPU::SampleJob'}
                             | TEMPLATE_TYPES, set(gpu_types))
            self.assertTrue(gpu_types['OS::GPU::CudaInstance'].endswith(
                'providers/cuda_instance.yaml'))
            # The engine loaded the provider templates: every OS::GPU::* resource of the
            # template is a nested stack whose parameters were validated.
            self.assertNotEqual([], nested)
            self.assertEqual([], [n for n, params in nested if not params])
        else:
            # The plugin's classes: no mapping but the plugin's own template types (heat shows the
            # global registry's entry of a template type the top-level template uses), no nested
            # stack behind an OS::GPU::* resource but those template types.
            own = {t: heat_gpu_templates.url(f) for t, f in heat_gpu_templates.TYPES.items()}
            self.assertEqual({}, {k: v for k, v in gpu_types.items() if own.get(k) != v})
            templates = self._template_resources(result)
            self.assertEqual([], [n for n, _ in nested if n not in templates])

    @classmethod
    def _template_resources(cls, result: dict) -> set:
        """Names of the nested stacks of the plugin's template types, at any depth."""
        found = set()
        for name, nested in result.get('NestedParameters', {}).items():
            if nested.get('Type') in TEMPLATE_TYPES:
                found.add(name)
            found |= cls._template_resources(nested)
        return found

    @classmethod
    def _nested_gpu_resources(cls, result: dict) -> list[tuple[str, list[str]]]:
        """(resource name, nested parameter names) of every OS::GPU::* nested stack."""
        found = []
        for name, nested in result.get('NestedParameters', {}).items():
            if nested.get('Type', '').startswith('OS::GPU::'):
                found.append((name, sorted(nested.get('Parameters', {}))))
            found.extend(cls._nested_gpu_resources(nested))
        return found

    def test_parameters_carry_horizon_fields(self):
        result = self.validate()
        parameters = result['Parameters']
        self.assertNotEqual({}, parameters)
        for name, param in parameters.items():
            self.assertTrue(param.get('Label', '').strip(), 'parameter %s has no Label' % name)
            self.assertTrue(param.get('Description', '').strip(),
                            'parameter %s has no Description' % name)
            self.assertTrue('Default' in param or param.get('CustomConstraint')
                            or param.get('AllowedValues'),
                            'parameter %s has neither a default nor a constraint' % name)
            constraint = param.get('CustomConstraint')
            if constraint:
                self.assertIn(constraint, HORIZON_CONSTRAINTS, name)
        grouped = [p for group in result.get('ParameterGroups', [])
                   for p in group.get('parameters', [])]
        if grouped:
            self.assertEqual(sorted(parameters), sorted(grouped))

    def test_preview_with_a_gpu_flavor(self):
        # validate only checks the resource types (validate_res_tmpl_only); a preview runs the
        # full validation a create does, e.g. CudaInstance's check of the flavor's GPUs and the
        # provider templates' own validation.
        fields = test_gpu_stacks.template_fields(os.path.join('hot', self.template),
                                                 environments=ENVIRONMENTS[self.env])
        if self.env == 'portable':
            # This heat has the plugin: keep its classes out (see without_plugin).
            fields = test_gpu_stacks.without_plugin(fields)
        declared = fields['template'].get('parameters', {})
        parameters = {}
        if 'flavor' in declared:
            parameters['flavor'] = self.create_gpu_flavor(alias='p100', count=2).id
        if 'image' in declared:
            parameters['image'] = test_gpu_stacks.IMAGE
        if 'network' in declared:
            parameters['network'] = test_gpu_stacks.TENANT_NETWORK
        client = self.heat_admin if self.template == 'gpu_flavors.yaml' else self.heat_demo
        try:
            preview = client.stacks.preview(stack_name=self.unique_name('preview'),
                                            parameters=parameters, **fields)
        except heat_exc.HTTPException as ex:
            self.fail('preview of hot/%s (%s) refused: %s' % (self.template, self.env, ex))
        self.assertNotEqual([], preview.resources)
