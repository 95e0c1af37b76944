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

# heat.tests.common must be imported before anything imports heat.engine.stack.
from heat.tests import common  # isort: skip

import json
import os
import subprocess
import sys
import threading

from heat.engine.hot import functions
import testtools

from heat_gpu import heat_compat
from heat_gpu.resources import gpu_flavor  # noqa: F401 (installs the lock on import)
from tests.unit import base

EXPRESSIONS = (
    "let(models => $.data.models, counts => $.data.counts, i => int($.data.index)) -> "
    "$.data.prefix + '.' + $models[int($i / $counts.len())].toLower() + '.x' + "
    "str($counts[$i mod $counts.len()])",
    'int($.data.count) * int($.data.per_gpu)',
    '$.data.models.len() * $.data.counts.len()',
)


#: heat-engine 22 and 24 as they run: eventlet.monkey_patch() first, then green threads. Prints
#: the errors of parsing EXPRESSIONS from four green threads, with or without the plugin's lock.
GREEN_PARSES = r"""
import eventlet
eventlet.monkey_patch()
import json, sys
from heat.engine.hot import functions
from heat_gpu import heat_compat
if sys.argv[1] == 'locked':
    heat_compat.serialize_yaql_parsing()
expressions = json.loads(sys.argv[2])
yaql = functions.Yaql(None, 'yaql', {'expression': expressions[0], 'data': {}})
errors = []
def work(offset):
    for n in range(300):
        try:
            yaql._parse(expressions[(n + offset) % len(expressions)])
        except Exception as ex:
            errors.append(repr(ex))
pool = eventlet.GreenPool()
for i in range(4):
    pool.spawn(work, i)
pool.waitall()
print(json.dumps(errors))
"""
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_in_threads(parse, *, threads: int = 4, rounds: int = 300) -> list:
    """Parse EXPRESSIONS from several threads at once; return the errors seen."""
    errors = []
    start = threading.Barrier(threads)

    def work(offset: int) -> None:
        start.wait()
        for n in range(rounds):
            try:
                parse(EXPRESSIONS[(n + offset) % len(EXPRESSIONS)])
            except Exception as ex:  # any parse failure counts
                errors.append(ex)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return errors


class SerializeYaqlParsingTest(common.HeatTestCase):

    def setUp(self):
        base.init_global_environment()
        super().setUp()

    def _yaql(self):
        return functions.Yaql(None, 'yaql', {'expression': EXPRESSIONS[0], 'data': {}})

    def test_installed_by_the_plugin_and_idempotent(self):
        wrapped = functions.Yaql._parse
        self.assertTrue(getattr(wrapped, heat_compat._MARK, False))
        heat_compat.serialize_yaql_parsing()
        self.assertIs(wrapped, functions.Yaql._parse)

    def test_parallel_parses_all_succeed(self):
        yaql = self._yaql()
        self.assertEqual([], parse_in_threads(yaql._parse))

    def test_a_bad_expression_is_still_reported(self):
        yaql = self._yaql()
        ex = self.assertRaises(ValueError, yaql._parse, 'int($.data.count) *')
        self.assertIn('Bad expression', str(ex))


class GreenThreadsTest(testtools.TestCase):
    """What heat_compat says of heat 22 and 24, whose engine runs in eventlet's green threads."""

    def green_parse_errors(self, mode: str) -> list:
        proc = subprocess.run([sys.executable, '-c', GREEN_PARSES, mode, json.dumps(EXPRESSIONS)],
                              capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)
        self.assertEqual(0, proc.returncode, proc.stderr)
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def test_green_threads_never_interleave_a_parse(self):
        self.assertEqual([], self.green_parse_errors('unlocked'))

    def test_the_lock_under_eventlet_neither_blocks_nor_fails(self):
        self.assertEqual([], self.green_parse_errors('locked'))
