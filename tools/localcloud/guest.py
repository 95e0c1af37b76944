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
- installs the GPU simulator (``tools/gpusim``) with exactly the PCI devices nova assigned (it
  puts its commands for the silicon and the kernel in ``/usr/local/sbin``);
- boots the guest's own systemd (``systemd-nspawn --boot``: own pid, mount, IPC and UTS
  namespaces, the host's network, as a VM on the cloud's network reaches Keystone, Heat and the
  mirror). systemd starts cloud-init's four units and the units the guest enabled. A reboot in the
  guest ends the container with status 133; the simulated kernel is then reset (nouveau back
  unless blacklisted) and the guest boots again from its disk.

Its stdout is the instance's console (``console.log``): what systemd, cloud-init and the boot
script print. SIGTERM powers the guest off (systemd's shutdown), as nova's stop does.
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
    from tools.gpusim import gpusim
    from tools.localcloud import mirror
except ImportError:  # run as a script: this directory is sys.path[0]
    import mirror
    from mirror import gpusim

HERE = os.path.dirname(os.path.abspath(__file__))
GPUSIM = os.path.join(os.path.dirname(HERE), 'gpusim', 'gpusim.py')
FAULTS_METADATA_KEY = 'heat_gpu_sim_faults'
NS_MARK = 'HEAT_GPU_GUEST_MOUNT_NS'

GUEST_GPUSIM = 'usr/lib/gpusim'
SEED = 'var/lib/cloud/seed/config_drive'
#: systemd-nspawn's exit status when the container rebooted.
REBOOT_STATUS = 133
MAX_BOOTS = 8


def say(message: str) -> None:
    stamp = time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())
    print('[%s] guest: %s' % (stamp, message), flush=True)


def disk_dir(guest_dir: str) -> str:
    """The instance's own layer: every file the guest wrote, as the host sees it."""
    return os.path.join(guest_dir, 'disk')


def _truthy(value) -> bool:
    return str(value or '').lower() in ('true', '1', 'yes')


def _devices(info: dict) -> list[dict]:
    # The host's simulator knows heat_gpu.catalog: the guest gets the full facts.
    return [gpusim._enrich({'pci_address': d['pci_address'], 'vendor_id': d['vendor_id'],
                            'product_id': d['product_id'], 'numa_node': d.get('numa_node')})
            for d in info.get('pci_devices') or []]


def boot_settings(info: dict) -> dict:
    """What the simulator is told: the image's distribution, the devices, the faults."""
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
        """Put seed, mirror files and simulator in place; at the first boot, set the guest up."""
        boot = boot_settings(self.info)
        first = not os.path.exists(self.path('.gpusim/state.json'))
        if self.mirror_dir:
            files = mirror.guest_files(self.mirror_dir, url=self.mirror_url,
                                       distro=boot['distro'], version=boot['version'])
            gpusim.write_tree(self.mnt, {rel: (data, 0o644) for rel, data in files.items()})
        sim = self.path(GUEST_GPUSIM)
        os.makedirs(sim, exist_ok=True)
        shutil.copyfile(GPUSIM, os.path.join(sim, 'gpusim.py'))
        if first:
            self._first_boot_setup(boot)
        seed = self.path(SEED)
        if os.path.isdir(seed):
            shutil.rmtree(seed)
        drive = os.path.join(self.dir, 'config-drive')
        if os.path.isdir(drive):
            shutil.copytree(drive, seed)
            os.chmod(seed, 0o700)
        return boot

    def _in_guest(self, argv: list[str]) -> None:
        """Run a command in the guest's root before it boots (as an image build would)."""
        subprocess.run(['chroot', self.mnt] + argv, check=True, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL,
                       env={'PATH': '/usr/sbin:/usr/bin:/sbin:/bin', 'LC_ALL': 'C.UTF-8'})

    def _first_boot_setup(self, boot: dict) -> None:
        # The mirror's CA, as the image of an air-gapped cloud trusts it.
        self._in_guest(['update-ca-certificates'])
        devices = self.path(GUEST_GPUSIM + '/devices.json')
        with open(devices, 'w', encoding='utf-8') as f:
            json.dump(boot['devices'], f)
        argv = ['python3', '/%s/gpusim.py' % GUEST_GPUSIM, 'make-guest', '/', '--distro',
                boot['distro'], '--version', boot['version'], '--devices',
                '/%s/devices.json' % GUEST_GPUSIM, '--real-userland']
        argv += ['--prebaked'] if boot['prebaked'] else []
        for fault in boot['faults']:
            argv += ['--fault', fault]
        self._in_guest(argv)

    def boot(self) -> int:
        """Boot the guest's systemd; return systemd-nspawn's exit status."""
        hostname = (self.info.get('hostname') or self.info['uuid'])[:63]
        argv = ['systemd-nspawn', '--boot', '--quiet', '--directory', self.mnt,
                '--machine', 'i-' + self.info['uuid'].replace('-', '')[:12],
                '--hostname', hostname, '--register=no', '--keep-unit',
                '--console=read-only', '--link-journal=no', '--resolv-conf=off',
                '--timezone=off']
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
        if self.stopping:
            self.stop()
        return self.proc.wait()

    def reboot(self) -> None:
        """Reset the simulated kernel: modules unloaded, nouveau back unless blacklisted."""
        gpusim.reboot(self.mnt)

    def stop(self) -> None:
        """Power off: systemd-nspawn asks the guest's systemd for an orderly shutdown."""
        self.stopping = True
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
    for number in range(1, MAX_BOOTS + 1):
        say('boot %d' % number)
        rc = machine.boot()
        if rc != REBOOT_STATUS or machine.stopping:
            break
        say('the guest rebooted')
        machine.reboot()
    else:
        say('the guest rebooted %d times; it stays off' % MAX_BOOTS)
    say('powered off (systemd-nspawn exit status %d)' % rc)
    return 0


if __name__ == '__main__':
    sys.exit(main())
