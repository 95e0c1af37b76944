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

"""Serve an OpenStack WSGI application under gunicorn.

The services parse ``sys.argv`` for their own options when the application is built, and
gunicorn's arguments mean nothing to them. This module resets ``sys.argv`` from
``LOCALCLOUD_WSGI_ARGV`` (a JSON list) and then imports the application named by
``LOCALCLOUD_WSGI_APP`` (``module:attribute``).
"""

import importlib
import json
import os
import sys


def _load() -> object:
    target = os.environ.get('LOCALCLOUD_WSGI_APP', '')
    module_name, _, attribute = target.partition(':')
    if not module_name or not attribute:
        raise RuntimeError(
            'LOCALCLOUD_WSGI_APP=%r is not valid: expected "module:attribute", for example '
            '"keystone.wsgi.api:application"' % target)
    sys.argv = json.loads(os.environ.get('LOCALCLOUD_WSGI_ARGV', '[]')) or [module_name]
    return getattr(importlib.import_module(module_name), attribute)


application = _load()
