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

"""Horizon with heat-dashboard's orchestration panel: an optional service of the local cloud.

Started only when asked (``HEAT_GPU_CLOUD_HORIZON=1``, ``cloud.py start --horizon`` or
``Cloud.start(horizon=True)``), so the tests that do not use a browser do not pay for it. It runs
from its own virtualenv (``tools/bootstrap-horizon.sh``: ``.venv-horizon``, Horizon pins Django of
its own) under that virtualenv's gunicorn, on the cloud's ``horizon`` port, against the cloud's
Keystone. Its log is ``log/horizon.log`` (requests included).

Verbs, called by cloud.py in this order: ``configure``, ``start``, ``wait``; ``stop``. Processes
go through cloud.py's one supervisor (``Cloud._spawn``, ``_wait_for``, ``_stop_process``), like
every other service's.
"""

import json
import os
import secrets
import socket
import urllib.error
import urllib.request

NAME = 'horizon'
ENV = 'HEAT_GPU_CLOUD_HORIZON'
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
START_TIMEOUT = 180.0


class HorizonError(Exception):
    """Horizon cannot start; the message says what to do (cloud.py reports it as a CloudError)."""


def venv() -> str:
    """The Horizon virtualenv (``HEAT_GPU_HORIZON_VENV``, default ``<repo>/.venv-horizon``)."""
    return os.environ.get('HEAT_GPU_HORIZON_VENV') or os.path.join(REPO, '.venv-horizon')


def requested() -> bool:
    """Whether the environment asks for Horizon (``HEAT_GPU_CLOUD_HORIZON=1``)."""
    return os.environ.get(ENV, '').strip().lower() in ('1', 'true', 'yes')


def config_path(cloud) -> str:
    return cloud.path('etc', 'horizon', 'horizon.json')


def configure(cloud) -> None:
    """Write the values Horizon's settings snippet reads: Keystone's URL and a secret key."""
    key_path = cloud.path('etc', 'horizon', 'secret_key')
    os.makedirs(os.path.dirname(key_path), exist_ok=True)
    if not os.path.exists(key_path):
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, 'w', encoding='utf-8') as f:
            f.write(secrets.token_urlsafe(48))
    with open(key_path, encoding='utf-8') as f:
        secret_key = f.read().strip()
    fd = os.open(config_path(cloud), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, 'w', encoding='utf-8') as f:
        json.dump({'keystone_url': cloud.url('keystone') + '/v3', 'secret_key': secret_key},
                  f, indent=2)


def start(cloud) -> None:
    """Start Horizon unless it runs; refuse when it is not installed or its port is taken."""
    if cloud.pid(NAME):
        return
    gunicorn = os.path.join(venv(), 'bin', 'gunicorn')
    if not os.path.exists(os.path.join(venv(), '.heat-gpu-stamp')):
        raise HorizonError('Horizon is not installed in %s: run tools/bootstrap-horizon.sh (make '
                           'bootstrap does) first' % venv())
    port = cloud.port(NAME)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        if s.connect_ex(('127.0.0.1', port)) == 0:
            raise HorizonError('cannot start Horizon: port %d on 127.0.0.1 is in use by another '
                               'program (another local cloud with Horizon? run "cloud.py stop" '
                               'with its HEAT_GPU_CLOUD_DIR)' % port)
    site = os.path.join(HERE, 'horizon_site')
    cloud._spawn(NAME, [
        gunicorn, '--bind', '127.0.0.1:%d' % port, '--workers', '1',
        '--worker-class', 'gthread', '--threads', '4', '--timeout', '120',
        '--graceful-timeout', '5', '--keep-alive', '75', '--name', NAME,
        '--access-logfile', '-', '--pythonpath', site, 'horizon_wsgi:application'],
        env={'HEAT_GPU_HORIZON_CONFIG': config_path(cloud),
             'DJANGO_SETTINGS_MODULE': 'openstack_dashboard.settings',
             'PYTHONPATH': site})


def url(cloud) -> str:
    return 'http://127.0.0.1:%d' % cloud.port(NAME)


def _login_page_up(cloud) -> bool:
    try:
        with urllib.request.urlopen(url(cloud) + '/auth/login/', timeout=10) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def wait(cloud) -> None:
    """Wait until Horizon serves its login page (it builds every dashboard on the first request)."""
    cloud._wait_for(NAME, lambda: _login_page_up(cloud), timeout=START_TIMEOUT,
                    what='to serve its login page')


def stop(cloud) -> None:
    cloud._stop_process(NAME)
    cloud._wait_gone([NAME])
