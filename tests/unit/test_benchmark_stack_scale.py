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

"""benchmarks/stack_scale.py without a cloud: nova log counting, figures, table, last line."""

import argparse
import collections
import importlib.util
import os
from unittest import mock

import fixtures
import testtools

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load_benchmark():
    path = os.path.join(REPO, 'benchmarks', 'stack_scale.py')
    spec = importlib.util.spec_from_file_location('heat_gpu_bench_stack_scale', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load_benchmark()

SERVER = '1c3a8354-d0f0-4958-828c-97fbdd74e02d'
FLAVOR = '00dd1267-a03e-41f9-8a36-38d3b33c9a72'
DEMO = 'bd770fbaf5584ed8b4d3106d2ed87f06'
ADMIN = '17e505a103ca45a8b441e38d94bb27da'
PROJECT = '2126953babc6497e817af0e214423274'


def _line(context: str, request: str, status: int = 200) -> str:
    """A line as nova-api 33 writes it under gunicorn, for one request."""
    return ('2026-11-26 15:00:26.524 29474 INFO nova.api.openstack.requestlog [%s] 127.0.0.1 '
            '"%s" status: %d len: 553 microversion: 2.96 time: 0.231657' % (
                context, request, status))


def _context(user: str) -> str:
    return 'None req-eae581bc-b05f-47ed-8487-d88ddf8aaf65 %s %s - - default default' % (
        user, PROJECT)


NOVA_LOG = '\n'.join([
    _line(_context(ADMIN), 'GET /v2.1'),
    _line(_context(DEMO), 'GET /v2.1/flavors/' + FLAVOR),
    _line('-', 'GET /v2.1'),
    '2026-11-26 15:00:29.001 29474 WARNING neutronclient.v2_0.client [-] The python binding '
    'code in neutronclient is deprecated',
    _line(_context(DEMO), 'POST /v2.1/servers', 202),
    _line(_context(DEMO), 'GET /v2.1/servers/' + SERVER),
    _line(_context(DEMO), 'GET /v2.1/servers/' + SERVER, 404),
    _line(_context(DEMO), 'GET /v2.1/servers/%s/os-interface' % SERVER),
    _line(_context(ADMIN), 'GET /v2.1/os-services?binary=nova-compute&host=gpu-host-1'),
]) + '\n'


class TestRequestLog(testtools.TestCase):

    def test_parse_request_lines_only(self):
        requests = bench.parse_request_log(NOVA_LOG.splitlines())
        self.assertEqual(
            [('GET', '/v2.1', 200), ('GET', '/v2.1/flavors/' + FLAVOR, 200),
             ('GET', '/v2.1', 200), ('POST', '/v2.1/servers', 202),
             ('GET', '/v2.1/servers/' + SERVER, 200), ('GET', '/v2.1/servers/' + SERVER, 404),
             ('GET', '/v2.1/servers/%s/os-interface' % SERVER, 200),
             ('GET', '/v2.1/os-services?binary=nova-compute&host=gpu-host-1', 200)],
            [(r.method, r.path, r.status) for r in requests])

    def test_users_from_the_context_version_documents_apart(self):
        requests = bench.parse_request_log(NOVA_LOG.splitlines())
        # The first version document carries the admin's stale context; it counts as no user.
        self.assertEqual(
            [bench.VERSIONS_USER, DEMO, bench.VERSIONS_USER, DEMO, DEMO, DEMO, DEMO, ADMIN],
            [r.user_id for r in requests])

    def test_patterns(self):
        counts = bench.count_patterns(bench.parse_request_log(NOVA_LOG.splitlines()))
        self.assertEqual({
            'GET /v2.1': 2,
            'GET /v2.1/flavors/{id}': 1,
            'POST /v2.1/servers': 1,
            'GET /v2.1/servers/{id}': 2,
            'GET /v2.1/servers/{id}/os-interface': 1,
            'GET /v2.1/os-services?binary=*&host=*': 1,
        }, dict(counts))

    def test_url_pattern_ids(self):
        self.assertEqual('GET /v2.1/flavors/{id}/os-extra_specs',
                         bench.url_pattern('GET', '/v2.1/flavors/42/os-extra_specs'))
        self.assertEqual('DELETE /v2.1/servers/{id}',
                         bench.url_pattern('DELETE', '/v2.1/servers/' + SERVER.replace('-', '')))
        # Names are not ids.
        self.assertEqual('GET /v2.1/os-keypairs/mykey',
                         bench.url_pattern('GET', '/v2.1/os-keypairs/mykey'))


class TestHeatApiLog(testtools.TestCase):

    def test_count_by_pattern(self):
        stack = 'heat-gpu-bench-ours-10-a1b2c3-group-pedsr3wmfpc7'
        prefix = ('2026-11-26 15:31:57.564 7706 INFO heat.common.wsgi [None req-%s %s %s - - '
                  'default default] Processing request: ' % (SERVER, DEMO, PROJECT))
        lines = [
            prefix + 'POST /v1/%s/stacks/%s/%s/resources/3/signal' % (PROJECT, stack, SERVER),
            prefix + 'POST /v1/%s/stacks/%s/%s/resources/12/signal' % (PROJECT, stack, SERVER),
            prefix + 'GET /v1/%s/stacks/%s' % (PROJECT, SERVER),
            prefix + 'GET /v1/%s/stacks/%s/%s?resolve_outputs=False' % (PROJECT, stack, SERVER),
            prefix.replace('Processing request: ', 'Returned: ') + '200',
            _line(_context(DEMO), 'GET /v2.1/servers/' + SERVER),
        ]
        self.assertEqual({
            'POST /v1/{id}/stacks/{name}/{id}/resources/{resource}/signal': 2,
            'GET /v1/{id}/stacks/{id}': 1,
            'GET /v1/{id}/stacks/{name}/{id}?resolve_outputs=*': 1,
        }, dict(bench.count_heat_requests(lines)))


class TestLogWindow(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.path = os.path.join(self.useFixture(fixtures.TempDir()).path, 'nova-api.log')

    def write(self, text: str, mode: str = 'a') -> None:
        with open(self.path, mode, encoding='utf-8') as f:
            f.write(text)

    def test_only_what_was_appended(self):
        self.write('before 1\nbefore 2\n')
        window = bench.LogWindow(self.path)
        self.write('during 1\nduring 2\n')
        self.assertEqual(['during 1', 'during 2'], window.read())

    def test_a_line_still_being_written_is_left_out(self):
        self.write('before\n')
        window = bench.LogWindow(self.path)
        self.write('during\nhalf a li')
        self.assertEqual(['during'], window.read())

    def test_replaced_file_is_read_from_its_start(self):
        self.write('old line that makes the file long\n' * 3)
        window = bench.LogWindow(self.path)
        self.write('new\n', mode='w')
        self.assertEqual(['new'], window.read())

    def test_missing_file(self):
        window = bench.LogWindow(self.path)
        self.assertEqual([], window.read())
        self.write('first\n')
        self.assertEqual(['first'], window.read())


def run(n: int, path: str, seconds: float, requests: int) -> object:
    return bench.Run(n=n, path=path, seconds=seconds,
                     requests=collections.Counter({'GET /v2.1/servers/{id}': requests}),
                     by_user=collections.Counter({'demo': requests}))


class TestFigures(testtools.TestCase):

    RUNS = [
        run(1, 'ours', 20.0, 22), run(1, 'plain', 25.0, 28),
        run(10, 'plain', 100.0, 280), run(10, 'ours', 60.0, 250),
        run(10, 'ours', 80.0, 200), run(10, 'plain', 90.0, 300),
        run(50, 'ours', 315.0, 1100), run(50, 'plain', 300.0, 1000),
    ]

    def test_medians_per_n_and_path(self):
        rows = bench.summarize(self.RUNS)
        self.assertEqual(
            [(1, 'ours', 20.0, 22, 1), (1, 'plain', 25.0, 28, 1),
             (10, 'ours', 70.0, 225, 2), (10, 'plain', 95.0, 290, 2),
             (50, 'ours', 315.0, 1100, 1), (50, 'plain', 300.0, 1000, 1)],
            [(r.n, r.path, r.seconds, r.requests, r.repeats) for r in rows])
        self.assertEqual(6.3, rows[4].seconds_per_instance)
        self.assertEqual(22.0, rows[4].requests_per_instance)

    def test_comparisons(self):
        compare = bench.comparisons(bench.summarize(self.RUNS))
        self.assertEqual([1, 10, 50], sorted(compare))
        self.assertAlmostEqual(0.8, compare[1]['time_ratio'])
        self.assertAlmostEqual(-6.0, compare[1]['extra_requests_per_instance'])
        self.assertAlmostEqual(70.0 / 95.0, compare[10]['time_ratio'])
        self.assertAlmostEqual(1.05, compare[50]['time_ratio'])
        self.assertAlmostEqual(2.0, compare[50]['extra_requests_per_instance'])

    def test_n_with_one_path_only_is_not_compared(self):
        compare = bench.comparisons(bench.summarize(self.RUNS[:3]))
        self.assertEqual([1], sorted(compare))

    def test_table(self):
        table = bench.format_table(bench.summarize(self.RUNS)).splitlines()
        self.assertEqual(8, len(table))
        self.assertEqual(['N', 'path', 'seconds', 's/inst', 'nova', 'req', 'req/inst', 'time',
                          'o/p', 'req/inst', 'o-p', 'runs'], table[0].split())
        self.assertEqual(['50', 'ours', '315.0', '6.30', '1100', '22.00', '1'], table[6].split())
        self.assertEqual(['50', 'plain', '300.0', '6.00', '1000', '20.00', '1.05', '+2.00', '1'],
                         table[7].split())
        self.assertEqual(['10', 'plain', '95.0', '9.50', '290', '29.00', '0.74', '-6.50', '2'],
                         table[5].split())

    def test_goal_lines(self):
        lines = bench.goal_lines(bench.summarize(self.RUNS))
        self.assertEqual('goal at N=1: time ratio 0.80 <= 1.05; requests per instance -6.00 <= +2',
                         lines[0])
        worse = bench.summarize([run(5, 'ours', 110.0, 40), run(5, 'plain', 100.0, 20)])
        self.assertEqual(['goal at N=5: time ratio 1.10 > 1.05; requests per instance +4.00 > +2'],
                         bench.goal_lines(worse))

    def test_headline_at_fifty(self):
        self.assertEqual('ratio ours/plain at N=50: 1.05',
                         bench.headline(bench.summarize(self.RUNS)))

    def test_headline_without_fifty_names_the_largest_n(self):
        self.assertEqual('ratio ours/plain at N=10: 0.74 (largest N run; N=50 not in --sizes)',
                         bench.headline(bench.summarize(self.RUNS[:6])))

    def test_headline_without_a_pair(self):
        self.assertIn('n/a', bench.headline(bench.summarize(self.RUNS[:1])))

    def test_requests_by_pattern_per_instance(self):
        text = bench.format_requests(self.RUNS[2:6]).splitlines()
        self.assertEqual(['N=10 ours (per instance; by user: demo 22.50)',
                          '   22.50  GET /v2.1/servers/{id}',
                          'N=10 plain (per instance; by user: demo 29.00)',
                          '   29.00  GET /v2.1/servers/{id}'], text)


class TestLinearity(testtools.TestCase):

    def test_exact_line(self):
        fit = bench.linearity([(50, 260.0), (1, 15.0), (10, 60.0)])
        self.assertAlmostEqual(10.0, fit.intercept)
        self.assertAlmostEqual(5.0, fit.slope)
        self.assertAlmostEqual(0.0, fit.worst_deviation)
        self.assertAlmostEqual(1.0, fit.marginal_ratio)

    def test_faster_than_linear(self):
        # 1 s per instance from 1 to 10, then 4 s per instance from 10 to 50.
        fit = bench.linearity([(1, 10.0), (10, 19.0), (50, 179.0)])
        self.assertAlmostEqual(4.0, fit.marginal_ratio)
        self.assertGreater(fit.worst_deviation, 0.2)

    def test_shared_fixed_cost(self):
        fit = bench.linearity([(1, 20.0), (10, 65.0), (50, 145.0)])
        self.assertAlmostEqual(2.0 / 5.0, fit.marginal_ratio)

    def test_two_sizes_have_no_marginal_ratio(self):
        fit = bench.linearity([(1, 20.0), (10, 65.0)])
        self.assertAlmostEqual(5.0, fit.slope)
        self.assertIsNone(fit.marginal_ratio)

    def test_one_size_has_no_line(self):
        self.assertIsNone(bench.linearity([(10, 65.0)]))
        self.assertIsNone(bench.linearity([]))

    def test_printed_per_path(self):
        rows = bench.summarize([run(1, 'ours', 15.0, 1), run(10, 'ours', 60.0, 1),
                                run(50, 'ours', 260.0, 1), run(1, 'plain', 15.0, 1)])
        self.assertEqual(['linearity ours : seconds = 10.0 + 5.00 * N, worst deviation from the '
                          'line 0%; s per added instance, largest N step / smallest N step: '
                          '1.00'], bench.format_linearity(rows))


class TestOptions(testtools.TestCase):

    def test_sizes(self):
        self.assertEqual([1, 10, 50], bench.parse_sizes('50,1,10,10'))
        for bad in ('', 'a,b', '0,10', '1,-3'):
            self.assertRaises(argparse.ArgumentTypeError, bench.parse_sizes, bad)

    def test_run_order_alternates(self):
        self.assertEqual(
            [(1, 'ours'), (1, 'plain'), (10, 'plain'), (10, 'ours')],
            bench.run_order([1, 10], 1))
        self.assertEqual(
            [(1, 'ours'), (1, 'plain'), (1, 'plain'), (1, 'ours'),
             (10, 'ours'), (10, 'plain'), (10, 'plain'), (10, 'ours')],
            bench.run_order([1, 10], 2))

    def test_one_path(self):
        self.assertEqual([(1, 'plain'), (10, 'plain')],
                         bench.run_order([1, 10], 1, bench.parse_paths('plain')))
        self.assertEqual(('ours', 'plain'), bench.parse_paths('plain,ours'))
        for bad in ('', 'mine', 'ours,mine'):
            self.assertRaises(argparse.ArgumentTypeError, bench.parse_paths, bad)


class TestInotifyLimit(testtools.TestCase):

    def limit_file(self, value: str) -> str:
        path = os.path.join(self.useFixture(fixtures.TempDir()).path, 'max_user_instances')
        with open(path, 'w', encoding='ascii') as f:
            f.write(value)
        return path

    def test_raised_for_the_guests(self):
        path = self.limit_file('128\n')
        self.assertIsNone(bench.ensure_inotify_instances(50, path=path))
        with open(path, encoding='ascii') as f:
            self.assertEqual(128 + 50 * bench.INOTIFY_PER_GUEST, int(f.read()))

    def test_a_higher_limit_is_kept(self):
        path = self.limit_file('100000\n')
        self.assertIsNone(bench.ensure_inotify_instances(50, path=path))
        with open(path, encoding='ascii') as f:
            self.assertEqual('100000\n', f.read())

    def test_what_to_do_when_it_cannot_be_raised(self):
        path = self.limit_file('128\n')
        real_open = open

        def read_only(name, mode='r', **kwargs):
            if name == path and 'w' in mode:
                raise PermissionError(13, 'Permission denied', name)
            return real_open(name, mode, **kwargs)

        with mock.patch('builtins.open', side_effect=read_only):
            problem = bench.ensure_inotify_instances(50, path=path)
        self.assertIn('fs.inotify.max_user_instances is 128', problem)
        self.assertIn('sysctl -w fs.inotify.max_user_instances=628', problem)
