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

"""A read-only view of a resource's properties with some values replaced.

The plugin's resources reuse heat's own resource code (Server, SoftwareDeployment) and hand it
properties that differ from what the user wrote in a few keys (the fixed user-data format of a
CudaInstance, the derived deployment properties of a SampleJob). Plain Python, no Heat import.
"""

import collections.abc
import contextlib
from typing import Any, Iterator


class PropertiesOverlay(collections.abc.Mapping):
    """``props`` with the keys of ``overrides`` replaced or added; everything else delegated."""

    def __init__(self, props: Any, overrides: dict) -> None:
        self._props = props
        self._overrides = overrides

    def __getitem__(self, key: str) -> Any:
        if key in self._overrides:
            return self._overrides[key]
        return self._props[key]

    def __iter__(self) -> Iterator[str]:
        return iter(set(self._props) | set(self._overrides))

    def __len__(self) -> int:
        return len(set(self._props) | set(self._overrides))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._props, name)


@contextlib.contextmanager
def properties_overridden(rsrc: Any, overrides: dict) -> Iterator[None]:
    """Within the block, ``rsrc.properties`` reads through an overlay of ``overrides``."""
    live = rsrc.properties
    rsrc.properties = PropertiesOverlay(live, overrides)
    try:
        yield
    finally:
        rsrc.properties = live
