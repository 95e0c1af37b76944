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

"""A simulated GPU guest: NVIDIA devices on the PCI bus and the commands of a Linux guest.

The same file is the Python API (``make_guest``, ``reboot``, ``commands``, ...) and, copied into
the sandbox, the implementation of every stub command (``gpusim.py --stub NAME ARGS...``).
Only the standard library is used. See README.md next to this file for the interface.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shlex
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the stubs start often: import only what a stub needs
    from typing import Any, Iterable

SIM_DIR = '.gpusim'
#: The simulator's directory and interpreter in a real guest, whose root is ``/``.
GUEST_SIM_DIR = '/' + SIM_DIR
GUEST_PYTHON = '/usr/bin/python3'

#: Faults of one GPU (see README.md "Sample programs"); as guest faults they hit the first GPU in
#: PCI order (``gpu-missing``: the last), as a device's own ``faults`` that device.
DEVICE_FAULTS = ('pcie-degraded', 'ecc-errors', 'gpu-missing', 'wrong-result')
FAULTS = ('no-gpu', 'package-install-fails', 'checksum-mismatch', 'download-fails',
          'nvcc-fails', 'keyring-untrusted', 'repo-no-gpgcheck') + DEVICE_FAULTS

NVIDIA_HOST = 'developer.download.nvidia.com'

#: The simulated repository keys: (fingerprint, user id). NVIDIA's is the fingerprint of its real
#: Debian/Ubuntu repository key (heat_gpu.cuda.NVIDIA_REPO_KEY_FINGERPRINTS); the rogue one is what
#: the ``keyring-untrusted`` mirror ships in its cuda-keyring instead.
NVIDIA_KEY = ('EB693B3035CD5710E231E123A4B469963BF863CC', 'cudatools <cudatools@nvidia.com>')
ROGUE_KEY = (hashlib.sha1(b'gpusim rogue mirror key').hexdigest().upper(),
             'Mirror Packaging <keys@mirror.invalid>')
#: First line of a simulated OpenPGP keyring; each key follows as "pub <fingerprint> <user id>".
KEYRING_MAGIC = 'gpusim-openpgp-keyring 1'
#: Where the cuda-keyring package puts its keyring.
KEYRING_PATH = 'usr/share/keyrings/cuda-archive-keyring.gpg'

#: distro -> version -> (pretty name, running kernel, family)
DISTROS: dict[str, dict[str, tuple[str, str, str]]] = {
    'ubuntu': {
        '20.04': ('Ubuntu 20.04.6 LTS', '5.4.0-182-generic', 'debian'),
        '22.04': ('Ubuntu 22.04.5 LTS', '5.15.0-105-generic', 'debian'),
        '24.04': ('Ubuntu 24.04.1 LTS', '6.8.0-45-generic', 'debian'),
    },
    'debian': {
        '12': ('Debian GNU/Linux 12 (bookworm)', '6.1.0-26-amd64', 'debian'),
    },
    'rhel': {
        '7': ('Red Hat Enterprise Linux Server 7.9 (Maipo)', '3.10.0-1160.119.1.el7.x86_64',
              'rhel'),
        '8': ('Red Hat Enterprise Linux 8.10 (Ootpa)', '4.18.0-553.el8_10.x86_64', 'rhel'),
        '9': ('Red Hat Enterprise Linux 9.4 (Plow)', '5.14.0-427.13.1.el9_4.x86_64', 'rhel'),
    },
    'centos': {
        '7': ('CentOS Linux 7 (Core)', '3.10.0-1160.119.1.el7.x86_64', 'rhel'),
        '8': ('CentOS Stream 8', '4.18.0-552.el8.x86_64', 'rhel'),
        '9': ('CentOS Stream 9', '5.14.0-503.el9.x86_64', 'rhel'),
    },
    'rocky': {
        '8': ('Rocky Linux 8.10 (Green Obsidian)', '4.18.0-553.el8_10.x86_64', 'rhel'),
        '9': ('Rocky Linux 9.4 (Blue Onyx)', '5.14.0-427.13.1.el9_4.x86_64', 'rhel'),
    },
    'almalinux': {
        '8': ('AlmaLinux 8.10 (Cerulean Leopard)', '4.18.0-553.el8_10.x86_64', 'rhel'),
        '9': ('AlmaLinux 9.4 (Seafoam Ocelot)', '5.14.0-427.13.1.el9_4.x86_64', 'rhel'),
    },
}

#: driver branch -> full version the simulated repositories install
DRIVER_VERSIONS = {
    '470': '470.256.02', '525': '525.147.05', '535': '535.247.01', '550': '550.163.01',
    '560': '560.35.05', '570': '570.195.03', '575': '575.64.05', '580': '580.95.05',
    '590': '590.44.01',
}
LATEST_BRANCH = '590'

#: PCI product id -> (name as nvidia-smi prints it, memory MiB, compute capability, open modules,
#: datasheet memory bandwidth GB/s, datasheet FP32 TFLOPS, PCIe generation, PCIe lanes); used when
#: heat_gpu.catalog cannot be imported (it has the same facts).
BUILTIN_MODELS = {
    '15f8': ('Tesla P100-PCIE-16GB', 16384, '6.0', False, 732, 9.3, 3, 16),
    '15f7': ('Tesla P100-PCIE-12GB', 12288, '6.0', False, 549, 9.3, 3, 16),
    '15f9': ('Tesla P100-SXM2-16GB', 16384, '6.0', False, 732, 10.6, 3, 16),
    '1db4': ('Tesla V100-PCIE-16GB', 16384, '7.0', False, 900, 14.0, 3, 16),
    '1db1': ('Tesla V100-SXM2-16GB', 16384, '7.0', False, 900, 15.7, 3, 16),
    '1eb8': ('Tesla T4', 15360, '7.5', True, 320, 8.1, 3, 16),
    '20b0': ('NVIDIA A100-SXM4-40GB', 40960, '8.0', True, 1555, 19.5, 4, 16),
    '20b2': ('NVIDIA A100-SXM4-80GB', 81920, '8.0', True, 2039, 19.5, 4, 16),
    '20f1': ('NVIDIA A100-PCIE-40GB', 40960, '8.0', True, 1555, 19.5, 4, 16),
    '2235': ('NVIDIA A40', 46068, '8.6', True, 696, 37.4, 4, 16),
    '27b8': ('NVIDIA L4', 23034, '8.9', True, 300, 30.3, 4, 16),
    '26b9': ('NVIDIA L40S', 46068, '8.9', True, 864, 91.6, 4, 16),
    '2330': ('NVIDIA H100 80GB HBM3', 81559, '9.0', True, 3350, 67.0, 5, 16),
    '2331': ('NVIDIA H100 PCIe', 81559, '9.0', True, 2000, 51.0, 5, 16),
}

#: PCI product id -> (multiprocessors, memory bus width in bits), the cudaDeviceProp facts the
#: catalog does not keep (NVIDIA architecture whitepapers); other GPUs: DEFAULT_SILICON.
SILICON = {
    '15f7': (56, 3072), '15f8': (56, 4096), '15f9': (56, 4096), '1db1': (80, 4096),
    '1db4': (80, 4096), '1db5': (80, 4096), '1db6': (80, 4096), '1df6': (80, 4096),
    '1eb8': (40, 256), '2236': (72, 384), '20b7': (56, 3072), '2235': (84, 384),
    '20f1': (108, 5120), '20b5': (108, 5120), '20b0': (108, 5120), '20b2': (108, 5120),
    '27b8': (58, 192), '26b9': (142, 384), '2331': (114, 5120), '2330': (132, 5120),
    '2335': (132, 6144),
}
DEFAULT_SILICON = (80, 4096)

#: PCIe GT/s per lane and line-code efficiency per generation (PCI-SIG base specifications).
PCIE_RATE = {1: (2.5, 0.8), 2: (5.0, 0.8), 3: (8.0, 128 / 130), 4: (16.0, 128 / 130),
             5: (32.0, 128 / 130)}

# The simulated silicon. Each measured figure is the catalog's expected figure times a factor a
# healthy GPU reaches, times a small per-GPU, per-metric spread (deterministic: from the UUID).
#: pinned host<->device copies, x the catalog's expected_h2d_gbps (PCIe link x 0.75)
SIM_H2D = 0.95
SIM_D2H = 0.97
#: device-to-device copy (read + write counted), x the datasheet memory bandwidth
SIM_D2D = 0.80
#: cuBLAS SGEMM, x the datasheet FP32 peak; GA10x/AD10x count a second FP32 datapath in the peak
#: that SGEMM keeps only partly busy, and the 70 W T4 does not hold its boost clock
SIM_SGEMM = 0.85
SIM_SGEMM_BY_CC = {'7.5': 0.53, '8.6': 0.53, '8.9': 0.53}
#: peer-to-peer copies, x the slower GPU's host link rate (expected_h2d_gbps / 0.75 x this);
#: without peer access the copy is staged through host memory
SIM_P2P = 0.66
SIM_P2P_STAGED = 0.40
#: +- this share, per GPU and metric
SIM_SPREAD = 0.02
#: memory the driver keeps for itself: cudaDeviceProp.totalGlobalMem is nominal x (1 - this)
SIM_RESERVED_MEMORY = 0.0066
#: A correct element-wise float sum has no error; the ``wrong-result`` GPU (a fault of its FP32
#: adders: integer work such as the boot script's check program is still right) gets every
#: 4096th element wrong by this much.
SIM_WRONG_ERROR = 0.5

#: driver branch -> the CUDA version its libcuda reports (cudaDriverGetVersion)
DRIVER_CUDA = {'470': '11.4', '525': '12.0', '535': '12.2', '550': '12.4', '560': '12.6',
               '570': '12.8', '575': '12.9', '580': '13.0', '590': '13.1'}

#: The heat-gpu sample programs gpusim's nvcc recognises (``// heat-gpu sample: NAME.`` on the
#: first line of the source, else the file name NAME.cu).
SAMPLE_PROGRAMS = ('device_query', 'vector_add', 'bandwidth', 'gemm', 'p2p')

#: toolkit major -> lowest sm it still compiles for; and the driver branch it needs at least
TOOLKIT_MIN_SM = {'11': 35, '12': 50, '13': 75}
TOOLKIT_MIN_BRANCH = {'11': 450, '12': 525, '13': 580}


# ---------------------------------------------------------------------------------------------
# small helpers shared by the API and the stubs
# ---------------------------------------------------------------------------------------------

def _python() -> str:
    exe = sys.executable
    return exe if exe and 'python' in os.path.basename(exe) else '/usr/bin/python3'


def _launcher(sim: str, *, python: str | None = None) -> str:
    """Shell words that run this module's stub entry point (byte code cached in *sim*)."""
    code = 'import sys; sys.path.insert(0, %r); import gpusim; sys.exit(gpusim._main(sys.argv[1:]))'
    return '%s -S -E -c %s' % (shlex.quote(python or _python()), shlex.quote(code % sim))


def guest_launcher() -> str:
    """The launcher of the simulator in a real guest (``make_guest('/', real_userland=True)``).

    For files made outside the guest that run in it: the package mirror's driver and toolkit
    packages and their maintainer scripts.
    """
    return _launcher(GUEST_SIM_DIR, python=GUEST_PYTHON)


def _sim(root: str) -> str:
    return os.path.join(root, SIM_DIR)


def _read_json(path: str, default: Any) -> Any:
    try:
        with open(path, encoding='utf-8') as f:
            return json.load(f)
    except FileNotFoundError:
        return default


def _write_json(path: str, data: Any) -> None:
    tmp = path + '.tmp'
    with open(tmp, 'w', encoding='utf-8') as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def _gpu_uuid(pci_address: str) -> str:
    h = hashlib.sha256(('gpusim:' + pci_address.lower()).encode()).hexdigest()
    return 'GPU-%s-%s-%s-%s-%s' % (h[:8], h[8:12], h[12:16], h[16:20], h[20:32])


def _normal_address(address: str) -> str:
    address = address.lower()
    if address.count(':') == 1:
        address = '0000:' + address
    return address


def _catalog_facts(product_id: str) -> dict[str, Any] | None:
    """Name, memory, compute capability and open-module support from heat_gpu.catalog, if any."""
    here = os.path.dirname(os.path.abspath(__file__))
    top = os.path.dirname(os.path.dirname(here))
    if os.path.isdir(os.path.join(top, 'heat_gpu')) and top not in sys.path:
        sys.path.insert(0, top)
    try:
        from heat_gpu import catalog  # type: ignore[attr-defined]
    except Exception:  # the catalog is optional: fall back on the built-in table
        return None
    pci_id = '10de:%s' % product_id
    model = None
    for fname in ('by_pci_id', 'lookup_pci_id', 'find_by_pci_id', 'lookup', 'get'):
        fn = getattr(catalog, fname, None)
        if callable(fn):
            try:
                model = fn(pci_id)
            except Exception:  # a lookup miss raises in some APIs
                model = None
            if model is not None:
                break
    if model is None:
        return None

    def attr(*names: str) -> Any:
        for n in names:
            if isinstance(model, dict) and n in model:
                return model[n]
            if hasattr(model, n):
                return getattr(model, n)
        return None

    cc = attr('compute_capability', 'cc')
    if isinstance(cc, (tuple, list)):
        cc = '%s.%s' % tuple(cc[:2])
    facts = {
        'name': attr('smi_name', 'nvidia_smi_name', 'name'),
        'memory_mib': attr('memory_mib'),
        'compute_cap': str(cc) if cc is not None else None,
        'open_modules': attr('open_kernel_modules', 'open_modules', 'supports_open_modules'),
        'memory_bandwidth_gbps': attr('memory_bandwidth_gbps'),
        'fp32_tflops': attr('fp32_tflops'),
        'pcie_gen': attr('pcie_gen'),
        'pcie_lanes': attr('pcie_lanes'),
    }
    h2d = getattr(catalog, 'expected_h2d_gbps', None)
    if callable(h2d):
        try:
            facts['expected_h2d_gbps'] = float(h2d(model))
        except Exception:  # an older catalog without PCIe facts: computed in _enrich
            pass
    return {k: v for k, v in facts.items() if v is not None}


def _expected_h2d(gen: int, lanes: int) -> float:
    """The catalog's rule (heat_gpu.catalog.expected_h2d_gbps): PCIe link rate x 0.75."""
    rate, encoding = PCIE_RATE.get(gen, PCIE_RATE[3])
    return round(rate * encoding * lanes / 8 * 0.75, 2)


def _enrich(device: dict[str, Any]) -> dict[str, Any]:
    d = dict(device)
    d['pci_address'] = _normal_address(d['pci_address'])
    d['vendor_id'] = d.get('vendor_id', '10de').lower()
    d['product_id'] = d['product_id'].lower()
    d.setdefault('numa_node', 0)
    facts: dict[str, Any] = {}
    if d['product_id'] in BUILTIN_MODELS:
        name, mem, cc, open_ok, bw, fp32, gen, lanes = BUILTIN_MODELS[d['product_id']]
        facts = {'name': name, 'memory_mib': mem, 'compute_cap': cc, 'open_modules': open_ok,
                 'memory_bandwidth_gbps': bw, 'fp32_tflops': fp32, 'pcie_gen': gen,
                 'pcie_lanes': lanes}
    facts.update(_catalog_facts(d['product_id']) or {})
    for key, default in (('name', 'NVIDIA Device %s' % d['product_id']), ('memory_mib', 16384),
                         ('compute_cap', '7.0'), ('open_modules', True),
                         ('memory_bandwidth_gbps', 900), ('fp32_tflops', 14.0), ('pcie_gen', 3),
                         ('pcie_lanes', 16)):
        d.setdefault(key, facts.get(key, default))
    d['memory_mib'] = int(d['memory_mib'])
    d.setdefault('expected_h2d_gbps', facts.get('expected_h2d_gbps') or
                 _expected_h2d(int(d['pcie_gen']), int(d['pcie_lanes'])))
    sms, bus = SILICON.get(d['product_id'], DEFAULT_SILICON)
    d.setdefault('multiprocessors', sms)
    d.setdefault('memory_bus_width_bits', bus)
    d.setdefault('ecc_enabled', True)
    d['faults'] = list(d.get('faults') or [])
    d['uuid'] = _gpu_uuid(d['pci_address'])
    d.setdefault('pci_class', '0302')
    return d


# ---------------------------------------------------------------------------------------------
# Python API
# ---------------------------------------------------------------------------------------------

HOST_TOOLS = (
    'bash', 'sh', 'env', 'cat', 'cp', 'mv', 'rm', 'mkdir', 'rmdir', 'ln', 'ls', 'chmod', 'chown',
    'touch', 'date', 'sleep', 'head', 'tail', 'tr', 'cut', 'sort', 'uniq', 'wc', 'grep', 'egrep',
    'sed', 'awk', 'mawk', 'gawk', 'find', 'xargs', 'basename', 'dirname', 'readlink', 'realpath',
    'mktemp', 'tee', 'id', 'stat', 'printf', 'echo', 'true', 'false', 'test', 'expr', 'seq',
    'sha256sum', 'md5sum', 'python3', 'tar', 'gzip', 'od', 'dd', 'timeout', 'install', 'setsid',
    'nohup', 'kill', 'ps', 'sync', 'hostname', 'getent', 'cmp', 'diff', 'base64', 'flock', 'tac',
    'fold', 'paste', 'join', 'comm', 'nproc', 'whoami', 'du', 'df', 'pgrep', 'sleep', 'openssl',
)

STUBS = ('lspci', 'uname', 'modprobe', 'lsmod', 'rmmod', 'nvidia-smi', 'nvcc', 'dkms',
         'reboot', 'shutdown', 'systemctl', 'curl', 'wget', 'logger', 'gpusim-runfile')
DEBIAN_STUBS = ('apt-get', 'apt', 'dpkg', 'dpkg-query', 'dpkg-deb', 'update-initramfs')
#: gpg: every image but Debian's (its cloud image has gpgv only) has it; installing the gnupg
#: package brings it.
GPG_STUB = 'gpg'
RHEL_STUBS = ('rpm', 'yum', 'yum-config-manager', 'dracut')
RHEL8_STUBS = ('dnf',)
#: A real userland (``real_userland``: the local cloud's guests, which boot their own systemd)
#: keeps of the stubs only what stands for the silicon, the kernel and its modules: its own
#: systemd reboots and runs the services, and in a Debian-family image its own apt-get, dpkg, gpg
#: and curl install from the local cloud's package mirror (tools/localcloud/mirror.py), whose
#: driver packages ship ``nvidia-smi`` (``driver_files``) and whose maintainer scripts tell the
#: simulator what they installed (``gpusim-pkg-hook``).
REAL_STUBS = ('lspci', 'uname', 'modprobe', 'lsmod', 'rmmod', 'dkms')
REAL_DEBIAN_STUBS = REAL_STUBS + ('update-initramfs',)
#: A RHEL-family image on the Debian root: its package manager stays simulated (RHEL roots cannot
#: be fetched here), and with it what its packages would install.
REAL_RHEL_STUBS = REAL_STUBS + ('nvidia-smi', 'nvcc', 'curl', 'wget', 'gpusim-runfile') + RHEL_STUBS


#: The PATH of a real guest userland (a Debian root the local cloud boots), after the stubs.
REAL_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'


def make_guest(root: str, *, distro: str, version: str, devices: Iterable[dict[str, Any]],
               prebaked: bool = False, faults: Iterable[str] = (),
               host_path: str | None = None, real_userland: bool = False) -> dict[str, str]:
    """Create a simulated guest under *root* and return the environment to run programs in it.

    *real_userland*: *root* is ``/`` of a real Linux userland (the local cloud's guest, run
    inside it): the stubs are linked into ``/usr/local/sbin``, ahead of its own programs on the
    default ``PATH``, no host tool is linked, the
    paths given to the boot script are the guest's own, and the image's ``/etc/os-release`` is
    kept when it already names *distro* and *version*. A Debian-family image gets only
    ``REAL_DEBIAN_STUBS``: its own apt-get, dpkg, gpg and curl install the NVIDIA packages, from
    the local cloud's package mirror.
    """
    if distro not in DISTROS or version not in DISTROS[distro]:
        accepted = ', '.join('%s %s' % (d, v) for d in DISTROS for v in DISTROS[d])
        raise ValueError('gpusim: unknown distro %r version %r; accepted: %s'
                         % (distro, version, accepted))
    bad = [f for f in faults if f not in FAULTS]
    if bad:
        raise ValueError('gpusim: unknown fault(s) %s; accepted: %s'
                         % (', '.join(bad), ', '.join(FAULTS)))
    devices = list(devices)
    for d in devices:
        bad = [f for f in d.get('faults') or () if f not in DEVICE_FAULTS]
        if bad:
            raise ValueError('gpusim: device %s has unknown fault(s) %s; accepted: %s'
                             % (d.get('pci_address'), ', '.join(bad), ', '.join(DEVICE_FAULTS)))
    import shutil
    root = os.path.abspath(root)
    sim = _sim(root)
    bindir = os.path.join(sim, 'bin')
    hostbin = os.path.join(sim, 'hostbin')
    for d in (bindir, hostbin, os.path.join(root, 'etc', 'modprobe.d'),
              os.path.join(root, 'etc', 'systemd', 'system'), os.path.join(root, 'tmp'),
              os.path.join(root, 'var', 'log'), os.path.join(root, 'var', 'lib')):
        os.makedirs(d, exist_ok=True)
    pretty, kernel, family = DISTROS[distro][version]
    like = {'ubuntu': 'debian', 'debian': ''}.get(distro, 'rhel centos fedora')
    if not (real_userland and _os_release_is(root, distro, version)):
        os_release = os.path.join(root, 'etc', 'os-release')
        if os.path.islink(os_release):
            os.unlink(os_release)
        with open(os_release, 'w', encoding='utf-8') as f:
            f.write('NAME="%s"\nID=%s\nVERSION_ID="%s"\nPRETTY_NAME="%s"\n'
                    % (pretty.split(' ')[0], distro, version, pretty))
            if like:
                f.write('ID_LIKE="%s"\n' % like)
    devs = [_enrich(d) for d in devices]
    _write_json(os.path.join(sim, 'devices.json'), devs)
    _write_json(os.path.join(sim, 'faults.json'), sorted(set(faults)))

    real_curl = shutil.which('curl', path=REAL_PATH if real_userland else
                             host_path or os.environ.get('PATH', os.defpath))
    state: dict[str, Any] = {
        'distro': distro, 'version': version, 'family': family, 'kernel': kernel,
        'boot': 1, 'packages': {}, 'modules': [], 'repos': [], 'reboot_requested': False,
        'driver': None, 'toolkits': [], 'initramfs_blacklisted': False, 'services': {},
        'enabled_units': [], 'real_curl': real_curl,
    }
    if devs and 'no-gpu' not in faults:
        state['modules'] = ['nouveau']
    if prebaked:
        flavour = 'open' if devs and all(d['open_modules'] for d in devs) else 'proprietary'
        state['driver'] = {'version': DRIVER_VERSIONS['570'], 'flavour': flavour,
                           'package': 'nvidia-driver-570', 'method': 'preinstalled'}
        state['packages']['nvidia-driver-570'] = DRIVER_VERSIONS['570']
        state['modules'] = ['nvidia', 'nvidia_uvm']
        state['initramfs_blacklisted'] = True
        _install_toolkit(root, state, '12.8')
        with open(os.path.join(root, 'etc', 'modprobe.d', 'blacklist-nouveau.conf'), 'w',
                  encoding='utf-8') as f:
            f.write('blacklist nouveau\noptions nouveau modeset=0\n')
    _write_json(os.path.join(sim, 'state.json'), state)
    open(os.path.join(sim, 'commands.jsonl'), 'a', encoding='utf-8').close()

    me = os.path.join(sim, 'gpusim.py')
    shutil.copyfile(os.path.abspath(__file__), me)
    if real_userland and family == 'debian':
        names = list(REAL_DEBIAN_STUBS)
        if prebaked:
            names.append('nvidia-smi')  # baked into the image, not installed by a package
    elif real_userland:
        names = list(REAL_RHEL_STUBS) + (list(RHEL8_STUBS) if version != '7' else [])
    else:
        names = list(STUBS)
        names += DEBIAN_STUBS if family == 'debian' else RHEL_STUBS
        if family == 'rhel' and version != '7':
            names += RHEL8_STUBS
        if distro != 'debian':
            names.append(GPG_STUB)
    for name in names:
        _write_stub(sim, name)
    if real_userland:
        # In /usr/local/sbin, first on the default PATH of systemd's services, cloud-init and
        # login shells: every program of the guest finds the simulated silicon and kernel.
        sbin = os.path.join(root, 'usr', 'local', 'sbin')
        os.makedirs(sbin, exist_ok=True)
        for name in names:
            link = os.path.join(sbin, name)
            if not os.path.lexists(link):
                os.symlink(os.path.join(sim, 'bin', name), link)
        return {
            'PATH': REAL_PATH,
            'HEAT_GPU_ROOT': '',
            'HEAT_GPU_SIM': sim,
            'LC_ALL': 'C.UTF-8',
        }
    search = host_path or os.environ.get('PATH', os.defpath)
    for tool in HOST_TOOLS:
        found = shutil.which(tool, path=search)
        if tool == 'python3':
            # The guest's interpreter; a version-manager shim on the host PATH is slow.
            found = next((p for p in ('/usr/bin/python3', '/usr/local/bin/python3')
                          if os.access(p, os.X_OK)), found)
        link = os.path.join(hostbin, tool)
        if found and not os.path.lexists(link):
            os.symlink(found, link)
    return {
        'PATH': '%s:%s' % (bindir, hostbin),
        'HEAT_GPU_ROOT': root,
        'HEAT_GPU_SIM': sim,
        'HEAT_GPU_SETTINGS': os.path.join(root, 'etc', 'heat-gpu', 'bootstrap.json'),
        'HEAT_GPU_STATE_DIR': os.path.join(root, 'var', 'lib', 'heat-gpu'),
        'HEAT_GPU_LOG': os.path.join(root, 'var', 'log', 'heat-gpu-bootstrap.log'),
        'LC_ALL': 'C.UTF-8',
    }


def _os_release_is(root: str, distro: str, version: str) -> bool:
    try:
        with open(os.path.join(root, 'etc', 'os-release'), encoding='utf-8') as f:
            fields = dict(line.rstrip('\n').split('=', 1) for line in f if '=' in line)
    except OSError:
        return False
    return (fields.get('ID', '').strip('"') == distro and
            fields.get('VERSION_ID', '').strip('"') == version)


def _write_stub(sim: str, name: str) -> None:
    path = os.path.join(sim, 'bin', name)
    with open(path, 'w', encoding='utf-8') as f:
        if name == 'logger':
            # Cheap: the boot script logs every line; the journal is a file.
            f.write('#!/bin/sh\nwhile [ $# -gt 0 ]; do case "$1" in -t|-p) shift 2 ;; '
                    '--) shift; break ;; -*) shift ;; *) break ;; esac; done\n'
                    'echo "$*" >> %s\n' % shlex.quote(os.path.join(sim, 'journal.log')))
        else:
            f.write('#!/bin/sh\nexec %s --stub %s "$@"\n' % (_launcher(sim), name))
    os.chmod(path, 0o755)


def state(root: str) -> dict[str, Any]:
    """The guest's simulated state (packages, modules, boot count, driver, toolkits...)."""
    return _read_json(os.path.join(_sim(root), 'state.json'), {})


def install_toolkit(root: str, version: str) -> None:
    """Install CUDA toolkit *version* (``MAJOR.MINOR``) in the guest, as a package would."""
    with _locked(_sim(root)):
        st = state(root)
        _install_toolkit(root, st, version)
        _write_json(os.path.join(_sim(root), 'state.json'), st)


def set_faults(root: str, faults: Iterable[str]) -> None:
    """Replace the active faults."""
    bad = [f for f in faults if f not in FAULTS]
    if bad:
        raise ValueError('gpusim: unknown fault(s) %s; accepted: %s'
                         % (', '.join(bad), ', '.join(FAULTS)))
    _write_json(os.path.join(_sim(root), 'faults.json'), sorted(set(faults)))


def commands(root: str) -> list[dict[str, Any]]:
    """Every stub invocation so far: ``{'cmd', 'args', 'rc', 'boot'}``, oldest first."""
    out = []
    try:
        with open(os.path.join(_sim(root), 'commands.jsonl'), encoding='utf-8') as f:
            for line in f:
                if line.strip():
                    out.append(json.loads(line))
    except FileNotFoundError:
        pass
    return out


def reboot_pending(root: str) -> bool:
    """True when the guest asked for a reboot that has not happened yet."""
    return bool(state(root).get('reboot_requested'))


def reboot(root: str) -> None:
    """Reboot the guest: stop services, unload modules, bring nouveau back unless blacklisted."""
    stop_services(root)
    with _locked(_sim(root)):
        st = state(root)
        devs = _read_json(os.path.join(_sim(root), 'devices.json'), [])
        faults = _read_json(os.path.join(_sim(root), 'faults.json'), [])
        st['boot'] += 1
        st['reboot_requested'] = False
        st['modules'] = []
        if devs and 'no-gpu' not in faults and not st.get('initramfs_blacklisted'):
            st['modules'] = ['nouveau']
        _write_json(os.path.join(_sim(root), 'state.json'), st)


def boot_commands(root: str) -> list[list[str]]:
    """The ExecStart command lines of the units enabled in multi-user.target.wants."""
    wants = os.path.join(root, 'etc', 'systemd', 'system', 'multi-user.target.wants')
    out = []
    if os.path.isdir(wants):
        for name in sorted(os.listdir(wants)):
            argv = _unit_exec(root, name)
            if argv:
                out.append(argv)
    return out


def stop_services(root: str) -> None:
    """Terminate every process the systemctl stub started."""
    st = state(root)
    for unit, pid in list(st.get('services', {}).items()):
        _kill_group(pid)
    if st.get('services'):
        with _locked(_sim(root)):
            st = state(root)
            st['services'] = {}
            _write_json(os.path.join(_sim(root), 'state.json'), st)


def download_content(url: str, faults: Iterable[str] = ()) -> bytes:
    """The bytes a download of *url* returns (runfiles are simulated installers).

    Without *faults* what NVIDIA publishes; ``keyring-untrusted`` makes the cuda-keyring package
    carry another key, ``repo-no-gpgcheck`` makes the yum repository file turn signature checks
    off. The cuda-keyring package is a Debian binary package (``ar`` archive) whose keyring is a
    simulated OpenPGP keyring (``KEYRING_MAGIC``) that the ``gpg`` stub reads.
    """
    base = url.rsplit('/', 1)[-1]
    repo = url.rsplit('/', 3)[-3] if url.count('/') >= 3 else 'cuda'
    if base.endswith('.run'):
        return ('#!/bin/sh\n# gpusim runfile %s\nexec gpusim-runfile %s "$@"\n'
                % (url, shlex.quote(base))).encode()
    if base.endswith('.repo'):
        if 'repo-no-gpgcheck' in faults:
            check = 'gpgcheck=0\n'
        else:
            check = ('gpgcheck=1\ngpgkey=https://%s/compute/cuda/repos/%s/x86_64/D42D0685.pub\n'
                     % (NVIDIA_HOST, repo))
        return ('[cuda-%s-x86_64]\nname=cuda-%s-x86_64\nbaseurl=https://%s/compute/cuda/repos/'
                '%s/x86_64\nenabled=1\n%s' % (repo, repo, NVIDIA_HOST, repo, check)).encode()
    if base.startswith('cuda-keyring_') and base.endswith('.deb'):
        keys = [ROGUE_KEY] if 'keyring-untrusted' in faults else [NVIDIA_KEY]
        return _keyring_deb(repo, keys)
    return ('gpusim download of %s\n' % url).encode()


def keyring(keys: Iterable[tuple[str, str]]) -> bytes:
    """A simulated OpenPGP keyring holding *keys* ((fingerprint, user id) pairs)."""
    return ('%s\n%s' % (KEYRING_MAGIC, ''.join('pub %s %s\n' % k for k in keys))).encode()


def _tar_gz(files: dict[str, bytes]) -> bytes:
    import gzip
    import io
    import tarfile
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w', format=tarfile.GNU_FORMAT) as tar:
        dirs = set()
        for name in files:
            parts = name.split('/')[:-1]
            dirs.update('/'.join(parts[:i]) for i in range(1, len(parts) + 1))
        for d in sorted(dirs):
            info = tarfile.TarInfo('./' + d)
            info.type, info.mode, info.uname, info.gname = tarfile.DIRTYPE, 0o755, 'root', 'root'
            tar.addfile(info)
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo('./' + name)
            info.size, info.mode, info.uname, info.gname = len(data), 0o644, 'root', 'root'
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(buf.getvalue(), 9, mtime=0)


def _ar(members: list[tuple[str, bytes]]) -> bytes:
    out = [b'!<arch>\n']
    for name, data in members:
        out.append(('%-16s%-12d%-6d%-6d%-8s%-10d`\n' % (name, 0, 0, 0, '100644', len(data)))
                   .encode())
        out.append(data + (b'\n' if len(data) % 2 else b''))
    return b''.join(out)


def _keyring_deb(repo: str, keys: list[tuple[str, str]]) -> bytes:
    """The cuda-keyring package of NVIDIA repository *repo*, its keyring holding *keys*."""
    control = ('Package: cuda-keyring\nVersion: 1.1-1\nArchitecture: all\n'
               'Maintainer: cudatools <cudatools@nvidia.com>\n'
               'Description: GPG keyring and apt source of the CUDA repository\n').encode()
    data = {
        KEYRING_PATH: keyring(keys),
        'etc/apt/sources.list.d/cuda-%s-x86_64.list' % repo:
            ('deb [signed-by=/%s] https://%s/compute/cuda/repos/%s/x86_64/ /\n'
             % (KEYRING_PATH, NVIDIA_HOST, repo)).encode(),
    }
    return _ar([('debian-binary', b'2.0\n'), ('control.tar.gz', _tar_gz({'control': control})),
                ('data.tar.gz', _tar_gz(data))])


def deb_members(blob: bytes) -> dict[str, bytes] | None:
    """The members of a Debian binary package (an ``ar`` archive), or None when it is not one."""
    if not blob.startswith(b'!<arch>\n'):
        return None
    out, pos = {}, 8
    while pos + 60 <= len(blob):
        head = blob[pos:pos + 60]
        if head[58:60] != b'`\n':
            break
        name = head[:16].decode('ascii', 'replace').strip().rstrip('/')
        try:
            size = int(head[48:58].decode('ascii').strip())
        except ValueError:
            break
        out[name] = blob[pos + 60:pos + 60 + size]
        pos += 60 + size + size % 2
    if out.get('debian-binary', b'').strip() != b'2.0' or 'data.tar.gz' not in out:
        return None
    return out


def deb_files(blob: bytes) -> dict[str, bytes] | None:
    """Regular files of a Debian package's data archive (relative paths), or None."""
    import gzip
    import io
    import tarfile
    members = deb_members(blob)
    if members is None:
        return None
    out = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(members['data.tar.gz']))) as tar:
            for info in tar:
                name = os.path.normpath(info.name)
                if name.startswith(('/', '..')):
                    return None
                if info.isfile():
                    out[name] = tar.extractfile(info).read()
    except (OSError, EOFError, tarfile.TarError):
        return None
    return out


def keyring_keys(data: bytes) -> list[tuple[str, str]] | None:
    """The (fingerprint, user id) pairs of a simulated keyring, or None when it is not one."""
    lines = data.decode('utf-8', 'replace').splitlines()
    if not lines or lines[0] != KEYRING_MAGIC:
        return None
    keys = []
    for line in lines[1:]:
        kind, _, rest = line.partition(' ')
        fpr, _, uid = rest.partition(' ')
        if kind != 'pub' or not re.match(r'^[0-9A-F]{40}$', fpr):
            return None
        keys.append((fpr, uid))
    return keys


def download_sha256(url: str) -> str:
    """sha256 of ``download_content(url)``."""
    return hashlib.sha256(download_content(url)).hexdigest()


# ---------------------------------------------------------------------------------------------
# internals
# ---------------------------------------------------------------------------------------------

class _locked:
    def __init__(self, sim: str) -> None:
        self.path = os.path.join(sim, 'lock')

    def __enter__(self) -> None:
        self.f = open(self.path, 'a')
        fcntl.flock(self.f, fcntl.LOCK_EX)

    def __exit__(self, *exc: Any) -> None:
        fcntl.flock(self.f, fcntl.LOCK_UN)
        self.f.close()


def _kill_group(pid: int) -> None:
    import signal
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    for _ in range(20):
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _unit_exec(root: str, unit: str) -> list[str]:
    path = os.path.join(root, 'etc', 'systemd', 'system', unit)
    try:
        with open(path, encoding='utf-8') as f:
            text = f.read()
    except FileNotFoundError:
        return []
    m = re.search(r'^ExecStart=-?(.+)$', text, re.M)
    if not m:
        return []
    argv = shlex.split(m.group(1))
    return [os.path.join(root, a.lstrip('/')) if a.startswith('/') and
            os.path.exists(os.path.join(root, a.lstrip('/'))) else a for a in argv]


def toolkit_files(version: str, *, launcher: str) -> dict[str, tuple[bytes | None, int]]:
    """The files of CUDA toolkit *version*: relative path -> (content, mode); None: a directory.

    Its ``nvcc`` runs the simulator's (through *launcher*, see ``guest_launcher``).
    """
    prefix = 'usr/local/cuda-%s' % version
    nvcc = '#!/bin/sh\nexec %s --stub nvcc --gpusim-toolkit=%s "$@"\n' % (launcher, version)
    return {
        prefix + '/bin/nvcc': (nvcc.encode(), 0o755),
        prefix + '/include': (None, 0o755),
        prefix + '/version.json':
            (json.dumps({'cuda': {'name': 'CUDA SDK', 'version': version + '.0'}}).encode(),
             0o644),
    }


def driver_files(*, launcher: str) -> dict[str, tuple[bytes | None, int]]:
    """The files of a driver package (as ``toolkit_files``): ``nvidia-smi``, the simulator's."""
    smi = '#!/bin/sh\nexec %s --stub nvidia-smi "$@"\n' % launcher
    return {'usr/bin/nvidia-smi': (smi.encode(), 0o755)}


def write_tree(root: str, files: dict[str, tuple[bytes | None, int]]) -> None:
    """Write *files* (``toolkit_files``, ``driver_files``) under *root*."""
    for name, (data, mode) in sorted(files.items()):
        path = os.path.join(root, name)
        if data is None:
            os.makedirs(path, exist_ok=True)
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'wb') as f:
            f.write(data)
        os.chmod(path, mode)


def _install_toolkit(root: str, st: dict[str, Any], version: str) -> None:
    write_tree(root, toolkit_files(version, launcher=_launcher(_sim(root))))
    link = os.path.join(root, 'usr', 'local', 'cuda')
    if os.path.islink(link):
        os.remove(link)
    if not os.path.exists(link):
        os.symlink('/usr/local/cuda-%s' % version, link)
    if version not in st['toolkits']:
        st['toolkits'].append(version)


def _toolkit_package(p: str) -> str | None:
    """The CUDA version (``MAJOR.MINOR``) package *p* installs the toolkit of, or None."""
    m = re.match(r'^cuda-toolkit-(\d+)-(\d+)$', p) or re.match(r'^cuda-(\d+)-(\d+)$', p)
    if m:
        return '%s.%s' % m.groups()
    return '13.0' if p == 'cuda-toolkit' else None


def _driver_package(p: str) -> tuple[str | None, str] | None:
    """(branch or None for the newest, ``open``/``proprietary``) of driver package *p*, or None."""
    if p in ('nvidia-driver-latest-dkms', 'nvidia-driver-cuda', 'kmod-nvidia-latest-dkms'):
        return None, 'proprietary'
    m = re.match(r'^(?:cuda-drivers|nvidia-driver|nvidia-open|nvidia-driver-branch)'
                 r'(?:-(\d{3}))?(-open|-dkms|-server)?$', p)
    if not m:
        return None
    return m.group(1), ('open' if p.startswith('nvidia-open') or m.group(2) == '-open'
                        else 'proprietary')


class Stub:
    """One stub invocation."""

    def __init__(self, name: str, args: list[str]) -> None:
        self.name = name
        self.args = args
        self.sim = os.environ.get('HEAT_GPU_SIM') or os.path.dirname(os.path.abspath(__file__))
        self.root = os.path.dirname(self.sim)
        self.st = state(self.root)
        self.devs = _read_json(os.path.join(self.sim, 'devices.json'), [])
        self.faults = _read_json(os.path.join(self.sim, 'faults.json'), [])
        self.dirty = False

    # -- plumbing --
    def record(self, rc: int) -> None:
        with open(os.path.join(self.sim, 'commands.jsonl'), 'a', encoding='utf-8') as f:
            f.write(json.dumps({'cmd': self.name, 'args': self.args, 'rc': rc,
                                'boot': self.st.get('boot')}) + '\n')

    def save(self) -> None:
        _write_json(os.path.join(self.sim, 'state.json'), self.st)

    def path(self, p: str) -> str:
        return os.path.join(self.root, p.lstrip('/'))

    @staticmethod
    def err(msg: str) -> None:
        sys.stderr.write(msg + '\n')

    def gpus(self) -> list[dict[str, Any]]:
        if 'no-gpu' in self.faults:
            return []
        return [d for d in self.devs if d.get('vendor_id') == '10de']

    def device_faults(self, d: dict[str, Any]) -> set[str]:
        """The faults of GPU *d*: its own, and the guest's device faults aimed at it."""
        out = set(d.get('faults') or ())
        gpus = sorted(self.gpus(), key=lambda x: x['pci_address'])
        for fault in DEVICE_FAULTS:
            if fault in self.faults and gpus:
                target = gpus[-1] if fault == 'gpu-missing' else gpus[0]
                if target['pci_address'] == d['pci_address']:
                    out.add(fault)
        return out

    def visible(self) -> list[dict[str, Any]]:
        """The GPUs the driver initialised (PCI order): ``gpu-missing`` ones are on the bus only."""
        return [d for d in sorted(self.gpus(), key=lambda x: x['pci_address'])
                if 'gpu-missing' not in self.device_faults(d)]

    def link(self, d: dict[str, Any]) -> tuple[int, int, int, int]:
        """PCIe (gen, width, max gen, max width): ``pcie-degraded`` trains at half the lanes."""
        gen, lanes = int(d['pcie_gen']), int(d['pcie_lanes'])
        width = max(1, lanes // 2) if 'pcie-degraded' in self.device_faults(d) else lanes
        return gen, width, gen, lanes

    def driver_works(self) -> bool:
        drv = self.st.get('driver')
        if not drv or 'nvidia' not in self.st['modules']:
            return False
        if drv['flavour'] == 'open' and not all(d['open_modules'] for d in self.gpus()):
            return False
        return True

    # -- commands --
    def cmd_lspci(self) -> int:
        a = self.args
        numeric = '-n' in a or '-nn' in a
        domain = '-D' in a
        vendor = product = None
        slot = None
        if '-d' in a:
            spec = a[a.index('-d') + 1].lower()
            vendor, _, product = spec.partition(':')
            product = product or None
        if '-s' in a:
            slot = a[a.index('-s') + 1].lower()
        for d in sorted(self.gpus(), key=lambda x: x['pci_address']):
            if vendor and d['vendor_id'] != vendor:
                continue
            if product and d['product_id'] != product:
                continue
            addr = d['pci_address'] if domain else d['pci_address'][5:]
            if slot and not d['pci_address'].endswith(slot):
                continue
            ids = '%s:%s' % (d['vendor_id'], d['product_id'])
            if numeric and '-nn' not in a:
                print('%s %s: %s (rev a1)' % (addr, d['pci_class'], ids))
            elif '-nn' in a:
                print('%s 3D controller [%s]: NVIDIA Corporation %s [%s] (rev a1)'
                      % (addr, d['pci_class'], d['name'], ids))
            else:
                print('%s 3D controller: NVIDIA Corporation %s (rev a1)' % (addr, d['name']))
        return 0

    def nodename(self) -> str:
        # A real guest has its own hostname (its UTS namespace); a sandbox shares the host's.
        return os.uname().nodename if self.root == '/' else 'gpusim-guest'

    def cmd_uname(self) -> int:
        """uname with the simulated kernel; short options may be combined (``-snrvm``)."""
        fields = {'s': 'Linux', 'n': self.nodename(), 'r': self.st['kernel'],
                  'v': '#1 SMP', 'm': 'x86_64', 'p': 'x86_64', 'i': 'x86_64', 'o': 'GNU/Linux'}
        long_names = {'--kernel-name': 's', '--nodename': 'n', '--kernel-release': 'r',
                      '--kernel-version': 'v', '--machine': 'm', '--processor': 'p',
                      '--hardware-platform': 'i', '--operating-system': 'o', '--all': 'a'}
        wanted = ''
        for opt in self.args:
            if opt in long_names:
                wanted += long_names[opt]
            elif opt.startswith('-') and not opt.startswith('--'):
                wanted += opt[1:]
            else:
                self.err("uname: extra operand '%s'" % opt)
                return 1
        if 'a' in wanted:
            wanted = 'snrvmo'
        bad = [c for c in wanted if c not in fields]
        if bad:
            self.err("uname: invalid option -- '%s'" % bad[0])
            return 1
        print(' '.join(fields[c] for c in 'snrvmpio' if c in (wanted or 's')))
        return 0

    def cmd_lsmod(self) -> int:
        print('Module                  Size  Used by')
        for m in self.st['modules']:
            print('%-22s %6d  0' % (m, 100000))
        return 0

    def cmd_modprobe(self) -> int:
        a = [x for x in self.args if not x.startswith('-')]
        remove = '-r' in self.args or '--remove' in self.args
        for mod in a:
            if remove:
                if mod == 'nouveau' and mod in self.st['modules']:
                    self.err('modprobe: FATAL: Module nouveau is in use.')
                    return 1
                if mod in self.st['modules']:
                    self.st['modules'].remove(mod)
                    self.dirty = True
                continue
            if mod in self.st['modules']:
                continue
            if mod.startswith('nvidia'):
                drv = self.st.get('driver')
                if not drv:
                    self.err('modprobe: FATAL: Module %s not found in directory /lib/modules/%s'
                             % (mod, self.st['kernel']))
                    return 1
                if 'nouveau' in self.st['modules']:
                    self.err('modprobe: ERROR: could not insert \'nvidia\': Device or resource busy'
                             ' (nouveau is bound to the GPU)')
                    return 1
                if drv['flavour'] == 'open' and not all(d['open_modules'] for d in self.gpus()):
                    self.err('modprobe: ERROR: could not insert \'nvidia\': No such device '
                             '(the open kernel modules do not support this GPU)')
                    return 1
                for m in ('nvidia', mod):
                    if m not in self.st['modules']:
                        self.st['modules'].append(m)
                self.dirty = True
            elif mod == 'nouveau':
                if self.gpus() and 'nvidia' not in self.st['modules']:
                    self.st['modules'].append(mod)
                    self.dirty = True
        return 0

    def _smi_fields(self, d: dict[str, Any], index: int) -> dict[str, str]:
        return {
            'index': str(index), 'name': d['name'],
            'pci.bus_id': '0000' + d['pci_address'].upper(),
            'memory.total': str(d['memory_mib']), 'memory.used': '0', 'memory.free':
            str(d['memory_mib']), 'uuid': d['uuid'], 'driver_version': self.st['driver']['version'],
            'compute_cap': d['compute_cap'], 'utilization.gpu': '0', 'temperature.gpu': '34',
            'serial': str(int(hashlib.sha1(d['uuid'].encode()).hexdigest()[:12], 16)),
            'count': str(len(self.visible())), 'pstate': 'P0',
            'pci.device_id': '0x%s%s' % (d['product_id'].upper(), d['vendor_id'].upper()),
            'pcie.link.gen.current': str(self.link(d)[0]),
            'pcie.link.width.current': str(self.link(d)[1]),
            'pcie.link.gen.max': str(self.link(d)[2]),
            'pcie.link.width.max': str(self.link(d)[3]),
            'ecc.mode.current': 'Enabled' if d.get('ecc_enabled', True) else 'Disabled',
            'ecc.errors.uncorrected.volatile.total':
                '1' if 'ecc-errors' in self.device_faults(d) else '0',
        }

    def cmd_nvidia_smi(self) -> int:
        if not self.st.get('driver'):
            self.err('nvidia-smi: command not found')
            return 127
        if not self.driver_works():
            print('NVIDIA-SMI has failed because it couldn\'t communicate with the NVIDIA driver. '
                  'Make sure that the latest NVIDIA driver is installed and running.')
            return 9
        gpus = self.visible()
        if not gpus:
            print('No devices were found')
            return 6
        a = self.args
        query = [x for x in a if x.startswith('--query-gpu=')]
        if query:
            fields = query[0].split('=', 1)[1].split(',')
            fmt = ''.join(x.split('=', 1)[1] for x in a if x.startswith('--format='))
            for f in fields:
                if f.strip() not in self._smi_fields(gpus[0], 0):
                    print('Field "%s" is not a valid field to query.' % f)
                    return 2
            if 'csv' in fmt and 'noheader' not in fmt:
                print(', '.join(f + (' [MiB]' if f.startswith('memory.') and
                                     'nounits' not in fmt else '') for f in fields))
            for i, d in enumerate(gpus):
                vals = self._smi_fields(d, i)
                row = []
                for f in fields:
                    v = vals[f.strip()]
                    if f.startswith('memory.') and 'nounits' not in fmt:
                        v += ' MiB'
                    row.append(v)
                print(', '.join(row))
            return 0
        if '-L' in a:
            for i, d in enumerate(gpus):
                print('GPU %d: %s (UUID: %s)' % (i, d['name'], d['uuid']))
            return 0
        cuda = '13.0' if int(self.st['driver']['version'].split('.')[0]) >= 580 else '12.8'
        for d in sorted(self.gpus(), key=lambda x: x['pci_address']):
            if d not in gpus:
                print('Unable to determine the device handle for GPU%s: Unknown Error'
                      % ('0000' + d['pci_address'].upper()))
        print('+' + '-' * 87 + '+')
        print('| NVIDIA-SMI %-20s Driver Version: %-14s CUDA Version: %-8s|'
              % (self.st['driver']['version'], self.st['driver']['version'], cuda))
        for i, d in enumerate(gpus):
            bus = '0000' + d['pci_address'].upper()
            print('| %3d  %-40s | %16s | %7dMiB |' % (i, d['name'][:40], bus, d['memory_mib']))
        print('+' + '-' * 87 + '+')
        return 0

    def _toolkit(self) -> str | None:
        tks = sorted(self.st['toolkits'], key=lambda v: [int(x) for x in v.split('.')])
        link = self.path('/usr/local/cuda')
        if os.path.islink(link):
            target = os.readlink(link).rsplit('cuda-', 1)[-1]
            if target in tks:
                return target
        return tks[-1] if tks else None

    def cmd_nvcc(self) -> int:
        tk = self._toolkit()
        if self.args[:1] and self.args[0].startswith('--gpusim-toolkit='):
            tk = self.args.pop(0).split('=', 1)[1]
        if not tk:
            self.err('nvcc: command not found')
            return 127
        a = self.args
        if '--version' in a or '-V' in a:
            print('nvcc: NVIDIA (R) Cuda compiler driver\nCopyright (c) 2005-2025 NVIDIA Corp'
                  'oration\nCuda compilation tools, release %s, V%s.85\nBuild cuda_%s.r%s'
                  % (tk, tk, tk, tk))
            return 0
        if 'nvcc-fails' in self.faults:
            self.err('nvcc fatal   : Could not open output file (simulated failure)')
            return 1
        sass, ptx = _arch_targets(a)
        major = tk.split('.')[0]
        for sm in sass + ptx:
            if int(sm) < TOOLKIT_MIN_SM.get(major, 0):
                self.err("nvcc fatal   : Unsupported gpu architecture 'compute_%s'" % sm)
                return 1
        if '-o' not in a:
            self.err('nvcc: no -o given (gpusim compiles only with -o OUT)')
            return 1
        out = a[a.index('-o') + 1]
        sources = [x for x in a if x.endswith('.cu') or x.endswith('.cpp')]
        for s in sources:
            if not os.path.exists(s):
                self.err('nvcc fatal   : Could not open input file %s' % s)
                return 1
            missing = _missing_include(s, _include_dirs(a))
            if missing:
                self.err('%s:%d:10: fatal error: %s: No such file or directory\n'
                         'compilation terminated.' % (s, missing[0], missing[1]))
                return 1
        program = next((p for p in map(_sample_program, sources) if p), '-')
        if program == 'gemm' and not any(x.startswith('-lcublas') for x in a):
            self.err("/usr/bin/ld: /tmp/tmpxft_0000a1b2_00000000-11_gemm.o: in function "
                     "`main':\ngemm.cu:(.text+0x1c4): undefined reference to "
                     "`cublasCreate_v2'\ncollect2: error: ld returned 1 exit status")
            return 1
        with open(out, 'w', encoding='utf-8') as f:
            f.write('#!/bin/sh\n# gpusim CUDA program %s (toolkit %s, sm %s, compute %s)\n'
                    'exec %s --stub cuda-program %s %s %s %s "$@"\n'
                    % (program, tk, ','.join(sass) or '-', ','.join(ptx) or '-',
                       _launcher(self.sim), tk, ','.join(sorted(set(sass))) or '-',
                       ','.join(sorted(set(ptx))) or '-', program))
        os.chmod(out, 0o755)
        return 0

    def cuda_devices(self, toolkit: str) -> tuple[list[dict[str, Any]], tuple[str, str] | None]:
        """What cudaGetDeviceCount sees: the GPUs in CUDA's order, or (``[]``, the error)."""
        if not self.st.get('driver'):
            return [], CUDA_INSUFFICIENT_DRIVER
        if not self.driver_works():
            return [], CUDA_NO_DEVICE
        branch = int(self.st['driver']['version'].split('.')[0])
        if branch < TOOLKIT_MIN_BRANCH.get(toolkit.split('.')[0], 0):
            return [], CUDA_INSUFFICIENT_DRIVER
        gpus = self.visible()
        if os.environ.get('CUDA_DEVICE_ORDER', 'FASTEST_FIRST') != 'PCI_BUS_ID':
            gpus = sorted(gpus, key=lambda d: -float(d['fp32_tflops']))
        wanted = os.environ.get('CUDA_VISIBLE_DEVICES')
        if wanted is not None:
            chosen: list[dict[str, Any]] = []
            for token in (t.strip() for t in wanted.split(',')):
                if token.isdigit() and int(token) < len(gpus):
                    match = gpus[int(token)]
                else:
                    match = next((d for d in gpus if token.startswith('GPU-') and
                                  d['uuid'].startswith(token)), None)
                if match is None or match in chosen:
                    break  # the runtime ignores everything from the first invalid entry on
                chosen.append(match)
            gpus = chosen
        return (gpus, None) if gpus else ([], CUDA_NO_DEVICE)

    def cmd_cuda_program(self) -> int:
        tk, sass, ptx, program = (self.args + ['-'] * 4)[:4]
        sass_list = [x for x in sass.split(',') if x != '-']
        ptx_list = [x for x in ptx.split(',') if x != '-']
        if program in SAMPLE_PROGRAMS:
            return _Program(self, toolkit=tk, sass=sass_list, ptx=ptx_list).run(program)
        gpus, error = self.cuda_devices(tk)
        if error:
            print('CUDA error: %s (cudaGetDeviceCount)' % error[1])
            return 1
        rc = 0
        for i, d in enumerate(gpus):
            if 'ecc-errors' in self.device_faults(d) or not _runnable(d, sass_list, ptx_list):
                why = CUDA_ECC if 'ecc-errors' in self.device_faults(d) else CUDA_NO_KERNEL
                print('CUDA error on device %d: %s' % (i, why[1]))
                rc = 1
                continue
            print('heat-gpu-check %d %s %s %s OK'
                  % (i, '0000' + d['pci_address'].upper(), d['compute_cap'], d['name']))
        return rc

    def cmd_dkms(self) -> int:
        if self.args[:1] == ['status']:
            drv = self.st.get('driver')
            if drv and drv.get('method') != 'runfile':
                print('nvidia/%s, %s, x86_64: installed' % (drv['version'], self.st['kernel']))
        return 0

    def cmd_reboot(self) -> int:
        self.st['reboot_requested'] = True
        self.dirty = True
        return 0

    def cmd_shutdown(self) -> int:
        if '-r' in self.args:
            return self.cmd_reboot()
        return 0

    def cmd_logger(self) -> int:
        msg = ' '.join(x for x in self.args if not x.startswith('-'))
        with open(os.path.join(self.sim, 'journal.log'), 'a', encoding='utf-8') as f:
            f.write(msg + '\n')
        return 0

    def cmd_update_initramfs(self) -> int:
        self._initramfs()
        return 0

    def cmd_dracut(self) -> int:
        self._initramfs()
        return 0

    def _initramfs(self) -> None:
        d = self.path('/etc/modprobe.d')
        black = False
        for name in os.listdir(d) if os.path.isdir(d) else []:
            if name.endswith('.conf'):
                with open(os.path.join(d, name), encoding='utf-8') as f:
                    if re.search(r'^\s*blacklist\s+nouveau\s*$', f.read(), re.M):
                        black = True
        self.st['initramfs_blacklisted'] = black
        self.dirty = True

    # -- systemd --
    def cmd_systemctl(self) -> int:
        a = [x for x in self.args if not x.startswith('-')]
        now = '--now' in self.args
        if not a:
            return 0
        verb, units = a[0], a[1:]
        sysdir = self.path('/etc/systemd/system')
        if verb in ('daemon-reload', 'reset-failed'):
            return 0
        rc = 0
        for unit in units:
            if '.' not in unit:
                unit += '.service'
            if verb in ('enable', 'disable', 'is-enabled') and not os.path.exists(
                    os.path.join(sysdir, unit)):
                self.err('Failed to %s unit: Unit file %s does not exist.' % (verb, unit))
                return 1
            if verb == 'enable':
                wants = os.path.join(sysdir, 'multi-user.target.wants')
                os.makedirs(wants, exist_ok=True)
                link = os.path.join(wants, unit)
                if not os.path.lexists(link):
                    os.symlink('/etc/systemd/system/' + unit, link)
                if now:
                    rc = rc or self._start(unit)
            elif verb == 'disable':
                link = os.path.join(sysdir, 'multi-user.target.wants', unit)
                if os.path.lexists(link):
                    os.remove(link)
                if now:
                    self._stop(unit)
            elif verb == 'is-enabled':
                ok = os.path.lexists(os.path.join(sysdir, 'multi-user.target.wants', unit))
                print('enabled' if ok else 'disabled')
                rc = rc or (0 if ok else 1)
            elif verb in ('start', 'restart'):
                if verb == 'restart':
                    self._stop(unit)
                rc = rc or self._start(unit)
            elif verb == 'stop':
                self._stop(unit)
            elif verb == 'is-active':
                pid = self.st['services'].get(unit)
                alive = bool(pid) and _alive(pid)
                print('active' if alive else 'inactive')
                rc = rc or (0 if alive else 3)
        return rc

    def _start(self, unit: str) -> int:
        pid = self.st['services'].get(unit)
        if pid and _alive(pid):
            return 0
        argv = _unit_exec(self.root, unit)
        if not argv:
            self.err('Failed to start %s: Unit %s not found.' % (unit, unit))
            return 5
        import subprocess
        log = open(os.path.join(self.sim, unit + '.log'), 'ab')
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True, close_fds=True, cwd=self.root)
        self.st['services'][unit] = proc.pid
        self.dirty = True
        return 0

    def _stop(self, unit: str) -> None:
        pid = self.st['services'].pop(unit, None)
        if pid:
            _kill_group(pid)
            self.dirty = True

    # -- downloads --
    def cmd_curl(self) -> int:
        urls = [x for x in self.args if re.match(r'^[a-z]+://', x)]
        local = re.compile(r'^https?://(127\.\d+\.\d+\.\d+|localhost|\[::1\])(:\d+)?(/|$)')
        if not urls or all(local.match(u) for u in urls):
            return -1
        out = None
        a = self.args
        for flag in ('-o', '--output'):
            if flag in a:
                out = a[a.index(flag) + 1]
        url = urls[0]
        if 'download-fails' in self.faults:
            self.err('curl: (28) Failed to connect to %s port 443 after 10000 ms: Timeout was '
                     'reached' % url.split('/')[2])
            return 28
        m = re.match(r'^https?://([^/]+)/', url)
        content = download_content(url, self.faults)
        if 'checksum-mismatch' in self.faults:
            content = content + b'# truncated by a broken proxy\n'
        if m and m.group(1) != NVIDIA_HOST and not self._mirror_has(url):
            self.err('curl: (22) The requested URL returned error: 404')
            return 22
        if out:
            with open(out, 'wb') as f:
                f.write(content)
        else:
            sys.stdout.buffer.write(content)
        return 0

    def _mirror_has(self, url: str) -> bool:
        return '/compute/cuda/' in url

    # -- packages --
    def _nvidia_repo(self) -> bool:
        return bool(self.st['repos'])

    def _is_nvidia_pkg(self, p: str) -> bool:
        return bool(re.match(r'^(cuda|nvidia|libnvidia|kmod-nvidia|nvidia-driver)', p))

    def _install(self, pkgs: list[str], mgr: str) -> int:
        fam = self.st['family']
        for p in pkgs:
            if p.endswith('.rpm') or p.endswith('.deb') or '://' in p:
                name = os.path.basename(p).split('_')[0]
                name = re.sub(r'-latest-\d+\.noarch\.rpm$', '', name)
                self.st['packages'][name] = 'local'
                continue
            if self._is_nvidia_pkg(p):
                if not self._nvidia_repo():
                    self._missing(p, mgr)
                    return 100 if mgr == 'apt-get' else 1
                if 'package-install-fails' in self.faults:
                    if mgr == 'apt-get':
                        self.err('E: Failed to fetch https://%s/compute/cuda/repos/.../%s.deb  '
                                 '503  Service Unavailable' % (NVIDIA_HOST, p))
                        return 100
                    self.err('Error: Failed to download packages: %s: Cannot download, all '
                             'mirrors were already tried without success' % p)
                    return 1
            if p.startswith('linux-headers-') or p.startswith('kernel-devel-') or \
                    p.startswith('kernel-headers-'):
                want = p[len('linux-headers-'):] if p.startswith('linux') else p.split('-', 2)[2]
                if want != self.st['kernel']:
                    self._missing(p, mgr)
                    return 100 if mgr == 'apt-get' else 1
            if p == 'dkms' and fam == 'rhel' and 'epel-release' not in self.st['packages']:
                self._missing(p, mgr)
                return 1
        for p in pkgs:
            if p.endswith('.rpm') or p.endswith('.deb') or '://' in p:
                continue
            self.st['packages'][p] = '1'
            self._effects(p)
        self.dirty = True
        return 0

    def _missing(self, p: str, mgr: str) -> None:
        if mgr == 'apt-get':
            self.err('E: Unable to locate package %s' % p)
        else:
            self.err('Error: Unable to find a match: %s' % p)

    def _effects(self, p: str) -> None:
        if p in ('gnupg', 'gnupg2', 'gpg'):
            _write_stub(self.sim, GPG_STUB)
            return
        toolkit = _toolkit_package(p)
        if toolkit:
            _install_toolkit(self.root, self.st, toolkit)
            return
        driver = _driver_package(p)
        if driver:
            self._driver(driver[0] or LATEST_BRANCH, driver[1], p, 'packages')

    def cmd_gpusim_pkg_hook(self) -> int:
        """``gpusim-pkg-hook configure|remove PACKAGE VERSION``, from a package's maintainer script.

        The package mirror's driver and toolkit packages (tools/localcloud/mirror.py) call it from
        their postinst (``configure``) and postrm (``remove``), which the guest's real dpkg runs;
        their files (``driver_files``, ``toolkit_files``) are real dpkg's business. What it records
        is what the simulated kernel side now has: a driver package's kernel modules built and
        installed (as dkms would), a toolkit package's toolkit; on remove, neither.
        """
        if len(self.args) != 3 or self.args[0] not in ('configure', 'remove'):
            self.err('usage: gpusim-pkg-hook configure|remove PACKAGE VERSION')
            return 2
        action, name, version = self.args
        upstream = version.split(':', 1)[-1].rsplit('-', 1)[0]
        toolkit = _toolkit_package(name)
        driver = _driver_package(name)
        if action == 'configure':
            self.st['packages'][name] = version
            if toolkit and toolkit not in self.st['toolkits']:
                self.st['toolkits'].append(toolkit)
            if driver:
                self._driver(driver[0] or LATEST_BRANCH, driver[1], name, 'packages',
                             version=upstream)
        else:
            self.st['packages'].pop(name, None)
            if toolkit in self.st['toolkits']:
                self.st['toolkits'].remove(toolkit)
            if (self.st.get('driver') or {}).get('package') == name:
                self.st['driver'] = None
        self.dirty = True
        return 0

    def _driver(self, branch: str, flavour: str, package: str, method: str,
                version: str | None = None) -> None:
        self.st['driver'] = {'version': version or DRIVER_VERSIONS.get(branch, branch + '.00.01'),
                             'flavour': flavour, 'package': package, 'method': method}

    def cmd_apt_get(self) -> int:
        a = [x for x in self.args if not x.startswith('-')]
        if not a:
            return 0
        verb = a[0]
        if verb in ('update', 'clean', 'autoremove'):
            return 0
        if verb == 'install':
            return self._install(a[1:], 'apt-get')
        if verb in ('remove', 'purge'):
            for p in a[1:]:
                self.st['packages'].pop(p, None)
            self.dirty = True
            return 0
        return 0

    cmd_apt = cmd_apt_get

    def _read_deb(self, deb: str, prog: str) -> dict[str, bytes] | None:
        if not os.path.exists(deb):
            self.err('%s: error: cannot access archive \'%s\': No such file or directory'
                     % (prog, deb))
            return None
        with open(deb, 'rb') as f:
            files = deb_files(f.read())
        if files is None:
            self.err("%s: error: '%s' is not a Debian format archive" % (prog, deb))
        return files

    def cmd_dpkg(self) -> int:
        a = self.args
        if a[:1] == ['-i']:
            for deb in a[1:]:
                files = self._read_deb(deb, 'dpkg-deb')
                if files is None:
                    return 2
                # dpkg -i unpacks the package into the root (its maintainer scripts would run).
                self._unpack(files, self.root)
                name = os.path.basename(deb).split('_')[0]
                self.st['packages'][name] = 'local'
                for path in files:
                    m = re.match(r'^etc/apt/sources\.list\.d/cuda-(\w+)-x86_64\.list$', path)
                    if m and m.group(1) not in self.st['repos']:
                        self.st['repos'].append(m.group(1))
            self.dirty = True
            return 0
        if a[:1] in (['-s'], ['-l'], ['--status']) or a[:1] == ['-W']:
            rc = 0
            for p in a[1:]:
                if p.startswith('-'):
                    continue
                if p in self.st['packages']:
                    print('Package: %s\nStatus: install ok installed' % p)
                else:
                    self.err('dpkg-query: package \'%s\' is not installed' % p)
                    rc = 1
            return rc
        return 0

    cmd_dpkg_query = cmd_dpkg

    @staticmethod
    def _unpack(files: dict[str, bytes], dest: str) -> None:
        for name, data in files.items():
            path = os.path.join(dest, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, 'wb') as f:
                f.write(data)

    def cmd_dpkg_deb(self) -> int:
        a = self.args
        if len(a) == 3 and a[0] in ('-x', '--extract'):
            files = self._read_deb(a[1], 'dpkg-deb')
            if files is None:
                return 2
            os.makedirs(a[2], exist_ok=True)
            self._unpack(files, a[2])
            return 0
        self.err('dpkg-deb: error: gpusim simulates only dpkg-deb -x ARCHIVE DIRECTORY')
        return 2

    def cmd_gpg(self) -> int:
        """``gpg --show-keys --with-colons FILE``: the keys a simulated keyring holds."""
        a = self.args
        files = [x for i, x in enumerate(a) if not x.startswith('-') and
                 (i == 0 or a[i - 1] not in ('--homedir', '--keyring'))]
        if '--show-keys' not in a or len(files) != 1:
            self.err('gpg: gpusim simulates only gpg --show-keys [--with-colons] FILE')
            return 2
        try:
            with open(files[0], 'rb') as f:
                keys = keyring_keys(f.read())
        except OSError as ex:
            self.err("gpg: can't open '%s': %s" % (files[0], ex.strerror))
            return 2
        if not keys:
            self.err('gpg: no valid OpenPGP data found.')
            return 2
        for fpr, uid in keys:
            if '--with-colons' in a:
                print('pub:-:4096:1:%s:1650000000:::-:::scSC::::::23::0:' % fpr[-16:])
                print('fpr:::::::::%s:' % fpr)
                print('uid:-::::1650000000::%s::%s::::::::::0:'
                      % (hashlib.sha1(uid.encode()).hexdigest().upper(), uid))
            else:
                print('pub   rsa4096 2022-04-15 [SC]\n      %s\nuid                      %s\n'
                      % (fpr, uid))
        return 0

    def cmd_dnf(self) -> int:
        a = [x for x in self.args if not x.startswith('-')]
        if not a:
            return 0
        verb = a[0]
        if verb in ('makecache', 'clean', 'check-update', 'upgrade'):
            return 0
        if verb == 'config-manager':
            urls = [self.args[i + 1] for i, x in enumerate(self.args) if x == '--add-repo']
            urls += [x.split('=', 1)[1] for x in self.args if x.startswith('--add-repo=')]
            return self._add_rpm_repo(urls)
        if verb == 'module':
            sub = a[1] if len(a) > 1 else ''
            if sub in ('install', 'enable'):
                if not self._nvidia_repo():
                    self.err('Error: Problems in request: missing groups or modules: %s' % a[2])
                    return 1
                if 'package-install-fails' in self.faults and sub == 'install':
                    self.err('Error: Failed to download packages: kmod-nvidia: Cannot download')
                    return 1
                for spec in a[2:]:
                    m = re.match(r'^nvidia-driver:(latest|open|\d{3})(?:-(dkms|open))?(/.*)?$',
                                 spec)
                    if not m:
                        self.err('Error: Problems in request: missing groups or modules: %s'
                                 % spec)
                        return 1
                    if sub == 'install':
                        branch = LATEST_BRANCH if m.group(1) in ('latest', 'open') \
                            else m.group(1)
                        flavour = 'open' if 'open' in (m.group(1), m.group(2)) \
                            else 'proprietary'
                        self.st['packages']['nvidia-driver'] = DRIVER_VERSIONS.get(branch, '')
                        self._driver(branch, flavour, 'nvidia-driver:' + spec.split(':')[1],
                                     'packages')
                self.dirty = True
                return 0
            return 0
        if verb == 'install':
            return self._install(a[1:], 'dnf')
        if verb in ('remove', 'erase'):
            for p in a[1:]:
                self.st['packages'].pop(p, None)
            self.dirty = True
        return 0

    cmd_yum = cmd_dnf

    def cmd_yum_config_manager(self) -> int:
        urls = [self.args[i + 1] for i, x in enumerate(self.args) if x == '--add-repo']
        return self._add_rpm_repo(urls)

    def _add_rpm_repo(self, urls: list[str]) -> int:
        for url in urls:
            if url.startswith('/') or url.startswith('file:'):
                src = url[5:] if url.startswith('file:') else url
                if not os.path.exists(src):
                    self.err('Error: Configuration of repo failed: %s not found' % url)
                    return 1
            repo = url.rstrip('/').rsplit('/', 1)[-1]
            m = re.match(r'^cuda-(rhel\d+)\.repo$', repo)
            if not m:
                self.err('Error: Configuration of repo failed: %s' % url)
                return 1
            want = 'rhel' + self.st['version']
            if m.group(1) != want:
                self.err('Error: Failed to download metadata for repo \'cuda-%s-x86_64\' '
                         '(wrong release; this is %s)' % (m.group(1), want))
                return 1
            os.makedirs(self.path('/etc/yum.repos.d'), exist_ok=True)
            if url.startswith('/'):
                import shutil
                shutil.copyfile(url, self.path('/etc/yum.repos.d/' + repo))
            else:
                with open(self.path('/etc/yum.repos.d/' + repo), 'wb') as f:
                    f.write(download_content(url))
            if m.group(1) not in self.st['repos']:
                self.st['repos'].append(m.group(1))
        self.dirty = True
        return 0

    def cmd_rpm(self) -> int:
        a = self.args
        if a[:1] in (['-q'], ['-qa']) or (a and a[0].startswith('-q')):
            rc = 0
            for p in a[1:]:
                if p.startswith('-'):
                    continue
                if p in self.st['packages']:
                    print('%s-1.0-1.x86_64' % p)
                else:
                    print('package %s is not installed' % p)
                    rc = 1
            return rc
        if a[:1] in (['-i'], ['-ivh'], ['-Uvh'], ['--import']):
            return 0
        return 0

    # -- runfile --
    def cmd_gpusim_runfile(self) -> int:
        base = self.args[0]
        opts = self.args[1:]
        m = re.match(r'^cuda_(\d+\.\d+)\.\d+_(\d+\.\d+(?:\.\d+)?)_linux\.run$', base)
        if not m:
            self.err('gpusim-runfile: not a CUDA runfile name: %s' % base)
            return 1
        if '--silent' not in opts:
            self.err('runfile: interactive mode needs a terminal; use --silent')
            return 1
        if '--driver' in opts:
            if 'nouveau' in self.st['modules']:
                self.err('ERROR: The Nouveau kernel driver is currently in use by your system. '
                         'This driver is incompatible with the NVIDIA driver.')
                return 1
            if not os.path.isdir(self.path('/usr/src/kernels/%s' % self.st['kernel'])) and \
                    not any(p.startswith(('linux-headers-', 'kernel-devel-'))
                            for p in self.st['packages']):
                self.err('ERROR: Unable to find the kernel source tree for the currently running '
                         'kernel.')
                return 1
            flavour = 'open' if '-m=kernel-open' in opts else 'proprietary'
            self._driver(m.group(2).split('.')[0], flavour, base, 'runfile',
                         version=m.group(2))
        if '--toolkit' in opts:
            _install_toolkit(self.root, self.st, m.group(1))
        self.dirty = True
        return 0

    def run(self) -> int:
        fn = getattr(self, 'cmd_' + self.name.replace('-', '_'), None)
        if self.name == 'rmmod':
            self.args = ['-r'] + self.args
            fn = self.cmd_modprobe
        if self.name == 'wget':
            return self._wget()
        if fn is None:
            self.err('gpusim: no such stub %s' % self.name)
            return 127
        rc = fn()
        if rc == -1:
            return -1
        if self.dirty:
            self.save()
        return rc

    def _wget(self) -> int:
        self.err('wget: not installed in this guest (use curl)')
        return 127


CUDA_NO_DEVICE = ('cudaErrorNoDevice', 'no CUDA-capable device is detected')
CUDA_INSUFFICIENT_DRIVER = ('cudaErrorInsufficientDriver',
                            'CUDA driver version is insufficient for CUDA runtime version')
CUDA_ECC = ('cudaErrorECCUncorrectable', 'uncorrectable ECC error encountered')
CUDA_NO_KERNEL = ('cudaErrorNoKernelImageForDevice',
                  'no kernel image is available for execution on the device')


def _arch_targets(args: list[str]) -> tuple[list[str], list[str]]:
    """(SASS, PTX) architectures an nvcc command line builds, e.g. ``(['60'], ['60'])``.

    ``-arch=sm_XY`` embeds SASS and PTX for XY, ``-arch=compute_XY`` PTX only, ``-gencode`` what
    its ``code=`` names; ``-arch=native`` (or nothing) builds for the GPUs present: both empty.
    """
    sass: list[str] = []
    ptx: list[str] = []
    for i, x in enumerate(args):
        m = re.match(r'^(-arch|--gpu-architecture|-gencode|--generate-code)(?:=(.*))?$', x)
        if not m:
            continue
        value = m.group(2) if m.group(2) is not None else (
            args[i + 1] if i + 1 < len(args) else '')
        if m.group(1) in ('-gencode', '--generate-code'):
            code = re.search(r'code=(\[[^\]]*\]|[^,]*)', value)
            for c in (code.group(1).strip('[]').split(',') if code else []):
                n = re.match(r'^(sm|compute)_(\d+)', c.strip())
                if n:
                    (sass if n.group(1) == 'sm' else ptx).append(n.group(2))
            continue
        n = re.match(r'^(sm|compute)_(\d+)', value)
        if n:
            if n.group(1) == 'sm':
                sass.append(n.group(2))
            ptx.append(n.group(2))
    return sass, ptx


def _runnable(d: dict[str, Any], sass: list[str], ptx: list[str]) -> bool:
    """Whether a build has a kernel image for GPU *d*.

    That is SASS of its major version up to its own capability, or PTX the driver compiles for it.
    """
    if not sass and not ptx:
        return True
    cc = int(d['compute_cap'].replace('.', ''))
    return (any(int(s) // 10 == cc // 10 and int(s) <= cc for s in sass)
            or any(int(p) <= cc for p in ptx))


def _sample_program(source: str) -> str | None:
    """The heat-gpu sample *source* is (its ``heat-gpu sample: NAME.`` first line, else its name).

    Only a ``.cu`` or ``.cpp`` file is a program: the header the samples share is none.
    """
    base, ext = os.path.splitext(os.path.basename(source))
    if ext not in ('.cu', '.cpp'):
        return None
    try:
        with open(source, encoding='utf-8', errors='replace') as f:
            first = f.readline(400)
    except OSError:
        return None
    m = re.match(r'// heat-gpu sample: ([a-z0-9_]+)\.', first)
    name = m.group(1) if m else base
    return name if name in SAMPLE_PROGRAMS else None


def _include_dirs(args: list[str]) -> list[str]:
    """The directories an nvcc command line adds to the include path (``-I DIR``, ``-IDIR``)."""
    dirs = []
    for i, x in enumerate(args):
        if x in ('-I', '--include-path') and i + 1 < len(args):
            dirs.append(args[i + 1])
        elif x.startswith('--include-path='):
            dirs.append(x.split('=', 1)[1])
        elif x.startswith('-I') and len(x) > 2:
            dirs.append(x[2:])
    return dirs


def _missing_include(source: str, dirs: list[str]) -> tuple[int, str] | None:
    """(line, name) of the first ``#include "name"`` of *source* the preprocessor cannot find.

    As the C preprocessor does, a quoted include is looked up beside the source, then in *dirs*.
    """
    try:
        with open(source, encoding='utf-8', errors='replace') as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    search = [os.path.dirname(os.path.abspath(source))] + dirs
    for number, line in enumerate(lines, 1):
        m = re.match(r'\s*#\s*include\s+"([^"]+)"', line)
        if m and not any(os.path.isfile(os.path.join(d, m.group(1))) for d in search):
            return number, m.group(1)
    return None


def _js(value: Any) -> str:
    """A JSON value as the sample programs print it."""
    if value is None:
        return 'null'
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _obj(*pairs: tuple[str, str]) -> str:
    return '{' + ', '.join('"%s": %s' % (key, text) for key, text in pairs) + '}'


def _cuda_number(version: str) -> int:
    major, minor = (version.split('.') + ['0'])[:2]
    return int(major) * 1000 + int(minor) * 10


class _Program:
    """One run of a heat-gpu sample program on the simulated silicon.

    Prints the one JSON line the real program (``heat_gpu/samples/NAME.cu``) prints, keys in its
    printf order and numbers in its printf formats, and returns its exit status.
    """

    def __init__(self, stub: Stub, *, toolkit: str, sass: list[str], ptx: list[str]) -> None:
        self.stub = stub
        self.toolkit = toolkit
        self.sass = sass
        self.ptx = ptx
        self.devices, self.error = stub.cuda_devices(toolkit)

    def run(self, program: str) -> int:
        return getattr(self, program)()

    # -- the model --
    @staticmethod
    def env_long(name: str, fallback: int) -> int:
        m = re.match(r'^\s*([+-]?\d+)', os.environ.get(name, ''))
        value = int(m.group(1)) if m else 0
        return value if value > 0 else fallback

    @staticmethod
    def spread(d: dict[str, Any], metric: str) -> float:
        h = hashlib.sha256(('%s:%s' % (d['uuid'], metric)).encode()).hexdigest()
        return 1 + SIM_SPREAD * (2 * int(h[:8], 16) / 0xffffffff - 1)

    def faults(self, d: dict[str, Any]) -> set[str]:
        return self.stub.device_faults(d)

    def link_gbps(self, d: dict[str, Any]) -> float:
        """Theoretical rate of the link as trained (GB/s, one direction)."""
        gen, width, _, _ = self.stub.link(d)
        rate, encoding = PCIE_RATE.get(gen, PCIE_RATE[3])
        return rate * encoding * width / 8

    def link_share(self, d: dict[str, Any]) -> float:
        gen, width, gen_max, width_max = self.stub.link(d)
        rate, encoding = PCIE_RATE.get(gen_max, PCIE_RATE[3])
        return self.link_gbps(d) / (rate * encoding * width_max / 8)

    def d2d_gbps(self, d: dict[str, Any]) -> float:
        return float(d['memory_bandwidth_gbps']) * SIM_D2D * self.spread(d, 'd2d')

    def driver_cuda(self) -> int:
        drv = self.stub.st.get('driver')
        if not drv:
            return 0
        branch = drv['version'].split('.')[0]
        return _cuda_number(DRIVER_CUDA.get(branch, '13.0' if int(branch) >= 580 else '12.0'))

    def count_error(self, program: str) -> str:
        """The document a program prints when cudaGetDeviceCount fails."""
        why = _js('cudaGetDeviceCount: %s: %s' % self.error)
        if program == 'p2p':
            return _obj(('program', _js(program)), ('status', '"error"'), ('gpu_count', '0'),
                        ('error', why), ('results', '[]'))
        return _obj(('program', _js(program)), ('error', why), ('results', '[]'))

    @staticmethod
    def document(program: str, entries: list[str]) -> str:
        return _obj(('program', _js(program)), ('error', 'null'),
                    ('results', '[%s]' % ', '.join(entries)))

    # -- the programs --
    def device_query(self) -> int:
        head = [('program', '"device_query"'), ('cuda_driver_version', str(self.driver_cuda())),
                ('cuda_runtime_version', str(_cuda_number(self.toolkit)))]
        if self.error:
            print(_obj(*head, ('nvml', 'false'), ('error', _js('%s: %s' % self.error)),
                       ('results', '[]')))
            return 1
        entries = []
        failures = 0
        for i, d in enumerate(self.devices):
            gen, width, gen_max, width_max = self.stub.link(d)
            bus = int(d['memory_bus_width_bits'])
            clock_khz = round(float(d['memory_bandwidth_gbps']) * 1e9 / (2 * bus / 8) / 1e3)
            usable = 'ecc-errors' not in self.faults(d)
            failures += 0 if usable else 1
            entries.append(_obj(
                ('gpu_index', str(i)), ('name', _js(d['name'])),
                ('compute_capability', _js(d['compute_cap'])),
                ('memory_mib', str(int(d['memory_mib'] * (1 - SIM_RESERVED_MEMORY)))),
                ('multiprocessors', str(d['multiprocessors'])),
                ('memory_clock_khz', str(clock_khz)), ('memory_bus_width_bits', str(bus)),
                ('memory_bandwidth_gbps', '%.1f' % (2.0 * clock_khz * 1e3 * (bus / 8) / 1e9)),
                ('pci_bus_id', _js(d['pci_address'])), ('uuid', _js(d['uuid'])),
                ('ecc_enabled', _js(bool(d.get('ecc_enabled', True)))),
                ('pcie_link_gen_max', str(gen_max)), ('pcie_link_width_max', str(width_max)),
                ('pcie_link_gen', str(gen)), ('pcie_link_width', str(width)),
                ('usable', _js(usable)),
                ('error', 'null' if usable else _js('%s: %s' % CUDA_ECC))))
        print(_obj(*head, ('nvml', 'true'), ('error', 'null'),
                   ('results', '[%s]' % ', '.join(entries))))
        return 0 if failures == 0 else 1

    def vector_add(self) -> int:
        if self.error:
            print(self.count_error('vector_add'))
            return 1
        n = self.env_long('HEAT_GPU_VECTOR_ELEMENTS', 1 << 24)
        entries = []
        failures = 0
        for i, d in enumerate(self.devices):
            mismatches, max_error, kernel_ms, error = 0, 0.0, 0.0, None
            if 'ecc-errors' in self.faults(d):
                error = 'cudaSetDevice: %s: %s' % CUDA_ECC
            elif not _runnable(d, self.sass, self.ptx):
                error = 'kernel launch: %s: %s' % CUDA_NO_KERNEL
            else:
                kernel_ms = 0.005 + 3 * 4 * n / (self.d2d_gbps(d) * 1e9) * 1e3
                if 'wrong-result' in self.faults(d):
                    mismatches = max(1, n // 4096)
                    max_error = SIM_WRONG_ERROR
            ok = error is None and mismatches == 0
            failures += 0 if ok else 1
            entries.append(_obj(
                ('gpu_index', str(i)), ('elements', str(n)), ('mismatches', str(mismatches)),
                ('max_abs_error', '%.9g' % max_error), ('kernel_ms', '%.3f' % kernel_ms),
                ('correct', _js(ok)), ('error', _js(error))))
        print(self.document('vector_add', entries))
        return 0 if failures == 0 else 1

    def bandwidth(self) -> int:
        if self.error:
            print(self.count_error('bandwidth'))
            return 1
        size = self.env_long('HEAT_GPU_BANDWIDTH_MIB', 64) << 20
        reps = self.env_long('HEAT_GPU_BANDWIDTH_REPS', 20)
        entries = []
        failures = 0
        for i, d in enumerate(self.devices):
            h2d = d2h = d2d = 0.0
            error = None
            if 'ecc-errors' in self.faults(d):
                error = 'cudaSetDevice: %s: %s' % CUDA_ECC
                failures += 1
            else:
                host = float(d['expected_h2d_gbps']) * self.link_share(d)
                h2d = host * SIM_H2D * self.spread(d, 'h2d')
                d2h = host * SIM_D2H * self.spread(d, 'd2h')
                d2d = self.d2d_gbps(d)
            entries.append(_obj(
                ('gpu_index', str(i)), ('bytes', str(size)), ('repetitions', str(reps)),
                ('pinned', 'true'), ('h2d_gbps', '%.2f' % h2d), ('d2h_gbps', '%.2f' % d2h),
                ('d2d_gbps', '%.2f' % d2d), ('error', _js(error))))
        print(self.document('bandwidth', entries))
        return 0 if failures == 0 else 1

    def gemm(self) -> int:
        if self.error:
            print(self.count_error('gemm'))
            return 1
        n = self.env_long('HEAT_GPU_GEMM_N', 4096)
        reps = self.env_long('HEAT_GPU_GEMM_REPS', 10)
        entries = []
        failures = 0
        for i, d in enumerate(self.devices):
            rel, tflops, ms, error = 0.0, 0.0, 0.0, None
            if 'ecc-errors' in self.faults(d):
                error = 'cudaSetDevice: %s: %s' % CUDA_ECC
            elif not _runnable(d, self.sass, self.ptx):
                error = 'fill: %s: %s' % CUDA_NO_KERNEL
            else:
                rel = 1.8e-7 * self.spread(d, 'sgemm-error')
                efficiency = SIM_SGEMM_BY_CC.get(d['compute_cap'], SIM_SGEMM)
                tflops = float(d['fp32_tflops']) * efficiency * self.spread(d, 'sgemm')
                ms = 2.0 * n ** 3 / (tflops * 1e12) * 1e3
            correct = error is None
            failures += 0 if correct else 1
            entries.append(_obj(
                ('gpu_index', str(i)), ('n', str(n)), ('repetitions', str(reps)),
                ('check_n', '97'), ('max_rel_error', '%.3g' % rel), ('correct', _js(correct)),
                ('ms_per_product', '%.3f' % ms), ('tflops', '%.3f' % tflops),
                ('error', _js(error))))
        print(self.document('gemm', entries))
        return 0 if failures == 0 else 1

    def p2p(self) -> int:
        if self.error:
            print(self.count_error('p2p'))
            return 1
        size = self.env_long('HEAT_GPU_P2P_MIB', 64) << 20
        reps = self.env_long('HEAT_GPU_P2P_REPS', 10)
        count = len(self.devices)
        if count < 2:
            print(_obj(('program', '"p2p"'), ('status', '"skipped"'), ('gpu_count', str(count)),
                       ('error', 'null'), ('reason', _js('%d GPU visible; peer-to-peer needs at '
                                                         'least 2' % count)),
                       ('results', '[]')))
            return 0
        setup_error = next(('cudaMalloc: %s: %s on GPU %d' % (CUDA_ECC + (i,))
                            for i, d in enumerate(self.devices)
                            if 'ecc-errors' in self.faults(d)), None)
        entries = []
        for src, a in enumerate(self.devices if setup_error is None else []):
            for dst, b in enumerate(self.devices):
                if src == dst:
                    continue
                # PCIe peer-to-peer works below one root complex (one NUMA node); across
                # sockets the copy is staged through host memory.
                peer = (a.get('numa_node') or 0) == (b.get('numa_node') or 0)
                gbps = (min(self.link_gbps(a), self.link_gbps(b))
                        * (SIM_P2P if peer else SIM_P2P_STAGED)
                        * self.spread(a, 'p2p:%s' % b['uuid']))
                entries.append(_obj(
                    ('gpu_index', str(src)), ('peer_index', str(dst)), ('peer_access', _js(peer)),
                    ('bytes', str(size)), ('repetitions', str(reps)), ('gbps', '%.2f' % gbps),
                    ('error', 'null')))
        print(_obj(('program', '"p2p"'), ('status', '"ran"'), ('gpu_count', str(count)),
                   ('error', _js(setup_error)), ('results', '[%s]' % ', '.join(entries))))
        return 0 if setup_error is None else 1


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:
        with open('/proc/%d/stat' % pid, encoding='utf-8') as f:
            return f.read().split(')')[-1].split()[0] != 'Z'
    except OSError:
        return True


def _stub_main(name: str, args: list[str]) -> int:
    sim = os.environ.get('HEAT_GPU_SIM') or os.path.dirname(os.path.abspath(__file__))
    with _locked(sim):
        stub = Stub(name, args)
        sys.stdout.flush()
        rc = stub.run()
        if rc != -1:
            stub.record(rc)
    if rc == -1:
        # Loopback traffic (Keystone, Heat) goes to the real curl, unchanged.
        stub.record(0)
        real = stub.st.get('real_curl') or '/usr/bin/curl'
        sys.stdout.flush()
        os.execv(real, [real] + args)
    sys.stdout.flush()
    return rc


def _main(argv: list[str]) -> int:
    if argv[:1] == ['--stub']:
        return _stub_main(argv[1], argv[2:])
    import argparse
    p = argparse.ArgumentParser(prog='gpusim', description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest='cmd', required=True)
    mg = sub.add_parser('make-guest')
    mg.add_argument('root')
    mg.add_argument('--distro', required=True)
    mg.add_argument('--version', required=True)
    mg.add_argument('--devices', required=True, help='JSON file: list of PCI devices')
    mg.add_argument('--prebaked', action='store_true')
    mg.add_argument('--fault', action='append', default=[])
    mg.add_argument('--real-userland', action='store_true',
                    help='ROOT is / of a real Linux userland (see make_guest)')
    for name in ('reboot', 'commands', 'state', 'stop-services', 'boot-commands'):
        sub.add_parser(name).add_argument('root')
    ns = p.parse_args(argv)
    if ns.cmd == 'make-guest':
        devices = _read_json(ns.devices, None)
        if devices is None:
            p.error('--devices: cannot read %s' % ns.devices)
        env = make_guest(ns.root, distro=ns.distro, version=ns.version, devices=devices,
                         prebaked=ns.prebaked, faults=ns.fault, real_userland=ns.real_userland)
        print(json.dumps(env, indent=1, sort_keys=True))
    elif ns.cmd == 'reboot':
        reboot(ns.root)
    elif ns.cmd == 'commands':
        print(json.dumps(commands(ns.root), indent=1))
    elif ns.cmd == 'state':
        print(json.dumps(state(ns.root), indent=1, sort_keys=True))
    elif ns.cmd == 'stop-services':
        stop_services(ns.root)
    elif ns.cmd == 'boot-commands':
        print(json.dumps(boot_commands(ns.root)))
    return 0


if __name__ == '__main__':
    sys.exit(_main(sys.argv[1:]))
