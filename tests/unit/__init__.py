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

"""Unit tests: heat's engine code in-process, no cloud.

Discovery goes through ``load_tests`` for one reason: the local cloud's own tests
(``test_localcloud_*.py``) import ``tools/localcloud``, development tooling that runs the services
of the development line (2026.1, ``.venv``) on Python 3.10 and newer (its modules use ``X | None``
annotations). Where that line is not installed (the release matrix's other lines) they are
reported as skipped, not imported; there, every other module is discovered as usual. With the
development line installed, discovery is unittest's own.
"""

import fnmatch
from importlib import metadata
import os
import sys
import traceback
from typing import Optional
import unittest

from heat_gpu import releases

HERE = os.path.dirname(os.path.abspath(__file__))
LOCAL_CLOUD_PREFIX = 'test_localcloud_'
LOCAL_CLOUD_PYTHON = (3, 10)


def local_cloud_missing() -> Optional[str]:
    """Why the local cloud cannot run in this environment, or None."""
    if sys.version_info < LOCAL_CLOUD_PYTHON:
        return 'needs Python %s or newer; this is Python %s' % (
            '.'.join(map(str, LOCAL_CLOUD_PYTHON)), '.'.join(map(str, sys.version_info[:2])))
    heat = metadata.version('openstack-heat')
    if int(heat.split('.')[0]) != releases.DEVELOPMENT.series.heat_major:
        return 'runs the %s services of .venv; this environment has heat %s' % (
            releases.DEVELOPMENT.name, heat)
    return None


def _skipped(module: str, why: str) -> unittest.TestCase:
    reason = '%s tests the local cloud (tools/localcloud), which %s' % (module, why)

    def test_needs_the_development_line(self: unittest.TestCase) -> None:
        self.skipTest(reason)

    cls = type('LocalCloudTests', (unittest.TestCase,),
               {'__module__': module,
                'test_needs_the_development_line': test_needs_the_development_line})
    return cls('test_needs_the_development_line')


def _failed_import(module: str, error: str) -> unittest.TestCase:
    def test_import(self: unittest.TestCase) -> None:
        self.fail('%s failed to import:\n%s' % (module, error))

    cls = type('ModuleImportFailure', (unittest.TestCase,),
               {'__module__': module, 'test_import': test_import})
    return cls('test_import')


def load_tests(loader: unittest.TestLoader, standard_tests: unittest.TestSuite,
               pattern: str) -> unittest.TestSuite:
    pattern = pattern or 'test*.py'
    why = local_cloud_missing()
    if why is None:
        standard_tests.addTests(loader.discover(start_dir=HERE, pattern=pattern))
        return standard_tests
    for name in sorted(os.listdir(HERE)):
        if not name.endswith('.py') or not fnmatch.fnmatch(name, pattern):
            continue
        module = '%s.%s' % (__name__, name[:-3])
        if name.startswith(LOCAL_CLOUD_PREFIX):
            standard_tests.addTest(_skipped(module, why))
            continue
        try:
            standard_tests.addTests(loader.loadTestsFromName(module))
        except Exception:  # as unittest's discovery does: one failed test, the others still run
            standard_tests.addTest(_failed_import(module, traceback.format_exc()))
    return standard_tests
