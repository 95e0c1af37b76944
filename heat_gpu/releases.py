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

"""OpenStack release series: their nova and heat, and the ones heat-gpu supports.

Plain Python, no Heat import (``heat-gpu operator-config`` runs on hosts without heat). One table
for every fact about a release: ``heat-gpu operator-config`` reads the nova majors, the release
matrix of the tests (``tools/release_matrix.py``, ``tox.ini``) installs the supported lines, and
``heat_gpu.heat_compat`` says what each line's engine does with threads.

Sources:

* nova and heat majors: releases.openstack.org, the "nova" and "heat" deliverables of each series
  (Ocata nova 15.0.0 / heat 8.0.0 ... 2026.1 Gazpacho nova 33.0.0 / heat 26.0.0: nova's major is
  heat's plus 7 in every series of the table).
* the Pythons of a supported line: the ``Programming Language :: Python`` classifiers of that
  heat release's own package, from Python 3.9 on (heat-gpu's floor, ``setup.cfg``).
* the engine's threads: heat-engine 22 and 24 start with ``eventlet.monkey_patch()``
  (``heat/cmd/engine.py``) and run every stack action in green threads; heat 25 dropped eventlet
  from the engine and runs them in native threads (oslo.service's threading backend).
"""

import dataclasses
from typing import Optional

EVENTLET = 'eventlet'
NATIVE_THREADS = 'native threads'


@dataclasses.dataclass(frozen=True)
class Series:
    """One OpenStack release series and the major versions of its nova and heat."""

    name: str
    codename: str
    nova_major: int

    @property
    def heat_major(self) -> int:
        return self.nova_major - 7

    @property
    def label(self) -> str:
        if self.name == self.codename:
            return self.name
        return '%s (%s)' % (self.name, self.codename)


#: Every series ``heat-gpu operator-config`` knows, oldest first.
SERIES = tuple(Series(name, codename, major) for name, codename, major in (
    ('ocata', 'ocata', 15), ('pike', 'pike', 16), ('queens', 'queens', 17),
    ('rocky', 'rocky', 18), ('stein', 'stein', 19), ('train', 'train', 20),
    ('ussuri', 'ussuri', 21), ('victoria', 'victoria', 22), ('wallaby', 'wallaby', 23),
    ('xena', 'xena', 24), ('yoga', 'yoga', 25), ('zed', 'zed', 26),
    ('2023.1', 'antelope', 27), ('2023.2', 'bobcat', 28), ('2024.1', 'caracal', 29),
    ('2024.2', 'dalmatian', 30), ('2025.1', 'epoxy', 31), ('2025.2', 'flamingo', 32),
    ('2026.1', 'gazpacho', 33),
))
NEWEST = SERIES[-1]


def find_series(name: str) -> Optional[Series]:
    """The series named *name* (series name or code name, any case), or None."""
    wanted = name.strip().lower()
    for series in SERIES:
        if wanted in (series.name, series.codename):
            return series
    return None


def series_of_nova(major: int) -> Optional[Series]:
    """The series whose nova has major version *major*, or None."""
    for series in SERIES:
        if series.nova_major == major:
            return series
    return None


@dataclasses.dataclass(frozen=True)
class SupportedLine:
    """A release line heat-gpu runs on, and the releases its release matrix proves it with.

    ``heat`` and ``nova`` are the releases the matrix installs (nova only for the tests that read
    nova's own option names); ``python`` is the Python the matrix runs the line on, one of
    ``pythons``.
    """

    series: Series
    heat: str
    nova: str
    pythons: tuple[str, ...]
    python: str
    engine: str

    @property
    def name(self) -> str:
        return self.series.name

    @property
    def constraints(self) -> str:
        """OpenStack's upper-constraints of the line, as kept in this tree."""
        return 'constraints/upper-constraints-%s.txt' % self.series.name


SUPPORTED = tuple(SupportedLine(find_series(name), heat, nova, pythons, python, engine)
                  for name, heat, nova, pythons, python, engine in (
    ('2024.1', '22.0.1', '29.4.0', ('3.9', '3.10', '3.11'), '3.9', EVENTLET),
    ('2025.1', '24.1.2', '31.3.1', ('3.9', '3.10', '3.11', '3.12'), '3.12', EVENTLET),
    ('2025.2', '25.0.2', '32.2.1', ('3.10', '3.11', '3.12'), '3.10', NATIVE_THREADS),
    ('2026.1', '26.0.2', '33.0.2', ('3.10', '3.11', '3.12', '3.13'), '3.11', NATIVE_THREADS),
))
#: The line of the development environment (``constraints.txt``, the local cloud).
DEVELOPMENT = SUPPORTED[-1]


def supported_line(name: str) -> SupportedLine:
    """The supported line *name*; raise ValueError naming the accepted ones."""
    for line in SUPPORTED:
        if line.name == name:
            return line
    raise ValueError('release %r is not a line heat-gpu supports; accepted: %s'
                     % (name, ', '.join(line.name for line in SUPPORTED)))
