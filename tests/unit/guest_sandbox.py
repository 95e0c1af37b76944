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

"""Test helpers: run the real boot script in a gpusim guest, and a fake Keystone + Heat API."""

import dataclasses
import json
import os
import subprocess
import threading
from typing import Any, Iterable, Optional

from tests.unit import native_http
from tools.gpusim import gpusim

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(TOP, 'heat_gpu', 'guest', 'bootstrap.sh')


P100 = {'pci_address': '0000:00:05.0', 'vendor_id': '10de', 'product_id': '15f8',
        'numa_node': 0}
T4 = {'pci_address': '0000:00:06.0', 'vendor_id': '10de', 'product_id': '1eb8',
      'numa_node': 0}


@dataclasses.dataclass
class Request:
    method: str
    path: str
    headers: dict
    body: Any


class FakeCloud:
    """Keystone (``/identity/v3``) and Heat (``/orchestration/v1``) on 127.0.0.1, recording."""

    project_id = 'b0b1e7a3c2d44b3f8a2c1d0e9f8a7b6c'

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.tokens: list[str] = []
        cloud = self

        http_server = native_http.http_server()

        class Handler(http_server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get('Content-Length') or 0)
                raw = self.rfile.read(length).decode('utf-8')
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = raw
                cloud.requests.append(Request('POST', self.path, dict(self.headers), body))
                if self.path == '/identity/v3/auth/tokens':
                    token = 'gAAAAtoken%d' % len(cloud.tokens)
                    cloud.tokens.append(token)
                    payload = json.dumps({'token': {'catalog': [
                        {'type': 'identity', 'endpoints': [
                            {'interface': 'public', 'region_id': 'RegionOne',
                             'url': cloud.url + '/identity'}]},
                        {'type': 'orchestration', 'endpoints': [
                            {'interface': 'internal', 'region_id': 'RegionOne',
                             'url': 'http://192.0.2.1:8004/v1/' + cloud.project_id},
                            {'interface': 'public', 'region_id': 'RegionOne',
                             'url': '%s/orchestration/v1/%s' % (cloud.url,
                                                                 cloud.project_id)}]}]}})
                    self.send_response(201)
                    self.send_header('X-Subject-Token', token)
                else:
                    payload = 'null'
                    self.send_response(200)
                self.send_header('Content-Type', 'application/json')
                self.send_header('Content-Length', str(len(payload)))
                self.end_headers()
                self.wfile.write(payload.encode())

        self.server = http_server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.url = 'http://127.0.0.1:%d' % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def heat_signal(self, *, password: str) -> dict:
        return {'transport': 'HEAT_SIGNAL', 'auth_url': self.url + '/identity/v3',
                'user_id': '5f1c3a4b2e6d4c7b8a9f0e1d2c3b4a59', 'password': password,
                'project_id': self.project_id, 'stack_id': 'gpu-stack/3c5a-11ee-9f00',
                'resource_name': 'gpu_server', 'region_name': 'RegionOne'}

    def token_signal(self, *, token: str) -> dict:
        return {'transport': 'TOKEN_SIGNAL', 'token': token,
                'endpoint': self.url + '/orchestration/v1/%s/stacks/s/1/resources/h/signal'
                % self.project_id}

    def signals(self) -> list[Request]:
        return [r for r in self.requests if r.path.endswith('/signal')]


@dataclasses.dataclass
class Boot:
    root: str
    env: dict
    runs: list  # CompletedProcess of every run of the script

    def commands(self, *names: str) -> list[dict]:
        return [c for c in gpusim.commands(self.root) if not names or c['cmd'] in names]

    def state(self) -> dict:
        return gpusim.state(self.root)

    def file(self, path: str) -> str:
        with open(os.path.join(self.root, path.lstrip('/')), encoding='utf-8') as f:
            return f.read()

    def final_status(self) -> Optional[str]:
        try:
            return self.file('/var/lib/heat-gpu/final_status').strip()
        except FileNotFoundError:
            return None

    def log(self) -> str:
        return self.file('/var/log/heat-gpu-bootstrap.log')


def base_settings(**overrides: Any) -> dict:
    """Boot script settings as heat_gpu.userdata writes them, for a P100 guest."""
    from heat_gpu import userdata
    raw = {'cuda_version': 'auto', 'driver_branch': 'auto', 'install_method': 'auto',
           'kernel_modules': 'auto', 'gpu_model': 'P100-PCIE-16GB', 'gpu_count': 1,
           'gpu_mode': 'passthrough', 'checksums': {}, 'retry_delay': 0, 'download_retries': 3}
    raw.update({k: v for k, v in overrides.items() if k != 'signal'})
    settings = userdata.guest_settings(raw)
    if 'signal' in overrides:
        settings['signal'] = overrides['signal']
    return settings


def boot(root: str, *, distro: str = 'ubuntu', version: str = '22.04',
         devices: Iterable[dict] = (P100,), prebaked: bool = False, faults: Iterable[str] = (),
         settings: Optional[dict] = None, max_boots: int = 3, setup: Any = None) -> Boot:
    """Run the boot script in a fresh gpusim guest, rebooting when it asks, until it stops."""
    env = gpusim.make_guest(root, distro=distro, version=version, devices=list(devices),
                            prebaked=prebaked, faults=list(faults))
    os.makedirs(os.path.dirname(env['HEAT_GPU_SETTINGS']), exist_ok=True)
    with open(env['HEAT_GPU_SETTINGS'], 'w', encoding='utf-8') as f:
        json.dump(settings if settings is not None else base_settings(), f)
    if setup is not None:
        setup(root)
    full_env = {k: v for k, v in os.environ.items() if not k.startswith('HEAT_GPU')}
    full_env.update(env)
    runs = [subprocess.run(['bash', SCRIPT], env=full_env, capture_output=True, text=True,
                           timeout=120, check=False)]
    for _ in range(max_boots):
        if not gpusim.reboot_pending(root):
            break
        gpusim.reboot(root)
        for argv in gpusim.boot_commands(root):
            runs.append(subprocess.run(argv, env=full_env, capture_output=True, text=True,
                                       timeout=120, check=False))
    return Boot(root=root, env=full_env, runs=runs)
