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

"""A fake nova hypervisor with NVIDIA GPUs on its PCI bus, whose guests run their user data.

Set ``compute_driver = localcloud_virt.fakegpu.FakeGpuDriver`` and put ``tools/localcloud`` on the
``PYTHONPATH`` of nova-compute. The process environment names the layout file
(``HEAT_GPU_FAKEGPU_LAYOUT``), a JSON document written by ``cloud.py``::

    {"state_dir": "...", "guest_python": "...", "guest_program": ".../guest.py",
     "hosts": {"gpu-host-1": [{"address": "0000:04:00.0", "vendor_id": "10de",
                               "product_id": "15f8", "numa_node": 0}, ...]}}

The devices of ``[DEFAULT] host`` are reported to nova's resource tracker, so nova's own PCI
tracker, ``PciPassthroughFilter`` and placement decide where a GPU flavor lands and which device it
gets. On ``spawn`` the driver writes the instance's config drive with nova's own metadata code
(``InstanceMetadata.metadata_for_config_drive``: ``openstack/latest/meta_data.json``,
``user_data``, the EC2 files...) to ``<state_dir>/guests/<uuid>/config-drive/``, what the
simulated hardware needs (image properties, the PCI devices nova assigned) to ``instance.json``,
and starts the instance's machine (``guest.py``: the guest root from the layout's ``guest_root``
with the real cloud-init) detached, in its own process group; ``destroy`` kills that group.
"""

import json
import os
import shutil
import signal
import subprocess
import time

from oslo_log import log as logging
from oslo_serialization import jsonutils

from nova.api.metadata import base as instance_metadata
from nova.compute import power_state
import nova.conf
from nova import exception
from nova.network import model as network_model
from nova.virt import fake
from nova.virt import node as virt_node

CONF = nova.conf.CONF
LOG = logging.getLogger(__name__)

LAYOUT_ENV = 'HEAT_GPU_FAKEGPU_LAYOUT'


def load_layout(*, path: str | None = None) -> dict:
    """Read the layout file named by ``HEAT_GPU_FAKEGPU_LAYOUT``."""
    path = path or os.environ.get(LAYOUT_ENV)
    if not path:
        raise exception.InvalidConfiguration(
            '%s is not set: the fake GPU driver needs the path of its layout file (JSON with '
            '"state_dir" and "hosts")' % LAYOUT_ENV)
    with open(path, encoding='utf-8') as f:
        return json.load(f)


def _gone(pgid: int) -> bool:
    # The guest is nova-compute's child: reap it, or a zombie keeps its group alive.
    try:
        os.waitpid(pgid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def _kill_group(*, pid_file: str, timeout: float = 5.0) -> None:
    """Stop a guest: SIGTERM (it stops its services), then SIGKILL after *timeout* seconds."""
    try:
        with open(pid_file, encoding='utf-8') as f:
            pgid = int(f.read().strip())
    except (OSError, ValueError):
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _gone(pgid):
                return
            time.sleep(0.1)


class FakeGpuDriver(fake.FakeDriver):
    """Fake hypervisor whose host reports the GPUs listed for it in the layout file."""

    def __init__(self, virtapi, read_only=False):
        super().__init__(virtapi, read_only)
        self._layout = load_layout()
        self._guests_dir = os.path.join(self._layout['state_dir'], 'guests')

    # Host and node identity

    def init_host(self, host):
        super().init_host(host)
        if host not in self._layout['hosts']:
            raise exception.InvalidConfiguration(
                '[DEFAULT] host = %r has no entry in %s; hosts in the layout: %s'
                % (host, os.environ.get(LAYOUT_ENV), ', '.join(sorted(self._layout['hosts']))))
        self._restore_instances()

    def _node_uuid(self) -> str:
        # nova refuses to restart a compute whose node identity changed, so keep it in the
        # compute's own state_path (one per compute process).
        return virt_node.get_local_node_uuid()

    def get_nodenames_by_uuid(self, refresh=False):
        return {self._node_uuid(): n for n in self.get_available_nodes()}

    def _pci_devices(self) -> list[dict]:
        devices = []
        for dev in self._layout['hosts'][self._host]:
            devices.append({
                'address': dev['address'],
                'vendor_id': dev['vendor_id'],
                'product_id': dev['product_id'],
                'dev_type': 'type-PCI',
                'parent_addr': None,
                'numa_node': dev.get('numa_node'),
                'status': 'available',
                'label': 'label_%s_%s' % (dev['vendor_id'], dev['product_id']),
            })
        return devices

    def get_available_resource(self, nodename):
        status = super().get_available_resource(nodename)
        if status:
            status['uuid'] = self._node_uuid()
            status['pci_passthrough_devices'] = jsonutils.dumps(self._pci_devices())
        return status

    # Guests

    def _guest_dir(self, instance_uuid: str) -> str:
        return os.path.join(self._guests_dir, instance_uuid)

    def _restore_instances(self) -> None:
        """Know again the guests this host ran before nova-compute restarted."""
        if not os.path.isdir(self._guests_dir):
            return
        for name in os.listdir(self._guests_dir):
            path = os.path.join(self._guest_dir(name), 'instance.json')
            try:
                with open(path, encoding='utf-8') as f:
                    info = json.load(f)
            except (OSError, ValueError):
                continue
            if info.get('host') == self._host and not info.get('destroyed'):
                self.instances[info['uuid']] = fake.FakeInstance(
                    info['name'], power_state.RUNNING, info['uuid'])

    @staticmethod
    def _assigned_devices(instance) -> list[dict]:
        devices = []
        for dev in instance.get_pci_devices():
            devices.append({
                'pci_address': dev.address,
                'vendor_id': dev.vendor_id,
                'product_id': dev.product_id,
                'numa_node': dev.numa_node,
                'request_id': dev.request_id,
            })
        return devices

    def _instance_info(self, instance, image_meta) -> dict:
        props = image_meta.properties if image_meta is not None else None
        sysmeta = instance.system_metadata or {}

        def prop(name: str) -> str | None:
            # nova copies every image property into system metadata as image_<name>.
            if sysmeta.get('image_' + name) is not None:
                return sysmeta['image_' + name]
            if props is not None and name in props.fields and props.obj_attr_is_set(name):
                return str(getattr(props, name))
            return None

        return {
            'uuid': instance.uuid,
            'name': instance.name,
            'hostname': instance.hostname,
            'display_name': instance.display_name,
            'project_id': instance.project_id,
            'host': self._host,
            'flavor': {
                'name': instance.flavor.name,
                'vcpus': instance.flavor.vcpus,
                'memory_mb': instance.flavor.memory_mb,
                'extra_specs': dict(instance.flavor.extra_specs or {}),
            },
            'image': {
                'id': instance.image_ref,
                'os_distro': prop('os_distro'),
                'os_version': prop('os_version'),
                'heat_gpu_prebaked': prop('heat_gpu_prebaked'),
            },
            'metadata': dict(instance.metadata or {}),
            'pci_devices': self._assigned_devices(instance),
            'destroyed': False,
        }

    def _write_info(self, info: dict) -> None:
        path = os.path.join(self._guest_dir(info['uuid']), 'instance.json')
        tmp = path + '.tmp'
        with open(tmp, 'w', encoding='utf-8') as f:
            json.dump(info, f, indent=2, sort_keys=True)
        os.replace(tmp, path)

    def _write_config_drive(self, instance, injected_files, admin_password,
                            network_info) -> None:
        """The config drive's files, as nova's libvirt driver puts them on its ISO image.

        But for the NICs: the guest shares the host's network (the data plane is simulated), so
        it has no NIC with the MAC of its neutron port, and cloud-init, which looks the links of
        ``network_data.json`` up by MAC, would fail every stage ("Unable to find a system nic").
        The drive is written as for a server without ports; neutron, nova and the server's
        addresses still have the port.
        """
        del network_info
        extra_md = {'admin_pass': admin_password} if admin_password else {}
        # An empty list, not None: for None nova reads the instance's network info cache.
        inst_md = instance_metadata.InstanceMetadata(
            instance, content=injected_files, extra_md=extra_md,
            network_info=network_model.NetworkInfo([]))
        drive = os.path.join(self._guest_dir(instance.uuid), 'config-drive')
        for path, data in inst_md.metadata_for_config_drive():
            target = os.path.join(drive, path)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, 'wb') as f:
                f.write(data.encode('utf-8') if isinstance(data, str) else data)

    def _start_guest(self, instance_uuid: str) -> None:
        guest_dir = self._guest_dir(instance_uuid)
        console = open(os.path.join(guest_dir, 'console.log'), 'ab')
        with console:
            proc = subprocess.Popen(
                [self._layout['guest_python'], self._layout['guest_program'],
                 '--guest-dir', guest_dir, '--root', self._layout['guest_root'],
                 '--mirror-dir', self._layout['mirror_dir'],
                 '--mirror-url', self._layout['mirror_url']],
                stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                cwd=guest_dir, start_new_session=True, close_fds=True)
        with open(os.path.join(guest_dir, 'guest.pid'), 'w', encoding='utf-8') as f:
            f.write(str(proc.pid))
        LOG.info('Started the guest stand-in (pid %s) in %s', proc.pid, guest_dir)

    def spawn(self, context, instance, image_meta, injected_files,
              admin_password, allocations, network_info=None,
              block_device_info=None, power_on=True, accel_info=None):
        super().spawn(context, instance, image_meta, injected_files, admin_password,
                      allocations, network_info=network_info,
                      block_device_info=block_device_info, power_on=power_on,
                      accel_info=accel_info)
        guest_dir = self._guest_dir(instance.uuid)
        os.makedirs(guest_dir, exist_ok=True)
        self._write_config_drive(instance, injected_files, admin_password, network_info)
        self._write_info(self._instance_info(instance, image_meta))
        if power_on:
            self._start_guest(instance.uuid)

    def destroy(self, context, instance, network_info, block_device_info=None,
                destroy_disks=True, destroy_secrets=True):
        guest_dir = self._guest_dir(instance.uuid)
        _kill_group(pid_file=os.path.join(guest_dir, 'guest.pid'))
        path = os.path.join(guest_dir, 'instance.json')
        try:
            with open(path, encoding='utf-8') as f:
                info = json.load(f)
        except (OSError, ValueError):
            info = None
        if info is not None:
            info['destroyed'] = True
            self._write_info(info)
        if destroy_disks:
            # The instance's disk goes with it, as a hypervisor deletes it (console and
            # metadata stay for a look afterwards).
            shutil.rmtree(os.path.join(guest_dir, 'disk'), ignore_errors=True)
            shutil.rmtree(os.path.join(guest_dir, '.overlay-work'), ignore_errors=True)
        super().destroy(context, instance, network_info, block_device_info=block_device_info,
                        destroy_disks=destroy_disks, destroy_secrets=destroy_secrets)

    def power_on(self, context, instance, network_info, block_device_info=None,
                 accel_info=None, share_info=None):
        super().power_on(context, instance, network_info, block_device_info=block_device_info,
                         accel_info=accel_info, share_info=share_info)
        self._start_guest(instance.uuid)

    def reboot(self, context, instance, network_info, reboot_type, block_device_info=None,
               bad_volumes_callback=None, accel_info=None, share_info=None):
        _kill_group(pid_file=os.path.join(self._guest_dir(instance.uuid), 'guest.pid'))
        super().reboot(context, instance, network_info, reboot_type,
                       block_device_info=block_device_info,
                       bad_volumes_callback=bad_volumes_callback, accel_info=accel_info,
                       share_info=share_info)
        self._start_guest(instance.uuid)

    def power_off(self, instance, timeout=0, retry_interval=0):
        _kill_group(pid_file=os.path.join(self._guest_dir(instance.uuid), 'guest.pid'))
        super().power_off(instance, timeout=timeout, retry_interval=retry_interval)

    def get_host_uptime(self):
        with open('/proc/uptime', encoding='utf-8') as f:
            seconds = float(f.read().split()[0])
        with open('/proc/loadavg', encoding='utf-8') as f:
            load = f.read().split()[:3]
        return ' %s up %d min,  load average: %s' % (
            time.strftime('%H:%M:%S'), seconds // 60, ', '.join(load))

    def get_console_output(self, context, instance):
        path = os.path.join(self._guest_dir(instance.uuid), 'console.log')
        try:
            with open(path, 'rb') as f:
                return f.read()
        except FileNotFoundError:
            return b''
