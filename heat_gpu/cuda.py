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

"""CUDA version, driver branch, kernel-module flavour and install method for a GPU.

Plain Python, no Heat import. The facts:

* ``CUDA_RELEASES``: every CUDA toolkit line heat-gpu installs, with the minimum Linux x86_64
  driver of its GA release (NVIDIA CUDA Toolkit release notes, table "CUDA Toolkit and
  Corresponding Driver Versions"), the driver branch NVIDIA ships it with, the runfile of its
  latest update (``cuda_<version>_<driver>_linux.run``) and the lowest compute capability it
  still builds for: CUDA 12.0 dropped Kepler (sm_35/sm_37), CUDA 13.0 dropped Maxwell, Pascal and
  Volta (below sm_75).
* Minor version compatibility (NVIDIA "CUDA Compatibility"): a 12.x toolkit runs on any driver
  >= 525, a 13.x toolkit on any driver >= 580.
* Driver branch 580 is the last to support Maxwell, Pascal and Volta GPUs.
* NVIDIA's open kernel modules drive Turing and newer only (catalog ``open_kernel_modules``);
  NVIDIA made them the default from branch 560 on.

``auto`` picks the newest CUDA line the GPU supports, and the boot script falls back to an older
candidate when the guest's distribution has no packages of the newest (e.g. RHEL 7 ends at 12.4).
"""

import dataclasses
import re
from typing import Any, Optional, Union

from heat_gpu import catalog
from heat_gpu import exception

AUTO = 'auto'
OPEN = 'open'
PROPRIETARY = 'proprietary'
KERNEL_MODULES = (AUTO, OPEN, PROPRIETARY)
PACKAGES = 'packages'
RUNFILE = 'runfile'
PREINSTALLED = 'preinstalled'
INSTALL_METHODS = (AUTO, PACKAGES, RUNFILE, PREINSTALLED)

#: First driver branch NVIDIA ships with the open kernel modules as the default flavour.
OPEN_DEFAULT_BRANCH = 560
#: First driver branch that has the open kernel modules at all.
OPEN_FIRST_BRANCH = 515
#: Last driver branch that supports Maxwell, Pascal and Volta GPUs.
LAST_BRANCH_BEFORE_TURING_ONLY = 580
#: Minor version compatibility: the lowest driver branch each CUDA major line runs on.
MAJOR_MIN_BRANCH = {11: 450, 12: 525, 13: 580}

#: OpenPGP fingerprints of the keys allowed in the keyring of NVIDIA's ``cuda-keyring`` package
#: (Debian/Ubuntu repositories). The boot script refuses to install a cuda-keyring whose keyring
#: holds any other key. The key that signs NVIDIA's CUDA repositories for Debian and Ubuntu since
#: NVIDIA's April 2022 announcement of the repository signing key rotation ("Updating the CUDA Linux
#: GPG Repository Key", key id 3bf863cc); cuda-keyring 1.1 ships it as
#: /usr/share/keyrings/cuda-archive-keyring.gpg. Operators replace or extend the list with the
#: ``[heat_gpu] trusted_keyring_fingerprints`` option.
NVIDIA_REPO_KEY_FINGERPRINTS = ('EB693B3035CD5710E231E123A4B469963BF863CC',)
#: The keyring package of NVIDIA's Debian/Ubuntu repositories.
KEYRING_PACKAGE = 'cuda-keyring_1.1-1_all.deb'


@dataclasses.dataclass(frozen=True)
class CudaRelease:
    """One CUDA toolkit line."""

    version: str            # MAJOR.MINOR
    min_driver: str         # minimum Linux x86_64 driver of the GA release
    branch: int             # the driver branch released with it
    runfile_version: str    # latest update, e.g. 12.8.1
    runfile_driver: str     # the driver inside that runfile
    min_cc: tuple[int, int]  # lowest compute capability it builds for
    dropped: str = ''       # what this line stopped supporting

    @property
    def major(self) -> int:
        return int(self.version.split('.')[0])

    @property
    def key(self) -> tuple[int, int]:
        return _vkey(self.version)

    @property
    def runfile(self) -> str:
        return 'cuda_%s_%s_linux.run' % (self.runfile_version, self.runfile_driver)

    @property
    def package_suffix(self) -> str:
        """``12-8`` as in the ``cuda-toolkit-12-8`` package."""
        return self.version.replace('.', '-')


CUDA_RELEASES = (
    CudaRelease('11.8', '520.61.05', 520, '11.8.0', '520.61.05', (3, 5)),
    CudaRelease('12.0', '525.60.13', 525, '12.0.1', '525.85.12', (5, 0),
                dropped='Kepler (sm_35, sm_37)'),
    CudaRelease('12.1', '530.30.02', 530, '12.1.1', '530.30.02', (5, 0)),
    CudaRelease('12.2', '535.54.03', 535, '12.2.2', '535.104.05', (5, 0)),
    CudaRelease('12.3', '545.23.06', 545, '12.3.2', '545.23.08', (5, 0)),
    CudaRelease('12.4', '550.54.14', 550, '12.4.1', '550.54.15', (5, 0)),
    CudaRelease('12.5', '555.42.02', 555, '12.5.1', '555.42.06', (5, 0)),
    CudaRelease('12.6', '560.28.03', 560, '12.6.3', '560.35.05', (5, 0)),
    CudaRelease('12.8', '570.26', 570, '12.8.1', '570.124.06', (5, 0)),
    CudaRelease('12.9', '575.51.03', 575, '12.9.1', '575.57.08', (5, 0)),
    CudaRelease('13.0', '580.65.06', 580, '13.0.0', '580.65.06', (7, 5),
                dropped='Maxwell, Pascal and Volta (sm_50 to sm_72)'),
    CudaRelease('13.1', '590.44.01', 590, '13.1.0', '590.44.01', (7, 5)),
)
_BY_VERSION = {r.version: r for r in CUDA_RELEASES}

_VERSION_RE = re.compile(r'^\d+\.\d+$')
_BRANCH_RE = re.compile(r'^\d{3}$')


@dataclasses.dataclass(frozen=True)
class Selection:
    """What the boot script installs."""

    cuda_version: str
    driver_branch: str
    kernel_modules: str
    install_method: str
    cuda_auto: bool
    kernel_modules_auto: bool
    candidates: tuple[dict, ...]
    gpu_model: Optional[str]

    def guest_settings(self) -> dict[str, Any]:
        """The keys of the boot script's settings this selection decides."""
        return {
            'cuda_version': self.cuda_version,
            'driver_branch': self.driver_branch,
            'kernel_modules': self.kernel_modules,
            'kernel_modules_auto': self.kernel_modules_auto,
            'install_method': self.install_method,
            'cuda_auto': self.cuda_auto,
            'cuda_candidates': [dict(c) for c in self.candidates],
        }


def _vkey(version: str) -> tuple[int, int]:
    major, minor = version.split('.')
    return int(major), int(minor)


def releases() -> tuple[CudaRelease, ...]:
    """Every CUDA line heat-gpu knows, oldest first."""
    return CUDA_RELEASES


def release(version: str) -> Optional[CudaRelease]:
    """The CUDA line *version* (``MAJOR.MINOR``), or None."""
    return _BY_VERSION.get(version)


def min_driver(version: str) -> str:
    """The minimum Linux driver version of CUDA *version* (its GA release)."""
    rel = release(version)
    if rel is None:
        raise exception.InvalidGpuRequest(prop='cuda_version', value=version,
                                          accepted=_known_text())
    return rel.min_driver


def _known_text() -> str:
    return 'one of %s, or "auto"' % ', '.join(r.version for r in CUDA_RELEASES)


def _model_of(model: Union[catalog.GpuModel, str, None]) -> Optional[catalog.GpuModel]:
    if model is None or isinstance(model, catalog.GpuModel):
        return model
    return catalog.get(model)


def _model_name(model: Optional[catalog.GpuModel]) -> str:
    return model.key if model is not None else 'an unknown GPU'


def _runs_on(rel: CudaRelease, model: Optional[catalog.GpuModel]) -> Optional[str]:
    """None when *rel* supports *model*; else why not."""
    if model is None:
        return None if rel.major <= 12 and rel.min_cc <= (5, 0) else \
            'the GPU model is unknown, so only lines that build for every catalog GPU are chosen'
    cc = model.compute_capability_tuple
    if cc < rel.min_cc:
        return ('CUDA %s builds only for compute capability %d.%d and newer; %s is %s '
                '(%s, %s)%s' % (rel.version, rel.min_cc[0], rel.min_cc[1], model.key,
                                model.compute_capability, model.architecture, model.sm,
                                '; CUDA %s dropped %s' % (rel.version, rel.dropped)
                                if rel.dropped else ''))
    if rel.major > model.max_cuda_major:
        return 'CUDA %d.x does not support %s GPUs' % (rel.major, model.architecture)
    return None


def supported_versions(model: Union[catalog.GpuModel, str, None]) -> list[str]:
    """CUDA lines that build for and run on *model*, newest first."""
    model = _model_of(model)
    return [r.version for r in reversed(CUDA_RELEASES) if _runs_on(r, model) is None]


def check_cuda_version(version: str, model: Union[catalog.GpuModel, str, None], *,
                       prop: str = 'cuda_version') -> None:
    """Raise unless *version* (``auto`` or ``MAJOR.MINOR``) can be installed for *model*."""
    if version == AUTO:
        return
    if not isinstance(version, str) or not _VERSION_RE.match(version):
        raise exception.InvalidGpuRequest(prop=prop, value=version, accepted=_known_text())
    model = _model_of(model)
    rel = release(version)
    if rel is None:
        raise exception.InvalidGpuRequest(
            prop=prop, value=version,
            accepted='a CUDA release heat-gpu installs: %s, or "auto"' %
                     ', '.join(supported_versions(model)))
    why = _runs_on(rel, model) if model is not None else None
    if why:
        raise exception.UnsupportedCudaVersion(
            version=version, model=_model_name(model), reason=why,
            accepted=', '.join(supported_versions(model)) or 'none')


def _check_branch(branch: int, model: Optional[catalog.GpuModel], *, prop: str) -> None:
    if model is not None and not model.open_kernel_modules and \
            branch > LAST_BRANCH_BEFORE_TURING_ONLY:
        raise exception.InvalidGpuRequest(
            prop=prop, value=str(branch),
            accepted='a driver branch up to %d: branch %d and newer do not support %s GPUs '
                     'like %s' % (LAST_BRANCH_BEFORE_TURING_ONLY, LAST_BRANCH_BEFORE_TURING_ONLY
                                  + 1, model.architecture, model.key))


def select(*, gpu_model: Union[catalog.GpuModel, str, None] = None, cuda_version: str = AUTO,
           driver_branch: str = AUTO, kernel_modules: str = AUTO,
           install_method: str = AUTO) -> Selection:
    """Choose what to install for *gpu_model* (None: a GPU the catalog does not know).

    Raises InvalidGpuRequest / UnsupportedCudaVersion naming the property, the bad value and
    what would be accepted.
    """
    model = _model_of(gpu_model)
    cuda_version = cuda_version or AUTO
    driver_branch = str(driver_branch or AUTO)
    kernel_modules = kernel_modules or AUTO
    install_method = install_method or AUTO
    if kernel_modules not in KERNEL_MODULES:
        raise exception.InvalidGpuRequest(prop='kernel_modules', value=kernel_modules,
                                          accepted=', '.join(KERNEL_MODULES))
    if install_method not in INSTALL_METHODS:
        raise exception.InvalidGpuRequest(prop='install_method', value=install_method,
                                          accepted=', '.join(INSTALL_METHODS))
    if driver_branch != AUTO and not _BRANCH_RE.match(driver_branch):
        raise exception.InvalidGpuRequest(prop='driver_branch', value=driver_branch,
                                          accepted='"auto" or a three-digit driver branch, '
                                                   'e.g. 570')
    check_cuda_version(cuda_version, model)

    if cuda_version == AUTO:
        versions = supported_versions(model)
    else:
        versions = [cuda_version]
    rels = [_BY_VERSION[v] for v in versions]

    branch = None
    if driver_branch != AUTO:
        branch = int(driver_branch)
        _check_branch(branch, model, prop='driver_branch')
        fitting = [r for r in rels if r.branch <= branch and
                   MAJOR_MIN_BRANCH.get(r.major, 0) <= branch]
        if not fitting:
            lowest = min(r.branch for r in rels)
            raise exception.InvalidGpuRequest(
                prop='driver_branch', value=driver_branch,
                accepted='a branch of at least %d for CUDA %s (NVIDIA CUDA release notes, '
                         'minimum driver %s)' % (lowest, ', '.join(versions),
                                                 _BY_VERSION[versions[-1]].min_driver))
        rels = fitting

    if kernel_modules == OPEN:
        if model is not None and not model.open_kernel_modules:
            raise exception.InvalidGpuRequest(
                prop='kernel_modules', value=OPEN,
                accepted='proprietary or auto: NVIDIA\'s open kernel modules do not support '
                         '%s GPUs like %s (Turing and newer only)' % (model.architecture,
                                                                      model.key))
        if branch is not None and branch < OPEN_FIRST_BRANCH:
            raise exception.InvalidGpuRequest(
                prop='kernel_modules', value=OPEN,
                accepted='proprietary or auto with driver_branch %d (the open modules start '
                         'with branch %d)' % (branch, OPEN_FIRST_BRANCH))

    candidates = []
    for rel in rels:
        b = branch if branch is not None else rel.branch
        candidates.append({'cuda': rel.version, 'branch': str(b), 'runfile': rel.runfile,
                           'min_driver': rel.min_driver})
    first = candidates[0]
    modules = kernel_modules
    if modules == AUTO:
        open_ok = model is not None and model.open_kernel_modules
        modules = OPEN if open_ok and int(first['branch']) >= OPEN_DEFAULT_BRANCH \
            else PROPRIETARY
    method = PACKAGES if install_method == AUTO else install_method
    return Selection(cuda_version=first['cuda'], driver_branch=first['branch'],
                     kernel_modules=modules, install_method=method,
                     cuda_auto=cuda_version == AUTO, kernel_modules_auto=kernel_modules == AUTO,
                     candidates=tuple(candidates),
                     gpu_model=model.key if model is not None else None)
