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

"""heat_gpu.resource_state on heat's own database code (SQLite here, MariaDB in the cloud)."""

from tests.unit import base  # isort: skip

from heat.common import template_format
from heat.db import api as db_api
from heat.db import models
from heat.tests import utils

from heat_gpu import resource_state

TEMPLATE = '''
heat_template_version: 2021-04-16
resources:
  r:
    type: OS::Heat::None
'''


class ResourceStateTest(base.HeatGpuTestCase):

    def setUp(self):
        super().setUp()
        stack = utils.parse_stack(template_format.parse(TEMPLATE))
        stack.store()
        self.rsrc = stack['r']
        self.rsrc.store()
        self.ctx = stack.context

    def rows(self, key='k') -> list:
        with db_api.context_manager.reader.using(self.ctx) as session:
            return [r.value for r in session.query(models.ResourceData)
                    .filter_by(resource_id=self.rsrc.id, key=key)]

    def test_first_write_then_updates_see_the_stored_value(self):
        seen = []

        def bump(current):
            seen.append(current)
            return {'n': (current or {}).get('n', 0) + 1}

        for _ in range(3):
            resource_state.update(self.ctx, self.rsrc.id, 'k', bump)
        self.assertEqual([None, {'n': 1}, {'n': 2}], seen)
        self.assertEqual(['{"n": 3}'], self.rows())
        # heat's own reader sees the same row.
        self.assertEqual({'n': 3}, resource_state.decode(self.rsrc.data()['k']))

    def test_keep_when_decide_returns_none(self):
        resource_state.update(self.ctx, self.rsrc.id, 'k', lambda c: {'a': 1})
        stored, changed = resource_state.update(self.ctx, self.rsrc.id, 'k', lambda c: None)
        self.assertFalse(changed)
        self.assertEqual({'a': 1}, stored)

    def test_duplicate_rows_merge_into_one(self):
        # Two first writes through heat's data_set at the same moment leave two rows.
        with db_api.context_manager.writer.using(self.ctx) as session:
            for value in ('{"v": "first"}', '{"v": "second"}'):
                session.add(models.ResourceData(resource_id=self.rsrc.id, key='k', value=value,
                                                redact=False, decrypt_method=''))
        seen = []
        resource_state.update(self.ctx, self.rsrc.id, 'k',
                              lambda c: seen.append(c) or {'v': 'third'})
        self.assertEqual([{'v': 'first'}], seen)
        self.assertEqual(['{"v": "third"}'], self.rows())

    def test_other_keys_untouched(self):
        self.rsrc.data_set('other', 'x')
        resource_state.update(self.ctx, self.rsrc.id, 'k', lambda c: {'a': 1})
        self.assertEqual('x', self.rsrc.data()['other'])
        self.assertEqual([], self.rows('missing'))
        for value in (None, '', 'not json', '[1]', '"text"'):
            self.assertIsNone(resource_state.decode(value), value)
