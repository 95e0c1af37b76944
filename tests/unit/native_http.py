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

"""The standard library's ``http.server`` for the tests' fake services, whoever imported eventlet.

heat 22 and 24 (2024.1, 2025.1) import ``eventlet.wsgi`` with ``heat.common.config``, and that
imports ``eventlet.green.BaseHTTPServer``, whose ``patcher.inject`` puts a copy of ``http.server``
built on eventlet's green ``socketserver`` and ``threading`` into ``sys.modules`` and into the
``http`` package, so ``http.server`` names that copy from then on. A server of the copy run in a
native thread can block ``shutdown()`` forever: the caller waits in eventlet's hub for an event
that the native server thread sets. heat 25 and newer no longer import it. ``eventlet.patcher.
original`` imports the module afresh on the native modules; without eventlet the standard module
is native anyway.
"""

import http.server
import types

try:
    from eventlet import patcher
except ImportError:  # no eventlet installed: nothing can have replaced http.server
    patcher = None


def http_server() -> types.ModuleType:
    """``http.server`` on native sockets and threads (call it when the server is made)."""
    if patcher is None:
        return http.server
    return patcher.original('http.server')
