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

"""The deployment guide's flow end to end: hot/examples/gpu_lab_admin.yaml, then gpu_lab_user.yaml.

The administrator makes a project, a user with the member role, a provider network with a
floating-IP pool, the project's network and router, and a two-GPU flavor with OS::GPU::Flavor;
then the new user, logged in with the password the administrator chose, makes a port with a fixed
address, a security group for ping and SSH, a floating IP and a GPU server whose sample job runs
the peer-to-peer test. Both stacks are deleted again and nothing is left: no project, no user, no
network, port, floating IP, security group, router, flavor or server.
"""

import ipaddress
import os
import secrets

from heatclient import client as heat_client
import openstack
import yaml

from tests.functional import base
from tests.functional import test_gpu_stacks
from tools.localcloud import cloud as localcloud

ADMIN_TEMPLATE = 'hot/examples/gpu_lab_admin.yaml'
USER_TEMPLATE = 'hot/examples/gpu_lab_user.yaml'


class TestGuideLab(test_gpu_stacks.GpuStackTestCase):

    def user_session(self, *, user: str, password: str, project_id: str):
        """An openstacksdk connection and a heat client as the lab's new user."""
        config = self.cloud.cloud_config(admin=False)
        auth = dict(config['auth'], username=user, password=password, project_id=project_id)
        del auth['project_name'], auth['project_domain_name']
        conn = openstack.connect(load_yaml_config=False, load_envvars=False,
                                 **dict(config, auth=auth))
        self.addCleanup(conn.close)
        heat = heat_client.Client('1', session=conn.session, region_name=localcloud.REGION,
                                  interface='public')
        return conn, heat

    def test_admin_then_user_template(self):
        name = self.unique_name('lab')
        password = secrets.token_urlsafe(16)
        admin_tmpl = self.template(ADMIN_TEMPLATE)
        admin_params = {
            'project_name': name, 'user_name': name + '-user', 'user_password': password,
            # A physical network of its own: a flat network is the only one on its physnet.
            'physical_network': name, 'gpu_model': 'P100-PCIE-16GB', 'gpu_count': 2,
        }
        admin_stack = self.launch(test_gpu_stacks.template_fields(ADMIN_TEMPLATE),
                                  parameters=admin_params, client=self.heat_admin)
        stack = self.wait_for_stack(admin_stack, 'CREATE_COMPLETE', client=self.heat_admin)
        made = self.outputs(stack)

        # What the administrator made, as nova, keystone and neutron record it.
        project = self.admin.identity.get_project(made['project_id'])
        self.assertEqual(name, project.name)
        user = self.admin.identity.find_user(made['user_name'], ignore_missing=False)
        roles = [a.role['name'] for a in self.admin.identity.role_assignments(
            user_id=user.id, scope_project_id=project.id, include_names=True)]
        self.assertEqual(['member'], roles)
        flavor = self.admin.compute.find_flavor(made['flavor'], ignore_missing=False,
                                                is_public=None)
        sizes = admin_tmpl['resources']['flavor']['properties']
        self.assertEqual((sizes['vcpus'], sizes['ram'], sizes['ephemeral']),
                         (flavor.vcpus, flavor.ram, flavor.ephemeral))
        self.assertEqual((8, 16384, 40), (flavor.vcpus, flavor.ram, flavor.ephemeral))
        self.assertEqual('p100:2', flavor.extra_specs['pci_passthrough:alias'])
        self.assertFalse(flavor.is_public)
        self.assertEqual([project.id], [a['tenant_id'] for a in
                                        self.admin.compute.get_flavor_access(flavor)])
        provider = self.admin.network.get_network(made['external_network'])
        self.assertTrue(provider.is_router_external)
        self.assertEqual(('flat', name), (provider.provider_network_type,
                                          provider.provider_physical_network))
        tenant_net = self.admin.network.get_network(made['network'])
        self.assertEqual(project.id, tenant_net.project_id)
        routers = [r for r in self.admin.network.routers(project_id=project.id)]
        self.assertEqual(1, len(routers), routers)
        self.assertEqual(provider.id, routers[0].external_gateway_info['network_id'])

        # As the new user, with the password: the guide's user template.
        conn, heat = self.user_session(user=made['user_name'], password=password,
                                       project_id=project.id)
        user_params = {'flavor': made['flavor'], 'image': test_gpu_stacks.IMAGE,
                       'network': made['network'], 'subnet': made['subnet'],
                       'external_network': made['external_network']}
        user_stack = self.launch(test_gpu_stacks.template_fields(USER_TEMPLATE),
                                 parameters=user_params, client=heat)
        stack = self.wait_for_stack(user_stack, 'CREATE_COMPLETE', client=heat)
        outputs = self.outputs(stack)
        fixed = self.template(USER_TEMPLATE)['parameters']['fixed_ip']['default']
        self.assertEqual(fixed, outputs['fixed_ip'])
        pool = admin_tmpl['parameters']
        floating = ipaddress.ip_address(outputs['floating_ip'])
        self.assertTrue(ipaddress.ip_address(pool['provider_pool_start']['default']) <= floating
                        <= ipaddress.ip_address(pool['provider_pool_end']['default']), floating)
        self.assertEqual('ssh USER@%s' % floating, outputs['ssh'])
        server_id = [r.physical_resource_id for r in heat.resources.list(user_stack)
                     if r.resource_name == 'instance'][0]
        self.assertEqual(2, len(self.claims(server_id)))
        self.assert_gpus_match_claim(outputs['gpus'], server_id)
        results = outputs['sample_results']
        self.assertEqual([], [r for r in results if not r['passed']])
        p2p = [r for r in results if r['name'] == 'p2p']
        self.assertEqual({0, 1}, {r['gpu_index'] for r in p2p}, p2p)
        port = list(conn.network.ports(device_id=server_id))
        self.assertEqual(['ACTIVE'], [p.status for p in port])
        self.assertEqual([fixed], [ip['ip_address'] for ip in port[0].fixed_ips])

        # Both deleted, the user's stack first: nothing of the lab is left.
        self.delete_stack(user_stack, client=heat)
        self.assert_server_released(server_id)
        self.delete_stack(admin_stack, client=self.heat_admin)
        self.assertIsNone(self.admin.identity.find_project(project.id))
        self.assertIsNone(self.admin.identity.find_user(user.id))
        self.assertIsNone(self.admin.compute.find_flavor(flavor.id, is_public=None))
        # Listed whole and filtered here: neutron makes a project's default security group when
        # asked for the groups of that project, even a deleted one.
        net = self.admin.network
        for kind, found in (('networks', net.networks()), ('ports', net.ports()),
                            ('floating IPs', net.ips()), ('routers', net.routers()),
                            ('security groups', net.security_groups())):
            self.assertEqual([], [x.id for x in found if x.project_id == project.id], kind)
        self.assertIsNone(self.admin.network.find_network(provider.id))

    @staticmethod
    def template(path: str) -> dict:
        with open(os.path.join(base.REPO, path), encoding='utf-8') as f:
            return yaml.safe_load(f)
