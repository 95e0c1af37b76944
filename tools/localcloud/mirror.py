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

"""The local cloud's package mirror: NVIDIA's CUDA repositories and a distribution repository.

The instances of the local cloud reach no internet. Their real ``apt-get``, ``dpkg``, ``gpg`` and
``curl`` install from this mirror what the boot script asks of NVIDIA's repositories
(``mirror_url``), over HTTPS, from repositories signed with OpenPGP. Real here: the flat apt
repositories laid out as NVIDIA publishes them (``Packages``, ``Release``, ``InRelease``,
``Release.gpg``, ``cuda-keyring_1.1-1_all.deb``), the packages (built by ``dpkg-deb``, with
NVIDIA's names, versions and dependencies, so a wrong name or a missing version fails in apt), the
signatures (a GnuPG key of the mirror's own: the boot script trusts it through
``keyring_fingerprints``) and the TLS (a CA of the mirror's own, which the guest trusts).
Simulated: what the packages install, because the GPU and the guest's kernel are. A driver
package ships ``nvidia-smi`` as a launcher of the GPU simulator's (``tools/gpusim``) and its
maintainer scripts tell the simulator that the kernel modules are built (as dkms would for a real
kernel); a toolkit package ships the simulator's ``nvcc``. The distribution repository holds
``linux-headers-<kernel>`` for the simulator's kernels (the guest's ``uname -r``): tiny packages,
as no real headers exist for a simulated kernel; and Debian's own packages a Debian cloud image
lacks for a Python virtualenv (``DEBIAN_PACKAGES`` and what apt says they need beyond the guest
root), fetched from Debian with the host's apt when the mirror is built.

``/pypi/simple/`` is a PyPI-style simple index (PEP 503) of the real wheels ``pip download``
fetches for the guest's Python (``PYPI_REQUIREMENTS``: JupyterLab and pip), as an air-gapped
cloud's PyPI mirror holds them. The downloads are cached outside the checkout (the guest root's
cache) under the hash of what was asked, so only the first build fetches them.

Fault variants (``FAULTS``) are served under ``/faults/<name>/``: an instance whose ``mirror_url``
ends so meets the fault. A path under ``/tag/<tag>/`` is the path without that prefix, logged with
the tag, so a benchmark can count the bytes of each instance.

``python mirror.py build --dir D`` builds the mirror in D (a no-op when it is up to date);
``python mirror.py serve --dir D --port P`` serves it on https://127.0.0.1:P/.
"""

import argparse
import contextlib
import dataclasses
import datetime
import email.utils
import fcntl
import gzip
import hashlib
import http.server
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
if REPO not in sys.path:  # run as a script: this directory is sys.path[0]
    sys.path.insert(0, REPO)

from heat_gpu import cuda  # noqa: E402  (needs the checkout on sys.path when run as a script)
from tools.gpusim import gpusim  # noqa: E402
from tools.localcloud import guestroot  # noqa: E402

BOOTSTRAP = os.path.join(REPO, 'heat_gpu', 'guest', 'bootstrap.sh')

#: Bumped when the layout changes in a way the package specifications do not show.
FORMAT = 2
#: The mtime of every file in the packages (dpkg-deb's SOURCE_DATE_EPOCH), so they are reproducible.
SOURCE_DATE_EPOCH = '1735689600'
MAINTAINER = 'heat-gpu local cloud <mirror@localcloud.invalid>'
KEY_UID = 'heat-gpu local cloud package mirror <mirror@localcloud.invalid>'
OTHER_KEY_UID = 'Not the mirror key <other@localcloud.invalid>'
NVIDIA_BASE = 'https://%s' % gpusim.NVIDIA_HOST

#: The fault variants, each served under /faults/<name>/: what differs from the good mirror.
FAULTS = {
    'bad-signature': "NVIDIA's repositories' InRelease and Release.gpg are signed by another key, "
                     'so apt refuses them',
    'keyring-untrusted': 'the cuda-keyring packages carry another key, which the boot script '
                         'refuses',
    'package-install-fails': 'every .deb but cuda-keyring answers 503 Service Unavailable',
    'repo-no-gpgcheck': 'the RHEL repository files turn signature checks off',
    'tampered': 'every file comes with bytes appended, as through a broken proxy',
}
#: What the ``tampered`` fault appends to every file.
TAMPERED_TAIL = b'# truncated by a broken proxy\n'

#: Where the files an instance needs (``guest_files``) go in the guest.
GUEST_CA = 'usr/local/share/ca-certificates/heat-gpu-localcloud-mirror.crt'
GUEST_DISTRO_KEYRING = 'usr/share/keyrings/heat-gpu-localcloud-distro.gpg'
GUEST_DISTRO_LIST = 'etc/apt/sources.list.d/heat-gpu-localcloud-distro.list'
#: pip's site-wide configuration (read in every virtualenv too): the mirror's index, trusted
#: through the system's CA store, which holds the mirror's CA (pip's own bundle does not).
GUEST_PIP_CONF = 'etc/pip.conf'
GUEST_CA_STORE = '/etc/ssl/certs/ca-certificates.crt'

#: Debian's packages the distribution repositories add to the guest root for ``python3 -m venv``
#: (Debian's python3 has no ensurepip without them): with what apt resolves them to against the
#: guest root's installed packages (recommends included, as a plain ``apt-get install``).
DEBIAN_PACKAGES = ('python3-venv', 'python3.11-venv', 'python3-pip-whl',
                   'python3-setuptools-whl')
#: What the PyPI index holds: these and their dependencies, binary wheels only. The one place
#: JupyterLab's version is chosen (hot/scripts/jupyter.sh installs whatever the index holds).
PYPI_REQUIREMENTS = ('jupyterlab==4.6.6', 'pip')
#: The guest's interpreter and C library (Debian 12): the wheels pip downloads must fit them.
GUEST_PYTHON = '3.11'
GUEST_GLIBC = (2, 36)
PYPI_PATH = 'pypi'
#: The cuda-keyring package, as NVIDIA names its files.
KEYRING_DEB = cuda.KEYRING_PACKAGE
KEYRING_FILE = '/' + gpusim.KEYRING_PATH


# ---------------------------------------------------------------------------------------------
# What the repositories hold
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Package:
    """One binary package.

    Control fields, files (path -> (content, or None for a directory; mode)) and maintainer
    scripts (name -> shell text).
    """

    name: str
    version: str
    description: str
    architecture: str = 'amd64'
    fields: dict = dataclasses.field(default_factory=dict)  # Depends, Provides, Conflicts...
    files: dict = dataclasses.field(default_factory=dict)
    scripts: dict = dataclasses.field(default_factory=dict)
    conffiles: tuple = ()

    @property
    def filename(self) -> str:
        return '%s_%s_%s.deb' % (self.name, self.version.split(':')[-1], self.architecture)

    def spec(self) -> dict:
        """Everything that decides the .deb (its hash names the build)."""
        return {'name': self.name, 'version': self.version, 'description': self.description,
                'architecture': self.architecture, 'fields': self.fields,
                'files': {k: [hashlib.sha256(v[0]).hexdigest() if v[0] is not None else None,
                              v[1]] for k, v in sorted(self.files.items())},
                'scripts': self.scripts, 'conffiles': list(self.conffiles)}

    def spec_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.spec(), sort_keys=True).encode()).hexdigest()[:20]


@dataclasses.dataclass
class DebianDeb:
    """A real .deb of Debian's, downloaded by apt (``debian_debs``): served as it is."""

    path: str
    sha256: str

    @property
    def filename(self) -> str:
        return os.path.basename(self.path)

    def spec(self) -> dict:
        return {'debian': self.filename, 'sha256': self.sha256}

    def control(self) -> str:
        text = _run(['dpkg-deb', '--field', self.path]).stdout.decode('utf-8')
        return text if text.endswith('\n') else text + '\n'


def _bootstrap_repos() -> list[tuple[str, str, str, str]]:
    """(distro key, repo, lowest CUDA, highest CUDA) of the boot script's ``distro_repo``."""
    with open(BOOTSTRAP, encoding='utf-8') as f:
        text = f.read()
    body = text[text.index('distro_repo() {'):]
    body = body[:body.index('\n}\n')]
    found = re.findall(r'^\s+([a-z]+-[\d.]+)\) echo "(\w+) ([\d.]+) ([\d.]+)" ;;$', body, re.M)
    if not found:
        raise RuntimeError('mirror: no repositories in distro_repo of %s' % BOOTSTRAP)
    return found


def debian_repos() -> dict[str, tuple[str, str]]:
    """NVIDIA's Debian-family repositories the boot script can pick.

    Repository name -> (lowest, highest CUDA line it offers), from ``distro_repo`` of the boot
    script.
    """
    return {repo: (lo, hi) for key, repo, lo, hi in _bootstrap_repos()
            if key.startswith(('ubuntu-', 'debian-'))}


def rhel_repos() -> list[str]:
    return [repo for key, repo, lo, hi in _bootstrap_repos() if key.startswith('rhel-')]


def repo_for(distro: str, version: str) -> str | None:
    """The NVIDIA repository of an image (``ubuntu``, ``22.04``), as the boot script picks it."""
    major = version.split('.')[0]
    if distro == 'ubuntu':
        key = 'ubuntu-%s' % version
    elif distro == 'debian':
        key = 'debian-%s' % major
    elif gpusim.DISTROS.get(distro, {}).get(version, ('', '', ''))[2] == 'rhel':
        key = 'rhel-%s' % major
    else:
        return None
    return next((repo for k, repo, lo, hi in _bootstrap_repos() if k == key), None)


def _vkey(version: str) -> tuple[int, int]:
    major, minor = version.split('.')[:2]
    return int(major), int(minor)


def driver_versions() -> dict[str, str]:
    """Driver branch -> the full version the mirror offers.

    The simulator's own (``gpusim.DRIVER_VERSIONS``), else the driver of the branch's CUDA runfile
    (heat_gpu.cuda).
    """
    out = {str(r.branch): r.runfile_driver for r in cuda.releases()}
    out.update(gpusim.DRIVER_VERSIONS)
    return dict(sorted(out.items()))


def _hook(action: str, name: str, version: str) -> str:
    return '%s --stub gpusim-pkg-hook %s %s %s' % (gpusim.guest_launcher(), action, name, version)


def _scripts(name: str, version: str, *, configure: str = '', remove: str = '') -> dict:
    """postinst/prerm/postrm that tell the GPU simulator about *name* (``gpusim-pkg-hook``)."""
    head = '#!/bin/sh\nset -e\n'
    postinst = 'if [ "$1" = configure ]; then\n%s    %s\nfi\n' % (
        configure, _hook('configure', name, version))
    prerm = 'if [ "$1" = remove ] || [ "$1" = deconfigure ]; then\n%s    :\nfi\n' % remove
    postrm = 'if [ "$1" = remove ]; then\n    %s\nfi\n' % _hook('remove', name, version)
    return {'postinst': head + postinst, 'prerm': head + prerm, 'postrm': head + postrm}


def driver_packages(branch: str, full: str) -> list[Package]:
    """NVIDIA's packages of driver *branch* (full version *full*), proprietary and open.

    ``cuda-drivers-<branch>`` and ``nvidia-open-<branch>`` depend on the driver packages, which
    hold nvidia-smi and, through their maintainer scripts, the kernel modules: dkms builds those
    for the simulated kernel only in the simulator (``gpusim-pkg-hook``).
    """
    version = '%s-1' % full
    smi = gpusim.driver_files(launcher=gpusim.guest_launcher())
    out = []
    for name, flavour in (('nvidia-driver-%s' % branch, 'proprietary'),
                          ('nvidia-driver-%s-open' % branch, 'open')):
        out.append(Package(
            name, version, 'NVIDIA driver %s, %s kernel modules (simulated GPU)' % (full, flavour),
            fields={'Depends': 'dkms', 'Provides': 'nvidia-driver-binary',
                    'Conflicts': 'nvidia-driver-binary', 'Replaces': 'nvidia-driver-binary'},
            files=smi, scripts=_scripts(name, version)))
    out += [
        Package('cuda-drivers-%s' % branch, version, 'CUDA driver meta-package, branch %s' % branch,
                fields={'Depends': 'nvidia-driver-%s (>= %s)' % (branch, full)}),
        Package('nvidia-open-%s' % branch, version,
                'NVIDIA driver with the open kernel modules, branch %s' % branch,
                fields={'Depends': 'nvidia-driver-%s-open (>= %s)' % (branch, full)}),
        Package('cuda-drivers', version, 'CUDA driver meta-package (newest branch)',
                fields={'Depends': 'cuda-drivers-%s (= %s)' % (branch, version)}),
        Package('nvidia-open', version, 'NVIDIA driver, open kernel modules (newest branch)',
                fields={'Depends': 'nvidia-open-%s (= %s)' % (branch, version)}),
    ]
    return out


def toolkit_packages(release: cuda.CudaRelease) -> list[Package]:
    """NVIDIA's packages of CUDA line *release*: the toolkit and the meta-packages above it."""
    dash = release.package_suffix
    version = '%s-1' % release.runfile_version
    prefix = '/usr/local/cuda-%s' % release.version
    priority = release.major * 100 + int(release.version.split('.')[1])
    name = 'cuda-toolkit-%s' % dash
    files = gpusim.toolkit_files(release.version, launcher=gpusim.guest_launcher())
    return [
        Package(name, version, 'CUDA Toolkit %s (simulated nvcc)' % release.runfile_version,
                files=files, scripts=_scripts(
                    name, version,
                    configure='    update-alternatives --install /usr/local/cuda cuda %s %d\n'
                              % (prefix, priority),
                    remove='    update-alternatives --remove cuda %s\n' % prefix)),
        Package('cuda-toolkit', version, 'CUDA Toolkit meta-package (newest)',
                fields={'Depends': '%s (= %s)' % (name, version)}),
        Package('cuda-%s' % dash, version, 'CUDA %s meta-package' % release.version,
                fields={'Depends': '%s (= %s), cuda-drivers (>= %s)'
                                   % (name, version, release.min_driver)}),
    ]


def keyring_package(repo: str, keyring: bytes) -> Package:
    """NVIDIA's cuda-keyring package of *repo*, holding *keyring* (binary OpenPGP keys)."""
    listing = 'etc/apt/sources.list.d/cuda-%s-x86_64.list' % repo
    line = 'deb [signed-by=%s] %s/compute/cuda/repos/%s/x86_64/ /\n' % (
        KEYRING_FILE, NVIDIA_BASE, repo)
    return Package('cuda-keyring', '1.1-1', 'GPG keyring and apt source of the CUDA repository',
                   architecture='all',
                   files={gpusim.KEYRING_PATH: (keyring, 0o644), listing: (line.encode(), 0o644)},
                   conffiles=('/' + listing,))


def repo_packages(lo: str, hi: str) -> list[Package]:
    """The NVIDIA packages of a repository offering CUDA *lo* to *hi*.

    The toolkits of those lines, and every driver branch from the oldest they ship with.
    """
    releases = [r for r in cuda.releases() if _vkey(lo) <= r.key <= _vkey(hi)]
    lowest = min(r.branch for r in releases)
    out = []
    for branch, full in driver_versions().items():
        if int(branch) >= lowest:
            out += driver_packages(branch, full)
    for rel in releases:
        out += toolkit_packages(rel)
    return out


def _kernels(repo: str) -> list[str]:
    return sorted({kernel for distro, versions in gpusim.DISTROS.items()
                   for version, (pretty, kernel, family) in versions.items()
                   if family == 'debian' and repo_for(distro, version) == repo})


def headers_package(kernel: str) -> Package:
    """``linux-headers-<kernel>`` for a simulated kernel: a placeholder, as no real one exists."""
    readme = ('Simulated headers of the simulated kernel %s (the GPU simulator\'s uname -r): the '
              'driver\'s kernel modules are built only in the simulator.\n' % kernel)
    return Package('linux-headers-%s' % kernel, '%s-1' % kernel.split('-')[0],
                   'Header files of Linux %s (simulated kernel)' % kernel,
                   files={'usr/src/linux-headers-%s/README.simulated' % kernel:
                          (readme.encode(), 0o644)})


# ---------------------------------------------------------------------------------------------
# Debian's packages and PyPI's wheels, downloaded once into the cache
# ---------------------------------------------------------------------------------------------

MANIFEST = 'manifest.json'


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def _downloaded(kind: str, key: dict, fetch, *, log) -> dict[str, str]:
    """File path -> sha256 of what *fetch* (called with an empty directory) downloads.

    Kept in the cache (``<cache>/<kind>/<hash of key>``): fetched only when that is missing.
    """
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = os.path.join(guestroot.cache_dir(), kind, digest)
    manifest = os.path.join(path, MANIFEST)
    if not os.path.isfile(manifest):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + '.lock', 'w') as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not os.path.isfile(manifest):
                tmp = path + '.tmp'
                shutil.rmtree(tmp, ignore_errors=True)
                os.makedirs(tmp)
                t0 = time.monotonic()
                fetch(tmp)
                files = {n: _sha256(os.path.join(tmp, n)) for n in sorted(os.listdir(tmp))}
                if not files:
                    raise RuntimeError('mirror: nothing downloaded for %s' % kind)
                with open(os.path.join(tmp, MANIFEST), 'w', encoding='utf-8') as f:
                    json.dump({'key': key, 'files': files}, f, indent=1, sort_keys=True)
                size = sum(os.path.getsize(os.path.join(tmp, n)) for n in files)
                shutil.rmtree(path, ignore_errors=True)
                os.rename(tmp, path)
                log('mirror: downloaded %d %s files (%.1f MB) in %.1f s into %s' % (
                    len(files), kind, size / 1e6, time.monotonic() - t0, path))
    with open(manifest, encoding='utf-8') as f:
        files = json.load(f)['files']
    return {os.path.join(path, n): h for n, h in files.items()}


def _apt_env() -> dict:
    return {**os.environ, 'LC_ALL': 'C.UTF-8', 'DEBIAN_FRONTEND': 'noninteractive'}


def debian_debs(*, log=print) -> list[DebianDeb]:
    """Debian's .debs of ``DEBIAN_PACKAGES`` and what they need beyond the guest root.

    apt on this host resolves them against the guest root's installed packages (its dpkg
    status) from the host's Debian sources and downloads exactly those versions.
    """
    root = guestroot.build(log=log)
    key = {'packages': DEBIAN_PACKAGES, 'root': os.path.basename(root)}

    def fetch(tmp: str) -> None:
        status = os.path.join(root, 'var', 'lib', 'dpkg', 'status')
        try:
            sim = _run(['apt-get', '-s', '-q', '-o', 'Dir::State::status=%s' % status,
                        '-o', 'APT::Install-Recommends=true', 'install', *DEBIAN_PACKAGES],
                       env=_apt_env())
        except RuntimeError as exc:
            raise RuntimeError('%s\n(apt on this host resolves Debian 12 packages for the guest '
                               'root: it needs Debian 12 sources and apt-get update)' % exc)
        wanted = re.findall(r'^Inst (\S+) \((\S+) ', sim.stdout.decode(), re.M)
        if not wanted:
            raise RuntimeError('mirror: apt resolved nothing to install for %s'
                               % ' '.join(DEBIAN_PACKAGES))
        _run(['apt-get', 'download', '-q', *('%s=%s' % w for w in wanted)], cwd=tmp,
             env=_apt_env())

    files = _downloaded('debian-debs', key, fetch, log=log)
    return [DebianDeb(path, sha) for path, sha in sorted(files.items())]


def _pip_platforms() -> list[str]:
    """manylinux tags the guest's C library runs (pip does not expand ``manylinux_2_X`` itself)."""
    major, minor = GUEST_GLIBC
    return ['manylinux_%d_%d_x86_64' % (major, m) for m in range(minor, 4, -1)] + [
        'manylinux2014_x86_64', 'manylinux2010_x86_64', 'manylinux1_x86_64']


def pypi_wheels(*, log=print) -> dict[str, str]:
    """Wheel path -> sha256: ``pip download`` of ``PYPI_REQUIREMENTS`` for the guest's Python."""
    abi = 'cp' + GUEST_PYTHON.replace('.', '')
    platforms = _pip_platforms()
    key = {'requirements': PYPI_REQUIREMENTS, 'python': GUEST_PYTHON, 'platforms': platforms}

    def fetch(tmp: str) -> None:
        argv = [sys.executable, '-m', 'pip', 'download', '-q', '--disable-pip-version-check',
                '--only-binary=:all:', '--python-version', GUEST_PYTHON, '--implementation',
                'cp', '--abi', abi, '--abi', 'abi3', '--abi', 'none', '--dest', tmp]
        for platform in platforms:
            argv += ['--platform', platform]
        _run(argv + list(PYPI_REQUIREMENTS))
        stray = [n for n in os.listdir(tmp) if not n.endswith('.whl')]
        if stray:
            raise RuntimeError('mirror: pip download left files that are no wheels: %s' % stray)

    return _downloaded('pypi-wheels', key, fetch, log=log)


def project_name(wheel: str) -> str:
    """The normalised project name (PEP 503) of a wheel's file name."""
    return re.sub(r'[-_.]+', '-', os.path.basename(wheel).split('-')[0]).lower()


def _write_pypi(directory: str, wheels: dict[str, str]) -> None:
    """A PEP 503 simple index under *directory*: ``simple/<project>/``, the wheels in ``files/``."""
    files = os.path.join(directory, 'files')
    os.makedirs(files)
    projects: dict = {}
    for path, sha in sorted(wheels.items()):
        name = os.path.basename(path)
        _link(path, os.path.join(files, name))
        projects.setdefault(project_name(name), []).append((name, sha))

    def page(title: str, links: list[tuple[str, str]]) -> bytes:
        body = ''.join('<a href="%s">%s</a><br>\n' % (href, text) for href, text in links)
        return ('<!DOCTYPE html>\n<html><head><meta name="pypi:repository-version" '
                'content="1.0"><title>%s</title></head><body>\n%s</body></html>\n'
                % (title, body)).encode()

    simple = os.path.join(directory, 'simple')
    os.makedirs(simple)
    with open(os.path.join(simple, 'index.html'), 'wb') as f:
        f.write(page('Simple index', [('%s/' % p, p) for p in sorted(projects)]))
    for project, found in projects.items():
        os.makedirs(os.path.join(simple, project))
        with open(os.path.join(simple, project, 'index.html'), 'wb') as f:
            f.write(page('Links for %s' % project,
                         [('../../files/%s#sha256=%s' % (n, sha), n) for n, sha in found]))


def _link(src: str, dst: str) -> None:
    """A hard link (the cache and the mirror share a file system), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


# ---------------------------------------------------------------------------------------------
# Keys, certificates, .debs, indexes
# ---------------------------------------------------------------------------------------------

def _run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, check=False, **kwargs)
    if proc.returncode != 0:
        raise RuntimeError('mirror: %s failed (exit %d): %s' % (
            ' '.join(argv[:3]), proc.returncode,
            proc.stderr.decode('utf-8', 'replace').strip()[-2000:]))
    return proc


def _tls_dir(mirror_dir: str) -> str:
    return os.path.join(mirror_dir, 'tls')


def ca_cert_path(mirror_dir: str) -> str:
    """The mirror's CA certificate (PEM): the guest trusts it."""
    return os.path.join(_tls_dir(mirror_dir), 'ca.crt')


def _ensure_tls(mirror_dir: str) -> None:
    """A CA of the mirror's own and a server certificate for 127.0.0.1 and localhost."""
    d = _tls_dir(mirror_dir)
    if all(os.path.exists(os.path.join(d, n)) for n in ('ca.crt', 'server.crt', 'server.key')):
        return
    tmp = d + '.tmp'
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp, mode=0o700)
    p = lambda name: os.path.join(tmp, name)  # noqa: E731
    ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes']
    _run(['openssl', 'req', '-x509', *ec, '-keyout', p('ca.key'), '-out', p('ca.crt'),
          '-days', '3650', '-subj', '/CN=heat-gpu local cloud mirror CA',
          '-addext', 'basicConstraints=critical,CA:TRUE',
          '-addext', 'keyUsage=critical,keyCertSign,cRLSign'])
    _run(['openssl', 'req', '-x509', *ec, '-keyout', p('server.key'), '-out', p('server.crt'),
          '-days', '3650', '-subj', '/CN=127.0.0.1', '-CA', p('ca.crt'), '-CAkey', p('ca.key'),
          '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost',
          '-addext', 'basicConstraints=critical,CA:FALSE',
          '-addext', 'keyUsage=critical,digitalSignature',
          '-addext', 'extendedKeyUsage=serverAuth'])
    shutil.rmtree(d, ignore_errors=True)
    os.rename(tmp, d)


def _gpg(home: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return _run(['gpg', '--homedir', home, '--batch', '--no-tty', '--quiet',
                 '--pinentry-mode', 'loopback', '--passphrase', '', *args], **kwargs)


def _ensure_key(home: str, uid: str) -> str:
    """A signing key without passphrase in GnuPG home *home*; its fingerprint."""
    fpr_file = home + '.fpr'
    if os.path.isdir(home) and os.path.exists(fpr_file):
        with open(fpr_file, encoding='ascii') as f:
            return f.read().strip()
    shutil.rmtree(home, ignore_errors=True)
    os.makedirs(home, mode=0o700)
    try:
        _gpg(home, '--quick-gen-key', uid, 'ed25519', 'sign', 'never')
        out = _gpg(home, '--with-colons', '--list-secret-keys').stdout.decode()
    finally:
        _stop_agent(home)
    fpr = next(line.split(':')[9] for line in out.splitlines() if line.startswith('fpr:'))
    with open(fpr_file, 'w', encoding='ascii') as f:
        f.write(fpr + '\n')
    return fpr


def _fingerprint(home: str) -> str:
    with open(home + '.fpr', encoding='ascii') as f:
        return f.read().strip()


def _stop_agent(home: str) -> None:
    subprocess.run(['gpgconf', '--homedir', home, '--kill', 'gpg-agent'],
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=False)


def _key_home(mirror_dir: str) -> str:
    return os.path.join(mirror_dir, 'gnupg')


def _other_key_home(mirror_dir: str) -> str:
    return os.path.join(mirror_dir, 'gnupg-other')


def key_fingerprint(mirror_dir: str) -> str:
    """The fingerprint of the mirror's signing key: the boot script's ``keyring_fingerprints``."""
    return _fingerprint(_key_home(mirror_dir))


def fault_key_fingerprint(mirror_dir: str) -> str:
    """The fingerprint of the other key (faults ``bad-signature`` and ``keyring-untrusted``)."""
    return _fingerprint(_other_key_home(mirror_dir))


def keyring_path(mirror_dir: str) -> str:
    """The mirror's public key, exported (a binary keyring apt's ``signed-by`` takes)."""
    return os.path.join(mirror_dir, 'mirror-keyring.gpg')


def _export(home: str) -> bytes:
    return _gpg(home, '--export').stdout


def _build_deb(pkg: Package, cache: str) -> str:
    """The .deb of *pkg* (built by dpkg-deb into *cache*, once per specification)."""
    out_dir = os.path.join(cache, pkg.spec_hash())
    out = os.path.join(out_dir, pkg.filename)
    if os.path.exists(out):
        return out
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        root = os.path.join(tmp, 'root')
        os.makedirs(os.path.join(root, 'DEBIAN'))
        gpusim.write_tree(root, pkg.files)
        with open(os.path.join(root, 'DEBIAN', 'control'), 'w', encoding='utf-8') as f:
            f.write(_control(pkg))
        for name, text in pkg.scripts.items():
            script = os.path.join(root, 'DEBIAN', name)
            with open(script, 'w', encoding='utf-8') as f:
                f.write(text)
            os.chmod(script, 0o755)
        if pkg.conffiles:
            with open(os.path.join(root, 'DEBIAN', 'conffiles'), 'w', encoding='utf-8') as f:
                f.write(''.join(c + '\n' for c in pkg.conffiles))
        built = os.path.join(tmp, pkg.filename)
        _run(['dpkg-deb', '--root-owner-group', '-Zgzip', '--build', root, built],
             env={**os.environ, 'SOURCE_DATE_EPOCH': SOURCE_DATE_EPOCH})
        os.makedirs(out_dir, exist_ok=True)
        os.replace(built, out)
    return out


def _digests(path: str) -> dict[str, str]:
    hashes = {'MD5sum': hashlib.md5(), 'SHA1': hashlib.sha1(), 'SHA256': hashlib.sha256()}
    with open(path, 'rb') as f:
        data = f.read()
    for h in hashes.values():
        h.update(data)
    return {k: h.hexdigest() for k, h in hashes.items()}


def _control(pkg: Package) -> str:
    """The control file of *pkg* (DEBIAN/control; the start of its stanza in Packages)."""
    size = sum(len(data) for data, mode in pkg.files.values() if data is not None)
    fields = [('Package', pkg.name), ('Version', pkg.version),
              ('Architecture', pkg.architecture), ('Maintainer', MAINTAINER),
              ('Installed-Size', str(max(1, (size + 1023) // 1024)))]
    fields += sorted(pkg.fields.items())
    fields += [('Section', 'multiverse/devel'), ('Priority', 'optional'),
               ('Description', pkg.description)]
    return ''.join('%s: %s\n' % kv for kv in fields)


def _write_repo(directory: str, pkgs: list[Package], debs: list[str], *, home: str,
                label: str) -> None:
    """A flat apt repository in *directory*: the .debs (hard links), Packages, Release, signed."""
    os.makedirs(directory, exist_ok=True)
    stanzas = []
    for pkg, deb in sorted(zip(pkgs, debs), key=lambda x: os.path.basename(x[1])):
        name = os.path.basename(deb)
        _link(deb, os.path.join(directory, name))
        extra = {'Filename': './' + name, 'Size': str(os.path.getsize(deb)), **_digests(deb)}
        control = pkg.control() if isinstance(pkg, DebianDeb) else _control(pkg)
        stanzas.append(control + ''.join('%s: %s\n' % kv for kv in extra.items()))
    packages = '\n'.join(stanzas).encode('utf-8')
    with open(os.path.join(directory, 'Packages'), 'wb') as f:
        f.write(packages)
    with open(os.path.join(directory, 'Packages.gz'), 'wb') as f:
        f.write(gzip.compress(packages, 9, mtime=0))
    now = email.utils.format_datetime(datetime.datetime.now(datetime.timezone.utc), usegmt=True)
    lines = ['Origin: %s' % label, 'Label: %s' % label, 'Date: %s' % now,
             'Acquire-By-Hash: no']
    for field, algo in (('MD5Sum', 'md5'), ('SHA256', 'sha256')):
        lines.append('%s:' % field)
        for name in ('Packages', 'Packages.gz'):
            with open(os.path.join(directory, name), 'rb') as f:
                data = f.read()
            lines.append(' %s %16d %s' % (hashlib.new(algo, data).hexdigest(), len(data), name))
    with open(os.path.join(directory, 'Release'), 'w', encoding='utf-8') as f:
        f.write('\n'.join(lines) + '\n')
    _sign(directory, home=home, out=directory)


def _sign(directory: str, *, home: str, out: str) -> None:
    """InRelease (clearsigned) and Release.gpg (detached) of *directory*'s Release, into *out*."""
    os.makedirs(out, exist_ok=True)
    release = os.path.join(directory, 'Release')
    _gpg(home, '--yes', '--digest-algo', 'SHA256', '--clearsign',
         '-o', os.path.join(out, 'InRelease'), release)
    _gpg(home, '--yes', '--digest-algo', 'SHA256', '--armor', '--detach-sign',
         '-o', os.path.join(out, 'Release.gpg'), release)


# ---------------------------------------------------------------------------------------------
# build
# ---------------------------------------------------------------------------------------------

def _plan(mirror_dir: str, *, log=print) -> dict:
    """Every repository of the mirror and what it holds (paths under www/)."""
    keyring = _export(_key_home(mirror_dir))
    other = _export(_other_key_home(mirror_dir))
    debian = debian_debs(log=log)
    plan: dict = {'repos': {}, 'keyrings': {}, 'files': {}, 'pypi': pypi_wheels(log=log)}
    for repo, (lo, hi) in debian_repos().items():
        base = 'compute/cuda/repos/%s/x86_64' % repo
        plan['repos'][base] = ('NVIDIA', repo_packages(lo, hi) + [keyring_package(repo, keyring)])
        plan['keyrings']['faults/keyring-untrusted/%s/%s' % (base, KEYRING_DEB)] = \
            keyring_package(repo, other)
        kernels = _kernels(repo)
        if kernels:
            # Every Debian-family image boots the Debian 12 root: Debian's packages fit them all.
            plan['repos']['distro/%s' % repo] = ('heat-gpu local cloud',
                                                 [headers_package(k) for k in kernels] + debian)
    for repo in rhel_repos():
        name = 'compute/cuda/repos/%s/x86_64/cuda-%s.repo' % (repo, repo)
        url = '%s/%s' % (NVIDIA_BASE, name)
        plan['files'][name] = gpusim.download_content(url)
        plan['files']['faults/repo-no-gpgcheck/' + name] = gpusim.download_content(
            url, ['repo-no-gpgcheck'])
    return plan


def _recipe(mirror_dir: str, plan: dict) -> str:
    recipe = {
        'format': FORMAT, 'key': key_fingerprint(mirror_dir),
        'other_key': _fingerprint(_other_key_home(mirror_dir)),
        'repos': {d: [label, [p.spec() for p in pkgs]] for d, (label, pkgs) in
                  sorted(plan['repos'].items())},
        'keyrings': {d: p.spec() for d, p in sorted(plan['keyrings'].items())},
        'files': {d: hashlib.sha256(v).hexdigest() for d, v in sorted(plan['files'].items())},
        'pypi': sorted(plan['pypi'].values()),
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def _www(mirror_dir: str) -> str:
    return os.path.join(mirror_dir, 'www')


def _recipe_file(mirror_dir: str) -> str:
    return os.path.join(mirror_dir, 'recipe')


def is_built(mirror_dir: str) -> bool:
    return os.path.exists(_recipe_file(mirror_dir)) and os.path.isdir(_www(mirror_dir))


def build(mirror_dir: str, *, log=print) -> bool:
    """Build the mirror in *mirror_dir* unless it is up to date; True when it built.

    Keys and certificates are made once and kept; the repositories are rebuilt when what they
    hold changed (the hash of every package's specification, in ``recipe``).
    """
    mirror_dir = os.path.abspath(mirror_dir)
    os.makedirs(mirror_dir, exist_ok=True)
    with open(os.path.join(mirror_dir, '.lock'), 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _ensure_tls(mirror_dir)
        _ensure_key(_key_home(mirror_dir), KEY_UID)
        _ensure_key(_other_key_home(mirror_dir), OTHER_KEY_UID)
        plan = _plan(mirror_dir, log=log)
        recipe = _recipe(mirror_dir, plan)
        if is_built(mirror_dir):
            with open(_recipe_file(mirror_dir), encoding='ascii') as f:
                if f.read().strip() == recipe:
                    return False
        try:
            _build_www(mirror_dir, plan, log=log)
        finally:
            for home in (_key_home(mirror_dir), _other_key_home(mirror_dir)):
                _stop_agent(home)  # gpg started it to sign
        with open(_recipe_file(mirror_dir), 'w', encoding='ascii') as f:
            f.write(recipe + '\n')
        return True


def _build_www(mirror_dir: str, plan: dict, *, log) -> None:
    t0 = time.monotonic()
    cache = os.path.join(mirror_dir, 'debs')
    os.makedirs(cache, exist_ok=True)
    with open(keyring_path(mirror_dir), 'wb') as f:
        f.write(_export(_key_home(mirror_dir)))
    new = _www(mirror_dir) + '.new'
    shutil.rmtree(new, ignore_errors=True)
    used = set()
    count = 0
    for rel, (label, pkgs) in sorted(plan['repos'].items()):
        debs = [p.path if isinstance(p, DebianDeb) else _build_deb(p, cache) for p in pkgs]
        used.update(os.path.dirname(d) for d in debs)
        count += len(debs)
        _write_repo(os.path.join(new, rel), pkgs, debs, home=_key_home(mirror_dir),
                    label=label)
        if rel.startswith('compute/'):
            _sign(os.path.join(new, rel), home=_other_key_home(mirror_dir),
                  out=os.path.join(new, 'faults', 'bad-signature', rel))
    for rel, pkg in plan['keyrings'].items():
        deb = _build_deb(pkg, cache)
        used.add(os.path.dirname(deb))
        os.makedirs(os.path.dirname(os.path.join(new, rel)), exist_ok=True)
        os.link(deb, os.path.join(new, rel))
    for rel, data in plan['files'].items():
        os.makedirs(os.path.dirname(os.path.join(new, rel)), exist_ok=True)
        with open(os.path.join(new, rel), 'wb') as f:
            f.write(data)
    _write_pypi(os.path.join(new, PYPI_PATH), plan['pypi'])
    old = _www(mirror_dir) + '.old'
    shutil.rmtree(old, ignore_errors=True)
    if os.path.isdir(_www(mirror_dir)):
        os.rename(_www(mirror_dir), old)
    os.rename(new, _www(mirror_dir))
    shutil.rmtree(old, ignore_errors=True)
    for name in os.listdir(cache):
        if os.path.join(cache, name) not in used:
            shutil.rmtree(os.path.join(cache, name), ignore_errors=True)
    log('mirror: built %d repositories (%d packages) and a PyPI index (%d wheels) in %.1f s: %s'
        % (len(plan['repos']), count, len(plan['pypi']), time.monotonic() - t0, mirror_dir))


def guest_files(mirror_dir: str, *, url: str, distro: str, version: str) -> dict[str, bytes]:
    """Guest path (relative) -> content of what an instance needs to install from the mirror.

    The mirror's CA (the guest then runs ``update-ca-certificates``), pip's configuration (the
    mirror's PyPI index, through the system's CA store) and, for a Debian-family image, the apt
    source of the distribution repository (``linux-headers-<kernel>``, Debian's venv packages)
    with the key that signs it. *url*: the mirror's base URL as the guest reaches it.
    """
    with open(ca_cert_path(mirror_dir), 'rb') as f:
        out = {GUEST_CA: f.read()}
    out[GUEST_PIP_CONF] = ('# The local cloud\'s PyPI mirror (the instances reach no internet).\n'
                           '[global]\nindex-url = %s/%s/simple/\ncert = %s\n' % (
                               url.rstrip('/'), PYPI_PATH, GUEST_CA_STORE)).encode()
    repo = repo_for(distro, version)
    if repo in debian_repos() and _kernels(repo):
        with open(keyring_path(mirror_dir), 'rb') as f:
            out[GUEST_DISTRO_KEYRING] = f.read()
        out[GUEST_DISTRO_LIST] = ('deb [signed-by=/%s] %s/distro/%s/ /\n' % (
            GUEST_DISTRO_KEYRING, url.rstrip('/'), repo)).encode()
    return out


# ---------------------------------------------------------------------------------------------
# serve
# ---------------------------------------------------------------------------------------------

class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    server_version = 'heat-gpu-mirror'
    timeout = 60  # an idle keep-alive connection ends

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def log_request(self, code='-', size='-') -> None:
        pass  # one line per request in the access log, written by _serve

    def _serve(self, *, body: bool) -> None:
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        parts = [p for p in path.split('/') if p not in ('', '.')]  # apt asks for ./NAME.deb
        tag = fault = None
        if parts[:1] == ['tag'] and len(parts) > 1:
            tag, parts = parts[1], parts[2:]
        if parts[:1] == ['faults']:
            fault = parts[1] if len(parts) > 1 else ''
            parts = parts[2:]
        if fault is not None and fault not in FAULTS or '..' in parts:
            return self._reply(404, b'not found\n', tag=tag, body=body)
        if (fault == 'package-install-fails' and parts and parts[-1].endswith('.deb')
                and parts[-1] != KEYRING_DEB):
            return self._reply(503, b'the mirror is unavailable (fault package-install-fails)\n',
                               tag=tag, body=body)
        www = self.server.www
        candidates = [os.path.join(www, 'faults', fault, *parts)] if fault else []
        candidates.append(os.path.join(www, *parts))
        # A directory's index.html (the PyPI index's pages: pip asks for .../simple/<project>/).
        candidates = [os.path.join(c, 'index.html') if os.path.isdir(c) else c
                      for c in candidates]
        found = next((c for c in candidates if os.path.isfile(c)), None)
        if found is None:
            return self._reply(404, b'not found\n', tag=tag, body=body)
        stat = os.stat(found)
        since = self.headers.get('If-Modified-Since')
        if since:
            with contextlib.suppress(TypeError, ValueError):
                if int(stat.st_mtime) <= email.utils.parsedate_to_datetime(since).timestamp():
                    return self._reply(304, b'', tag=tag, body=False, mtime=stat.st_mtime)
        with open(found, 'rb') as f:
            data = f.read()
        if fault == 'tampered':
            data += TAMPERED_TAIL
        self._reply(200, data, tag=tag, body=body, mtime=stat.st_mtime,
                    ctype=_content_type(found))

    def _reply(self, status: int, data: bytes, *, tag: str | None, body: bool,
               mtime: float | None = None, ctype: str = 'text/plain') -> None:
        self.send_response(status)
        if status != 304:
            self.send_header('Content-Type', ctype)
            self.send_header('Content-Length', str(len(data)))
        if mtime is not None:
            self.send_header('Last-Modified', email.utils.formatdate(mtime, usegmt=True))
        self.end_headers()
        sent = 0
        if body and status != 304:
            self.wfile.write(data)
            sent = len(data)
        self.server.log_access({
            'time': round(time.time(), 3), 'client': self.client_address[0],
            'method': self.command, 'path': self.path, 'status': status, 'bytes': sent,
            'tag': tag, 'agent': self.headers.get('User-Agent', '')})


def _content_type(path: str) -> str:
    if path.endswith('.deb'):
        return 'application/vnd.debian.binary-package'
    if path.endswith('.html'):
        return 'text/html; charset=utf-8'  # pip reads an index page only as text/html
    return 'application/octet-stream'


class MirrorServer(http.server.ThreadingHTTPServer):
    """HTTPS on 127.0.0.1 for the mirror's www/; the TLS handshake runs in each request's thread."""

    daemon_threads = True

    def __init__(self, mirror_dir: str, port: int) -> None:
        self.www = _www(mirror_dir)
        self.log_path = access_log_path(mirror_dir)
        self._log_lock = threading.Lock()
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(os.path.join(_tls_dir(mirror_dir), 'server.crt'),
                                     os.path.join(_tls_dir(mirror_dir), 'server.key'))
        super().__init__(('127.0.0.1', port), _Handler)

    @property
    def url(self) -> str:
        return 'https://127.0.0.1:%d' % self.server_address[1]

    def finish_request(self, request, client_address) -> None:
        request.settimeout(_Handler.timeout)
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return  # a client that does not speak TLS, or trusts not the mirror's CA
        try:
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            tls.close()

    def log_access(self, entry: dict) -> None:
        line = json.dumps(entry, sort_keys=True) + '\n'
        with self._log_lock, open(self.log_path, 'a', encoding='utf-8') as f:
            f.write(line)


def access_log_path(mirror_dir: str) -> str:
    """One JSON object a line per request: time, client, method, path, status, bytes, tag, agent."""
    return os.path.join(mirror_dir, 'access.log')


def make_server(mirror_dir: str, port: int) -> MirrorServer:
    """The mirror's HTTPS server on 127.0.0.1:*port* (0: a free port), not yet serving."""
    if not is_built(mirror_dir):
        raise RuntimeError('mirror: %s is not built; run: python %s build --dir %s'
                           % (mirror_dir, os.path.relpath(__file__, REPO), mirror_dir))
    return MirrorServer(os.path.abspath(mirror_dir), port)


def serve(mirror_dir: str, port: int) -> None:
    """Serve the mirror on https://127.0.0.1:*port*/ until the process ends."""
    server = make_server(mirror_dir, port)
    print('mirror: serving %s/ from %s' % (server.url, server.www), flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest='command', required=True)
    b = sub.add_parser('build', help='build the mirror (a no-op when it is up to date)')
    b.add_argument('--dir', required=True)
    s = sub.add_parser('serve', help='serve a built mirror on https://127.0.0.1:PORT/')
    s.add_argument('--dir', required=True)
    s.add_argument('--port', type=int, required=True, help='0: a free port (printed)')
    f = sub.add_parser('fingerprint', help="print the signing key's fingerprint")
    f.add_argument('--dir', required=True)
    args = parser.parse_args(argv)
    if args.command == 'build':
        if not build(args.dir, log=lambda m: print(m, file=sys.stderr)):
            print('mirror: up to date: %s' % os.path.abspath(args.dir), file=sys.stderr)
    elif args.command == 'serve':
        serve(args.dir, args.port)
    else:
        print(key_fingerprint(args.dir))
    return 0


if __name__ == '__main__':
    sys.exit(main())
