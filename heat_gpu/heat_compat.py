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
itself, so two threads parsing at once can read each other's text. Parsing under one lock removes
the race; evaluating stays parallel. What holds on each supported line (``heat_gpu.releases``):

* heat 25 and 26 (2025.2, 2026.1): heat-engine runs on oslo.service's threading backend, so
  resource checks run in native threads, and the members of a ResourceGroup
  (``hot/gpu_flavors.yaml`` and the provider templates use yaql in every member) are created side
  by side. Without the lock one now and then fails with "Bad expression Parse error: unexpected
  end of statement" although its expression is valid (seen on heat 26).
* heat 22 and 24 (2024.1, 2025.1): heat-engine starts with ``eventlet.monkey_patch()``, so its
  threads are green threads, switched only where one waits for I/O. A parse does no I/O, so two
  parses never interleave and the race cannot happen. The lock is then eventlet's green lock
  (``threading`` is patched before heat loads the plugin), never contended: it costs one acquire
  per parse and, held only while a parse runs, never blocks the hub. It is installed all the same,
  so the plugin behaves alike on every line.

The unit tests parse from native threads on every line (they never monkey-patch), so they show
the lock working where the race exists.
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
