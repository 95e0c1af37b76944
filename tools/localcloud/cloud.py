#!/usr/bin/env python3
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

"""The local cloud: real OpenStack services from PyPI on 127.0.0.1, for tests and the demo.

Usage: ``python tools/localcloud/cloud.py start|stop|status|env|clean`` with the project's
virtualenv python. Everything (configuration, databases, logs, guests) lives under one state
directory: ``$HEAT_GPU_CLOUD_DIR``, default ``<repo>/.localcloud``.

Services: MariaDB (unix socket only), RabbitMQ, Keystone, Glance, Placement, Nova (API, conductor,
scheduler, two computes with a fake hypervisor that reports NVIDIA GPUs as PCI devices), Neutron
(ML2 with a mechanism driver that binds ports on the simulated hosts; no agents, the data plane is
simulated) and Heat (API + engine) with the heat-gpu plugin loaded.

Other programs import this module and call ``ensure_running()``.
"""

import argparse
import concurrent.futures
import contextlib
import datetime
import fcntl
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import traceback
import typing
import urllib.error
import urllib.request

from heat_gpu import catalog

try:
    from tools.localcloud import guestroot
    from tools.localcloud import horizon
    from tools.localcloud import mirror
except ImportError:  # run as a script: this directory is sys.path[0]
    import guestroot
    import horizon
    import mirror

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
HOST = '127.0.0.1'
REGION = 'RegionOne'
VHOST = 'heat_gpu'
DEMO_PROJECT = 'demo'
DEMO_USER = 'demo'
PORTS = {
    'keystone': 5000,
    'glance': 9292,
    'placement': 8778,
    'nova-api': 8774,
    'neutron': 9696,
    'heat-api': 8004,
    'mirror': 8443,
    'rabbitmq': 5672,
    'rabbitmq-dist': 25672,
    'epmd': 4369,
    'horizon': 8080,  # optional: horizon.py
}
SERVICE_USERS = ('nova', 'placement', 'glance', 'heat', 'neutron')
# The port each service listens on (services not named here listen on none or on their own name).
SERVICE_PORTS = {'neutron-server': 'neutron'}
# The networks every cloud has (made by start, idempotently): the external provider network with
# the floating IP pool, and the demo project's network behind its router.
PUBLIC_NETWORK = {'name': 'public', 'physnet': 'public', 'cidr': '203.0.113.0/24',
                  'gateway_ip': '203.0.113.1',
                  'pool': {'start': '203.0.113.10', 'end': '203.0.113.250'}}
PRIVATE_NETWORK = {'name': 'private', 'subnet': 'private-subnet', 'cidr': '10.0.0.0/24'}
ROUTER = 'router1'
# The marker of keystone's projects, users and catalog; a new name when they change, so a cloud
# made before redoes the (idempotent) step once (2: the network service and its user).
KEYSTONE_RESOURCES = 'keystone-resources-2'

# The operator's [pci] alias entries (vendor 10de): every GPU model of the catalog under its own
# alias and PCI device id, the names OS::GPU::Flavor and hot/gpu_flavors.yaml ask nova for (the
# catalog is the one source; tests/unit/test_gpu_aliases.py ties them).
GPU_ALIASES = {m.alias: m.pci_id.split(':')[1] for m in catalog.models()}

# The simulated hardware: GPUs per compute host, with the NUMA node each sits on.
TEST_HOST_DEVICES = {
    'gpu-host-1': [
        {'address': '0000:04:00.0', 'vendor_id': '10de', 'product_id': '15f8', 'numa_node': 0},
        {'address': '0000:05:00.0', 'vendor_id': '10de', 'product_id': '15f8', 'numa_node': 0},
        {'address': '0000:84:00.0', 'vendor_id': '10de', 'product_id': '15f8', 'numa_node': 1},
        {'address': '0000:85:00.0', 'vendor_id': '10de', 'product_id': '15f8', 'numa_node': 1},
    ],
    'gpu-host-2': [
        {'address': '0000:17:00.0', 'vendor_id': '10de', 'product_id': '20b5', 'numa_node': 0},
        {'address': '0000:31:00.0', 'vendor_id': '10de', 'product_id': '20b5', 'numa_node': 0},
        {'address': '0000:b1:00.0', 'vendor_id': '10de', 'product_id': '15f8', 'numa_node': 1},
        {'address': '0000:ca:00.0', 'vendor_id': '10de', 'product_id': '15f8', 'numa_node': 1},
    ],
}


def _bench_host_devices(hosts: int = 2, per_host: int = 32) -> dict:
    """Many identical P100s for scale benchmarks: ``per_host`` on each of ``hosts`` hosts.

    The first half of each host's slots sit on NUMA node 0, the second half on node 1.
    """
    layout = {}
    for h in range(hosts):
        layout['gpu-host-%d' % (h + 1)] = [
            {'address': '0000:%02x:00.0' % (0x10 + i), 'vendor_id': '10de',
             'product_id': '15f8', 'numa_node': 0 if i < per_host // 2 else 1}
            for i in range(per_host)]
    return layout


# Host layouts a cloud can be created with (HEAT_GPU_CLOUD_LAYOUT): "test" is what the test
# suite and the demo assume; "bench" has 64 GPUs for the scale benchmark.
LAYOUTS = {
    'test': TEST_HOST_DEVICES,
    'bench': _bench_host_devices(),
}
LAYOUT_ENV = 'HEAT_GPU_CLOUD_LAYOUT'

# How Heat runs (HEAT_GPU_CLOUD_HEAT). "production" is what clouds run: two heat-engine
# processes (two controllers' worth, each with its own host name) behind the one RPC topic, each
# forking num_engine_workers workers (heat's default is the number of cores, at least 4), and a
# heat-api of several workers; a guest's signal, a resource's polling and a stack's other
# resources may land on any worker of either engine. "single" is one engine with one worker.
HEAT_LAYOUTS = {
    'production': {'engines': 2, 'engine_workers': 4, 'api_workers': 2},
    'single': {'engines': 1, 'engine_workers': 1, 'api_workers': 1},
}
HEAT_LAYOUT_ENV = 'HEAT_GPU_CLOUD_HEAT'
DEFAULT_HEAT_LAYOUT = 'production'
PORT_OFFSET_ENV = 'HEAT_GPU_CLOUD_PORT_OFFSET'

IMAGES = (
    {'name': 'debian-12-gpu', 'os_distro': 'debian', 'os_version': '12'},
    {'name': 'ubuntu-22.04-gpu', 'os_distro': 'ubuntu', 'os_version': '22.04'},
    {'name': 'rocky-9-gpu', 'os_distro': 'rocky', 'os_version': '9'},
    {'name': 'ubuntu-22.04-cuda-prebaked', 'os_distro': 'ubuntu', 'os_version': '22.04',
     'heat_gpu_prebaked': 'true'},
)

START_TIMEOUT = 180.0
STOP_TIMEOUT = 30.0


class CloudError(Exception):
    """The local cloud could not do what was asked; the message says why and what to do."""


def default_state_dir() -> str:
    return os.path.abspath(os.environ.get('HEAT_GPU_CLOUD_DIR')
                           or os.path.join(REPO, '.localcloud'))


def _venv_bin(name: str) -> str:
    return os.path.join(os.path.dirname(sys.executable), name)


def _ini(sections: dict) -> str:
    lines = []
    for section, options in sections.items():
        lines.append('[%s]' % section)
        for key, value in options.items():
            if isinstance(value, (list, tuple)):
                for item in value:
                    lines.append('%s = %s' % (key, item))
            else:
                if isinstance(value, bool):
                    value = 'true' if value else 'false'
                lines.append('%s = %s' % (key, value))
        lines.append('')
    return '\n'.join(lines)


def _tail(path: str, *, lines: int = 30) -> str:
    try:
        with open(path, 'rb') as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            data = f.read().decode('utf-8', 'replace')
    except OSError:
        return '(no log at %s)' % path
    return '\n'.join(data.splitlines()[-lines:])


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        return s.connect_ex((HOST, port)) == 0


def _http_up(url: str, *, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3, context=context) as resp:
            resp.read(1)
        return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state is [0], start time [19])."""
    try:
        with open('/proc/%d/stat' % pid, encoding='utf-8') as f:
            return f.read().rsplit(')', 1)[1].split()
    except (OSError, IndexError):
        return None


def _engine_names(count: int) -> list[str]:
    return ['heat-engine' + ('-%d' % (i + 1) if i else '') for i in range(count)]


def _every_engine() -> list[str]:
    return _engine_names(max(layout['engines'] for layout in HEAT_LAYOUTS.values()))


def _sql_id(text: str) -> str:
    """A heat id (a UUID) checked before it goes into SQL."""
    if not re.fullmatch(r'[0-9a-fA-F-]{36}', text):
        raise CloudError('not a heat id: %r' % text)
    return text


def _api_time(text: str) -> datetime.datetime:
    """A time as heat's API shows it (ISO 8601, UTC, without a zone)."""
    return datetime.datetime.fromisoformat(text.rstrip('Z').split('+')[0])


def _group_alive(pgid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pgid, os.WNOHANG)
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _group_rss_kib(pgid: int) -> int:
    total = 0
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open('/proc/%s/stat' % entry, encoding='utf-8') as f:
                fields = f.read().rsplit(')', 1)[1].split()
            if int(fields[2]) != pgid:
                continue
            with open('/proc/%s/status' % entry, encoding='utf-8') as f:
                for line in f:
                    if line.startswith('VmRSS:'):
                        total += int(line.split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total


class Cloud:
    """One local cloud, described by its state directory."""

    def __init__(self, *, state_dir: str | None = None) -> None:
        self.state = os.path.abspath(state_dir or default_state_dir())
        self.etc = os.path.join(self.state, 'etc')
        self.logs = os.path.join(self.state, 'log')
        self.run_dir = os.path.join(self.state, 'run')
        self.socket = os.path.join(self.state, 'mysql', 'mysqld.sock')
        self._secrets: dict | None = None
        self._connections: dict = {}
        # When this start launched the nova-computes (UTC): a heartbeat older than that is from
        # the previous run and would make a compute that is still starting look "up".
        self._computes_started: datetime.datetime | None = None
        self._settings: dict | None = None
        self._horizon = horizon.requested()

    # Settings fixed when the state directory is created: port offset and host layout

    @property
    def settings(self) -> dict:
        """``port_offset`` and ``layout`` of this cloud.

        Taken from the environment when the state directory is new, then kept in it, so every
        later command (and every test) talks to the same ports and hosts; asking for other
        values against an existing state directory is an error rather than a silent switch.
        """
        if self._settings is not None:
            return self._settings
        wanted = {}
        if os.environ.get(PORT_OFFSET_ENV):
            try:
                wanted['port_offset'] = int(os.environ[PORT_OFFSET_ENV])
            except ValueError:
                raise CloudError('%s=%r is not a whole number of ports' % (
                    PORT_OFFSET_ENV, os.environ[PORT_OFFSET_ENV])) from None
            if not 0 <= wanted['port_offset'] <= 20000:
                raise CloudError('%s=%d is out of range: use 0 to 20000' % (
                    PORT_OFFSET_ENV, wanted['port_offset']))
        if os.environ.get(LAYOUT_ENV):
            if os.environ[LAYOUT_ENV] not in LAYOUTS:
                raise CloudError('%s=%r is not a known host layout: use one of %s' % (
                    LAYOUT_ENV, os.environ[LAYOUT_ENV], ', '.join(sorted(LAYOUTS))))
            wanted['layout'] = os.environ[LAYOUT_ENV]
        if os.environ.get(HEAT_LAYOUT_ENV):
            if os.environ[HEAT_LAYOUT_ENV] not in HEAT_LAYOUTS:
                raise CloudError('%s=%r is not a known heat layout: use one of %s' % (
                    HEAT_LAYOUT_ENV, os.environ[HEAT_LAYOUT_ENV],
                    ', '.join(sorted(HEAT_LAYOUTS))))
            wanted['heat'] = os.environ[HEAT_LAYOUT_ENV]
        path = self.path('settings.json')
        if os.path.exists(path):
            with open(path, encoding='utf-8') as f:
                stored = json.load(f)
            clash = {k: (stored.get(k), v) for k, v in wanted.items() if stored.get(k) != v}
            if clash:
                raise CloudError(
                    'the local cloud in %s was created with %s; it cannot change to %s. Use '
                    'another HEAT_GPU_CLOUD_DIR for a cloud with other settings, or run '
                    '"cloud.py clean" first.' % (
                        self.state,
                        ', '.join('%s=%s' % (k, old) for k, (old, _) in sorted(clash.items())),
                        ', '.join('%s=%s' % (k, new) for k, (_, new) in sorted(clash.items()))))
            self._settings = stored
        else:
            self._settings = {'port_offset': wanted.get('port_offset', 0),
                              'layout': wanted.get('layout', 'test'),
                              'heat': wanted.get('heat', DEFAULT_HEAT_LAYOUT)}
        return self._settings

    def _save_settings(self) -> None:
        path = self.path('settings.json')
        if not os.path.exists(path):
            os.makedirs(self.state, exist_ok=True)
            self._write(path, json.dumps(self.settings, indent=2) + '\n')

    def port(self, service: str) -> int:
        return PORTS[SERVICE_PORTS.get(service, service)] + self.settings['port_offset']

    @property
    def host_devices(self) -> dict:
        """The simulated GPUs of each compute host in this cloud's layout."""
        return LAYOUTS[self.settings['layout']]

    @property
    def heat_layout_name(self) -> str:
        """This cloud's heat layout (clouds made before there was a choice get the default)."""
        return self.settings.get('heat', DEFAULT_HEAT_LAYOUT)

    @property
    def heat_layout(self) -> dict:
        """Engines, workers per engine and heat-api workers of this cloud's heat layout."""
        return HEAT_LAYOUTS[self.heat_layout_name]

    @property
    def heat_engines(self) -> tuple:
        """The heat-engine services: heat-engine, then heat-engine-2 and on (one per controller)."""
        return tuple(_engine_names(self.heat_layout['engines']))

    def engine_host(self, name: str) -> str:
        """The [DEFAULT] host a heat-engine service runs as (a controller's name)."""
        return 'controller-%d' % (self.heat_engines.index(name) + 1)

    @property
    def compute_hosts(self) -> tuple:
        return tuple(sorted(self.host_devices))

    # Paths, secrets, small helpers

    def path(self, *parts: str) -> str:
        return os.path.join(self.state, *parts)

    @property
    def secrets(self) -> dict:
        if self._secrets is None:
            path = self.path('secrets.json')
            if os.path.exists(path):
                with open(path, encoding='utf-8') as f:
                    self._secrets = json.load(f)
            else:
                self._secrets = {}
            # A cloud made before a service was added gets that service's password too.
            names = ('admin', DEMO_USER, 'heat_domain_admin', 'rabbit') + SERVICE_USERS
            missing = [n for n in names if n not in self._secrets]
            if missing:
                self._secrets.update({n: secrets.token_hex(12) for n in missing})
                tmp = path + '.new'
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, 'w', encoding='utf-8') as f:
                    json.dump(self._secrets, f, indent=2)
                os.replace(tmp, path)
        return self._secrets

    def db_url(self, name: str) -> str:
        return 'mysql+pymysql://root@localhost/%s?unix_socket=%s&charset=utf8' % (
            name, self.socket)

    def transport_url(self) -> str:
        return 'rabbit://heat_gpu:%s@%s:%d/%s' % (
            self.secrets['rabbit'], HOST, self.port('rabbitmq'), VHOST)

    def url(self, service: str) -> str:
        service = SERVICE_PORTS.get(service, service)
        scheme = 'https' if service == 'mirror' else 'http'
        return '%s://%s:%d' % (scheme, HOST, self.port(service))

    @property
    def mirror_dir(self) -> str:
        return self.path('mirror')

    def _marker(self, name: str) -> str:
        return self.path('run', 'done-' + name)

    def _done(self, name: str) -> bool:
        return os.path.exists(self._marker(name))

    def _mark(self, name: str) -> None:
        with open(self._marker(name), 'w', encoding='utf-8') as f:
            f.write(time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()))

    def _log(self, message: str) -> None:
        print('localcloud: %s' % message, flush=True)

    def _run(self, argv: list[str], *, timeout: float = 300.0, env: dict | None = None,
             log: str = 'setup', stdin: str = '') -> str:
        full_env = dict(self._base_env(), **(env or {}))
        # Passwords go to setup commands through the environment or stdin, never in argv (which
        # any local user can read in ps); logs and errors mask them all the same.
        shown = self._masked(' '.join(argv))
        try:
            proc = subprocess.run(argv, env=full_env, capture_output=True, text=True,
                                  input=stdin,
                                  timeout=timeout, cwd=self.state, check=False)
        except subprocess.TimeoutExpired as exc:
            raise CloudError('%s did not finish within %d s' % (shown, timeout)) from exc
        output = self._masked(proc.stdout + proc.stderr)
        with open(os.path.join(self.logs, log + '.log'), 'a', encoding='utf-8') as f:
            f.write('$ %s\n%s\n' % (shown, output))
        if proc.returncode != 0:
            out = '\n'.join(output.splitlines()[-30:])
            raise CloudError('%s failed with exit code %d:\n%s' % (
                shown, proc.returncode, out))
        return proc.stdout

    def _masked(self, text: str) -> str:
        """*text* with every generated password replaced by ``***``."""
        for value in (self._secrets or {}).values():
            text = text.replace(value, '***')
        return text

    def _base_env(self) -> dict:
        env = dict(os.environ)
        env['HOME'] = self.path('home')
        env.pop('OS_CLOUD', None)
        return env

    # Processes

    def _pid_file(self, name: str) -> str:
        return os.path.join(self.run_dir, name + '.pid')

    def pid(self, name: str) -> int | None:
        """The pid of a running service, None when it is not running.

        The pid file holds the pid and the process start time, so a recycled pid is not taken
        for the service.
        """
        try:
            with open(self._pid_file(name), encoding='utf-8') as f:
                pid_text, _, started = f.read().strip().partition(' ')
            pid = int(pid_text)
        except (OSError, ValueError):
            return None
        stat = _proc_stat(pid)
        if stat is None or stat[0] in ('Z', 'X') or stat[19] != started:
            return None
        return pid

    def _started_at(self, name: str) -> datetime.datetime | None:
        """When a running service was started (UTC, naive as heat's times are)."""
        if self.pid(name) is None:
            return None
        stamp = os.stat(self._pid_file(name)).st_mtime
        return datetime.datetime.fromtimestamp(stamp, datetime.timezone.utc).replace(tzinfo=None)

    def _spawn(self, name: str, argv: list[str], *, env: dict | None = None) -> int:
        full_env = dict(self._base_env(), **(env or {}))
        full_env['HEAT_GPU_CLOUD_SERVICE'] = name
        full_env['HEAT_GPU_CLOUD_DIR'] = self.state
        log_path = os.path.join(self.logs, name + '.log')
        with open(log_path, 'ab') as log:
            log.write(('\n==== %s start: %s\n' % (
                time.strftime('%H:%M:%S'), ' '.join(argv))).encode())
            log.flush()
            proc = subprocess.Popen(argv, env=full_env, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, cwd=self.state,
                                    start_new_session=True, close_fds=True)
        stat = _proc_stat(proc.pid)
        with open(self._pid_file(name), 'w', encoding='utf-8') as f:
            f.write('%d %s' % (proc.pid, stat[19] if stat else ''))
        return proc.pid

    def _log_tails(self, names: list[str]) -> str:
        return '\n'.join('Last lines of %s:\n%s' % (
            os.path.join(self.logs, n + '.log'), _tail(os.path.join(self.logs, n + '.log')))
            for n in names)

    def _wait_for(self, name: str, check, *, timeout: float = START_TIMEOUT,
                  what: str = 'to come up', also: tuple = ()) -> None:
        """Wait until check() is true while the service runs; on failure show its log."""
        deadline = time.monotonic() + timeout
        watched = [name] + list(also)
        while True:
            dead = [n for n in watched if self.pid(n) is None]
            if dead:
                raise CloudError('%s exited while waiting for %s %s.\n%s' % (
                    ', '.join(dead), name, what, self._log_tails(dead)))
            if check():
                return
            if time.monotonic() > deadline:
                raise CloudError('%s did not %s within %d s.\n%s' % (
                    name, what.replace('to ', '', 1), timeout, self._log_tails(watched)))
            time.sleep(0.5)

    def _stop_process(self, name: str) -> None:
        pid = self.pid(name)
        if pid is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._pid_file(name))
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)

    def _wait_gone(self, names: list[str], *, timeout: float = STOP_TIMEOUT,
                   pids: dict | None = None) -> None:
        """Wait until the services and their process groups are gone, killing what lingers.

        ``pids`` are the leaders' pids taken before they were signalled: a leader killed with
        SIGKILL no longer shows as running, but its workers may hold its port a moment longer.
        """
        pids = pids if pids is not None else {n: self.pid(n) for n in names}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(self.pid(n) for n in names):
            time.sleep(0.2)
        for name, pid in pids.items():
            if pid is not None and self.pid(name) is not None:
                self._log('%s (pid %d) ignored SIGTERM for %d s; killing it' % (
                    name, pid, timeout))
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(self.pid(n) for n in names):
            time.sleep(0.2)
        for name, pid in pids.items():
            if pid is not None:
                # Children left in the group (gunicorn workers, erlang helpers) go too.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._pid_file(name))
        # Until the last of them has exited, a listening socket may still be open.
        groups = [pid for pid in pids.values() if pid is not None]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_group_alive(g) for g in groups):
            time.sleep(0.1)

    def services(self) -> list[str]:
        return (['mariadb', 'epmd', 'rabbitmq', 'keystone', 'placement', 'glance',
                 'neutron-server', 'mirror', 'nova-api', 'nova-conductor', 'nova-scheduler']
                + ['nova-compute-%s' % h for h in self.compute_hosts]
                + ['heat-api'] + list(self.heat_engines)
                + (['horizon'] if self._horizon or self.pid('horizon') else []))

    # Configuration

    def _authtoken(self, user: str) -> dict:
        return {
            'www_authenticate_uri': self.url('keystone'),
            'auth_url': self.url('keystone'),
            'auth_type': 'password',
            'project_domain_name': 'Default',
            'user_domain_name': 'Default',
            'project_name': 'service',
            'username': user,
            'password': self.secrets[user],
            'region_name': REGION,
            'service_token_roles_required': True,
        }

    def _ks_auth(self, user: str) -> dict:
        auth = self._authtoken(user)
        del auth['www_authenticate_uri']
        del auth['service_token_roles_required']
        return auth

    def _write(self, path: str, text: str) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'w', encoding='utf-8') as f:
            f.write(text)

    def write_configs(self) -> None:
        for d in ('etc', 'log', 'run', 'home', 'guests', 'glance/images', 'glance/staging',
                  'glance/tasks', 'locks', 'keystone', 'rabbitmq', 'neutron'):
            os.makedirs(self.path(d), exist_ok=True)
        share = os.path.join(sys.prefix, 'etc')
        self._write_keystone()
        self._write_glance(share)
        self._write_placement()
        self._write_neutron(share)
        self._write_nova(share)
        self._write_heat(share)
        self._write_rabbitmq()
        self._write_fakegpu_layout()
        self.write_clouds_yaml()

    def _common(self, name: str) -> dict:
        return {'debug': False, 'use_stderr': True, 'state_path': self.path(name)}

    def _write_keystone(self) -> None:
        ks = self.path('keystone')
        self._write(os.path.join(self.etc, 'keystone', 'keystone.conf'), _ini({
            'DEFAULT': {'debug': False, 'use_stderr': True},
            'database': {'connection': self.db_url('keystone')},
            'token': {'provider': 'fernet', 'expiration': 14400},
            'fernet_tokens': {'key_repository': os.path.join(ks, 'fernet-keys')},
            'fernet_receipts': {'key_repository': os.path.join(ks, 'fernet-keys')},
            'credential': {'key_repository': os.path.join(ks, 'credential-keys')},
            'oslo_messaging_notifications': {'driver': 'noop'},
        }))

    def _write_glance(self, share: str) -> None:
        etc = os.path.join(self.etc, 'glance')
        os.makedirs(etc, exist_ok=True)
        shutil.copy(os.path.join(share, 'glance', 'glance-api-paste.ini'), etc)
        self._write(os.path.join(etc, 'glance-api.conf'), _ini({
            'DEFAULT': {'debug': False, 'use_stderr': True, 'enabled_backends': 'local:file',
                        'workers': 1, 'bind_host': HOST, 'bind_port': self.port('glance'),
                        'worker_self_reference_url': self.url('glance')},
            'database': {'connection': self.db_url('glance')},
            'glance_store': {'default_backend': 'local'},
            'local': {'filesystem_store_datadir': self.path('glance', 'images')},
            'os_glance_staging_store': {
                'filesystem_store_datadir': self.path('glance', 'staging')},
            'os_glance_tasks_store': {'filesystem_store_datadir': self.path('glance', 'tasks')},
            'keystone_authtoken': self._authtoken('glance'),
            'paste_deploy': {'flavor': 'keystone'},
            'oslo_concurrency': {'lock_path': self.path('locks')},
            'oslo_messaging_notifications': {'driver': 'noop'},
            'oslo_policy': {'enforce_new_defaults': True},
        }))

    def _write_placement(self) -> None:
        self._write(os.path.join(self.etc, 'placement', 'placement.conf'), _ini({
            'DEFAULT': {'debug': False, 'use_stderr': True},
            'placement_database': {'connection': self.db_url('placement')},
            'api': {'auth_strategy': 'keystone'},
            'keystone_authtoken': self._authtoken('placement'),
            # nova's scheduler claims only a host's first allocation candidate: in placement's
            # fixed order, servers scheduled at the same time all pick the same PCI device,
            # all but one claim fails with 409, and a few end in "No valid host" while many
            # GPUs are free (seen with a ResourceGroup of 10 GPU servers). Shuffled candidates
            # spread them over the devices, as an operator of a GPU cloud would configure.
            'placement': {'randomize_allocation_candidates': True},
        }))

    def neutron_options(self) -> dict:
        """neutron.conf and ml2_conf.ini of this cloud: ML2 without agents, our mechanism driver."""
        etc = os.path.join(self.etc, 'neutron')
        neutron = {
            'DEFAULT': dict(self._common('neutron'), **{
                'transport_url': self.transport_url(),
                'core_plugin': 'ml2',
                # Routers and floating IPs are database objects of the L3 plugin; no L3 agent
                # wires them (the data plane is simulated).
                'service_plugins': 'router',
                'auth_strategy': 'keystone',
                'api_paste_config': os.path.join(etc, 'api-paste.ini'),
                'allow_overlapping_ips': True,
                # No DHCP agent to tell about networks, subnets and ports.
                'dhcp_agent_notification': False,
                'router_auto_schedule': False,
                'network_auto_schedule': False,
                'notify_nova_on_port_status_changes': True,
                'notify_nova_on_port_data_changes': True,
                'host': 'localcloud',
            }),
            'database': {'connection': self.db_url('neutron')},
            'keystone_authtoken': self._authtoken('neutron'),
            # Port events (network-vif-plugged, network-changed) go to nova's external events
            # API with neutron's service credentials.
            'nova': self._ks_auth('neutron'),
            'oslo_concurrency': {'lock_path': self.path('locks')},
            'oslo_messaging_notifications': {'driver': 'noop'},
            'oslo_policy': {'enforce_new_defaults': True, 'enforce_scope': True},
        }
        ml2 = {
            'ml2': {
                'type_drivers': 'flat,vxlan',
                'tenant_network_types': 'vxlan',
                'mechanism_drivers': 'localcloud',
                'extension_drivers': 'port_security',
            },
            # Any physical network name: an operator's provider network (the guide's admin
            # template, hot/examples/gpu_lab_admin.yaml) is flat on a physnet of its own.
            'ml2_type_flat': {'flat_networks': '*'},
            'ml2_type_vxlan': {'vni_ranges': '1:1000'},
            'securitygroup': {'enable_security_group': True},
            # Read by tools/localcloud/localcloud_net/localcloud_ml2.py.
            'localcloud': {'hosts': ','.join(self.compute_hosts)},
        }
        return {'neutron.conf': neutron, 'ml2_conf.ini': ml2}

    def _write_neutron(self, share: str) -> None:
        etc = os.path.join(self.etc, 'neutron')
        os.makedirs(etc, exist_ok=True)
        shutil.copy(os.path.join(share, 'neutron', 'api-paste.ini'), etc)
        for name, sections in self.neutron_options().items():
            self._write(os.path.join(etc, name), _ini(sections))

    def _neutron_conf(self) -> list[str]:
        etc = os.path.join(self.etc, 'neutron')
        return ['--config-file', os.path.join(etc, 'neutron.conf'),
                '--config-file', os.path.join(etc, 'ml2_conf.ini')]

    def nova_pci_options(self) -> dict:
        specs = sorted({d['product_id'] for devs in self.host_devices.values() for d in devs})
        return {
            'device_spec': [json.dumps({'vendor_id': '10de', 'product_id': p}) for p in specs],
            'alias': [json.dumps({'name': name, 'vendor_id': '10de', 'product_id': pid,
                                  'device_type': 'type-PCI'})
                      for name, pid in GPU_ALIASES.items()],
            'report_in_placement': True,
        }

    def _write_nova(self, share: str) -> None:
        etc = os.path.join(self.etc, 'nova')
        os.makedirs(etc, exist_ok=True)
        shutil.copy(os.path.join(share, 'nova', 'api-paste.ini'), etc)
        conf = {
            'DEFAULT': dict(self._common('nova'), **{
                'transport_url': self.transport_url(),
                'my_ip': HOST,
                'compute_driver': 'localcloud_virt.fakegpu.FakeGpuDriver',
                'instances_path': self.path('nova', 'instances'),
                'heal_instance_info_cache_interval': -1,
                'instance_usage_audit': False,
                'use_rootwrap_daemon': False,
                'reserved_host_memory_mb': 0,
                'reserved_host_disk_mb': 0,
                'osapi_compute_workers': 1,
                'metadata_workers': 1,
                'graceful_shutdown_timeout': 5,
                # No agent plugs a VIF (the data plane is simulated): the mechanism driver puts
                # ports ACTIVE when it binds them, and nova does not wait for the event.
                'vif_plugging_is_fatal': False,
                'vif_plugging_timeout': 0,
            }),
            'wsgi': {'api_paste_config': os.path.join(etc, 'api-paste.ini')},
            'api': {'auth_strategy': 'keystone'},
            'api_database': {'connection': self.db_url('nova_api')},
            'database': {'connection': self.db_url('nova')},
            'keystone_authtoken': self._authtoken('nova'),
            'placement': self._ks_auth('placement'),
            'glance': {'region_name': REGION},
            # Neutron from the catalog, with nova's service credentials.
            'neutron': self._ks_auth('nova'),
            'service_user': dict(self._ks_auth('nova'), send_service_user_token=True),
            'conductor': {'workers': 1},
            'scheduler': {'workers': 1, 'discover_hosts_in_cells_interval': -1},
            'filter_scheduler': {
                # nova's defaults (the server group filters: hot/gpu_cluster.yaml's spread)
                # and PciPassthroughFilter.
                'enabled_filters': 'ComputeFilter,ComputeCapabilitiesFilter,'
                                   'ImagePropertiesFilter,ServerGroupAntiAffinityFilter,'
                                   'ServerGroupAffinityFilter,PciPassthroughFilter',
                'pci_in_placement': True,
            },
            'pci': self.nova_pci_options(),
            'oslo_concurrency': {'lock_path': self.path('locks')},
            'oslo_messaging_notifications': {'driver': 'noop'},
            'notifications': {'notification_format': 'unversioned'},
            'vnc': {'enabled': False},
            'spice': {'enabled': False},
            'serial_console': {'enabled': False},
            'oslo_policy': {'enforce_new_defaults': True, 'enforce_scope': True},
        }
        self._write(os.path.join(etc, 'nova.conf'), _ini(conf))
        for host in self.compute_hosts:
            state_path = self.path('nova', host)
            os.makedirs(state_path, exist_ok=True)
            self._write(os.path.join(etc, 'compute-%s.conf' % host), _ini({
                'DEFAULT': {'host': host, 'state_path': state_path,
                            'instances_path': os.path.join(state_path, 'instances')},
            }))

    def plugin_dir(self) -> str:
        out = subprocess.run(
            [sys.executable, '-c',
             'import heat_gpu.resources, os; '
             'print(os.path.dirname(heat_gpu.resources.__file__))'],
            capture_output=True, text=True, timeout=60, check=False)
        if out.returncode != 0:
            raise CloudError('heat_gpu is not importable by %s (install the project into the '
                             'virtualenv: tools/bootstrap.sh):\n%s' % (sys.executable,
                                                                       out.stderr[-2000:]))
        return out.stdout.strip()

    def _write_heat(self, share: str) -> None:
        etc = os.path.join(self.etc, 'heat')
        os.makedirs(etc, exist_ok=True)
        shutil.copy(os.path.join(share, 'heat', 'api-paste.ini'), etc)
        env_dir = os.path.join(etc, 'environment.d')
        if os.path.isdir(env_dir):
            shutil.rmtree(env_dir)
        shutil.copytree(os.path.join(share, 'heat', 'environment.d'), env_dir)
        self._write(os.path.join(etc, 'policy.yaml'),
                    '# Only admins may create GPU flavors through Heat.\n'
                    '"resource_types:OS::GPU::Flavor": "rule:project_admin"\n')
        guest_mirror = self.guest_mirror()
        self._write(os.path.join(etc, 'heat.conf'), _ini({
            'DEFAULT': {
                'debug': False, 'use_stderr': True,
                'transport_url': self.transport_url(),
                'num_engine_workers': self.heat_layout['engine_workers'],
                'convergence_engine': True,
                'plugin_dirs': self.plugin_dir(),
                'environment_dir': env_dir,
                'region_name_for_services': REGION,
                'stack_user_domain_name': 'heat',
                'stack_domain_admin': 'heat_domain_admin',
                'stack_domain_admin_password': self.secrets['heat_domain_admin'],
                'deferred_auth_method': 'trusts',
                'heat_metadata_server_url': self.url('heat-api'),
                'heat_waitcondition_server_url': self.url('heat-api') + '/v1/waitcondition',
                'graceful_shutdown_timeout': 5,
            },
            # The instances reach no internet: they install from the local cloud's mirror,
            # signed by its own key, as an air-gapped cloud's would.
            'heat_gpu': {
                'mirror_url': guest_mirror['mirror_url'],
                'trusted_keyring_fingerprints': ','.join(guest_mirror['keyring_fingerprints']),
            },
            'paste_deploy': {'api_paste_config': os.path.join(etc, 'api-paste.ini')},
            'database': {'connection': self.db_url('heat')},
            'keystone_authtoken': self._authtoken('heat'),
            'trustee': {
                'auth_type': 'password', 'auth_url': self.url('keystone'),
                'username': 'heat', 'password': self.secrets['heat'],
                'user_domain_name': 'Default',
            },
            'clients_keystone': {'auth_uri': self.url('keystone')},
            'ec2authtoken': {'auth_uri': self.url('keystone') + '/v3'},
            'clients': {'endpoint_type': 'publicURL'},
            'oslo_policy': {'policy_file': os.path.join(etc, 'policy.yaml')},
            'oslo_messaging_notifications': {'driver': 'noop'},
            'oslo_concurrency': {'lock_path': self.path('locks')},
        }))
        # Each engine runs as a controller of its own (heat's services list them by host).
        for name in self.heat_engines:
            self._write(os.path.join(etc, name + '.conf'), _ini({
                'DEFAULT': {'host': self.engine_host(name)}}))

    def _write_rabbitmq(self) -> None:
        self._write(self.path('rabbitmq', 'rabbitmq.conf'), '\n'.join([
            'listeners.tcp.default = %s:%d' % (HOST, self.port('rabbitmq')),
            'distribution.listener.interface = %s' % HOST,
            'distribution.listener.port_range.min = %d' % self.port('rabbitmq-dist'),
            'distribution.listener.port_range.max = %d' % self.port('rabbitmq-dist'),
            'loopback_users = none',
            'management.tcp.ip = %s' % HOST,
            '',
        ]))
        self._write(self.path('rabbitmq', 'enabled_plugins'), '[].\n')

    def _write_fakegpu_layout(self) -> None:
        self._write(self.path('etc', 'fakegpu.json'), json.dumps({
            'state_dir': self.state,
            'guest_python': sys.executable,
            'guest_program': os.path.join(HERE, 'guest.py'),
            'guest_root': guestroot.root_path(),
            'mirror_dir': self.mirror_dir,
            'mirror_url': self.url('mirror'),
            'hosts': self.host_devices,
        }, indent=2))

    def cloud_config(self, *, admin: bool) -> dict:
        user = 'admin' if admin else DEMO_USER
        return {
            'auth_type': 'password',
            'auth': {
                'auth_url': self.url('keystone') + '/v3',
                'username': user,
                'password': self.secrets[user],
                'project_name': 'admin' if admin else DEMO_PROJECT,
                'user_domain_name': 'Default',
                'project_domain_name': 'Default',
            },
            'region_name': REGION,
            'interface': 'public',
            'identity_api_version': 3,
        }

    def clouds_yaml_path(self) -> str:
        return self.path('clouds.yaml')

    def write_clouds_yaml(self) -> None:
        # JSON is valid YAML; no YAML dependency needed to write it.
        doc = {'clouds': {'heat-gpu-admin': self.cloud_config(admin=True),
                          'heat-gpu-demo': self.cloud_config(admin=False)}}
        self._write(self.clouds_yaml_path(), json.dumps(doc, indent=2) + '\n')
        os.chmod(self.clouds_yaml_path(), 0o600)

    def env_lines(self) -> list[str]:
        return ['export OS_CLIENT_CONFIG_FILE=%s' % self.clouds_yaml_path(),
                'export OS_CLOUD=heat-gpu-admin',
                '# tenant view: export OS_CLOUD=heat-gpu-demo']

    # Backing services

    def _start_mariadb(self) -> None:
        if self.pid('mariadb'):
            return
        datadir = self.path('mysql')
        if not os.path.isdir(os.path.join(datadir, 'mysql')):
            self._log('initialising MariaDB in %s' % datadir)
            self._run(['mariadb-install-db', '--no-defaults', '--datadir=' + datadir,
                       '--user=root', '--auth-root-authentication-method=socket',
                       '--skip-test-db'], timeout=120, log='mariadb-install')
        self._spawn('mariadb', [
            'mariadbd', '--no-defaults', '--datadir=' + datadir, '--socket=' + self.socket,
            '--skip-networking', '--user=root', '--pid-file=' + self.path('run', 'mysqld.pid'),
            '--innodb-buffer-pool-size=64M', '--innodb-log-file-size=16M',
            '--innodb-flush-log-at-trx-commit=0', '--performance-schema=OFF',
            '--skip-name-resolve', '--max-connections=500', '--character-set-server=utf8mb4',
            '--collation-server=utf8mb4_general_ci'])

    def _mysql(self, sql: str) -> str:
        return self._run(['mariadb', '--no-defaults', '--socket=' + self.socket, '-uroot',
                          '-N', '-e', sql], timeout=30, log='mariadb-client')

    def _mysql_ready(self) -> bool:
        if not os.path.exists(self.socket):
            return False
        try:
            self._mysql('SELECT 1')
            return True
        except CloudError:
            return False

    def _create_databases(self) -> None:
        names = ('keystone', 'glance', 'placement', 'nova_api', 'nova', 'nova_cell0', 'heat',
                 'neutron')
        self._mysql(' '.join('CREATE DATABASE IF NOT EXISTS %s;' % n for n in names))

    def _rabbit_env(self) -> dict:
        base = self.path('rabbitmq')
        return {
            'RABBITMQ_NODENAME': 'rabbit@localhost',
            'RABBITMQ_NODE_IP_ADDRESS': HOST,
            'RABBITMQ_NODE_PORT': str(self.port('rabbitmq')),
            'RABBITMQ_CONFIG_FILE': os.path.join(base, 'rabbitmq'),
            'RABBITMQ_ENABLED_PLUGINS_FILE': os.path.join(base, 'enabled_plugins'),
            'RABBITMQ_MNESIA_BASE': os.path.join(base, 'mnesia'),
            'RABBITMQ_LOG_BASE': os.path.join(self.logs, 'rabbitmq'),
            'RABBITMQ_LOGS': '-',
            'RABBITMQ_PID_FILE': os.path.join(self.run_dir, 'rabbitmq-server.pid'),
            'ERL_EPMD_ADDRESS': HOST,
            'ERL_EPMD_PORT': str(self.port('epmd')),
            'HOME': base,
        }

    def _start_rabbitmq(self) -> None:
        if not self.pid('epmd'):
            self._spawn('epmd', ['epmd', '-address', HOST, '-port', str(self.port('epmd'))],
                        env=self._rabbit_env())
        if not self.pid('rabbitmq'):
            self._spawn('rabbitmq', ['/usr/lib/rabbitmq/bin/rabbitmq-server'],
                        env=self._rabbit_env())

    def _rabbitmqctl(self, *args: str, timeout: float = 60.0, stdin: str = '') -> str:
        return self._run(['/usr/lib/rabbitmq/bin/rabbitmqctl', '-n', 'rabbit@localhost',
                          '-q'] + list(args), timeout=timeout, env=self._rabbit_env(),
                         log='rabbitmqctl', stdin=stdin)

    def _setup_rabbitmq(self) -> None:
        self._wait_for('rabbitmq', lambda: _port_in_use(self.port('rabbitmq')),
                       what='to listen on %s:%d' % (HOST, self.port('rabbitmq')))
        self._rabbitmqctl('await_startup', '--timeout', '60', timeout=90)
        if self._done('rabbitmq'):
            return
        self._rabbitmqctl('add_vhost', VHOST)
        # Without a password argument rabbitmqctl reads it from stdin.
        self._rabbitmqctl('add_user', 'heat_gpu', stdin=self.secrets['rabbit'] + '\n')
        self._rabbitmqctl('set_permissions', '-p', VHOST, 'heat_gpu', '.*', '.*', '.*')
        self._mark('rabbitmq')

    # OpenStack services

    def _gunicorn(self, name: str, app: str, *, argv0: str, config_env: dict,
                  extra_argv: list[str] | None = None, threads: int = 8, workers: int = 1,
                  access_log: bool = False, python_path: tuple = ()) -> None:
        if self.pid(name):
            return
        env = dict(config_env)
        env['LOCALCLOUD_WSGI_APP'] = app
        env['LOCALCLOUD_WSGI_ARGV'] = json.dumps([argv0] + (extra_argv or []))
        env['PYTHONPATH'] = os.pathsep.join((HERE,) + tuple(python_path))
        self._spawn(name, [
            _venv_bin('gunicorn'), '--bind', '%s:%d' % (HOST, self.port(name)),
            '--workers', str(workers),
            '--worker-class', 'gthread', '--threads', str(threads), '--timeout', '300',
            # Clients poll every few seconds over pooled connections: an idle timeout shorter
            # than the poll interval makes them send on a connection the server just closed.
            '--keep-alive', '75',
            '--graceful-timeout', '5', '--pythonpath', HERE, '--name', name]
            + (['--access-logfile', '-'] if access_log else [])
            + ['wsgi_wrapper:application'], env=env)

    def _start_keystone(self) -> None:
        self._gunicorn('keystone', 'keystone.wsgi.api:application', argv0='keystone',
                       config_env={'OS_KEYSTONE_CONFIG_FILES':
                                   os.path.join(self.etc, 'keystone', 'keystone.conf')})

    def _start_placement(self) -> None:
        self._gunicorn('placement', 'placement.wsgi.api:application', argv0='placement-api',
                       config_env={'OS_PLACEMENT_CONFIG_DIR':
                                   os.path.join(self.etc, 'placement')})

    def _start_glance(self) -> None:
        self._gunicorn('glance', 'glance.wsgi.api:application', argv0='glance-api',
                       config_env={'OS_GLANCE_CONFIG_DIR': os.path.join(self.etc, 'glance')})

    def _start_mirror(self) -> None:
        if self.pid('mirror'):
            return
        self._spawn('mirror', [sys.executable, os.path.join(HERE, 'mirror.py'), 'serve',
                               '--dir', self.mirror_dir, '--port', str(self.port('mirror'))])

    def _mirror_up(self) -> bool:
        context = ssl.create_default_context(cafile=mirror.ca_cert_path(self.mirror_dir))
        return _http_up(self.url('mirror') + '/', context=context)

    def _start_neutron(self) -> None:
        # The mechanism driver and its entry point (a dist-info beside it) are on its path.
        self._gunicorn('neutron-server', 'neutron.wsgi.api:application', argv0='neutron-server',
                       config_env={}, extra_argv=self._neutron_conf(),
                       python_path=(os.path.join(HERE, 'localcloud_net'),))

    def _nova_conf(self) -> list[str]:
        return ['--config-file', os.path.join(self.etc, 'nova', 'nova.conf')]

    def _start_nova(self) -> None:
        self._gunicorn('nova-api', 'nova.wsgi.osapi_compute:application',
                       argv0='nova-api',
                       config_env={'OS_NOVA_CONFIG_DIR': os.path.join(self.etc, 'nova'),
                                   'OS_NOVA_CONFIG_FILES': 'api-paste.ini;nova.conf'})
        for service in ('conductor', 'scheduler'):
            name = 'nova-' + service
            if not self.pid(name):
                self._spawn(name, [_venv_bin(name)] + self._nova_conf())
        for host in self.compute_hosts:
            name = 'nova-compute-' + host
            if not self.pid(name):
                self._spawn(name, [sys.executable, os.path.join(HERE, 'nova_compute.py')]
                            + self._nova_conf() + [
                    '--config-file', os.path.join(self.etc, 'nova', 'compute-%s.conf' % host)],
                    env={'HEAT_GPU_FAKEGPU_LAYOUT': self.path('etc', 'fakegpu.json')})

    def _heat_conf(self) -> list[str]:
        return ['--config-file', os.path.join(self.etc, 'heat', 'heat.conf')]

    def _start_heat(self) -> None:
        self._gunicorn('heat-api', 'heat.wsgi.api:application', argv0='heat-api',
                       config_env={}, extra_argv=self._heat_conf(),
                       workers=self.heat_layout['api_workers'])
        for name in self.heat_engines:
            if not self.pid(name):
                self._spawn(name, [_venv_bin('heat-engine')] + self._heat_conf() + [
                    '--config-file', os.path.join(self.etc, 'heat', name + '.conf')])

    # One-time setup steps

    def _db_syncs(self) -> None:
        """Create the schemas of all services, in parallel (they wait on MariaDB, not CPU)."""
        nova = self._nova_conf()
        heat = self._heat_conf()
        nova_manage = [_venv_bin('nova-manage')] + nova
        steps = {
            'placement': [[_venv_bin('placement-manage'), '--config-file',
                           os.path.join(self.etc, 'placement', 'placement.conf'), 'db', 'sync']],
            'glance': [[_venv_bin('glance-manage'), '--config-file',
                        os.path.join(self.etc, 'glance', 'glance-api.conf'), 'db_sync']],
            'heat': [[_venv_bin('heat-manage')] + heat + ['db_sync']],
            'neutron': [[_venv_bin('neutron-db-manage')] + self._neutron_conf()
                        + ['upgrade', 'heads']],
            'nova': [
                nova_manage + ['api_db', 'sync'],
                nova_manage + ['cell_v2', 'map_cell0', '--database_connection',
                               self.db_url('nova_cell0')],
                nova_manage + ['cell_v2', 'create_cell', '--name', 'cell1', '--verbose'],
                nova_manage + ['db', 'sync'],
            ],
        }

        def chain(name: str) -> None:
            if self._done('db-' + name):
                return
            for argv in steps[name]:
                self._run(argv, timeout=600, log='db-sync-' + name)
            self._mark('db-' + name)

        with concurrent.futures.ThreadPoolExecutor(max_workers=len(steps)) as pool:
            futures = [pool.submit(chain, n) for n in steps]
            for fut in futures:
                fut.result()

    def _keystone_manage(self, *args: str, env: dict | None = None) -> None:
        self._run([_venv_bin('keystone-manage'), '--config-file',
                   os.path.join(self.etc, 'keystone', 'keystone.conf')] + list(args),
                  timeout=300, log='keystone-manage', env=env)

    def _setup_keystone_db(self) -> None:
        if self._done('keystone-db'):
            return
        self._keystone_manage('db_sync')
        self._keystone_manage('fernet_setup', '--keystone-user', 'root',
                              '--keystone-group', 'root')
        self._keystone_manage('credential_setup', '--keystone-user', 'root',
                              '--keystone-group', 'root')
        public = self.url('keystone') + '/v3'
        # The password goes in the environment, not on a command line other users can read.
        self._keystone_manage('bootstrap',
                              '--bootstrap-admin-url', public, '--bootstrap-internal-url', public,
                              '--bootstrap-public-url', public, '--bootstrap-region-id', REGION,
                              env={'OS_BOOTSTRAP_PASSWORD': self.secrets['admin']})
        self._mark('keystone-db')

    def connection(self, *, admin: bool = True):
        """An openstacksdk connection (cached per role) to this cloud."""
        key = 'admin' if admin else 'demo'
        if key not in self._connections:
            import openstack
            self._connections[key] = openstack.connect(
                load_yaml_config=False, load_envvars=False, **self.cloud_config(admin=admin))
        return self._connections[key]

    def _setup_keystone_resources(self) -> None:
        if self._done(KEYSTONE_RESOURCES):
            return
        self._retry('creating projects, users and the catalog in keystone',
                    self._create_keystone_resources, logs=['keystone'])
        # Tokens issued before the catalog existed carry an empty one.
        self._connections.clear()
        self._mark(KEYSTONE_RESOURCES)

    def _create_keystone_resources(self) -> None:
        conn = self.connection()
        ident = conn.identity
        default = ident.find_domain('default', ignore_missing=False)

        def role(name: str):
            return ident.find_role(name) or ident.create_role(name=name)

        def project(name: str, *, domain_id: str):
            return (ident.find_project(name, domain_id=domain_id)
                    or ident.create_project(name=name, domain_id=domain_id))

        def user(name: str, *, domain_id: str, password: str):
            found = ident.find_user(name, domain_id=domain_id)
            if found:
                return ident.update_user(found, password=password)
            return ident.create_user(name=name, domain_id=domain_id, password=password)

        admin_role, member = role('admin'), role('member')
        role('reader')
        role('heat_stack_owner')
        role('heat_stack_user')
        service = project('service', domain_id=default.id)
        demo = project(DEMO_PROJECT, domain_id=default.id)
        demo_user = user(DEMO_USER, domain_id=default.id, password=self.secrets[DEMO_USER])
        ident.assign_project_role_to_user(demo, demo_user, member)
        for name in SERVICE_USERS:
            u = user(name, domain_id=default.id, password=self.secrets[name])
            ident.assign_project_role_to_user(service, u, admin_role)
            ident.assign_project_role_to_user(service, u, role('service'))
        heat_domain = (ident.find_domain('heat')
                       or ident.create_domain(name='heat',
                                              description='Users Heat creates for stacks'))
        domain_admin = user('heat_domain_admin', domain_id=heat_domain.id,
                            password=self.secrets['heat_domain_admin'])
        ident.assign_domain_role_to_user(heat_domain, domain_admin, admin_role)
        catalog = {
            'compute': ('nova', self.url('nova-api') + '/v2.1'),
            'placement': ('placement', self.url('placement')),
            'image': ('glance', self.url('glance')),
            'network': ('neutron', self.url('neutron')),
            'orchestration': ('heat', self.url('heat-api') + '/v1/%(tenant_id)s'),
        }
        for stype, (name, url) in catalog.items():
            svc = next(iter(ident.services(type=stype)), None) or ident.create_service(
                name=name, type=stype, description='local cloud %s' % name)
            have = {e.interface for e in ident.endpoints(service_id=svc.id)}
            for interface in ('public', 'internal', 'admin'):
                if interface not in have:
                    ident.create_endpoint(service_id=svc.id, interface=interface, url=url,
                                          region_id=REGION)

    def _retry(self, what: str, func, *, logs: list[str], timeout: float = 90.0) -> None:
        """Run a setup step against a service that may still be warming up."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                func()
                return
            except Exception as exc:  # a client error of any kind: retry, then report
                if time.monotonic() > deadline:
                    raise CloudError('%s failed for %d s; last error: %s: %s\n%s' % (
                        what, timeout, type(exc).__name__, exc, self._log_tails(logs))) from exc
                self._log('%s: %s; retrying' % (what, type(exc).__name__))
                self._connections.clear()
                time.sleep(3)

    def _setup_images(self) -> None:
        # Every start: a cloud made before an image was added gets it too.
        self._retry('uploading the images to glance', self._upload_images, logs=['glance'])

    def _upload_images(self) -> None:
        conn = self.connection()
        session = conn.session
        existing = {i.name for i in conn.image.images()}
        payload = b''.join(b'heat-gpu fake disk block %04d\n' % i for i in range(160))
        for image in IMAGES:
            if image['name'] in existing:
                continue
            body = dict(image, disk_format='raw', container_format='bare',
                        visibility='public', hw_architecture='x86_64')
            resp = session.post(self.url('glance') + '/v2/images', json=body, timeout=30)
            image_id = resp.json()['id']
            session.put(self.url('glance') + '/v2/images/%s/file' % image_id, data=payload,
                        headers={'Content-Type': 'application/octet-stream'}, timeout=30)

    def _setup_networks(self) -> None:
        # Every start, idempotently: a cloud made before Neutron gets its networks too.
        self._retry('creating the networks in neutron', self._create_networks,
                    logs=['neutron-server'])

    def _create_networks(self) -> None:
        admin = self.connection().network
        demo = self.connection(admin=False).network
        pub = PUBLIC_NETWORK
        public = admin.find_network(pub['name']) or admin.create_network(
            name=pub['name'], is_router_external=True, is_shared=False,
            provider_network_type='flat', provider_physical_network=pub['physnet'])
        if not list(admin.subnets(network_id=public.id)):
            admin.create_subnet(
                network_id=public.id, name=pub['name'] + '-subnet', ip_version=4,
                cidr=pub['cidr'], gateway_ip=pub['gateway_ip'], is_dhcp_enabled=False,
                allocation_pools=[pub['pool']])
        priv = PRIVATE_NETWORK
        private = demo.find_network(priv['name']) or demo.create_network(name=priv['name'])
        subnet = next(iter(demo.subnets(network_id=private.id)), None) or demo.create_subnet(
            network_id=private.id, name=priv['subnet'], ip_version=4, cidr=priv['cidr'],
            dns_nameservers=[])
        router = demo.find_router(ROUTER) or demo.create_router(
            name=ROUTER, external_gateway_info={'network_id': public.id})
        interfaces = demo.ports(device_id=router.id, network_id=private.id)
        if not any(p.device_owner == 'network:router_interface' for p in interfaces):
            demo.add_interface_to_router(router, subnet_id=subnet.id)
        # The demo project's default security group (neutron makes it on first use).
        list(demo.security_groups(name='default'))

    def _computes(self) -> tuple:
        return tuple('nova-compute-' + h for h in self.compute_hosts)

    def _computes_up(self) -> bool:
        try:
            conn = self.connection()
            up = [s for s in conn.compute.services(binary='nova-compute')
                  if s.state == 'up' and s.status == 'enabled' and self._heard_since_start(s)]
            return len(up) >= len(self.compute_hosts)
        except Exception:  # any API error means: not yet
            return False

    def _heard_since_start(self, service) -> bool:
        if self._computes_started is None or not service.updated_at:
            return self._computes_started is None
        heard = datetime.datetime.fromisoformat(str(service.updated_at).rstrip('Z'))
        return heard.replace(tzinfo=None) >= self._computes_started

    def _discover_hosts(self) -> None:
        self._wait_for('nova-api', self._computes_up, timeout=START_TIMEOUT,
                       what='to see both nova-compute services up', also=self._computes())
        self._run([_venv_bin('nova-manage')] + self._nova_conf()
                  + ['cell_v2', 'discover_hosts', '--verbose'], timeout=120,
                  log='nova-discover-hosts')

    def _engine_up(self) -> bool:
        """Whether every worker of every heat-engine reports to heat-api since it started."""
        try:
            conn = self.connection()
            resp = conn.session.get(
                self.url('heat-api') + '/v1/%s/services' % conn.current_project_id, timeout=10)
            services = resp.json()['services']
        except Exception:  # any API error means: not yet
            return False
        for name in self.heat_engines:
            started = self._started_at(name)
            up = [s for s in services
                  if s['binary'] == 'heat-engine' and s['status'] == 'up'
                  and s['host'] == self.engine_host(name)
                  and (started is None or _api_time(s['created_at']) >= started)]
            if len(up) < self.heat_layout['engine_workers']:
                return False
        return True

    # Commands

    def _check_ports(self) -> None:
        owners = {'keystone': 'keystone', 'glance': 'glance', 'placement': 'placement',
                  'nova-api': 'nova-api', 'neutron': 'neutron-server', 'heat-api': 'heat-api',
                  'mirror': 'mirror',
                  'rabbitmq': 'rabbitmq', 'rabbitmq-dist': 'rabbitmq', 'epmd': 'epmd'}
        busy = [(service, self.port(service)) for service, owner in owners.items()
                if self.pid(owner) is None and _port_in_use(self.port(service))]
        if busy:
            raise CloudError(
                'cannot start the local cloud in %s: these ports on %s are already in use by '
                'another program: %s. Stop that program (another local cloud? run '
                '"cloud.py stop" with its HEAT_GPU_CLOUD_DIR) and retry.' % (
                    self.state, HOST, ', '.join('%s (%s)' % (p, s) for s, p in busy)))

    def running(self) -> dict:
        return {name: self.pid(name) for name in self.services()}

    def is_up(self) -> bool:
        return all(self.running().values()) and self._done('ready')

    @contextlib.contextmanager
    def _lock(self):
        os.makedirs(self.state, exist_ok=True)
        with open(self.path('.lock'), 'w', encoding='utf-8') as f:
            deadline = time.monotonic() + 600
            while True:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise CloudError('another cloud.py holds %s for more than 600 s'
                                         % self.path('.lock')) from None
                    time.sleep(0.5)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def start(self, *, horizon: bool = False) -> dict:
        """Start what is not running; ``horizon`` adds the optional Horizon service."""
        self._horizon = self._horizon or horizon
        with self._lock():
            if self.is_up():
                return {'already_running': True}
            return self._start()

    def _start(self) -> dict:
        t0 = time.monotonic()
        cold = not self._done('ready-once')
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._marker('ready'))
        os.makedirs(self.path('run'), exist_ok=True)
        os.makedirs(self.path('log'), exist_ok=True)
        self._save_settings()
        self._check_ports()
        mirror.build(self.mirror_dir, log=self._log)
        self.write_configs()
        self._start_mariadb()
        self._start_rabbitmq()
        self._wait_for('mariadb', self._mysql_ready, timeout=60,
                       what='to accept connections on %s' % self.socket)
        self._create_databases()
        self._setup_keystone_db()
        self._start_keystone()
        with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
            syncs = pool.submit(self._db_syncs)
            rabbit = pool.submit(self._setup_rabbitmq)
            root = pool.submit(guestroot.build, log=self._log)
            self._wait_for('keystone', lambda: _http_up(self.url('keystone') + '/v3'))
            self._setup_keystone_resources()
            syncs.result()
            rabbit.result()
            root.result()
        self._start_placement()
        self._start_glance()
        self._start_neutron()
        self._start_mirror()
        self._computes_started = datetime.datetime.now(datetime.timezone.utc).replace(
            tzinfo=None, microsecond=0)
        self._start_nova()
        self._start_heat()
        for name in ('placement', 'glance', 'neutron-server', 'nova-api', 'heat-api'):
            self._wait_for(name, lambda n=name: _http_up(self.url(n) + '/'))
        self._wait_for('mirror', self._mirror_up)
        self._setup_images()
        self._setup_networks()
        if not self._done('discover-hosts'):
            self._discover_hosts()
            self._mark('discover-hosts')
        else:
            self._wait_for('nova-api', self._computes_up,
                           what='to see both nova-compute services up', also=self._computes())
        self._wait_for('heat-engine', self._engine_up, what='to report to heat-api',
                       also=('heat-api',))
        if self._horizon:
            try:
                horizon.configure(self)
                horizon.start(self)
            except horizon.HorizonError as exc:
                raise CloudError(str(exc)) from None
            horizon.wait(self)
        self._mark('ready')
        self._mark('ready-once')
        elapsed = time.monotonic() - t0
        rss = self.rss_mib()
        line = 'started (%s) in %.0f s; RSS %d MiB total: %s' % (
            'cold' if cold else 'warm', elapsed, sum(rss.values()),
            ', '.join('%s %d' % kv for kv in sorted(rss.items(), key=lambda kv: -kv[1])))
        self._log(line)
        with open(os.path.join(self.logs, 'start-times.log'), 'a', encoding='utf-8') as f:
            f.write('%s %s\n' % (time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()), line))
        return {'already_running': False, 'cold': cold, 'seconds': elapsed, 'rss_mib': rss}

    def restart(self, names: list[str], *, crash: bool = False,
                while_down: typing.Callable[[], None] | None = None) -> dict:
        """Restart some of the cloud's services (for fault tests) and wait until all are ready.

        ``crash`` kills them with SIGKILL (no orderly shutdown) instead of SIGTERM.
        ``while_down`` is called once they are gone and before they start again (a fault test
        waits there until a client has met the outage).
        """
        unknown = sorted(set(names) - set(self.services()))
        if unknown:
            raise CloudError('no such service in the local cloud: %s (services: %s)' % (
                ', '.join(unknown), ', '.join(self.services())))
        with self._lock():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._marker('ready'))
            pids = {name: self.pid(name) for name in names}
            for name, pid in pids.items():
                if crash and pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(pid, signal.SIGKILL)
                else:
                    self._stop_process(name)
            self._wait_gone(list(names), pids=pids)
            if while_down is not None:
                while_down()
            return self._start()

    def nova_pci_devices(self) -> list[dict]:
        """Nova's PCI tracker records (table pci_devices of the cell database), one per device."""
        out = self._mysql(
            "SELECT n.host, d.address, d.vendor_id, d.product_id, d.dev_type, "
            "IFNULL(d.numa_node, ''), d.status, IFNULL(d.instance_uuid, '') "
            "FROM nova.pci_devices d JOIN nova.compute_nodes n ON n.id = d.compute_node_id "
            "WHERE d.deleted = 0 AND n.deleted = 0 ORDER BY n.host, d.address")
        keys = ('host', 'address', 'vendor_id', 'product_id', 'dev_type', 'numa_node', 'status',
                'instance_uuid')
        return [dict(zip(keys, line.split('\t'))) for line in out.splitlines() if line.strip()]

    def guest_mirror(self) -> dict:
        """The mirror and key the plugin gets from [heat_gpu], as the provider's properties.

        The portable provider template (environments/providers/cuda_instance.yaml) has no
        [heat_gpu] options; a stack on it names the cloud's mirror itself.
        """
        return {'mirror_url': self.url('mirror'),
                'keyring_fingerprints': [mirror.key_fingerprint(self.mirror_dir)]}

    def engines_holding(self, stack_id: str) -> list[str]:
        """The heat-engine services whose workers hold a resource of the stack now.

        Heat's convergence engine marks a resource it is working on with the engine id of the
        worker (heat.resource.engine_id); the worker's service record names its host.
        """
        hosts = self._mysql(
            "SELECT DISTINCT s.host FROM heat.resource r JOIN heat.service s "
            "ON s.engine_id = r.engine_id WHERE r.engine_id IS NOT NULL "
            "AND (r.stack_id = '%s' OR r.root_stack_id = '%s')" % (
                _sql_id(stack_id), _sql_id(stack_id))).split()
        return [name for name in self.heat_engines if self.engine_host(name) in hosts]

    def rss_mib(self) -> dict:
        return {name: _group_rss_kib(pid) // 1024 for name, pid in self.running().items()
                if pid is not None}

    def _guest_groups(self) -> list[int]:
        groups = []
        guests = self.path('guests')
        if not os.path.isdir(guests):
            return groups
        for name in os.listdir(guests):
            with contextlib.suppress(OSError, ValueError):
                with open(os.path.join(guests, name, 'guest.pid'), encoding='utf-8') as f:
                    pgid = int(f.read().strip())
                # Only a live guest stand-in of this cloud, never a process that reused the pid.
                with open('/proc/%d/cmdline' % pgid, 'rb') as f:
                    argv = f.read().split(b'\0')
                if os.path.join(HERE, 'guest.py').encode() in argv:
                    groups.append(pgid)
        return groups

    def stop(self) -> None:
        with self._lock():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._marker('ready'))
            tiers = [
                # Every engine any heat layout has: one the layout no longer lists goes too.
                ['horizon', 'heat-api'] + _every_engine() + [
                    'nova-api', 'neutron-server', 'mirror', 'glance', 'placement',
                    'nova-scheduler', 'nova-conductor']
                + ['nova-compute-%s' % h for h in self.compute_hosts],
                ['keystone'],
                ['rabbitmq', 'mariadb'],
                ['epmd'],
            ]
            for tier in tiers:
                for name in tier:
                    self._stop_process(name)
                self._wait_gone(tier)
            self._stop_guests()

    def _stop_guests(self) -> None:
        """SIGTERM every guest stand-in (it stops its scripts and services), then SIGKILL."""
        groups = self._guest_groups()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            alive = []
            for pgid in groups:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, sig)
                    alive.append(pgid)
            deadline = time.monotonic() + 10
            while alive and time.monotonic() < deadline:
                time.sleep(0.2)
                alive = [g for g in alive if _group_alive(g)]
            groups = alive

    def clean(self) -> None:
        self.stop()
        if os.path.isdir(self.state):
            shutil.rmtree(self.state)

    def status(self) -> str:
        lines = []
        for name, pid in self.running().items():
            lines.append('%-28s %s' % (name, 'running (pid %d)' % pid if pid else 'stopped'))
        lines.append('state directory: %s' % self.state)
        lines.append('layout: %s (%d GPUs on %s); port offset: %d' % (
            self.settings['layout'], sum(len(d) for d in self.host_devices.values()),
            ', '.join(self.compute_hosts), self.settings['port_offset']))
        lines.append('heat: %s (%d engine(s) of %d worker(s), heat-api %d worker(s))' % (
            self.heat_layout_name, self.heat_layout['engines'],
            self.heat_layout['engine_workers'], self.heat_layout['api_workers']))
        lines.append('ready: %s' % ('yes' if self.is_up() else 'no'))
        return '\n'.join(lines)


def ensure_running(*, state_dir: str | None = None, horizon: bool = False) -> Cloud:
    """Start the local cloud unless it already runs; return it (for clouds.yaml, clients)."""
    cloud = Cloud(state_dir=state_dir)
    cloud.start(horizon=horizon)
    return cloud


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('command', choices=('start', 'stop', 'status', 'env', 'clean'))
    parser.add_argument('--horizon', action='store_true',
                        help='start: also start Horizon (as %s=1 does)' % horizon.ENV)
    args = parser.parse_args(argv)
    cloud = Cloud()
    try:
        if args.command == 'start':
            result = cloud.start(horizon=args.horizon)
            if result.get('already_running'):
                print('localcloud: already running (%s)' % cloud.state)
            print('\n'.join(cloud.env_lines()))
        elif args.command == 'stop':
            cloud.stop()
            print('localcloud: stopped')
        elif args.command == 'status':
            print(cloud.status())
            return 0 if cloud.is_up() else 3
        elif args.command == 'env':
            if not os.path.exists(cloud.path('secrets.json')):
                raise CloudError('no local cloud in %s yet: run "cloud.py start" first'
                                 % cloud.state)
            cloud.write_clouds_yaml()
            print('\n'.join(cloud.env_lines()))
        elif args.command == 'clean':
            cloud.clean()
            print('localcloud: removed %s' % cloud.state)
    except CloudError as exc:
        print('localcloud: error: %s' % exc, file=sys.stderr)
        return 1
    except Exception:
        print('localcloud: error: unexpected failure of "%s" (state in %s):\n%s' % (
            args.command, cloud.state, traceback.format_exc()), file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
