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

"""The root filesystem every local-cloud instance boots: a Debian userland from Debian's packages.

It holds what an operator's GPU image holds (the seed guide's image step: kernel build tools, gcc,
make, dkms, cloud-init; and systemd, which boots it) and nothing of ours: the instance's user data,
cloud-init's seed and the GPU simulator are added per instance, in its own copy-on-write layer
(``guest.py``). The root is built
once by ``mmdebstrap`` and kept in a cache outside the checkout (``HEAT_GPU_CACHE_DIR``, default
``~/.cache/heat-gpu``) under the hash of its recipe, so a changed recipe builds a new root and an
unchanged one is reused by every clone and every cloud on the machine.

``python guestroot.py build`` builds (or finds) the root and prints its path.
"""

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

#: Debian's packages in the root: cloud-init and what the boot script expects of a GPU image.
PACKAGES = ('systemd', 'systemd-sysv', 'dbus', 'cloud-init', 'python3', 'ca-certificates', 'curl',
            'gnupg', 'pciutils', 'kmod', 'dkms', 'gcc', 'make', 'procps', 'iproute2', 'sudo')

#: cloud-init's settings of the image (a file in cloud.cfg.d, as image builders add one): the
#: datasources nova's config drive and the NoCloud seed are read by, and the modules that need a
#: block device or an SSH server the instance does not have turned off. The instance shares the
#: host's network namespace, so cloud-init must never apply the config drive's network_data.json
#: (it would rename, address or bring down the host's interfaces).
CLOUD_CFG = {
    'datasource_list': ['ConfigDrive', 'NoCloud', 'None'],
    'resize_rootfs': False,
    'growpart': {'mode': 'off'},
    'ssh_genkeytypes': [],
    'locale': 'C.UTF-8',
    'manage_etc_hosts': False,
    'network': {'config': 'disabled'},
}
CLOUD_CFG_PATH = 'etc/cloud/cloud.cfg.d/90-heat-gpu-localcloud.cfg'

#: Everything that decides the root's content; its hash names the cached root.
RECIPE = {
    'format': 1,
    'suite': 'bookworm',
    'variant': 'apt',
    'packages': PACKAGES,
    'cloud_cfg': CLOUD_CFG,
    # The image is air-gapped: apt gets only the repositories the instance adds (the local
    # cloud's mirror), never Debian's servers.
    'sources_list': '',
}


def cache_dir() -> str:
    return os.environ.get('HEAT_GPU_CACHE_DIR') or os.path.join(
        os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache'), 'heat-gpu')


def recipe_hash(recipe: dict | None = None) -> str:
    text = json.dumps(recipe or RECIPE, sort_keys=True)
    return hashlib.sha256(text.encode('utf-8')).hexdigest()[:16]


def root_path(*, cache: str | None = None, recipe: dict | None = None) -> str:
    """Where the root of *recipe* is (or would be) kept."""
    recipe = recipe or RECIPE
    return os.path.join(cache or cache_dir(), 'guest-roots',
                        '%s-%s' % (recipe['suite'], recipe_hash(recipe)))


def is_built(path: str) -> bool:
    return os.path.isfile(os.path.join(path, '.heat-gpu-root.json'))


def _customize(target: str, recipe: dict) -> None:
    cfg = os.path.join(target, CLOUD_CFG_PATH)
    with open(cfg, 'w', encoding='utf-8') as f:
        f.write('# The local cloud\'s image settings for cloud-init.\n')
        json.dump(recipe['cloud_cfg'], f, indent=1, sort_keys=True)
        f.write('\n')
    for name in ('etc/apt/sources.list',):
        with open(os.path.join(target, name), 'w', encoding='utf-8') as f:
            f.write(recipe['sources_list'])
    for leftover in ('etc/machine-id', 'var/lib/dbus/machine-id'):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(target, leftover))
    # An empty machine-id file, as images ship it: the instance gets its own at first boot.
    open(os.path.join(target, 'etc/machine-id'), 'w').close()


def build(*, cache: str | None = None, recipe: dict | None = None,
          log=print) -> str:
    """Build the root of *recipe* unless it is in the cache; return its path."""
    recipe = recipe or RECIPE
    path = root_path(cache=cache, recipe=recipe)
    if is_built(path):
        return path
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    with open(path + '.lock', 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_built(path):
            return path
        if shutil.which('mmdebstrap') is None:
            raise RuntimeError('mmdebstrap is missing: install the Debian package mmdebstrap '
                               '(tools/bootstrap.sh does) to build the guest root')
        tmp = path + '.tmp'
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
        t0 = time.monotonic()
        log('guest root: building %s (Debian %s, %d packages) with mmdebstrap' % (
            os.path.basename(path), recipe['suite'], len(recipe['packages'])))
        argv = ['mmdebstrap', '--quiet', '--variant=%s' % recipe['variant'],
                '--include=%s' % ','.join(recipe['packages']), recipe['suite'], tmp]
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, check=False)
        if proc.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise RuntimeError('mmdebstrap failed (exit %d):\n%s' % (
                proc.returncode, '\n'.join(proc.stdout.splitlines()[-30:])))
        _customize(tmp, recipe)
        seconds = time.monotonic() - t0
        size = int(subprocess.run(['du', '-sb', tmp], stdout=subprocess.PIPE, text=True,
                                  check=True).stdout.split()[0])
        with open(os.path.join(tmp, '.heat-gpu-root.json'), 'w', encoding='utf-8') as f:
            json.dump({'recipe': recipe, 'hash': recipe_hash(recipe), 'build_seconds':
                       round(seconds, 1), 'bytes': size}, f, indent=1, sort_keys=True)
        os.rename(tmp, path)
        log('guest root: built in %.0f s, %d MB: %s' % (seconds, size // 10 ** 6, path))
        return path


def info(path: str) -> dict:
    with open(os.path.join(path, '.heat-gpu-root.json'), encoding='utf-8') as f:
        return json.load(f)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('command', choices=('build', 'path'))
    args = parser.parse_args(argv)
    if args.command == 'path':
        print(root_path())
        return 0
    print(build(log=lambda m: print(m, file=sys.stderr)))
    return 0


if __name__ == '__main__':
    sys.exit(main())
