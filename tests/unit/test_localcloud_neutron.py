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

"""The local cloud's Neutron: its configuration, nova's, and the ML2 mechanism driver.

Neutron is real (ML2, no agents); the driver of ``tools/localcloud/localcloud_net`` binds ports on
the simulated compute hosts. No service is started here.
"""

import configparser
import importlib.metadata
import importlib.util
import json
import os
import stat
import sys

import fixtures
import testtools

from tools.localcloud import cloud as localcloud

NET_DIR = os.path.join(localcloud.HERE, 'localcloud_net')


def _parse(path: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.read(path)
    return parser


class TestNeutronConfig(testtools.TestCase):

    def setUp(self) -> None:
        super().setUp()
        self.state = self.useFixture(fixtures.TempDir()).path
        self.useFixture(fixtures.EnvironmentVariable(localcloud.PORT_OFFSET_ENV, '300'))
        self.useFixture(fixtures.EnvironmentVariable(localcloud.LAYOUT_ENV))
        self.cloud = localcloud.Cloud(state_dir=self.state)

    def test_network_port_replaces_the_empty_endpoint(self) -> None:
        self.assertEqual(9696, localcloud.PORTS['neutron'])
        self.assertEqual('http://127.0.0.1:9996', self.cloud.url('neutron'))
        self.assertEqual(self.cloud.url('neutron'), self.cloud.url('neutron-server'))
        self.assertEqual(9996, self.cloud.port('neutron-server'))
        self.assertIn('neutron-server', self.cloud.services())

    def test_ml2_without_agents_binds_with_the_local_driver(self) -> None:
        ml2 = self.cloud.neutron_options()['ml2_conf.ini']
        self.assertEqual('localcloud', ml2['ml2']['mechanism_drivers'])
        self.assertEqual('flat,vxlan', ml2['ml2']['type_drivers'])
        self.assertEqual('vxlan', ml2['ml2']['tenant_network_types'])
        self.assertEqual('*', ml2['ml2_type_flat']['flat_networks'])
        self.assertEqual('gpu-host-1,gpu-host-2', ml2['localcloud']['hosts'])

    def test_bench_layout_hosts_are_bound_too(self) -> None:
        self.useFixture(fixtures.EnvironmentVariable(localcloud.LAYOUT_ENV, 'bench'))
        cloud = localcloud.Cloud(state_dir=self.useFixture(fixtures.TempDir()).path)
        hosts = cloud.neutron_options()['ml2_conf.ini']['localcloud']['hosts'].split(',')
        self.assertEqual(list(cloud.compute_hosts), hosts)

    def test_neutron_conf(self) -> None:
        os.makedirs(self.cloud.path('log'))
        self.cloud._write_neutron(os.path.join(sys.prefix, 'etc'))
        etc = self.cloud.path('etc', 'neutron')
        self.assertTrue(os.path.exists(os.path.join(etc, 'api-paste.ini')))
        conf = _parse(os.path.join(etc, 'neutron.conf'))
        self.assertEqual('ml2', conf['DEFAULT']['core_plugin'])
        self.assertEqual('router', conf['DEFAULT']['service_plugins'])
        self.assertEqual('false', conf['DEFAULT']['dhcp_agent_notification'])
        self.assertEqual(self.cloud.transport_url(), conf['DEFAULT']['transport_url'])
        self.assertIn('/neutron?', conf['database']['connection'])
        self.assertEqual('neutron', conf['keystone_authtoken']['username'])
        # Port events reach nova with neutron's service credentials, from the catalog.
        self.assertEqual('neutron', conf['nova']['username'])
        self.assertEqual(self.cloud.secrets['neutron'], conf['nova']['password'])
        self.assertEqual(localcloud.REGION, conf['nova']['region_name'])
        self.assertEqual('true', conf['DEFAULT']['notify_nova_on_port_status_changes'])

    def test_nova_finds_neutron_in_the_catalog_and_does_not_wait_for_vifs(self) -> None:
        os.makedirs(self.cloud.path('log'))
        self.cloud._write_nova(os.path.join(sys.prefix, 'etc'))
        conf = _parse(self.cloud.path('etc', 'nova', 'nova.conf'))
        self.assertNotIn('endpoint_override', conf['neutron'])
        self.assertEqual('nova', conf['neutron']['username'])
        self.assertEqual(localcloud.REGION, conf['neutron']['region_name'])
        self.assertEqual('false', conf['DEFAULT']['vif_plugging_is_fatal'])
        self.assertEqual('0', conf['DEFAULT']['vif_plugging_timeout'])

    def test_neutron_db_sync_runs_once_with_the_other_schemas(self) -> None:
        os.makedirs(self.cloud.path('run'))
        os.makedirs(self.cloud.path('log'))
        calls = []
        self.patch(self.cloud, '_run', lambda argv, **kwargs: calls.append(argv) or '')
        self.cloud._db_syncs()
        neutron = [argv for argv in calls if os.path.basename(argv[0]) == 'neutron-db-manage']
        self.assertEqual(1, len(neutron))
        self.assertEqual(['upgrade', 'heads'], neutron[0][-2:])
        self.assertIn(self.cloud.path('etc', 'neutron', 'ml2_conf.ini'), neutron[0])
        calls.clear()
        self.cloud._db_syncs()
        self.assertEqual([], calls)

    def test_a_cloud_made_before_neutron_gets_its_password(self) -> None:
        old = {n: 'x%d' % i for i, n in enumerate(
            ('admin', 'demo', 'heat_domain_admin', 'rabbit', 'nova', 'placement', 'glance',
             'heat'))}
        path = self.cloud.path('secrets.json')
        with open(path, 'w', encoding='utf-8') as f:
            json.dump(old, f)
        os.chmod(path, 0o600)
        got = localcloud.Cloud(state_dir=self.state).secrets
        self.assertEqual(old, {k: v for k, v in got.items() if k != 'neutron'})
        self.assertTrue(got['neutron'])
        with open(path, encoding='utf-8') as f:
            self.assertEqual(got, json.load(f))
        self.assertEqual(0o600, stat.S_IMODE(os.stat(path).st_mode))


class _PortContext:
    """What ML2 hands a mechanism driver's bind_port: the port, its host, segments to bind."""

    def __init__(self, host: str, segments: list, vnic_type: str = 'normal') -> None:
        self.current = {'id': 'port-1', 'binding:vnic_type': vnic_type}
        self.host = host
        self.segments_to_bind = segments
        self.bindings = []

    def set_binding(self, segment_id, vif_type, vif_details, status=None) -> None:
        self.bindings.append((segment_id, vif_type, vif_details, status))


class TestMechanismDriver(testtools.TestCase):

    def setUp(self) -> None:
        super().setUp()
        spec = importlib.util.spec_from_file_location(
            'localcloud_ml2', os.path.join(NET_DIR, 'localcloud_ml2.py'))
        self.module = sys.modules.get('localcloud_ml2')
        if self.module is None:
            self.module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(self.module)
            sys.modules['localcloud_ml2'] = self.module
        from oslo_config import cfg
        cfg.CONF.set_override('hosts', ['gpu-host-1', 'gpu-host-2'], group='localcloud')
        self.addCleanup(cfg.CONF.clear_override, 'hosts', group='localcloud')
        self.driver = self.module.LocalCloudMechanismDriver()
        self.driver.initialize()

    def test_entry_point_names_the_driver(self) -> None:
        dists = list(importlib.metadata.distributions(path=[NET_DIR]))
        self.assertEqual(['localcloud-ml2'], [d.metadata['Name'] for d in dists])
        eps = [ep for ep in dists[0].entry_points
               if ep.group == 'neutron.ml2.mechanism_drivers']
        self.assertEqual(['localcloud'], [ep.name for ep in eps])
        self.assertEqual('localcloud_ml2:LocalCloudMechanismDriver', eps[0].value)

    def test_binds_on_a_simulated_host_and_puts_the_port_active(self) -> None:
        ctx = _PortContext('gpu-host-2', [{'id': 'seg-1', 'network_type': 'vxlan'}])
        self.driver.bind_port(ctx)
        self.assertEqual(1, len(ctx.bindings))
        segment, vif_type, details, status = ctx.bindings[0]
        self.assertEqual(('seg-1', 'ovs', 'ACTIVE'), (segment, vif_type, status))
        self.assertTrue(details['port_filter'])

    def test_flat_provider_segment_binds(self) -> None:
        ctx = _PortContext('gpu-host-1', [{'id': 'seg-p', 'network_type': 'flat'}])
        self.driver.bind_port(ctx)
        self.assertEqual('seg-p', ctx.bindings[0][0])

    def test_leaves_other_hosts_and_vnic_types_unbound(self) -> None:
        for ctx in (_PortContext('elsewhere', [{'id': 's', 'network_type': 'vxlan'}]),
                    _PortContext('', [{'id': 's', 'network_type': 'vxlan'}]),
                    _PortContext('gpu-host-1', [{'id': 's', 'network_type': 'vxlan'}],
                                 vnic_type='direct')):
            self.driver.bind_port(ctx)
            self.assertEqual([], ctx.bindings)

    def test_layer_2_connectivity(self) -> None:
        self.assertEqual('l2', self.driver.connectivity)
