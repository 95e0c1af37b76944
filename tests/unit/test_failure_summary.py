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

"""tools/failure_summary.py on a subunit stream of real (inner) test runs."""

import io
import unittest

import fixtures
import subunit
import testtools

from tools import failure_summary


class _Inner(testtools.TestCase):
    """Tests run inside the tests below, never collected on their own (no test_ prefix)."""

    def passes(self):
        pass

    def fails(self):
        self.assertEqual('CREATE_COMPLETE', 'CREATE_FAILED', 'stack ended badly\nline two')

    def errors(self):
        raise RuntimeError('nova-api did not come back')


def _stream(*names: str) -> io.BytesIO:
    """The subunit v2 bytes of running the named _Inner tests."""
    out = io.BytesIO()
    result = testtools.ExtendedToStreamDecorator(subunit.StreamResultToBytes(out))
    result.startTestRun()
    unittest.TestSuite([_Inner(name) for name in names]).run(result)
    result.stopTestRun()
    out.seek(0)
    return out


class FailureSummaryTest(testtools.TestCase):

    def test_only_failed_tests_listed(self):
        found = failure_summary.failures(_stream('passes', 'fails', 'errors'))
        self.assertEqual(
            sorted(['tests.unit.test_failure_summary._Inner.fails',
                    'tests.unit.test_failure_summary._Inner.errors']),
            sorted(test_id for test_id, _ in found))

    def test_no_failure_prints_nothing(self):
        self.assertEqual([], failure_summary.failures(_stream('passes')))

    def test_summary_names_the_line_and_the_error(self):
        lines = failure_summary.summary(failure_summary.failures(_stream('fails')),
                                        lines=8, width=400)
        self.assertEqual('FAILED tests.unit.test_failure_summary._Inner.fails', lines[0])
        text = '\n'.join(lines)
        # The frame in this file, not testtools' own frames, and the whole message.
        self.assertIn('test_failure_summary.py", line', lines[1])
        self.assertIn("self.assertEqual('CREATE_COMPLETE'", lines[2])
        self.assertNotIn('testtools/testcase.py', text)
        self.assertIn("'CREATE_COMPLETE' != 'CREATE_FAILED': stack ended badly", text)
        self.assertIn('    line two', text)

    def test_long_lines_cut_and_line_count_kept(self):
        more = '\n'.join('more %d' % i for i in range(20))
        found = [('t.x', 'Traceback (most recent call last):\n'
                         '  File "t/x.py", line 3, in test\n    do()\n'
                         'ValueError: ' + 'v' * 100 + '\n' + more)]
        lines = failure_summary.summary(found, lines=5, width=40)
        self.assertEqual(6, len(lines))
        self.assertTrue(all(len(line) <= 44 for line in lines), lines)
        self.assertTrue(lines[3].endswith('...'))

    def test_command_line_reads_stdin(self):
        stdin = io.TextIOWrapper(_stream('errors'))
        stdout = io.StringIO()
        self.useFixture(fixtures.MonkeyPatch('sys.stdin', stdin))
        self.useFixture(fixtures.MonkeyPatch('sys.stdout', stdout))
        self.assertEqual(0, failure_summary.main(['--lines', '3']))
        out = stdout.getvalue().splitlines()
        self.assertEqual('FAILED tests.unit.test_failure_summary._Inner.errors', out[0])
        self.assertEqual("    RuntimeError: nova-api did not come back", out[-1])
        self.assertEqual(4, len(out))
