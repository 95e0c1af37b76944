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

"""The local cloud itself: nova sees the GPUs, schedules on them, and the guest runs user data.

Neutron is real: the network service is in the catalog, the cloud's own networks exist, and a
server booted on ``private`` gets a port that ML2 binds on its simulated host.
"""

import collections
import ipaddress
import json
import os
import socket
import textwrap

from tests.functional import base
from tools.localcloud import cloud as localcloud

# A plain HOT stack (no plugin): a GPU server whose user data counts the NVIDIA devices it sees on
# its PCI bus and signals the count to a wait condition with curl, as a real VM would. The stack
# can only complete when the guest really ran the script and reached Heat's API.
WAIT_TEMPLATE = textwrap.dedent('''\
    heat_template_version: 2021-04-16
    parameters:
      flavor: {type: string}
      image: {type: string, default: ubuntu-22.04-gpu}
    resources:
      handle:
        type: OS::Heat::WaitConditionHandle
      wait:
        type: OS::Heat::WaitCondition
        properties:
          handle: {get_resource: handle}
          timeout: 300
      server:
        type: OS::Nova::Server
        properties:
          flavor: {get_param: flavor}
          image: {get_param: image}
          networks: [{allocate_network: none}]
          user_data_format: RAW
          user_data:
            str_replace:
              template: |
                #!/bin/sh
                set -e
                ids=$(lspci -n -d 10de: | awk '{print $3}' | sort | tr '\\n' ' ')
                n=$(lspci -n -d 10de: | wc -l)
                . "$HEAT_GPU_ROOT/etc/os-release"
                reason="$ID $VERSION_ID: $ids"
                body=$(printf '{"status":"SUCCESS","reason":"%s","data":"%s"}' "$reason" "$n")
                wc_notify --data-binary "$body"
              params:
                wc_notify: {get_attr: [handle, curl_cli]}
    outputs:
      server_id:
        value: {get_resource: server}
      gpu_count:
        value: {get_attr: [wait, data]}
    ''')


class TestLocalCloud(base.FunctionalTestCase):

    def test_two_gpu_hypervisors_are_up(self):
        hypervisors = list(self.admin.compute.hypervisors(details=True))
        self.assertEqual(['gpu-host-1', 'gpu-host-2'],
                         sorted(h.name for h in hypervisors))
        self.assertEqual({'up'}, {h.state for h in hypervisors})
        computes = [s for s in self.admin.compute.services() if s.binary == 'nova-compute']
        self.assertEqual({('gpu-host-1', 'up'), ('gpu-host-2', 'up')},
                         {(s.host, s.state) for s in computes})

    def test_pci_tracker_and_placement_know_the_gpus(self):
        by_host = collections.defaultdict(collections.Counter)
        for dev in self.pci_devices():
            by_host[dev['host']][(dev['vendor_id'], dev['product_id'], dev['dev_type'])] += 1
        self.assertEqual({'gpu-host-1': {('10de', '15f8', 'type-PCI'): 4},
                          'gpu-host-2': {('10de', '20b5', 'type-PCI'): 2,
                                         ('10de', '15f8', 'type-PCI'): 2}},
                         {h: dict(c) for h, c in by_host.items()})
        numa = {(d['host'], d['address']): d['numa_node'] for d in self.pci_devices()}
        self.assertEqual('0', numa[('gpu-host-1', '0000:04:00.0')])
        self.assertEqual('1', numa[('gpu-host-1', '0000:85:00.0')])

        # [pci] report_in_placement: one child provider per device, under its compute node.
        providers = self.placement_get('/resource_providers')['resource_providers']
        roots = {p['uuid']: p['name'] for p in providers if p['parent_provider_uuid'] is None}
        totals = collections.defaultdict(collections.Counter)
        for p in providers:
            if p['parent_provider_uuid'] is None:
                continue
            inventories = self.placement_get(
                '/resource_providers/%s/inventories' % p['uuid'])['inventories']
            for rc, inv in inventories.items():
                totals[roots[p['parent_provider_uuid']]][rc] += inv['total']
        self.assertEqual({'gpu-host-1': {'CUSTOM_PCI_10DE_15F8': 4},
                          'gpu-host-2': {'CUSTOM_PCI_10DE_20B5': 2, 'CUSTOM_PCI_10DE_15F8': 2}},
                         {h: dict(c) for h, c in totals.items()})

    def test_gpu_server_stack_signals_and_frees_its_gpu(self):
        flavor = self.create_gpu_flavor(alias='p100', count=1)
        stack_id = self.create_stack(template=WAIT_TEMPLATE, parameters={'flavor': flavor.id})
        stack = self.wait_for_stack(stack_id, 'CREATE_COMPLETE')
        outputs = {o['output_key']: o['output_value'] for o in stack.outputs}
        server_id = outputs['server_id']

        # The guest saw exactly one NVIDIA device and said so through the wait condition.
        self.assertEqual({'1': '1'}, json.loads(outputs['gpu_count']))
        events = [e.resource_status_reason for e in
                  self.heat_demo.events.list(stack_id, resource_name='handle')]
        self.assertIn('Signal: status:SUCCESS reason:ubuntu 22.04: 10de:15f8 ', events)

        # Nova's PCI tracker claimed one P100 on the host the scheduler chose.
        server = self.admin.compute.get_server(server_id)
        claimed = self.pci_devices(instance_uuid=server_id)
        self.assertEqual(1, len(claimed), claimed)
        self.assertEqual(('10de', '15f8', 'allocated', server.compute_host),
                         (claimed[0]['vendor_id'], claimed[0]['product_id'],
                          claimed[0]['status'], claimed[0]['host']))
        # ... and placement holds the matching allocation against that device's provider.
        allocations = self.placement_get('/allocations/%s' % server_id)['allocations']
        pci_allocs = [a['resources'] for a in allocations.values()
                      if 'CUSTOM_PCI_10DE_15F8' in a['resources']]
        self.assertEqual([{'CUSTOM_PCI_10DE_15F8': 1}], pci_allocs)

        # The console log is the guest stand-in's: it booted with that very device.
        console = self.admin.compute.get_server_console_output(server_id)['output']
        self.assertIn('1 PCI device(s): %s 10de:15f8' % claimed[0]['address'], console)

        self.delete_stack(stack_id)
        self.assert_gone(server_id)

    def test_two_a100_land_on_the_a100_host(self):
        flavor = self.create_gpu_flavor(alias='a100-80g', count=2)
        server = self.demo.compute.create_server(
            name=self.unique_name('server'), flavor_id=flavor.id,
            image_id=self.demo.image.find_image('rocky-9-gpu', ignore_missing=False).id,
            networks='none')
        self.addCleanup(self._delete_server, server.id)
        server = self.wait_for_server(server.id)
        self.assertEqual('ACTIVE', server.status, server.fault)
        self.assertEqual('gpu-host-2', server.compute_host)
        claimed = self.pci_devices(instance_uuid=server.id)
        self.assertEqual(['0000:17:00.0', '0000:31:00.0'],
                         sorted(d['address'] for d in claimed))
        self.assertEqual({'20b5'}, {d['product_id'] for d in claimed})

    def test_five_p100_is_no_valid_host(self):
        flavor = self.create_gpu_flavor(alias='p100', count=5)
        server = self.demo.compute.create_server(
            name=self.unique_name('server'), flavor_id=flavor.id,
            image_id=self.demo.image.find_image('ubuntu-22.04-gpu', ignore_missing=False).id,
            networks='none')
        self.addCleanup(self._delete_server, server.id)
        server = self.wait_for_server(server.id)
        self.assertEqual('ERROR', server.status)
        self.assertIn('No valid host', server.fault['message'])
        self.assertEqual([], self.pci_devices(instance_uuid=server.id))

    def test_network_service_and_the_clouds_own_networks(self):
        catalog = {e['type']: e for e in self.demo.session.auth.get_access(
            self.demo.session).service_catalog.catalog}
        self.assertIn('network', catalog)
        urls = {e['interface']: e['url'] for e in catalog['network']['endpoints']
                if e['region_id'] == localcloud.REGION}
        self.assertEqual(self.cloud.url('neutron'), urls['public'])

        net = self.demo.network
        public = net.find_network('public', ignore_missing=False)
        self.assertTrue(public.is_router_external)
        [pub_subnet] = list(net.subnets(network_id=public.id))
        self.assertEqual('203.0.113.0/24', pub_subnet.cidr)
        self.assertTrue(pub_subnet.allocation_pools)

        private = net.find_network('private', ignore_missing=False)
        self.assertEqual(self.demo.current_project_id, private.project_id)
        [subnet] = list(net.subnets(network_id=private.id))
        self.assertEqual(('10.0.0.0/24', []), (subnet.cidr, subnet.dns_nameservers))

        router = net.find_router('router1', ignore_missing=False)
        self.assertEqual(public.id, router.external_gateway_info['network_id'])
        interfaces = [p for p in net.ports(device_id=router.id)
                      if p.device_owner == 'network:router_interface']
        self.assertEqual([subnet.id], [ip['subnet_id'] for p in interfaces
                                       for ip in p.fixed_ips])
        self.assertEqual(['default'], [g.name for g in net.security_groups(
            project_id=self.demo.current_project_id)])

    def test_server_on_private_gets_a_bound_active_port(self):
        interfaces = socket.if_nameindex()
        flavor = self.create_gpu_flavor(alias='p100', count=1)
        private = self.demo.network.find_network('private', ignore_missing=False)
        server = self.demo.compute.create_server(
            name=self.unique_name('server'), flavor_id=flavor.id,
            image_id=self.demo.image.find_image('debian-12-gpu', ignore_missing=False).id,
            networks=[{'uuid': private.id}])
        self.addCleanup(self._delete_server, server.id)
        server = self.wait_for_server(server.id)
        self.assertEqual('ACTIVE', server.status, server.fault)

        # ML2 bound the port on the server's simulated host with our driver's vif type, and
        # the driver put it ACTIVE (no agent wires anything).
        [port] = list(self.admin.network.ports(device_id=server.id))
        self.assertEqual(('ACTIVE', server.compute_host, 'ovs'),
                         (port.status, port.binding_host_id, port.binding_vif_type))
        self.assertIn(port.binding_host_id, self.cloud.compute_hosts)
        self.assertIn(ipaddress.ip_address(port.fixed_ips[0]['ip_address']),
                      ipaddress.ip_network('10.0.0.0/24'))
        addresses = self.demo.compute.get_server(server.id).addresses
        self.assertEqual([port.fixed_ips[0]['ip_address']],
                         [a['addr'] for a in addresses['private']])

        # The guest shares the host's network: its config drive describes no NIC (cloud-init
        # would look for one with the port's MAC and fail), and the host's interfaces are left
        # alone.
        drive = self.cloud.path('guests', server.id, 'config-drive', 'openstack', 'latest',
                                'network_data.json')
        self.wait_until(lambda: os.path.exists(drive), what='the config drive', timeout=60)
        with open(drive, encoding='utf-8') as f:
            self.assertEqual([], json.load(f).get('links', []))
        self.assertEqual(interfaces, socket.if_nameindex())

        # A floating IP from public reaches the port through router1 (database objects only).
        fip = self.demo.network.create_ip(
            floating_network_id=self.demo.network.find_network('public').id, port_id=port.id)
        self.addCleanup(self.demo.network.delete_ip, fip, ignore_missing=True)
        self.assertEqual(port.fixed_ips[0]['ip_address'], fip.fixed_ip_address)
        self.demo.network.delete_ip(fip)

        self._delete_server(server.id)
        self.wait_until(lambda: not list(self.admin.network.ports(device_id=server.id)),
                        what='neutron deleting the port of server %s' % server.id, timeout=60)
        self.assert_server_released(server.id)

    def _delete_server(self, server_id: str) -> None:
        self.admin.compute.delete_server(server_id, ignore_missing=True)
        self.wait_until(lambda: self.server_gone(server_id),
                        what='deletion of server %s' % server_id, timeout=120)
