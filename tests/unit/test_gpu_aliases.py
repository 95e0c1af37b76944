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

"""One source for the GPU aliases: the catalog, the flavor set, the providers and the local cloud.

``hot/gpu_flavors.yaml`` makes each flavor with OS::GPU::Flavor, which asks nova for the catalog's
alias of the model (``pci_passthrough:alias``); nova refuses a flavor whose alias its ``[pci]
alias`` does not define ("PCI alias a100-80g is not defined"). The local cloud's nova configuration
is written from the catalog, and every simulated device is a catalog model under its own alias.
"""

import json
import os

import fixtures
import testtools
import yaml

from heat_gpu import catalog
from heat_gpu import gpu_request
from tests import unit

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class TestLocalCloudAliases(testtools.TestCase):

    def setUp(self):
        super().setUp()
        missing = unit.local_cloud_missing()
        if missing:
            self.skipTest('the local cloud %s' % missing)
        from tools.localcloud import cloud as localcloud
        self.localcloud = localcloud
        state = self.useFixture(fixtures.TempDir()).path
        self.useFixture(fixtures.EnvironmentVariable('HEAT_GPU_CLOUD_LAYOUT'))
        self.useFixture(fixtures.EnvironmentVariable('HEAT_GPU_CLOUD_PORT_OFFSET'))
        self.cloud = localcloud.Cloud(state_dir=state)

    def nova_aliases(self) -> dict:
        """alias name -> vendor:product, as the nova.conf of the local cloud defines them."""
        entries = [json.loads(a) for a in self.cloud.nova_pci_options()['alias']]
        for entry in entries:
            self.assertEqual('type-PCI', entry['device_type'], entry)
        return {e['name']: '%s:%s' % (e['vendor_id'], e['product_id']) for e in entries}

    def test_nova_defines_the_catalog_alias_of_every_model(self):
        self.assertEqual({m.alias: m.pci_id for m in catalog.models()}, self.nova_aliases())

    def test_every_simulated_device_is_a_catalog_model_nova_knows(self):
        aliases = self.nova_aliases()
        for layout, hosts in self.localcloud.LAYOUTS.items():
            for host, devices in hosts.items():
                for dev in devices:
                    pci_id = '%s:%s' % (dev['vendor_id'], dev['product_id'])
                    model = catalog.by_pci_id(pci_id)
                    self.assertIsNotNone(model, '%s %s %s' % (layout, host, pci_id))
                    self.assertEqual(pci_id, aliases[model.alias], model.key)

    def test_the_a100_80gb_of_gpu_host_2(self):
        # The mismatch this test exists for: the 80 GB A100 is a100-80g, a100 the 40 GB one.
        model = catalog.by_pci_id('10de:20b5')
        self.assertEqual(('A100-PCIE-80GB', 'a100-80g'), (model.key, model.alias))
        self.assertEqual('10de:20b5', self.nova_aliases()['a100-80g'])
        self.assertEqual('10de:20f1', self.nova_aliases()['a100'])

    def test_flavor_set_asks_for_aliases_nova_defines(self):
        # What OS::GPU::Flavor puts in each flavor of the set, for every model the set accepts.
        path = os.path.join(ROOT, 'heat_gpu', 'templates', 'flavor_set_member.yaml')
        with open(path, encoding='utf-8') as stream:
            member = yaml.safe_load(stream)
        models = [c['allowed_values'] for c in member['parameters']['gpu_models']['constraints']
                  if 'allowed_values' in c][0]
        aliases = self.nova_aliases()
        for key in models:
            specs = gpu_request.build_request(mode='passthrough', model=key, alias=None,
                                              count=1).to_extra_specs()
            alias = specs['pci_passthrough:alias'].split(':')[0]
            self.assertIn(alias, aliases, key)
            self.assertEqual(catalog.get(key).pci_id, aliases[alias], key)
