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

"""``make demo``: the main job on the local cloud, with the commands a user types.

Starts the local cloud when it is not running, creates the GPU flavor set as the admin
(``hot/gpu_flavors.yaml``), then as the tenant ``demo`` runs ``openstack stack create -t
hot/gpu_instance.yaml``, prints the stack's events while it works, and finally its status and
outputs next to the PCI devices nova assigned. Every ``openstack`` command is printed before it
runs, so it can be typed again by hand.
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from typing import Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # tools/ is a package of the repository, not installed

from tools.localcloud import cloud as localcloud  # noqa: E402 (found through the path just set)

FLAVOR_STACK = 'gpu-flavors'
FLAVOR_NAME = 'gpu.p100-pcie-16gb.x1'
DEMO_STACK = 'gpu-demo'
IMAGE = 'ubuntu-22.04-gpu'
TIMEOUT = 900


def openstack(cloud_name: str, *args: str, show: bool = True, check: bool = True) -> str:
    env = dict(os.environ, OS_CLIENT_CONFIG_FILE=CLOUD.clouds_yaml_path(), OS_CLOUD=cloud_name)
    cmd = [os.path.join(os.path.dirname(sys.executable), 'openstack'), *args]
    if show:
        print('$ OS_CLOUD=%s openstack %s' % (cloud_name, shlex.join(args)), flush=True)
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise SystemExit('openstack %s failed:\n%s%s' % (shlex.join(args), proc.stdout,
                                                         proc.stderr))
    return proc.stdout


def stack_status(cloud_name: str, name: str) -> Optional[str]:
    out = openstack(cloud_name, 'stack', 'show', name, '-f', 'value', '-c', 'stack_status',
                    show=False, check=False).strip()
    return out or None


def wait_stack(cloud_name: str, name: str, *, timeout: float) -> str:
    """Poll the stack, print each new event, return the final status."""
    seen = set()
    deadline = time.monotonic() + timeout
    while True:
        events = json.loads(openstack(cloud_name, 'stack', 'event', 'list', name, '-f', 'json',
                                      show=False, check=False) or '[]')
        for ev in events:
            if ev['id'] in seen:
                continue
            seen.add(ev['id'])
            print('  %s  %-10s %-20s %s' % (ev.get('event_time', ''), ev['resource_name'],
                                            ev['resource_status'],
                                            ev.get('resource_status_reason') or ''), flush=True)
        status = stack_status(cloud_name, name) or 'MISSING'
        if not status.endswith('IN_PROGRESS'):
            return status
        if time.monotonic() > deadline:
            return status + ' (gave up waiting after %d s)' % timeout
        time.sleep(3)


def main(argv: Optional[list[str]] = None) -> int:
    global CLOUD
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--fresh', action='store_true',
                        help='delete a demo stack left by an earlier run first')
    args = parser.parse_args(argv)

    t0 = time.monotonic()
    print('== Local cloud (real Keystone, Glance, Placement, Nova, Heat on 127.0.0.1)', flush=True)
    cold = not os.path.exists(os.path.join(localcloud.default_state_dir(), 'clouds.yaml'))
    CLOUD = localcloud.ensure_running()
    t_cloud = time.monotonic() - t0
    print('   ready in %.0f s (%s start)' % (t_cloud, 'cold' if cold else 'warm'), flush=True)

    print('\n== As the admin: the GPU flavor set (hot/gpu_flavors.yaml)', flush=True)
    demo_project = openstack('heat-gpu-admin', 'project', 'show', 'demo', '-f', 'value', '-c',
                             'id', show=False).strip()
    if stack_status('heat-gpu-admin', FLAVOR_STACK) != 'CREATE_COMPLETE':
        if stack_status('heat-gpu-admin', FLAVOR_STACK):
            openstack('heat-gpu-admin', 'stack', 'delete', '--yes', '--wait', FLAVOR_STACK)
        openstack('heat-gpu-admin', 'stack', 'create', '-t', 'hot/gpu_flavors.yaml',
                  '--parameter', 'gpu_models=P100-PCIE-16GB', '--parameter', 'gpu_counts=1,2',
                  '--parameter', 'vcpus_per_gpu=2', '--parameter', 'ram_per_gpu=2048',
                  '--parameter', 'disk=10', '--parameter', 'tenants=%s' % demo_project,
                  FLAVOR_STACK)
        status = wait_stack('heat-gpu-admin', FLAVOR_STACK, timeout=300)
        if status != 'CREATE_COMPLETE':
            print('flavor stack ended %s' % status)
            return 1
    print(openstack('heat-gpu-admin', 'stack', 'output', 'show', FLAVOR_STACK, 'flavor_names',
                    '-f', 'value', '-c', 'output_value'))

    print('== As the tenant "demo": one GPU instance with CUDA, proven (hot/gpu_instance.yaml)',
          flush=True)
    if stack_status('heat-gpu-demo', DEMO_STACK):
        if not args.fresh:
            print('   a stack %s exists from an earlier run; showing it '
                  '(make demo DEMO_ARGS=--fresh makes a new one)' % DEMO_STACK)
        else:
            openstack('heat-gpu-demo', 'stack', 'delete', '--yes', '--wait', DEMO_STACK)
    t_stack = time.monotonic()
    if not stack_status('heat-gpu-demo', DEMO_STACK):
        openstack('heat-gpu-demo', 'stack', 'create', '-t', 'hot/gpu_instance.yaml',
                  '--parameter', 'flavor=%s' % FLAVOR_NAME, '--parameter', 'image=%s' % IMAGE,
                  '--parameter', 'network=%s' % localcloud.PRIVATE_NETWORK['name'],
                  '--parameter', 'external_network=%s' % localcloud.PUBLIC_NETWORK['name'],
                  DEMO_STACK)
    status = wait_stack('heat-gpu-demo', DEMO_STACK, timeout=TIMEOUT)
    t_stack = time.monotonic() - t_stack
    print('\n== Result: %s (stack took %.0f s)' % (status, t_stack), flush=True)
    print(openstack('heat-gpu-demo', 'stack', 'output', 'list', DEMO_STACK))
    shown = ('gpus', 'driver_version', 'cuda_version', 'sample_summary', 'fixed_ip',
             'floating_ip', 'ssh')
    for key in shown:
        out = openstack('heat-gpu-demo', 'stack', 'output', 'show', DEMO_STACK, key, '-f',
                        'json', show=False, check=False)
        value = json.loads(out)['output_value'] if out.strip() else None
        if key == 'gpus' and isinstance(value, list):
            value = '; '.join('%(name)s at %(pci_address)s, %(memory_mib)s MiB' % g
                              for g in value)
        print('  %-15s %s' % (key, value))
    print('  (every figure per sample and GPU: openstack stack output show %s sample_results)'
          % DEMO_STACK)

    server_id = openstack('heat-gpu-demo', 'stack', 'output', 'show', DEMO_STACK, 'server_id',
                          '-f', 'value', '-c', 'output_value', show=False, check=False).strip()
    claims = [d for d in CLOUD.nova_pci_devices() if d.get('instance_uuid') == server_id]
    if claims:
        print('== What nova assigned to %s (its PCI tracker, table pci_devices):' % server_id)
        for d in claims:
            print('   %(address)s  %(vendor_id)s:%(product_id)s  on %(host)s  %(status)s' % d)
    if server_id:
        print('== Its port in neutron (fixed address) and the floating IP bound to it:')
        print(openstack('heat-gpu-demo', 'port', 'list', '--server', server_id, '-c', 'ID', '-c',
                        'Fixed IP Addresses', '-c', 'Status', check=False))
        print(openstack('heat-gpu-demo', 'floating', 'ip', 'list', '-c', 'Floating IP Address',
                        '-c', 'Fixed IP Address', '-c', 'Port', check=False))
    total = time.monotonic() - t0
    print('\n== Wall time: %.0f s (cloud %.0f s %s, GPU stack %.0f s)'
          % (total, t_cloud, 'cold' if cold else 'warm', t_stack))
    print('\nLook around:\n  export OS_CLIENT_CONFIG_FILE=%s OS_CLOUD=heat-gpu-demo\n'
          '  .venv/bin/openstack stack show %s; .venv/bin/openstack stack event list %s\n'
          '  (OS_CLOUD=heat-gpu-admin for the admin)\n'
          'Clean up:\n  make cloud-stop     # stop the services, keep their state\n'
          '  make cloud-clean    # stop and remove everything the local cloud made'
          % (os.path.relpath(CLOUD.clouds_yaml_path(), REPO), DEMO_STACK, DEMO_STACK))
    return 0 if status == 'CREATE_COMPLETE' else 1


CLOUD = None

if __name__ == '__main__':
    sys.exit(main())
