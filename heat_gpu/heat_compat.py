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

"""Work-arounds for heat behaviour the plugin's templates run into.

heat's ``yaql`` function parses every expression with one parser and lexer shared by the whole
heat-engine process (``Yaql.get_yaql_parser``). The lexer keeps the text being read in the object
itself, so two threads parsing at once can read each other's text. heat-engine 26 runs its
resource checks in native threads, and the members of a ResourceGroup (``hot/gpu_flavors.yaml``
and the provider templates use yaql in every member) are created side by side: now and then one
fails with "Bad expression Parse error: unexpected end of statement" although its expression is
valid. Parsing under one lock removes the race; evaluating stays parallel.
"""

import functools
import threading

from heat.engine.hot import functions

_LOCK = threading.Lock()
_MARK = '_heat_gpu_serialized'


def serialize_yaql_parsing() -> None:
    """Make heat's yaql parsing take a process-wide lock (idempotent)."""
    parse = functions.Yaql._parse
    if getattr(parse, _MARK, False):
        return

    @functools.wraps(parse)
    def _parse(self, expression):
        with _LOCK:
            return parse(self, expression)

    setattr(_parse, _MARK, True)
    functions.Yaql._parse = _parse
