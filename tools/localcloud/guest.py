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

"""The machine of a local-cloud instance: boots the guest root with the instance's disk and seed.

Started by the fake GPU virt driver, detached, one process per instance:
``python guest.py --guest-dir <state>/guests/<uuid> --root <guest root>``. In a mount namespace of
its own (so nothing stays mounted when it ends) it

- mounts the instance's disk: an overlay whose lower layer is the shared guest root
  (``guestroot.py``: Debian with cloud-init) and whose upper layer, ``<guest dir>/disk``, keeps
  whatever the instance writes, across its reboots and power cycles;
- puts nova's config drive (``<guest dir>/config-drive``, written by the driver with nova's own
  metadata code: user data, ``meta_data.json``...) where cloud-init's ConfigDrive datasource reads
  a seed, ``/var/lib/cloud/seed/config_drive``;
- gives the instance what an image of an air-gapped cloud holds to reach its package mirror
  (``mirror.py``): the mirror's CA and, for Debian-family images, the distribution repository;
- installs the GPU simulator (``tools/gpusim``) with exactly the PCI devices nova assigned, and the
  guest's init (``guest_init.py``);
- starts that init as process 1 of the guest (bubblewrap: own pid, mount, IPC and UTS namespaces,
  the host's loopback network, as a VM on the cloud's network reaches Keystone and Heat).

Its stdout is the instance's console (``console.log``). SIGTERM stops the guest.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time

try:
    from tools.localcloud import mirror
except ImportError:  # run as a script: this directory is sys.path[0]
    import mirror

HERE = os.path.dirname(os.path.abspath(__file__))
GPUSIM = os.path.join(os.path.dirname(HERE), 'gpusim', 'gpusim.py')
INIT = os.path.join(HERE, 'guest_init.py')
FAULTS_METADATA_KEY = 'heat_gpu_sim_faults'
NS_MARK = 'HEAT_GPU_GUEST_MOUNT_NS'

#: Where the guest's files of the local cloud go inside the guest (guest_init.py reads them).
GUEST_LIB = 'usr/lib/heat-gpu-localcloud'
GUEST_GPUSIM = 'usr/lib/gpusim'
SEED = 'var/lib/cloud/seed/config_drive'


def say(message: str) -> None:
    stamp = time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())
    print('[%s] guest: %s' % (stamp, message), flush=True)


def disk_dir(guest_dir: str) -> str:
    """The instance's own layer: every file the guest wrote, as the host sees it."""
    return os.path.join(guest_dir, 'disk')


def _truthy(value) -> bool:
    return str(value or '').lower() in ('true', '1', 'yes')


def _devices(info: dict) -> list[dict]:
    sys.path.insert(0, os.path.dirname(GPUSIM))
    import gpusim  # the host's copy knows heat_gpu.catalog: the guest gets the full facts
    return [gpusim._enrich({'pci_address': d['pci_address'], 'vendor_id': d['vendor_id'],
                            'product_id': d['product_id'], 'numa_node': d.get('numa_node')})
            for d in info.get('pci_devices') or []]


def boot_settings(info: dict) -> dict:
    """What guest_init.py gives the simulator: the image's distribution, the devices, faults."""
    image = info.get('image') or {}
    faults = [f.strip() for f in
              (info.get('metadata') or {}).get(FAULTS_METADATA_KEY, '').split(',') if f.strip()]
    return {'distro': image.get('os_distro') or 'debian',
            'version': image.get('os_version') or '12',
            'prebaked': _truthy(image.get('heat_gpu_prebaked')),
            'faults': faults, 'devices': _devices(info)}


class Machine:
    """One instance's disk, seed and init."""

    def __init__(self, *, guest_dir: str, root: str, mirror_dir: str | None = None,
                 mirror_url: str | None = None) -> None:
        self.dir = os.path.abspath(guest_dir)
        self.lower = root
        self.mirror_dir = mirror_dir
        self.mirror_url = mirror_url
        with open(os.path.join(self.dir, 'instance.json'), encoding='utf-8') as f:
            self.info = json.load(f)
        self.disk = disk_dir(self.dir)
        self.mnt = os.path.join(self.dir, 'root')
        self.proc: subprocess.Popen | None = None
        self.init_pid: int | None = None
        self.stopping = False

    def path(self, guest_path: str) -> str:
        return os.path.join(self.mnt, guest_path.lstrip('/'))

    def mount(self) -> None:
        work = os.path.join(self.dir, '.overlay-work')
        for d in (self.disk, work, self.mnt):
            os.makedirs(d, exist_ok=True)
        subprocess.run(['mount', '-t', 'overlay', 'overlay', '-o',
                        'lowerdir=%s,upperdir=%s,workdir=%s' % (self.lower, self.disk, work),
                        self.mnt], check=True)

    def install(self) -> dict:
        boot = boot_settings(self.info)
        lib = self.path(GUEST_LIB)
        os.makedirs(lib, exist_ok=True)
        shutil.copyfile(INIT, os.path.join(lib, 'init.py'))
        with open(os.path.join(lib, 'boot.json'), 'w', encoding='utf-8') as f:
            json.dump(boot, f, indent=1, sort_keys=True)
        if self.mirror_dir:
            files = mirror.guest_files(self.mirror_dir, url=self.mirror_url,
                                       distro=boot['distro'], version=boot['version'])
            for rel, data in files.items():
                os.makedirs(os.path.dirname(self.path(rel)), exist_ok=True)
                with open(self.path(rel), 'wb') as f:
                    f.write(data)
        sim = self.path(GUEST_GPUSIM)
        os.makedirs(sim, exist_ok=True)
        shutil.copyfile(GPUSIM, os.path.join(sim, 'gpusim.py'))
        seed = self.path(SEED)
        if os.path.isdir(seed):
            shutil.rmtree(seed)
        drive = os.path.join(self.dir, 'config-drive')
        if os.path.isdir(drive):
            shutil.copytree(drive, seed)
            os.chmod(seed, 0o700)
        return boot

    def start(self) -> int:
        hostname = (self.info.get('hostname') or self.info['uuid'])[:63]
        info_r, info_w = os.pipe()
        argv = ['bwrap', '--bind', self.mnt, '/', '--dev', '/dev', '--proc', '/proc',
                '--tmpfs', '/run', '--unshare-pid', '--unshare-ipc', '--unshare-uts',
                '--hostname', hostname, '--die-with-parent', '--as-pid-1', '--chdir', '/',
                '--clearenv', '--setenv', 'PATH', '/usr/sbin:/usr/bin:/sbin:/bin',
                '--info-fd', str(info_w),
                '--', '/usr/bin/python3', '/%s/init.py' % GUEST_LIB]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, pass_fds=(info_w,))
        os.close(info_w)
        with os.fdopen(info_r, encoding='utf-8') as f:
            text = f.read()
        try:
            # The init's pid as this side sees it: SIGTERM goes to it, so it stops the guest.
            self.init_pid = int(json.loads(text)['child-pid'])
        except (ValueError, KeyError, TypeError):
            self.init_pid = None
        if self.stopping:
            self.stop()
        return self.proc.wait()

    def stop(self) -> None:
        self.stopping = True
        if self.init_pid is not None:
            try:
                os.kill(self.init_pid, signal.SIGTERM)
                return
            except ProcessLookupError:
                pass
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--guest-dir', required=True)
    parser.add_argument('--root', required=True, help='the guest root (guestroot.py build)')
    parser.add_argument('--mirror-dir', help='the package mirror the instance installs from')
    parser.add_argument('--mirror-url', help="the mirror's base URL as the instance reaches it")
    args = parser.parse_args(argv)
    if os.environ.get(NS_MARK) != '1':
        # A mount namespace of our own: the overlay disappears with this process.
        os.environ[NS_MARK] = '1'
        os.execvp('unshare', ['unshare', '--mount', '--propagation', 'private', '--',
                              sys.executable, os.path.abspath(__file__)]
                  + (argv if argv is not None else sys.argv[1:]))
    machine = Machine(guest_dir=args.guest_dir, root=args.root, mirror_dir=args.mirror_dir,
                      mirror_url=args.mirror_url)
    info = machine.info
    machine.mount()
    boot = machine.install()
    devices = boot['devices']
    say('booting instance %s (%s) on %s: image %s %s%s, %d PCI device(s): %s' % (
        info['uuid'], info.get('display_name'), info.get('host'), boot['distro'],
        boot['version'], ' (pre-baked)' if boot['prebaked'] else '', len(devices),
        ', '.join('%s %s:%s' % (d['pci_address'], d['vendor_id'], d['product_id'])
                  for d in devices) or 'none'))
    signal.signal(signal.SIGTERM, lambda signum, frame: machine.stop())
    rc = machine.start()
    say('the guest ended (init exit status %d)' % rc)
    return 0


if __name__ == '__main__':
    sys.exit(main())
