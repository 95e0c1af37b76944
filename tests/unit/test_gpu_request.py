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

import functools
import json
import subprocess
import sys
import textwrap

from oslo_config import cfg
from oslo_utils import strutils
import testscenarios
import testtools

from heat_gpu import exception
from heat_gpu import gpu_request

load_tests = testscenarios.load_tests_apply_scenarios

# nova's own extra spec validators are the reference for legal values. They run in a separate
# interpreter: nova.conf and heat's config register clashing options (e.g. "host") on the same
# global CONF, so nova cannot be imported next to heat's test base in one test process.
_NOVA_JUDGE = textwrap.dedent('''
    import json, re, sys
    from nova.api.validation.extra_specs import hw, pci_passthrough, resources, traits
    from nova import exception
    validators = (pci_passthrough.register() + resources.register() + traits.register()
                  + hw.register())
    def judge(key, value):
        for validator in validators:
            if re.fullmatch(validator.name_regex, key):
                try:
                    validator.validate(key, value)
                except exception.ValidationError as exc:
                    return str(exc)
                return None
        return "no validator for " + key
    request = json.load(sys.stdin)
    enums = {}
    for key in request["enums"]:
        enums[key] = [v for v in validators if re.fullmatch(v.name_regex, key)][0].value["enum"]
    json.dump({"verdicts": [judge(k, v) for k, v in request["specs"]], "enums": enums},
              sys.stdout)
''')


def nova_judge(specs, enums=()):
    """Return nova's verdict (None: accepted, else its message) per (key, value) pair."""
    result = subprocess.run([sys.executable, '-c', _NOVA_JUDGE], capture_output=True,
                            text=True, timeout=300,
                            input=json.dumps({'specs': specs, 'enums': list(enums)}))
    if result.returncode:
        raise AssertionError('nova validators failed to run: %s' % result.stderr[-2000:])
    return json.loads(result.stdout)


@functools.lru_cache(maxsize=1)
def _scenario_specs():
    pairs = []
    for _, params in BuildRequestTest.scenarios:
        pairs.extend(params['specs'].items())
    return pairs


class BuildRequestTest(testtools.TestCase):
    """Good requests turn into the exact extra specs, and nova's validators accept them."""

    scenarios = [
        ('model only', dict(
            kwargs=dict(model='P100-PCIE-16GB'),
            specs={'pci_passthrough:alias': 'p100:1'}, model='P100-PCIE-16GB', count=1)),
        ('model alias, two gpus', dict(
            kwargs=dict(model='a100-80g', count=2),
            specs={'pci_passthrough:alias': 'a100-80g:2'}, model='A100-PCIE-80GB', count=2)),
        ('own alias with model', dict(
            kwargs=dict(model='T4', alias='gpu_t4', count=4),
            specs={'pci_passthrough:alias': 'gpu_t4:4'}, model='T4', count=4)),
        ('catalog alias alone', dict(
            kwargs=dict(alias='v100-32g'),
            specs={'pci_passthrough:alias': 'v100-32g:1'}, model='V100-PCIE-32GB', count=1)),
        ('unknown alias alone', dict(
            kwargs=dict(alias='bigGPU'),
            specs={'pci_passthrough:alias': 'bigGPU:1'}, model=None, count=1)),
        ('sixteen', dict(
            kwargs=dict(model='h100-sxm5', count=16),
            specs={'pci_passthrough:alias': 'h100-sxm5:16'}, model='H100-SXM5-80GB',
            count=16)),
        ('numa and hidden hypervisor', dict(
            kwargs=dict(model='p100', numa_affinity_policy='preferred',
                        hide_hypervisor_id=True),
            specs={'pci_passthrough:alias': 'p100:1',
                   'hw:pci_numa_affinity_policy': 'preferred',
                   'hw:hide_hypervisor_id': 'true'}, model='P100-PCIE-16GB', count=1)),
        ('hypervisor id shown', dict(
            kwargs=dict(model='p100', hide_hypervisor_id='no'),
            specs={'pci_passthrough:alias': 'p100:1', 'hw:hide_hypervisor_id': 'false'},
            model='P100-PCIE-16GB', count=1)),
        ('vgpu', dict(
            kwargs=dict(mode='vgpu'), specs={'resources:VGPU': '1'}, model=None, count=1)),
        ('vgpu with trait and model', dict(
            kwargs=dict(mode='vgpu', vgpu_trait='CUSTOM_NVIDIA_11', model='A10'),
            specs={'resources:VGPU': '1', 'trait:CUSTOM_NVIDIA_11': 'required'},
            model='A10', count=1)),
    ]

    def test_build(self):
        request = gpu_request.build_request(**self.kwargs)
        specs = request.to_extra_specs()
        self.assertEqual(self.specs, specs)
        self.assertEqual(self.model, request.model_key)
        self.assertEqual(self.count, request.count)

    def test_round_trip(self):
        request = gpu_request.build_request(**self.kwargs)
        parsed = gpu_request.parse_gpu_request(request.to_extra_specs(), alias_map={})
        self.assertEqual(request.to_extra_specs(), parsed.to_extra_specs())
        self.assertEqual(request.mode, parsed.mode)
        self.assertEqual(request.count, parsed.count)
        if request.mode == gpu_request.PASSTHROUGH and self.kwargs.get('alias') != 'gpu_t4':
            self.assertEqual(self.model, parsed.model_key)


class BadRequestTest(testtools.TestCase):
    """Every bad input is refused with the property, the value and what is accepted."""

    scenarios = [
        ('unknown model', dict(kwargs=dict(model='X100'), prop='gpu_model', value='X100',
                               accepted='P100-PCIE-16GB', error=exception.UnknownGpuModel)),
        ('alias with colon', dict(kwargs=dict(alias='p100:2'), prop='pci_alias',
                                  value='p100:2', accepted='without ":" or ","')),
        ('alias with comma', dict(kwargs=dict(alias='a,b'), prop='pci_alias', value='a,b',
                                  accepted='without ":" or ","')),
        ('alias with blank end', dict(kwargs=dict(alias='p100 '), prop='pci_alias',
                                      value='p100 ', accepted='leading or trailing blanks')),
        ('alias with newline', dict(kwargs=dict(alias='p1\n00'), prop='pci_alias',
                                    value='p1\n00', accepted='printable')),
        ('alias too long', dict(kwargs=dict(alias='a' * 257), prop='pci_alias',
                                value='a' * 257, accepted='1 to 256')),
        ('count zero', dict(kwargs=dict(model='p100', count=0), prop='gpu_count', value=0,
                            accepted='from 1 to 16')),
        ('count seventeen', dict(kwargs=dict(model='p100', count=17), prop='gpu_count',
                                 value=17, accepted='from 1 to 16')),
        ('count not a number', dict(kwargs=dict(model='p100', count='two'), prop='gpu_count',
                                    value='two', accepted='from 1 to 16')),
        ('count boolean', dict(kwargs=dict(model='p100', count=True), prop='gpu_count',
                               value=True, accepted='from 1 to 16')),
        ('two vgpus', dict(kwargs=dict(mode='vgpu', count=2), prop='gpu_count', value=2,
                           accepted='one virtual GPU per instance')),
        ('bad trait', dict(kwargs=dict(mode='vgpu', vgpu_trait='NVIDIA_11'), prop='vgpu_trait',
                           value='NVIDIA_11', accepted='CUSTOM_')),
        ('lower-case trait', dict(kwargs=dict(mode='vgpu', vgpu_trait='CUSTOM_nv'),
                                  prop='vgpu_trait', value='CUSTOM_nv', accepted='upper-case')),
        ('trait on passthrough', dict(kwargs=dict(model='p100', vgpu_trait='CUSTOM_X'),
                                      prop='vgpu_trait', value='CUSTOM_X',
                                      accepted='passthrough')),
        ('alias on vgpu', dict(kwargs=dict(mode='vgpu', alias='p100'), prop='pci_alias',
                               value='p100', accepted='vgpu')),
        ('bad mode', dict(kwargs=dict(mode='sriov', model='p100'), prop='gpu_mode',
                          value='sriov', accepted='passthrough, vgpu')),
        ('bad numa policy', dict(kwargs=dict(model='p100', numa_affinity_policy='strict'),
                                 prop='numa_affinity_policy', value='strict',
                                 accepted='required, preferred, legacy, socket')),
        ('bad boolean', dict(kwargs=dict(model='p100', hide_hypervisor_id='maybe'),
                             prop='hide_hypervisor_id', value='maybe', accepted='yes')),
        ('nothing', dict(kwargs=dict(), prop='gpu_model', value=None, accepted='pci_alias')),
    ]

    def test_refused(self):
        error = getattr(self, 'error', exception.InvalidGpuRequest)
        exc = self.assertRaises(error, gpu_request.build_request, **self.kwargs)
        self.assertEqual(self.prop, exc.prop)
        self.assertEqual(self.value, exc.value)
        message = str(exc)
        self.assertIn(self.prop, message)
        self.assertIn(repr(self.value), message)
        self.assertIn(self.accepted, message)


class NovaAgreesTest(testtools.TestCase):
    """Where heat-gpu and nova both judge a value, heat-gpu is never more lenient."""

    BAD_ALIAS_SPECS = ('p100', 'p100:', ':1', 'p100:x', 'a:1;b:2', 'a:b:1')
    TRAITS = ('CUSTOM_NVIDIA_11', 'CUSTOM_A', 'CUSTOM_9_9')

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        specs = list(_scenario_specs())
        specs += [('pci_passthrough:alias', v) for v in cls.BAD_ALIAS_SPECS]
        specs += [('trait:%s' % t, 'required') for t in cls.TRAITS]
        cls.specs = specs
        cls.nova = nova_judge(specs, enums=['hw:pci_numa_affinity_policy'])

    def verdict(self, key, value):
        return self.nova['verdicts'][self.specs.index((key, value))]

    def test_specs_we_build_pass_novas_validators(self):
        for key, value in _scenario_specs():
            self.assertIsNone(self.verdict(key, value), '%s=%s' % (key, value))

    def test_alias_specs_nova_refuses_are_refused(self):
        for value in self.BAD_ALIAS_SPECS:
            self.assertIn('Validation failed', self.verdict('pci_passthrough:alias', value))
            self.assertRaises(exception.InvalidGpuRequest, gpu_request.parse_gpu_request,
                              {'pci_passthrough:alias': value})

    def test_numa_policies_are_novas(self):
        self.assertEqual(sorted(self.nova['enums']['hw:pci_numa_affinity_policy']),
                         sorted(gpu_request.NUMA_POLICIES))

    def test_boolean_strings_are_novas(self):
        self.assertEqual(set(strutils.TRUE_STRINGS), set(gpu_request.TRUE_STRINGS))
        self.assertEqual(set(strutils.FALSE_STRINGS), set(gpu_request.FALSE_STRINGS))

    def test_trait_rule_matches_nova(self):
        for trait in self.TRAITS:
            self.assertEqual(trait, gpu_request.validate_trait(trait))
            self.assertIsNone(self.verdict('trait:%s' % trait, 'required'))


class MergeTest(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.request = gpu_request.build_request(model='p100', numa_affinity_policy='required')

    def test_merge(self):
        merged = gpu_request.merge_extra_specs(
            self.request, {'hw:cpu_policy': 'dedicated', 'quota:cpu_shares': 2048,
                           'hw:mem_encryption': False})
        self.assertEqual({'pci_passthrough:alias': 'p100:1',
                          'hw:pci_numa_affinity_policy': 'required',
                          'hw:cpu_policy': 'dedicated', 'quota:cpu_shares': '2048',
                          'hw:mem_encryption': 'false'}, merged)

    def test_clash(self):
        for key in ('pci_passthrough:alias', 'resources:VGPU', 'resources1:VGPU',
                    'hw:pci_numa_affinity_policy', 'hw:hide_hypervisor_id'):
            exc = self.assertRaises(exception.InvalidGpuRequest, gpu_request.merge_extra_specs,
                                    self.request, {key: 'x'})
            self.assertEqual('extra_specs.%s' % key, exc.prop)
            self.assertIn('set it there', str(exc))

    def test_trait_clash(self):
        request = gpu_request.build_request(mode='vgpu', vgpu_trait='CUSTOM_NVIDIA_11')
        exc = self.assertRaises(exception.InvalidGpuRequest, gpu_request.merge_extra_specs,
                                request, {'trait:CUSTOM_NVIDIA_11': 'required'})
        self.assertIn('trait:CUSTOM_NVIDIA_11', exc.prop)

    def test_other_trait_is_fine(self):
        request = gpu_request.build_request(mode='vgpu', vgpu_trait='CUSTOM_NVIDIA_11')
        merged = gpu_request.merge_extra_specs(request, {'trait:HW_CPU_X86_AVX2': 'required'})
        self.assertEqual('required', merged['trait:HW_CPU_X86_AVX2'])


class ParseTest(testtools.TestCase):

    def test_no_gpu(self):
        self.assertIsNone(gpu_request.parse_gpu_request({}))
        self.assertIsNone(gpu_request.parse_gpu_request(None))
        self.assertIsNone(gpu_request.parse_gpu_request({'hw:cpu_policy': 'dedicated'}))
        self.assertIsNone(gpu_request.parse_gpu_request({'resources:VGPU': '0'}))

    def test_multiple_aliases(self):
        request = gpu_request.parse_gpu_request(
            {'pci_passthrough:alias': 'mygpu:2, p100:1'}, alias_map={})
        self.assertEqual((('mygpu', 2), ('p100', 1)), request.aliases)
        self.assertEqual(3, request.count)
        self.assertEqual('mygpu', request.alias)
        self.assertEqual('P100-PCIE-16GB', request.model_key)

    def test_operator_alias_map(self):
        request = gpu_request.parse_gpu_request({'pci_passthrough:alias': 'gpu-big:8'},
                                                alias_map={'gpu-big': 'A100-SXM4-80GB'})
        self.assertEqual('A100-SXM4-80GB', request.model_key)
        self.assertEqual(8, request.count)

    def test_alias_map_to_unknown_key(self):
        request = gpu_request.parse_gpu_request({'pci_passthrough:alias': 'gpu-big:1'},
                                                alias_map={'gpu-big': 'Z9'})
        self.assertIsNone(request.model)

    def test_alias_map_from_config(self):
        cfg.CONF.set_override('alias_map', {'fat': 'H200-SXM5-141GB'}, group='heat_gpu')
        self.addCleanup(cfg.CONF.clear_override, 'alias_map', group='heat_gpu')
        request = gpu_request.parse_gpu_request({'pci_passthrough:alias': 'fat:1'})
        self.assertEqual('H200-SXM5-141GB', request.model_key)

    def test_vgpu_in_group(self):
        request = gpu_request.parse_gpu_request(
            {'resources_g1:VGPU': '1', 'trait_g1:CUSTOM_NVIDIA_12': 'required',
             'trait:CUSTOM_OTHER': 'required', 'hw:hide_hypervisor_id': 'True'})
        self.assertEqual(gpu_request.VGPU, request.mode)
        self.assertEqual('CUSTOM_NVIDIA_12', request.vgpu_trait)
        self.assertEqual('_g1', request.vgpu_group)
        self.assertTrue(request.hide_hypervisor_id)
        self.assertEqual({'resources_g1:VGPU': '1', 'trait_g1:CUSTOM_NVIDIA_12': 'required',
                          'hw:hide_hypervisor_id': 'true'}, request.to_extra_specs())

    def test_forbidden_trait_is_not_the_vgpu_type(self):
        request = gpu_request.parse_gpu_request(
            {'resources:VGPU': '1', 'trait:CUSTOM_NVIDIA_11': 'forbidden'})
        self.assertIsNone(request.vgpu_trait)

    def test_bad_values(self):
        cases = [
            ({'pci_passthrough:alias': 'p100:0'}, 'pci_passthrough:alias'),
            ({'resources:VGPU': 'one'}, 'resources:VGPU'),
            ({'pci_passthrough:alias': 'p100:1', 'hw:pci_numa_affinity_policy': 'x'},
             'hw:pci_numa_affinity_policy'),
            ({'pci_passthrough:alias': 'p100:1', 'hw:hide_hypervisor_id': 'maybe'},
             'hw:hide_hypervisor_id'),
        ]
        for specs, prop in cases:
            exc = self.assertRaises(exception.InvalidGpuRequest,
                                    gpu_request.parse_gpu_request, specs)
            self.assertEqual(prop, exc.prop)
            self.assertIn(prop, str(exc))
