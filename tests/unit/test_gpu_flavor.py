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

# heat.tests.common must be imported before heat.engine.stack (oslo.service backend selection).
from heat.tests import common

import copy
from unittest import mock


from heat.common import exception
from heat.common import template_format
from heat.engine.clients.os import keystone
from heat.engine import resource
from heat.engine import scheduler
from heat.tests import utils
from novaclient import exceptions as nova_exceptions

from heat_gpu.resources import gpu_flavor
from tests.unit import base

FLAVOR_TEMPLATE = '''
heat_template_version: 2021-04-16
resources:
  flavor:
    type: OS::GPU::Flavor
    properties:
      gpu_model: P100-PCIE-16GB
      vcpus: 8
      ram: 65536
      disk: 80
'''

VGPU_TEMPLATE = '''
heat_template_version: 2021-04-16
resources:
  flavor:
    type: OS::GPU::Flavor
    properties:
      name: gpu.vgpu.small
      gpu_mode: vgpu
      vgpu_trait: CUSTOM_NVIDIA_11
      vcpus: 4
      ram: 16384
      is_public: true
      extra_specs:
        hw:cpu_policy: dedicated
'''


class FakeFlavor:
    """What novaclient returns for a flavor: an id and the extra-spec methods."""

    def __init__(self, flavor_id='f-1', name='gpu', keys=None):
        self.id = flavor_id
        self.name = name
        self.keys = dict(keys or {})
        self.calls = []

    def get_keys(self):
        return dict(self.keys)

    def set_keys(self, specs):
        self.calls.append(('set_keys', dict(specs)))
        self.keys.update(specs)

    def unset_keys(self, names):
        self.calls.append(('unset_keys', list(names)))
        for name in names:
            del self.keys[name]


class GpuFlavorTestBase(common.HeatTestCase):

    def setUp(self):
        base.init_global_environment()
        super().setUp()
        for name, cls in gpu_flavor.resource_mapping().items():
            resource._register_class(name, cls)
        self.nova = mock.MagicMock()
        self.flavor = FakeFlavor()
        self.nova.flavors.create.return_value = self.flavor
        self.nova.flavors.get.return_value = self.flavor
        self.patchobject(keystone.KeystoneClientPlugin, 'get_project_id',
                         side_effect=lambda name: name if name.startswith('id-') else 'id-' + name)

    def make(self, text=FLAVOR_TEMPLATE, *, admin=True, **props):
        tmpl = template_format.parse(text)
        tmpl['resources']['flavor']['properties'].update(props)
        for key in [k for k, v in props.items() if v is None]:
            del tmpl['resources']['flavor']['properties'][key]
        self.stack = utils.parse_stack(tmpl)
        self.stack.context.is_admin = admin
        rsrc = self.stack['flavor']
        self.patchobject(rsrc, 'client', return_value=self.nova)
        return rsrc


class GpuFlavorCreateTest(GpuFlavorTestBase):

    def test_create_passthrough_private(self):
        rsrc = self.make()
        self.assertIsNone(rsrc.validate())
        scheduler.TaskRunner(rsrc.create)()
        self.assertEqual((rsrc.CREATE, rsrc.COMPLETE), rsrc.state)
        self.nova.flavors.create.assert_called_once_with(
            name=rsrc.physical_resource_name(), ram=65536, vcpus=8, disk=80, flavorid='auto',
            ephemeral=0, swap=0, is_public=False)
        self.assertEqual([('set_keys', {'pci_passthrough:alias': 'p100:1'})], self.flavor.calls)
        self.nova.flavor_access.add_tenant_access.assert_called_once_with(
            self.flavor, self.stack.context.project_id)
        self.assertEqual('f-1', rsrc.resource_id)

    def test_create_with_tenants_and_extras(self):
        rsrc = self.make(gpu_model='a100-sxm4-80g', gpu_count=8, pci_alias='gpu-a100',
                         tenants=['alpha', 'beta'], numa_affinity_policy='socket',
                         hide_hypervisor_id=True, swap=1024, ephemeral=10, name='gpu.8xa100',
                         extra_specs={'hw:cpu_policy': 'dedicated', 'hw:numa_nodes': 2})
        self.assertIsNone(rsrc.validate())
        scheduler.TaskRunner(rsrc.create)()
        self.nova.flavors.create.assert_called_once_with(
            name='gpu.8xa100', ram=65536, vcpus=8, disk=80, flavorid='auto', ephemeral=10,
            swap=1024, is_public=False)
        self.assertEqual([('set_keys', {'pci_passthrough:alias': 'gpu-a100:8',
                                        'hw:pci_numa_affinity_policy': 'socket',
                                        'hw:hide_hypervisor_id': 'true',
                                        'hw:cpu_policy': 'dedicated',
                                        'hw:numa_nodes': '2'})], self.flavor.calls)
        self.assertEqual([mock.call(self.flavor, 'id-alpha'), mock.call(self.flavor, 'id-beta')],
                         self.nova.flavor_access.add_tenant_access.call_args_list)
        self.assertEqual('A100-SXM4-80GB', rsrc.FnGetAtt('gpu_model'))
        self.assertEqual(8, rsrc.FnGetAtt('gpu_count'))
        self.assertEqual('passthrough', rsrc.FnGetAtt('gpu_mode'))

    def test_create_vgpu_public(self):
        rsrc = self.make(VGPU_TEMPLATE)
        self.assertIsNone(rsrc.validate())
        scheduler.TaskRunner(rsrc.create)()
        self.nova.flavors.create.assert_called_once_with(
            name='gpu.vgpu.small', ram=16384, vcpus=4, disk=0, flavorid='auto', ephemeral=0,
            swap=0, is_public=True)
        self.assertEqual([('set_keys', {'resources:VGPU': '1',
                                        'trait:CUSTOM_NVIDIA_11': 'required',
                                        'hw:cpu_policy': 'dedicated'})], self.flavor.calls)
        self.nova.flavor_access.add_tenant_access.assert_not_called()
        self.assertIsNone(rsrc.FnGetAtt('gpu_model'))
        self.assertEqual('vgpu', rsrc.FnGetAtt('gpu_mode'))

    def test_failed_set_keys_leaves_an_id_to_delete(self):
        self.flavor.set_keys = mock.Mock(side_effect=nova_exceptions.BadRequest(400))
        rsrc = self.make()
        create = scheduler.TaskRunner(rsrc.create)
        self.assertRaises(exception.ResourceFailure, create)
        self.assertEqual('f-1', rsrc.resource_id)

    def test_attributes(self):
        rsrc = self.make()
        scheduler.TaskRunner(rsrc.create)()
        self.flavor.name = 'gpu_stack-flavor-x'
        self.assertEqual('f-1', rsrc.FnGetAtt('flavor_id'))
        self.assertEqual('gpu_stack-flavor-x', rsrc.FnGetAtt('name'))
        self.assertEqual({'pci_passthrough:alias': 'p100:1'}, rsrc.FnGetAtt('extra_specs'))
        self.assertEqual('P100-PCIE-16GB', rsrc.FnGetAtt('gpu_model'))
        self.assertEqual(1, rsrc.FnGetAtt('gpu_count'))
        self.assertEqual('f-1', rsrc.FnGetRefId())


class GpuFlavorUpdateDeleteTest(GpuFlavorTestBase):

    def _created(self, **props):
        rsrc = self.make(**props)
        scheduler.TaskRunner(rsrc.create)()
        self.flavor.calls.clear()
        self.nova.reset_mock()
        return rsrc

    def _update(self, rsrc, **changes):
        props = copy.deepcopy(rsrc.t._properties)
        props.update(changes)
        new_defn = rsrc.t.freeze(properties=props)
        scheduler.TaskRunner(rsrc.update, new_defn)()

    def test_update_gpu_properties_in_place(self):
        rsrc = self._created(extra_specs={'hw:cpu_policy': 'dedicated', 'hw:numa_nodes': '1'})
        self._update(rsrc, gpu_count=2, numa_affinity_policy='required',
                     extra_specs={'hw:cpu_policy': 'dedicated'})
        self.assertEqual((rsrc.UPDATE, rsrc.COMPLETE), rsrc.state)
        self.assertEqual([('unset_keys', ['hw:numa_nodes']),
                          ('set_keys', {'pci_passthrough:alias': 'p100:2',
                                        'hw:pci_numa_affinity_policy': 'required'})],
                         self.flavor.calls)
        self.assertEqual({'pci_passthrough:alias': 'p100:2',
                          'hw:pci_numa_affinity_policy': 'required',
                          'hw:cpu_policy': 'dedicated'}, self.flavor.keys)
        self.nova.flavors.create.assert_not_called()
        self.nova.flavors.delete.assert_not_called()
        self.assertEqual(2, rsrc.FnGetAtt('gpu_count'))

    def test_switch_to_vgpu_in_place(self):
        rsrc = self._created()
        self._update(rsrc, gpu_mode='vgpu', gpu_model=None)
        self.assertEqual([('unset_keys', ['pci_passthrough:alias']),
                          ('set_keys', {'resources:VGPU': '1'})], self.flavor.calls)

    def test_update_tenants_in_place(self):
        rsrc = self._created(tenants=['alpha', 'beta'])
        self.nova.flavor_access.list.return_value = [mock.Mock(tenant_id='id-alpha'),
                                                     mock.Mock(tenant_id='id-beta')]
        self._update(rsrc, tenants=['beta', 'gamma'])
        self.nova.flavor_access.list.assert_called_once_with(flavor='f-1')
        self.nova.flavor_access.remove_tenant_access.assert_called_once_with(
            self.flavor, 'id-alpha')
        self.nova.flavor_access.add_tenant_access.assert_called_once_with(
            self.flavor, 'id-gamma')
        self.assertEqual([], self.flavor.calls)

    def test_sizes_need_replacement(self):
        for prop, value in (('ram', 1024), ('vcpus', 2), ('disk', 10), ('swap', 1),
                            ('ephemeral', 1), ('name', 'other'), ('is_public', True)):
            rsrc = self._created()
            props = copy.deepcopy(rsrc.t._properties)
            props[prop] = value
            self.assertRaises(resource.UpdateReplace, scheduler.TaskRunner(
                rsrc.update, rsrc.t.freeze(properties=props)))
            self.assertEqual([], self.flavor.calls, prop)

    def test_update_allowed_only_where_nova_allows(self):
        allowed = {name for name, schema in gpu_flavor.GpuFlavor.properties_schema.items()
                   if schema.update_allowed}
        self.assertEqual({'gpu_mode', 'gpu_model', 'pci_alias', 'gpu_count', 'vgpu_trait',
                          'tenants', 'numa_affinity_policy', 'hide_hypervisor_id',
                          'extra_specs'}, allowed)

    def test_delete(self):
        rsrc = self._created()
        scheduler.TaskRunner(rsrc.delete)()
        self.assertEqual((rsrc.DELETE, rsrc.COMPLETE), rsrc.state)
        self.nova.flavors.delete.assert_called_once_with('f-1')

    def test_delete_gone_flavor(self):
        rsrc = self._created()
        self.nova.flavors.delete.side_effect = nova_exceptions.NotFound(404)
        scheduler.TaskRunner(rsrc.delete)()
        self.assertEqual((rsrc.DELETE, rsrc.COMPLETE), rsrc.state)

    def test_delete_after_failed_create(self):
        self.nova.flavors.create.side_effect = nova_exceptions.Forbidden(403)
        rsrc = self.make()
        self.assertRaises(exception.ResourceFailure, scheduler.TaskRunner(rsrc.create))
        self.assertIsNone(rsrc.resource_id)
        scheduler.TaskRunner(rsrc.delete)()
        self.assertEqual((rsrc.DELETE, rsrc.COMPLETE), rsrc.state)
        self.nova.flavors.delete.assert_not_called()

    def test_live_data_hides_gpu_keys(self):
        rsrc = self._created(extra_specs={'hw:cpu_policy': 'dedicated'})
        live = rsrc.parse_live_resource_data(rsrc.properties, rsrc.get_live_resource_data())
        self.assertEqual({'extra_specs': {'hw:cpu_policy': 'dedicated'}}, live)


class GpuFlavorValidateTest(GpuFlavorTestBase):
    """Every bad input fails validation naming the property, the value and what is accepted."""

    scenarios = [
        ('unknown model', dict(props=dict(gpu_model='X100'), path='gpu_model',
                               expect=["'X100'", 'P100-PCIE-16GB', 'H200-SXM5-141GB'])),
        ('alias with colon', dict(props=dict(pci_alias='p100:1'), path='pci_alias',
                                  expect=["'p100:1'", 'without ":" or ","'])),
        ('alias with comma', dict(props=dict(pci_alias='a,b'), path='pci_alias',
                                  expect=["'a,b'", 'without ":" or ","'])),
        ('alias blank', dict(props=dict(pci_alias=' p100'), path='pci_alias',
                             expect=["' p100'", 'leading or trailing blanks'])),
        ('count 0', dict(props=dict(gpu_count=0), path='gpu_count',
                         expect=['0 is out of range', 'min: 1', 'max: 16'])),
        ('count 17', dict(props=dict(gpu_count=17), path='gpu_count',
                          expect=['17 is out of range', 'min: 1', 'max: 16'])),
        ('vgpu count 2', dict(props=dict(gpu_mode='vgpu', gpu_model=None, gpu_count=2),
                              path='gpu_count',
                              expect=['2', 'one virtual GPU per instance'])),
        ('negative ram', dict(props=dict(ram=-1), path='ram',
                              expect=['-1 is out of range', 'min: 1'])),
        ('zero vcpus', dict(props=dict(vcpus=0), path='vcpus',
                            expect=['0 is out of range', 'min: 1'])),
        ('negative disk', dict(props=dict(disk=-5), path='disk',
                               expect=['-5 is out of range', 'min: 0'])),
        ('conflicting extra spec', dict(
            props=dict(extra_specs={'pci_passthrough:alias': 'p100:2'}),
            path='extra_specs.pci_passthrough:alias',
            expect=["'p100:2'", 'set from the GPU properties'])),
        ('conflicting vgpu spec', dict(
            props=dict(extra_specs={'resources:VGPU': '1'}),
            path='extra_specs.resources:VGPU', expect=["'1'", 'set from the GPU properties'])),
        ('conflicting numa spec', dict(
            props=dict(extra_specs={'hw:pci_numa_affinity_policy': 'legacy'}),
            path='extra_specs.hw:pci_numa_affinity_policy',
            expect=["'legacy'", 'numa_affinity_policy'])),
        ('alias and model missing', dict(props=dict(gpu_model=None), path='gpu_model',
                                         expect=['None', 'pci_alias', 'P100-PCIE-16GB'])),
        ('bad mode', dict(props=dict(gpu_mode='sriov'), path='gpu_mode',
                          expect=['"sriov" is not an allowed value', 'passthrough', 'vgpu'])),
        ('bad trait', dict(props=dict(gpu_mode='vgpu', gpu_model=None, vgpu_trait='nvidia'),
                           path='vgpu_trait', expect=['"nvidia" does not match pattern',
                                                      'CUSTOM_'])),
        ('trait on passthrough', dict(props=dict(vgpu_trait='CUSTOM_NVIDIA_11'),
                                      path='vgpu_trait',
                                      expect=["'CUSTOM_NVIDIA_11'", 'passthrough'])),
        ('alias on vgpu', dict(props=dict(gpu_mode='vgpu', pci_alias='p100'),
                               path='pci_alias', expect=["'p100'", 'vgpu'])),
        ('ram above nova', dict(props=dict(ram=2 ** 31), path='ram',
                                expect=['2147483648 is out of range', 'max: 2147483647'])),
        ('vcpus above nova', dict(props=dict(vcpus=2 ** 31), path='vcpus',
                                  expect=['2147483648 is out of range', 'max: 2147483647'])),
        ('disk above nova', dict(props=dict(disk=2 ** 31), path='disk',
                                 expect=['2147483648 is out of range', 'max: 2147483647'])),
        ('swap above nova', dict(props=dict(swap=2 ** 31), path='swap',
                                 expect=['2147483648 is out of range', 'max: 2147483647'])),
        ('name with blank end', dict(props=dict(name='gpu.p100 '), path='name',
                                     expect=["Invalid value 'gpu.p100 ' for name",
                                             'a blank at its start or end',
                                             "printable characters", "e.g. 'gpu.p100'"])),
        ('name unprintable', dict(props=dict(name='gpu\tp100'), path='name',
                                  expect=["Invalid value 'gpu\\tp100' for name",
                                          "the unprintable character '\\t'",
                                          "e.g. 'gpup100'"])),
        ('name too long', dict(props=dict(name='g' * 256), path='name',
                               expect=['length (256) is out of range', 'max: 255'])),
        ('bad numa', dict(props=dict(numa_affinity_policy='strict'),
                          path='numa_affinity_policy',
                          expect=['"strict" is not an allowed value', 'socket'])),
    ]

    def test_validate_fails(self):
        rsrc = self.make(**self.props)
        exc = self.assertRaises(exception.StackValidationFailed, rsrc.validate)
        message = str(exc)
        self.assertIn('resources.flavor.properties.%s' % self.path, message)
        for text in self.expect:
            self.assertIn(text, message)
        self.nova.flavors.create.assert_not_called()


class GpuFlavorAdminOnlyTest(GpuFlavorTestBase):

    def test_non_admin_is_refused_before_anything_is_created(self):
        rsrc = self.make(admin=False)
        exc = self.assertRaises(exception.StackValidationFailed, rsrc.validate)
        self.assertIn('only cloud administrators may create flavors', str(exc))
        self.assertIn('is not an admin', str(exc))
        self.nova.flavors.create.assert_not_called()

    def test_admin_passes(self):
        self.assertIsNone(self.make(admin=True).validate())

    def test_names_nova_takes_pass(self):
        for name in ('gpu.p100', 'GPU P100 x1', 'gpu-\u00e9t\u00e9'):
            self.assertIsNone(self.make(admin=True, name=name).validate())
