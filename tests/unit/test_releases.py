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

"""The supported release lines: one table, and every file that repeats a fact of it agrees."""

import configparser
from importlib import metadata
import importlib.util
import io
import os
import re
import sys
import unittest

import fixtures
from packaging import requirements
from packaging import version
import subunit
import testscenarios
import testtools

from heat_gpu import releases
from tools import release_matrix

load_tests = testscenarios.load_tests_apply_scenarios

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def read(name: str) -> str:
    with open(os.path.join(ROOT, name), encoding='utf-8') as stream:
        return stream.read()


def constraints(path: str) -> dict[str, str]:
    """name -> pinned version of a constraints file, for this Python (markers evaluated)."""
    pins = {}
    for raw in read(path).splitlines():
        line = raw.split('#')[0].strip()
        if not line or line.startswith('-'):
            continue
        req = requirements.Requirement(line)
        if req.marker is not None and not req.marker.evaluate():
            continue
        pinned = [s.version for s in req.specifier if s.operator in ('==', '===')]
        if pinned:
            pins[canonical(req.name)] = pinned[0]
    return pins


def canonical(name: str) -> str:
    return re.sub(r'[-_.]+', '-', name).lower()


def requirement_lines(name: str) -> list[requirements.Requirement]:
    reqs = []
    for raw in read(name).splitlines():
        line = raw.split('#')[0].strip()
        if line and not line.startswith('-'):
            reqs.append(requirements.Requirement(line))
    return reqs


class TestTable(testtools.TestCase):

    def test_lines_are_consecutive_series_and_end_with_the_development_one(self):
        names = [s.name for s in releases.SERIES]
        indexes = [names.index(line.name) for line in releases.SUPPORTED]
        self.assertEqual(sorted(indexes), indexes)
        self.assertIs(releases.SUPPORTED[-1], releases.DEVELOPMENT)
        self.assertIs(releases.NEWEST, releases.DEVELOPMENT.series)

    def test_pins_belong_to_their_series(self):
        for line in releases.SUPPORTED:
            self.assertEqual(line.series.heat_major, int(line.heat.split('.')[0]), line.name)
            self.assertEqual(line.series.nova_major, int(line.nova.split('.')[0]), line.name)
            self.assertIn(line.python, line.pythons, line.name)
            self.assertIn(line.engine, (releases.EVENTLET, releases.NATIVE_THREADS))

    def test_heat_25_is_the_first_engine_on_native_threads(self):
        for line in releases.SUPPORTED:
            expected = (releases.NATIVE_THREADS if line.series.heat_major >= 25
                        else releases.EVENTLET)
            self.assertEqual(expected, line.engine, line.name)

    def test_unknown_line_names_the_accepted_ones(self):
        error = self.assertRaises(ValueError, releases.supported_line, '2023.2')
        self.assertIn("'2023.2'", str(error))
        self.assertIn('2024.1, 2025.1, 2025.2, 2026.1', str(error))

    def test_series_lookups(self):
        self.assertEqual('2024.1', releases.find_series('Caracal').name)
        self.assertIsNone(releases.find_series('diablo'))
        self.assertEqual('2025.2', releases.series_of_nova(32).name)
        self.assertIsNone(releases.series_of_nova(99))


class TestThisEnvironment(testtools.TestCase):
    """What runs the tests is one of the lines (the release matrix installs each of them)."""

    def installed_line(self) -> releases.SupportedLine:
        heat_major = int(metadata.version('openstack-heat').split('.')[0])
        lines = [line for line in releases.SUPPORTED if line.series.heat_major == heat_major]
        self.assertEqual(1, len(lines), 'heat %s is not of a supported line'
                         % metadata.version('openstack-heat'))
        return lines[0]

    def test_heat_and_python_are_of_one_supported_line(self):
        line = self.installed_line()
        here = '%d.%d' % sys.version_info[:2]
        self.assertIn(here, line.pythons, 'Python %s with heat %s' % (here, line.heat))

    def test_eventlet_patching_matches_the_lines_engine(self):
        # heat-engine's own entry point says whether it monkey-patches: read it, never import it
        # (importing it would patch this process).
        spec = importlib.util.find_spec('heat.cmd.engine')
        with open(spec.origin, encoding='utf-8') as stream:
            source = stream.read()
        patched = 'eventlet.monkey_patch()' in source
        line = self.installed_line()
        self.assertEqual(line.engine == releases.EVENTLET, patched, line.name)


class TestFilesAgree(testtools.TestCase):

    scenarios = [(line.name, {'line': line}) for line in releases.SUPPORTED]

    def test_tox_has_an_environment_for_the_line(self):
        tox = configparser.ConfigParser(interpolation=None)
        tox.read_string(read('tox.ini'))
        env = 'testenv:py%s-%s' % (self.line.python.replace('.', ''), self.line.name)
        self.assertIn(env, tox.sections())
        deps = tox[env]['deps'].split()
        self.assertIn('openstack-heat==%s' % self.line.heat, deps)
        self.assertIn('nova==%s' % self.line.nova, deps)
        wanted = ('constraints.txt' if self.line is releases.DEVELOPMENT
                  else self.line.constraints)
        self.assertIn('-c{toxinidir}/%s' % wanted, deps)
        self.assertIn(env[len('testenv:'):], tox['tox']['envlist'].split(','))

    def test_constraints_file_of_the_line(self):
        if self.line is releases.DEVELOPMENT:
            pins = constraints('constraints.txt')
            self.assertEqual(self.line.heat, pins['openstack-heat'])
            self.assertEqual(self.line.nova, pins['nova'])
        else:
            self.assertTrue(os.path.isfile(os.path.join(ROOT, self.line.constraints)))

    def test_requirement_minimums_admit_the_lines_versions(self):
        pins = (constraints('constraints.txt') if self.line is releases.DEVELOPMENT
                else constraints(self.line.constraints))
        pins['openstack-heat'] = self.line.heat
        for req in requirement_lines('requirements.txt'):
            name = canonical(req.name)
            self.assertIn(name, pins, '%s is not pinned for %s' % (req.name, self.line.name))
            self.assertTrue(req.specifier.contains(version.Version(pins[name])),
                            '%s: %s %s is refused by requirements.txt (%s)'
                            % (self.line.name, req.name, pins[name], req.specifier))

    def test_readme_table_row(self):
        rows = [row for row in read('README.md').splitlines()
                if row.startswith('| %s ' % self.line.name)]
        self.assertEqual(1, len(rows), 'README.md needs one table row for %s' % self.line.name)
        self.assertIn('heat %s' % self.line.heat, rows[0])
        self.assertIn(', '.join(self.line.pythons), rows[0])


class TestPackage(testtools.TestCase):

    def test_setup_cfg_python_floor_and_classifiers(self):
        setup = configparser.ConfigParser(interpolation=None)
        setup.read_string(read('setup.cfg'))
        floor = '.'.join(str(n) for n in release_matrix.OLDEST_PYTHON)
        self.assertEqual('>=%s' % floor, setup['metadata']['python_requires'])
        # The classifiers claim the Pythons the release matrix runs, no more.
        classifiers = re.findall(r'Programming Language :: Python :: (3\.\d+)',
                                 setup['metadata']['classifier'])
        self.assertEqual(sorted({line.python for line in releases.SUPPORTED},
                                key=version.Version),
                         classifiers)

    def test_matrix_tests_every_line_but_the_development_one(self):
        self.assertEqual([line.name for line in releases.SUPPORTED[:-1]],
                         [line.name for line in release_matrix.matrix_lines()])


class _Inner(testtools.TestCase):
    """Run inside TestMatrixCounts only (no test_ prefix)."""

    def passes(self):
        pass

    def fails(self):
        self.fail('heat 22 refused the plugin')

    def skips(self):
        self.skipTest('no local cloud here')


def subunit_bytes(*names: str) -> bytes:
    out = io.BytesIO()
    result = testtools.ExtendedToStreamDecorator(subunit.StreamResultToBytes(out))
    result.startTestRun()
    unittest.TestSuite([_Inner(name) for name in names]).run(result)
    result.stopTestRun()
    return out.getvalue()


class TestMatrixCounts(testtools.TestCase):

    def test_stream_counts_as_stestr_does(self):
        stream = subunit_bytes('passes', 'passes', 'fails', 'skips')
        self.assertEqual((2, 1, 1), release_matrix.count_stream(stream))

    def test_every_check_is_one_test_and_a_failure_keeps_its_reason(self):
        outcome = release_matrix.Outcome('2024.1')
        self.assertTrue(outcome.check(True, 'install'))
        self.assertFalse(outcome.check(False, 'heat 22.0.1 loads the plugin', 'one\ntwo'))
        self.assertEqual((1, 1, 0), (outcome.passed, outcome.failed, outcome.skipped))
        self.assertEqual(['FAILED [2024.1] heat 22.0.1 loads the plugin', '    one', '    two'],
                         outcome.failures)

    def test_stamp_changes_with_the_lines_inputs(self):
        line = releases.supported_line('2024.1')
        here = release_matrix.inputs_hash(line, python_version='3.9')
        self.assertEqual(here, release_matrix.inputs_hash(line, python_version='3.9'))
        self.assertNotEqual(here, release_matrix.inputs_hash(line, python_version='3.10'))
        other = releases.SupportedLine(line.series, '22.0.0', line.nova, line.pythons,
                                       line.python, line.engine)
        self.assertNotEqual(here, release_matrix.inputs_hash(other, python_version='3.9'))

    def test_an_interpreter_of_the_wrong_version_is_not_taken(self):
        self.useFixture(fixtures.EnvironmentVariable('HEAT_GPU_PYTHON27', sys.executable))
        self.useFixture(fixtures.EnvironmentVariable('PATH', '/nonexistent'))
        self.assertIsNone(release_matrix.find_python('2.7'))
        here = '%d.%d' % sys.version_info[:2]
        self.useFixture(fixtures.EnvironmentVariable(
            'HEAT_GPU_PYTHON' + here.replace('.', ''), sys.executable))
        self.assertEqual(sys.executable, release_matrix.find_python(here))
