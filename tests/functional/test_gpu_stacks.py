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

"""The GPU stacks end to end: hot/ templates on the local cloud, checked against nova's own records.

Every stack is created from the real files the way ``openstack stack create -t ... -e ...`` sends
them (heatclient's template_utils build ``template``, ``files`` and ``environment``). What a stack
reports (GPU PCI addresses, models, GPU counts) is compared with nova's PCI tracker (table
``pci_devices``) and placement, and after every delete nothing may be left: no server, no PCI
claim, no placement allocation, no stack, no flavor.
"""

import copy
import json
import os
import textwrap
from typing import Any, Sequence

from heatclient.common import template_utils
from heatclient import exc as heat_exc
import yaml

from heat_gpu import catalog
from tests.functional import base
from tests import tenant_user_data
from tools.localcloud import cloud

IMAGE = 'ubuntu-22.04-gpu'
PREBAKED_IMAGE = 'ubuntu-22.04-cuda-prebaked'
PORTABLE_ENV = 'environments/portable.yaml'
# The demo project's network and the external one, as the local cloud makes them.
TENANT_NETWORK = cloud.PRIVATE_NETWORK['name']
EXTERNAL_NETWORK = cloud.PUBLIC_NETWORK['name']

# One CudaInstance and nothing else, for the cases the tenant template has no parameter for
# (the mirror: the local cloud's, or one of its faults).
BARE_INSTANCE = textwrap.dedent('''\
    heat_template_version: 2016-10-14
    parameters:
      flavor: {type: string}
      image: {type: string}
      mirror_url: {type: string}
    resources:
      instance:
        type: OS::GPU::CudaInstance
        properties:
          flavor: {get_param: flavor}
          image: {get_param: image}
          networks: [{allocate_network: none}]
          mirror_url: {get_param: mirror_url}
          bootstrap_timeout: 300
    outputs:
      server_id:
        value: {get_resource: instance}
    ''')


def template_fields(template: str, *, environments: Sequence[str] = ()) -> dict:
    """``template``, ``files``, ``environment`` (+ ``environment_files``) as the CLI sends them.

    ``template`` and ``environments`` are paths relative to the repository.
    """
    files, body = template_utils.process_template_path(os.path.join(base.REPO, template))
    env_list: list[str] = []
    env_files, env = template_utils.process_multiple_environments_and_files(
        env_paths=[os.path.join(base.REPO, path) for path in environments],
        env_list_tracker=env_list)
    fields = {'template': body, 'files': {**files, **env_files}, 'environment': env}
    if env_list:
        fields['environment_files'] = env_list
    return fields


def without_plugin(fields: dict) -> dict:
    """``fields`` with the OS::GPU::* types renamed so that only the provider templates serve them.

    On a heat without the plugin, ``environments/portable.yaml`` maps the OS::GPU::* names to the
    provider templates directly. This cloud's heat has the plugin loaded, and heat treats a template
    mapped over a type it already has a class for as a stand-in of that class (a "facade") and
    demands the same properties and attributes, which plain HOT cannot give (e.g. the server's
    list of network maps). Renaming the types in the template and in the registry keeps the
    plugin's classes out of the stack: everything then runs through the provider templates, the
    same files a cloud without the plugin uses.
    """
    def rename(text: str) -> str:
        return text.replace('OS::GPU::', 'Portable::GPU::')

    env = copy.deepcopy(fields['environment'])
    env['resource_registry'] = {rename(k): v for k, v in env['resource_registry'].items()}
    # Nested templates (heat_gpu/templates/*.yaml) use the types too; scripts and sources stay
    # untouched.
    files = {k: rename(v) if k.endswith('.yaml') else v for k, v in fields['files'].items()}
    return {**fields, 'template': json.loads(rename(json.dumps(fields['template']))),
            'environment': env, 'files': files}


class GpuStackTestCase(base.FunctionalTestCase):
    """Helpers shared by the GPU stack tests."""

    def launch(self, fields: dict, *, parameters: dict, client: Any = None) -> str:
        """Create a stack from ``template_fields`` output; deleted again at cleanup.

        A template with a ``network`` parameter gets the demo project's network unless
        *parameters* names one (the floating IP network keeps its default, the cloud's external
        network).
        """
        client = client or self.heat_demo
        template = fields['template']
        if isinstance(template, str):
            template = yaml.safe_load(template)
        if 'network' in (template.get('parameters') or {}) and 'network' not in parameters:
            parameters = dict(parameters, network=TENANT_NETWORK)
        resp = client.stacks.create(stack_name=self.unique_name('stack'), parameters=parameters,
                                    timeout_mins=10, **fields)
        stack_id = resp['stack']['id']
        self.addCleanup(self.delete_stack, stack_id, client=client)
        return stack_id

    @staticmethod
    def outputs(stack: Any) -> dict:
        return {o['output_key']: o['output_value'] for o in stack.outputs}

    def claims(self, server_id: str) -> list[tuple[str, str]]:
        """(PCI address, vendor:product) of the devices nova's PCI tracker gave the server."""
        return sorted((d['address'], '%s:%s' % (d['vendor_id'], d['product_id']))
                      for d in self.pci_devices(instance_uuid=server_id)
                      if d['status'] == 'allocated')

    def instance_attributes(self, stack_id: str, *names: str) -> dict:
        """Attributes of the stack's ``instance`` (a server's ``show`` hides the others)."""
        return self.heat_demo.resources.get(stack_id, 'instance', with_attr=list(names)).attributes

    def event_reasons(self, stack_id: str, resource_name: str) -> list[str]:
        return [e.resource_status_reason or '' for e in
                self.heat_demo.events.list(stack_id, resource_name=resource_name)]

    def assert_gpus_match_claim(self, gpus: list[dict], server_id: str) -> None:
        """The GPUs the guest reported are exactly the devices nova assigned to the server."""
        claimed = self.claims(server_id)
        self.assertNotEqual([], claimed, 'nova holds no PCI device for %s' % server_id)
        self.assertEqual(claimed, sorted((g['pci_address'], g['pci_id']) for g in gpus))
        for gpu in gpus:
            self.assertEqual(catalog.by_pci_id(gpu['pci_id']).name, gpu['name'], gpu)

    def assert_samples_passed(self, outputs: dict, *, gpus: int) -> None:
        """Every sample passed on every GPU, and the summary line says so."""
        results = outputs['sample_results']
        self.assertEqual([], [r for r in results if not r['passed']])
        # A result about no single GPU (p2p skipped on one GPU) has gpu_index null.
        self.assertEqual(set(range(gpus)), {r['gpu_index'] for r in results} - {None})
        # The plugin counts samples ("4/4 passed"); the plain-HOT provider counts results
        # ("7/7 samples passed"): all of them passed either way.
        self.assertRegex(outputs['sample_summary'], r'^(\d+)/\1 (samples )?passed\b')

    def assert_network_access(self, outputs: dict, server_id: str, *, floating: bool = True,
                              tcp_ports: Sequence[int] = (22,)) -> None:
        """The server's port, security group and floating IP are what the outputs say.

        Its one port is bound on its host, in a security group that opens exactly *tcp_ports*
        and ping, with the fixed address of the outputs; a floating IP from the external network
        points at it (or none, with *floating* false).
        """
        net = self.admin.network
        ports = list(net.ports(device_id=server_id))
        self.assertEqual(1, len(ports), ports)
        port = ports[0]
        private = net.find_network(TENANT_NETWORK)
        self.assertEqual(private.id, port.network_id)
        self.assertEqual('ACTIVE', port.status)
        server = self.admin.compute.get_server(server_id)
        self.assertEqual(server.compute_host, port.binding_host_id)
        self.assertEqual([outputs['fixed_ip']], [ip['ip_address'] for ip in port.fixed_ips])
        rules = [r for group in port.security_group_ids
                 for r in net.security_group_rules(security_group_id=group)
                 if r.direction == 'ingress']
        opened = sorted(r.port_range_min for r in rules
                        if r.protocol == 'tcp' and r.port_range_min == r.port_range_max)
        self.assertEqual(sorted(tcp_ports), opened)
        self.assertIn('icmp', [r.protocol for r in rules])
        ips = list(net.ips(port_id=port.id))
        if floating:
            public = net.find_network(EXTERNAL_NETWORK)
            self.assertEqual([outputs['floating_ip']], [ip.floating_ip_address for ip in ips])
            self.assertEqual(public.id, ips[0].floating_network_id)
            self.assertEqual(outputs['fixed_ip'], ips[0].fixed_ip_address)
            self.assertEqual('ssh USER@%s' % outputs['floating_ip'], outputs['ssh'])
        else:
            self.assertEqual([], ips)
            self.assertIn('no floating IP', outputs['floating_ip'])
            self.assertEqual('ssh USER@%s' % outputs['fixed_ip'], outputs['ssh'])

    def stack_servers(self, stack_id: str) -> list[str]:
        """IDs of the nova servers in the stack tree."""
        return [r.physical_resource_id for r in
                self.heat_demo.resources.list(stack_id, nested_depth=3)
                if r.resource_type in ('OS::Nova::Server', 'OS::GPU::CudaInstance')
                and r.physical_resource_id and '/' not in r.physical_resource_id
                and not any(link['rel'] == 'nested' for link in r.links)]


class TestAdminFlavorSet(GpuStackTestCase):

    def test_flavor_set_private_to_demo_and_deleted_with_the_stack(self):
        prefix = self.unique_name('fl')
        demo_project = self.demo.current_project_id
        stack_id = self.launch(
            template_fields('hot/gpu_flavors.yaml'), client=self.heat_admin,
            parameters={'name_prefix': prefix, 'gpu_models': 'P100-PCIE-16GB',
                        'gpu_counts': '1,2', 'vcpus_per_gpu': 1, 'ram_per_gpu': 1024,
                        'disk': 10, 'tenants': demo_project})
        stack = self.wait_for_stack(stack_id, 'CREATE_COMPLETE', client=self.heat_admin)
        outputs = self.outputs(stack)
        model = catalog.by_key('P100-PCIE-16GB')
        expected = {'%s.p100-pcie-16gb.x%d' % (prefix, n): '%s:%d' % (model.alias, n)
                    for n in (1, 2)}
        self.assertEqual(sorted(expected), sorted(outputs['flavor_names']))

        in_nova = {f.name: f for f in self.admin.compute.flavors(is_public=None)
                   if f.name.startswith(prefix)}
        self.assertEqual(sorted(expected), sorted(in_nova))
        specs_out = dict(zip(outputs['flavor_ids'], outputs['extra_specs']))
        for name, alias in expected.items():
            flavor = in_nova[name]
            specs = self.admin.compute.fetch_flavor_extra_specs(flavor).extra_specs
            self.assertEqual(alias, specs['pci_passthrough:alias'], name)
            self.assertEqual(specs, specs_out[flavor.id], name)
            self.assertFalse(flavor.is_public, name)
            gpus = int(name.rsplit('x', 1)[1])
            self.assertEqual((gpus, gpus * 1024, 10), (flavor.vcpus, flavor.ram, flavor.disk))
            access = self.admin.compute.get_flavor_access(flavor)
            self.assertEqual([demo_project], [a['tenant_id'] for a in access], name)
            # The tenant sees the private flavor (Horizon's nova.flavor drop-down lists it).
            self.assertEqual(flavor.id, self.demo.compute.get_flavor(flavor.id).id)

        self.delete_stack(stack_id, client=self.heat_admin)
        self.assertEqual([], [f.name for f in self.admin.compute.flavors(is_public=None)
                              if f.name.startswith(prefix)])


class TestTenantInstance(GpuStackTestCase):

    def test_create_resize_to_two_gpus_and_delete(self):
        images_before = sorted(i.id for i in self.admin.image.images())
        one = self.create_gpu_flavor(alias='p100', count=1)
        two = self.create_gpu_flavor(alias='p100', count=2)
        stack_id = self.launch(template_fields('hot/gpu_instance.yaml'),
                               parameters={'flavor': one.id, 'image': IMAGE})
        stack = self.wait_for_stack(stack_id, 'CREATE_COMPLETE')
        outputs = self.outputs(stack)
        first = outputs['server_id']
        self.assert_network_access(outputs, first)
        self.assertEqual(1, len(outputs['gpus']), outputs['gpus'])
        self.assert_gpus_match_claim(outputs['gpus'], first)
        # P100 is Pascal (sm_60): CUDA 13 cannot build for it, the 12.x line is chosen.
        self.assertRegex(outputs['cuda_version'], r'^12\.\d+$')
        self.assertRegex(outputs['driver_version'], r'^\d{3}\.\d+(\.\d+)?$')
        instance = self.instance_attributes(stack_id, 'driver_version', 'cuda_version')
        self.assertEqual((outputs['driver_version'], outputs['cuda_version']),
                         (instance['driver_version'], instance['cuda_version']))
        self.assert_samples_passed(outputs, gpus=1)

        self.heat_demo.stacks.update(stack_id, existing=True, parameters={'flavor': two.id})
        stack = self.wait_for_stack(stack_id, 'UPDATE_COMPLETE')
        outputs = self.outputs(stack)
        second = outputs['server_id']
        # A new GPU set is proven again: CudaInstance replaces the server (flavor_update_policy
        # REPLACE) instead of resizing it, which would keep reporting the first boot's GPUs.
        self.assertNotEqual(first, second)
        server = self.admin.compute.get_server(second)
        self.assertEqual(two.name, server.flavor.name)
        self.assertEqual(2, len(self.claims(second)), self.claims(second))
        self.assertEqual({'10de:15f8'}, {pci_id for _, pci_id in self.claims(second)})
        allocations = self.placement_get('/allocations/%s' % second)['allocations']
        self.assertEqual(2, sum(a['resources'].get('CUSTOM_PCI_10DE_15F8', 0)
                                for a in allocations.values()), allocations)
        # The instance proves CUDA again on the new GPU set, and the samples run on both GPUs.
        self.assertEqual(2, len(outputs['gpus']), outputs['gpus'])
        self.assert_gpus_match_claim(outputs['gpus'], second)
        self.assert_samples_passed(outputs, gpus=2)
        # The new server has the same port, addresses and floating IP.
        self.assert_network_access(outputs, second)
        self.assert_server_released(first)

        self.delete_stack(stack_id)
        # heat still shows a deleted stack asked for by id (DELETE_COMPLETE), but lists it no more.
        try:
            status = self.heat_demo.stacks.get(stack_id).stack_status
        except heat_exc.HTTPNotFound:
            status = 'DELETE_COMPLETE'
        self.assertEqual('DELETE_COMPLETE', status)
        self.assertNotIn(stack_id, [s.id for s in self.heat_demo.stacks.list()])
        self.assert_server_released(second)
        self.assertEqual(images_before, sorted(i.id for i in self.admin.image.images()))

    def test_portable_environment_without_the_plugin(self):
        flavor = self.create_gpu_flavor(alias='p100', count=1)
        fields = without_plugin(template_fields('hot/gpu_instance.yaml',
                                                environments=[PORTABLE_ENV]))
        # The local cloud is air-gapped, and without the plugin's [heat_gpu] options nothing
        # gives the provider templates its mirror (environments/README.md): the pre-baked image
        # needs no download, so the provider path still runs end to end.
        # Without a floating IP: the server is reached on its fixed address.
        stack_id = self.launch(fields, parameters={'flavor': flavor.id,
                                                   'image': PREBAKED_IMAGE,
                                                   'external_network': ''})
        stack = self.wait_for_stack(stack_id, 'CREATE_COMPLETE')
        outputs = self.outputs(stack)
        server_id = outputs['server_id']
        self.assert_network_access(outputs, server_id, floating=False)
        self.assert_gpus_match_claim(outputs['gpus'], server_id)
        self.assert_samples_passed(outputs, gpus=1)

        # The OS::GPU::* resources are provider templates (nested stacks of plain HOT): the server
        # is an OS::Nova::Server inside the instance's nested stack, not the plugin's class.
        top = {r.resource_name: r for r in self.heat_demo.resources.list(stack_id)}
        for name in ('instance', 'samples'):
            self.assertIn('nested', [link['rel'] for link in top[name].links], name)
        nested = self.heat_demo.resources.list(top['instance'].physical_resource_id)
        servers = [r for r in nested if r.physical_resource_id == server_id]
        self.assertEqual(['OS::Nova::Server'], [r.resource_type for r in servers])
        everything = self.heat_demo.resources.list(stack_id, nested_depth=3)
        self.assertEqual([], [r.resource_name for r in everything
                              if r.resource_type.startswith(('OS::GPU::', 'Portable::GPU::'))
                              and 'nested' not in [link['rel'] for link in r.links]])
        registry = self.heat_demo.stacks.environment(stack_id)['resource_registry']
        self.assertTrue(
            registry['Portable::GPU::CudaInstance'].endswith('providers/cuda_instance.yaml'))

    def test_more_gpus_than_any_host_has(self):
        flavor = self.create_gpu_flavor(alias='p100', count=5)
        stack_id = self.launch(template_fields('hot/gpu_instance.yaml'),
                               parameters={'flavor': flavor.id, 'image': IMAGE})
        stack = self.wait_for_stack(stack_id, 'CREATE_FAILED')
        reason = stack.stack_status_reason
        # CudaInstance names the flavor and its GPU request next to nova's bare fault.
        self.assertIn("Invalid value '%s' (flavor %s) for flavor" % (flavor.id, flavor.name),
                      reason)
        self.assertIn('pci_passthrough:alias=p100:5', reason)
        self.assertIn('No valid host', reason)
        servers = self.stack_servers(stack_id)
        self.delete_stack(stack_id)
        for server_id in servers:
            self.assert_server_released(server_id)

    def test_bootstrap_failure_reports_reason_and_log(self):
        flavor = self.create_gpu_flavor(alias='p100', count=1)
        stack_id = self.launch({'template': BARE_INSTANCE},
                               parameters={'flavor': flavor.id, 'image': IMAGE,
                                           'mirror_url': self.cloud.url('mirror')
                                           + '/faults/package-install-fails'})
        stack = self.wait_for_stack(stack_id, 'CREATE_FAILED')
        attributes = self.instance_attributes(stack_id, 'bootstrap_status', 'failure_reason',
                                              'log_tail')
        self.assertEqual('FAILURE', attributes['bootstrap_status'])
        guest_reason = attributes['failure_reason']
        self.assertTrue(guest_reason)
        self.assertNotEqual([], attributes['log_tail'])
        self.assertIn(guest_reason, stack.stack_status_reason)
        self.assertIn(attributes['log_tail'][-1], stack.stack_status_reason)
        failed = [r for r in self.event_reasons(stack_id, 'instance') if guest_reason in r]
        self.assertNotEqual([], failed)
        self.assertIn('log lines:', failed[-1])
        servers = self.stack_servers(stack_id)
        self.assertEqual(1, len(servers), servers)
        self.delete_stack(stack_id)
        for server in servers:
            self.assert_server_released(server)

    def test_prebaked_image_skips_the_install(self):
        flavor = self.create_gpu_flavor(alias='p100', count=1)
        stack_id = self.launch({'template': BARE_INSTANCE},
                               parameters={'flavor': flavor.id, 'image': PREBAKED_IMAGE,
                                           'mirror_url': self.cloud.url('mirror')})
        stack = self.wait_for_stack(stack_id, 'CREATE_COMPLETE')
        attributes = self.instance_attributes(stack_id, 'bootstrap_status', 'phase_times', 'gpus')
        self.assertEqual('SUCCESS', attributes['bootstrap_status'])
        phases = attributes['phase_times']
        self.assertNotIn('reboot', phases)
        self.assertNotIn('install-driver', phases)
        events = ' '.join(self.event_reasons(stack_id, 'instance'))
        self.assertNotIn('phase reboot', events)
        self.assertIn('preinstalled', events)
        self.assert_gpus_match_claim(attributes['gpus'], self.outputs(stack)['server_id'])


TENANT_KINDS = tenant_user_data.KINDS

# Heat wants parameter, resource and output names apart: <kind>_data, <kind>_vm, <kind>.
TENANT_KINDS_TEMPLATE = {
    'heat_template_version': '2021-04-16',
    'parameters': dict({'flavor': {'type': 'string'}, 'image': {'type': 'string'}},
                       **{kind + '_data': {'type': 'string'} for kind in TENANT_KINDS}),
    'resources': {kind + '_vm': {'type': 'OS::GPU::CudaInstance', 'properties': {
        'flavor': {'get_param': 'flavor'}, 'image': {'get_param': 'image'},
        'networks': [{'allocate_network': 'none'}], 'bootstrap_timeout': 300,
        'user_data': {'get_param': kind + '_data'}}} for kind in TENANT_KINDS},
    'outputs': {kind: {'value': {'get_resource': kind + '_vm'}} for kind in TENANT_KINDS},
}


class TestTenantUserData(GpuStackTestCase):
    """The boot script and the tenant's own user data both apply, whatever the tenant passes."""

    def test_every_kind_of_tenant_user_data(self):
        flavor = self.create_gpu_flavor(alias='p100', count=1)
        parameters = {'flavor': flavor.id, 'image': IMAGE}
        parameters.update({kind + '_data': data for kind, (data, _) in TENANT_KINDS.items()})
        stack_id = self.launch({'template': TENANT_KINDS_TEMPLATE}, parameters=parameters)
        stack = self.wait_for_stack(stack_id, 'CREATE_COMPLETE')
        servers = self.outputs(stack)
        for kind, (_, files) in TENANT_KINDS.items():
            disk = self.cloud.path('guests', servers[kind], 'disk')
            self.assertTrue(os.path.isfile(os.path.join(disk, 'etc/heat-gpu/bootstrap.json')),
                            kind)
            for path, content in files.items():
                with open(os.path.join(disk, path.lstrip('/')), encoding='utf-8') as f:
                    self.assertEqual(content, f.read(), '%s: %s' % (kind, path))
        self.delete_stack(stack_id)
        for server_id in servers.values():
            self.assert_server_released(server_id)


class TestCluster(GpuStackTestCase):
    """hot/gpu_cluster.yaml from the command line: nodes on one network, one host each."""

    def test_spread_nodes_share_a_network_and_a_security_group(self):
        flavor = self.create_gpu_flavor(alias='p100', count=1)
        prefix = self.unique_name('node')
        stack_id = self.launch(template_fields('hot/gpu_cluster.yaml'),
                               parameters={'flavor': flavor.id, 'image': IMAGE,
                                           'node_count': 2, 'spread': True,
                                           'name_prefix': prefix})
        stack = self.wait_for_stack(stack_id, 'CREATE_COMPLETE')
        outputs = self.outputs(stack)
        self.assertTrue(outputs['all_passed'])
        names = outputs['names']
        self.assertEqual(['%s-0' % prefix, '%s-1' % prefix], names)
        servers = [self.admin.compute.find_server(n, all_projects=True, ignore_missing=False)
                   for n in names]
        # The anti-affinity server group put the nodes on different hosts.
        hosts = [s.compute_host for s in servers]
        self.assertEqual(2, len(set(hosts)), hosts)
        groups = [g for g in self.admin.compute.server_groups(all_projects=True)
                  if g.name == '%s-cluster' % prefix]
        self.assertEqual(1, len(groups), groups)
        self.assertEqual({s.id for s in servers}, set(groups[0].member_ids))
        net = self.admin.network
        ports = [list(net.ports(device_id=s.id)) for s in servers]
        self.assertEqual([1, 1], [len(p) for p in ports])
        ports = [p[0] for p in ports]
        self.assertEqual(outputs['addresses'], [p.fixed_ips[0]['ip_address'] for p in ports])
        # One security group between the nodes (every protocol from its own members) on both.
        shared = set(ports[0].security_group_ids) & set(ports[1].security_group_ids)
        self.assertEqual(1, len(shared), shared)
        rules = list(net.security_group_rules(security_group_id=shared.pop()))
        self.assertEqual({'tcp', 'udp', 'icmp'},
                         {r.protocol for r in rules if r.remote_group_id == r.security_group_id})
        # The first node alone has a floating IP, and the ssh line goes there.
        fips = [[ip.floating_ip_address for ip in net.ips(port_id=p.id)] for p in ports]
        self.assertEqual([[outputs['floating_ip']], []], fips)
        self.assertEqual('ssh USER@%s' % outputs['floating_ip'], outputs['ssh'])
        self.delete_stack(stack_id)
        for server in servers:
            self.assert_server_released(server.id)
