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

"""The local cloud's heat layouts: engines, workers and their configuration (no service runs)."""

import configparser
import os
import sys
from unittest import mock

import fixtures
import testtools

from tools.localcloud import cloud as localcloud


def _parse(path: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.read(path)
    return parser


class TestHeatLayout(testtools.TestCase):

    def cloud(self, heat=None) -> localcloud.Cloud:
        self.useFixture(fixtures.EnvironmentVariable(localcloud.HEAT_LAYOUT_ENV, heat))
        self.useFixture(fixtures.EnvironmentVariable(localcloud.LAYOUT_ENV))
        self.useFixture(fixtures.EnvironmentVariable(localcloud.PORT_OFFSET_ENV, '400'))
        return localcloud.Cloud(state_dir=self.useFixture(fixtures.TempDir()).path)

    def heat_conf(self, cloud: localcloud.Cloud) -> dict:
        os.makedirs(cloud.path('log'))
        with mock.patch.object(localcloud.mirror, 'key_fingerprint', return_value='F' * 40):
            cloud._write_heat(os.path.join(sys.prefix, 'etc'))
        etc = os.path.join(cloud.etc, 'heat')
        return {name: _parse(os.path.join(etc, name))
                for name in os.listdir(etc) if name.endswith('.conf')}

    def test_production_is_the_default(self) -> None:
        cloud = self.cloud()
        self.assertEqual('production', cloud.settings['heat'])
        self.assertEqual(('heat-engine', 'heat-engine-2'), cloud.heat_engines)
        self.assertEqual(['heat-api', 'heat-engine', 'heat-engine-2'],
                         [s for s in cloud.services() if s.startswith('heat-')])
        confs = self.heat_conf(cloud)
        self.assertEqual('4', confs['heat.conf']['DEFAULT']['num_engine_workers'])
        self.assertNotIn('host', confs['heat.conf']['DEFAULT'])
        self.assertEqual('controller-1', confs['heat-engine.conf']['DEFAULT']['host'])
        self.assertEqual('controller-2', confs['heat-engine-2.conf']['DEFAULT']['host'])

    def test_single(self) -> None:
        cloud = self.cloud('single')
        self.assertEqual(('heat-engine',), cloud.heat_engines)
        confs = self.heat_conf(cloud)
        self.assertEqual('1', confs['heat.conf']['DEFAULT']['num_engine_workers'])
        self.assertEqual({'heat.conf', 'heat-engine.conf'}, set(confs))

    def test_unknown_layout_named_with_the_choices(self) -> None:
        error = self.assertRaises(localcloud.CloudError, lambda: self.cloud('three').settings)
        self.assertIn("HEAT_GPU_CLOUD_HEAT='three'", str(error))
        self.assertIn('production, single', str(error))

    def test_layout_kept_in_the_state_directory(self) -> None:
        cloud = self.cloud('single')
        cloud._save_settings()
        self.useFixture(fixtures.EnvironmentVariable(localcloud.HEAT_LAYOUT_ENV, 'production'))
        again = localcloud.Cloud(state_dir=cloud.state)
        error = self.assertRaises(localcloud.CloudError, lambda: again.settings)
        self.assertIn('heat=single', str(error))
        self.assertIn('heat=production', str(error))

    def test_stop_stops_every_engine_a_layout_may_have_left(self) -> None:
        cloud = self.cloud('single')
        stopped = []
        with mock.patch.object(cloud, '_stop_process', side_effect=stopped.append), \
                mock.patch.object(cloud, '_wait_gone'), \
                mock.patch.object(cloud, '_stop_guests'):
            cloud.stop()
        self.assertIn('heat-engine-2', stopped)

    def test_engine_up_counts_the_workers_started_since_the_engine(self) -> None:
        cloud = self.cloud()
        started = localcloud._api_time('2026-12-01T10:00:00.000000')

        def services(hosts_times):
            return [{'binary': 'heat-engine', 'status': 'up', 'host': host, 'created_at': t}
                    for host, t in hosts_times]

        new, old = '2026-12-01T10:00:05.000000', '2026-12-01T09:00:00.000000'
        every = [('controller-1', new)] * 4 + [('controller-2', new)] * 4
        cases = [(every, True),
                 (every[:7], False),                               # a worker short
                 (every[:4] + [('controller-2', old)] * 4, False)]  # records of a dead engine
        for listing, expected in cases:
            conn = mock.Mock()
            conn.session.get.return_value.json.return_value = {'services': services(listing)}
            with mock.patch.object(cloud, 'connection', return_value=conn), \
                    mock.patch.object(cloud, '_started_at', return_value=started):
                self.assertEqual(expected, cloud._engine_up(), listing)
