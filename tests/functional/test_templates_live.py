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

import testscenarios

from tests.functional import base
from tests.functional import test_gpu_stacks

load_tests = testscenarios.load_tests_apply_scenarios

TEMPLATES = sorted(name for name in os.listdir(os.path.join(base.REPO, 'hot'))
                   if name.endswith('.yaml'))
ENVIRONMENTS = {'plugin': [], 'portable': [test_gpu_stacks.PORTABLE_ENV]}
# The custom constraints heat-dashboard renders as drop-downs; any other renders an empty one.
HORIZON_CONSTRAINTS = {'nova.flavor', 'glance.image', 'nova.keypair', 'neutron.network'}


class TestTemplatesValidateLive(base.FunctionalTestCase):

    scenarios = [('%s-%s' % (template[:-len('.yaml')], env), {'template': template, 'env': env})
                 for template in TEMPLATES for env in sorted(ENVIRONMENTS)]

    def validate(self, **extra: object) -> dict:
        fields = test_gpu_stacks.template_fields(os.path.join('hot', self.template),
                                                 environments=ENVIRONMENTS[self.env])
        return self.heat_demo.stacks.validate(**fields, **extra)

    def test_validates(self):
        result = self.validate(show_nested=True)
        self.assertNotIn('Error', result)
        self.assertTrue(result['Description'].strip())
        registry = result['Environment'].get('resource_registry', {})
        if self.env == 'portable':
            self.assertEqual('providers/cuda_instance.yaml', registry['OS::GPU::CudaInstance'])
        else:
            self.assertEqual({}, {k: v for k, v in registry.items()
                                  if k.startswith('OS::GPU::')})

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

    def test_bad_value_is_refused_by_the_engine(self):
        # The engine really checks the template: a parameter value outside its constraint fails.
        params = {name: 'not a valid value!' for name, param in self.validate()[
            'Parameters'].items() if 'AllowedValues' in param or 'AllowedPattern' in param}
        if not params:
            self.skipTest('%s has no constrained parameter' % self.template)
        result = self.validate(parameters=params)
        self.assertIn('Error', result)
        self.assertIn('not a valid value!', result['Error'])
