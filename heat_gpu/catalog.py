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

"""Catalog of NVIDIA data-center GPUs: PCI id -> the facts heat-gpu decides with.

Plain Python, no Heat import. Every model is looked up case-insensitively by its key
(``P100-PCIE-16GB``), its default PCI alias (``p100``) or its PCI id (``10de:15f8``). GPUs that are
not in the catalog are named from the system PCI id database (``pci.ids``) by :func:`describe`,
without guessed figures.

Conventions for the figures:

* ``memory_mib`` is the nominal capacity of the datasheet (its "GB" times 1024); ``nvidia-smi``
  reports a few hundred MiB less (memory the driver reserves).
* ``memory_bandwidth_gbps`` is the datasheet peak in GB/s (10**9 bytes per second).
* ``fp32_tflops`` is the datasheet peak single-precision (non-tensor) throughput.
* ``pcie_gen`` / ``pcie_lanes`` are the host interface; SXM modules talk to the host over PCIe too.
* ``compute_capability``: NVIDIA's "CUDA GPUs - Compute Capability" table (developer.nvidia.com)
  and the CUDA C++ Programming Guide.
* ``name`` is the product name ``nvidia-smi --query-gpu=name`` prints for the board.
* ``open_kernel_modules``: NVIDIA's open GPU kernel modules support Turing and newer only
  (NVIDIA open-gpu-kernel-modules README, "supported GPUs"); Pascal and Volta need the proprietary
  modules.
* ``max_cuda_major``: CUDA 13.0 dropped building for compute capability below 7.5 (CUDA 13.0 release
  notes, "deprecated and dropped architectures"), so 12 is the last line for Pascal and Volta.
* PCI device ids: the ``pci.ids`` database (Debian package pci.ids) and NVIDIA's gpu-admin-tools
  ``devid_names`` table for ids newer than the 2023 pci.ids (L40S, H200).
"""

import dataclasses
import functools
import os
import re
from typing import Iterable, Optional, Union

from oslo_log import log as logging

from heat_gpu import config
from heat_gpu import exception

LOG = logging.getLogger(__name__)

NVIDIA_VENDOR_ID = '10de'

PASCAL = 'Pascal'
VOLTA = 'Volta'
TURING = 'Turing'
AMPERE = 'Ampere'
ADA = 'Ada Lovelace'
HOPPER = 'Hopper'
ARCHITECTURES = (PASCAL, VOLTA, TURING, AMPERE, ADA, HOPPER)

#: PCIe raw rate per lane in GT/s and the line-code efficiency (PCI-SIG base specifications:
#: Gen3 8 GT/s 128b/130b, Gen4 16 GT/s 128b/130b, Gen5 32 GT/s 128b/130b).
PCIE_GT_PER_LANE = {1: 2.5, 2: 5.0, 3: 8.0, 4: 16.0, 5: 32.0}
PCIE_ENCODING = {1: 8 / 10, 2: 8 / 10, 3: 128 / 130, 4: 128 / 130, 5: 128 / 130}

#: Share of the theoretical PCIe rate a pinned host-to-device copy reaches in practice. Microway's
#: "Tesla P100 PCI-E 16GB up close" shows a CUDA bandwidthTest pinned H2D of about 11.7 GB/s on
#: PCIe Gen3 x16 (15.75 GB/s theoretical), i.e. 0.74; TLP headers and DMA overhead cost
#: the same share on Gen4 and Gen5.
H2D_EFFICIENCY = 0.75


@dataclasses.dataclass(frozen=True)
class GpuModel:
    """One GPU model of the catalog."""

    key: str
    device_id: str
    name: str
    architecture: str
    compute_capability: str
    memory_mib: int
    memory_bandwidth_gbps: float
    fp32_tflops: float
    pcie_gen: int
    pcie_lanes: int
    form_factor: str
    alias: str
    vendor_id: str = NVIDIA_VENDOR_ID

    @property
    def pci_id(self) -> str:
        """``vendor:device`` in lower-case hex, e.g. ``10de:15f8``."""
        return '%s:%s' % (self.vendor_id, self.device_id)

    @property
    def compute_capability_tuple(self) -> tuple[int, int]:
        major, minor = self.compute_capability.split('.')
        return int(major), int(minor)

    @property
    def sm(self) -> str:
        """The nvcc architecture name, e.g. ``sm_60``."""
        return 'sm_%d%d' % self.compute_capability_tuple

    @property
    def open_kernel_modules(self) -> bool:
        """Whether NVIDIA's open kernel modules drive this GPU (Turing and newer)."""
        return self.architecture not in (PASCAL, VOLTA)

    @property
    def max_cuda_major(self) -> int:
        """The newest CUDA major line that still builds for this GPU."""
        return 12 if self.compute_capability_tuple < (7, 5) else 13

    def as_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data.update(pci_id=self.pci_id, sm=self.sm,
                    open_kernel_modules=self.open_kernel_modules,
                    max_cuda_major=self.max_cuda_major)
        return data


_MODELS = (
    # NVIDIA "Tesla P100 PCIe" data sheet: 12 GB CoWoS HBM2 549 GB/s or 16 GB 732 GB/s,
    # 9.3 TFLOPS FP32, PCIe Gen3 x16. Compute capability 6.0. "Tesla P100 for NVLink-optimized
    # servers" data sheet: SXM2 16 GB, 732 GB/s, 10.6 TFLOPS FP32.
    GpuModel(key='P100-PCIE-12GB', device_id='15f7', name='Tesla P100-PCIE-12GB',
             architecture=PASCAL, compute_capability='6.0', memory_mib=12 * 1024,
             memory_bandwidth_gbps=549, fp32_tflops=9.3, pcie_gen=3, pcie_lanes=16,
             form_factor='PCIe', alias='p100-12g'),
    GpuModel(key='P100-PCIE-16GB', device_id='15f8', name='Tesla P100-PCIE-16GB',
             architecture=PASCAL, compute_capability='6.0', memory_mib=16 * 1024,
             memory_bandwidth_gbps=732, fp32_tflops=9.3, pcie_gen=3, pcie_lanes=16,
             form_factor='PCIe', alias='p100'),
    GpuModel(key='P100-SXM2-16GB', device_id='15f9', name='Tesla P100-SXM2-16GB',
             architecture=PASCAL, compute_capability='6.0', memory_mib=16 * 1024,
             memory_bandwidth_gbps=732, fp32_tflops=10.6, pcie_gen=3, pcie_lanes=16,
             form_factor='SXM2', alias='p100-sxm2'),
    # NVIDIA "Tesla V100 GPU Accelerator" data sheet: PCIe 14 TFLOPS / SXM2 15.7 TFLOPS FP32,
    # 16 or 32 GB HBM2 at 900 GB/s, PCIe Gen3 x16. Compute capability 7.0.
    GpuModel(key='V100-PCIE-16GB', device_id='1db4', name='Tesla V100-PCIE-16GB',
             architecture=VOLTA, compute_capability='7.0', memory_mib=16 * 1024,
             memory_bandwidth_gbps=900, fp32_tflops=14.0, pcie_gen=3, pcie_lanes=16,
             form_factor='PCIe', alias='v100'),
    GpuModel(key='V100-PCIE-32GB', device_id='1db6', name='Tesla V100-PCIE-32GB',
             architecture=VOLTA, compute_capability='7.0', memory_mib=32 * 1024,
             memory_bandwidth_gbps=900, fp32_tflops=14.0, pcie_gen=3, pcie_lanes=16,
             form_factor='PCIe', alias='v100-32g'),
    GpuModel(key='V100-SXM2-16GB', device_id='1db1', name='Tesla V100-SXM2-16GB',
             architecture=VOLTA, compute_capability='7.0', memory_mib=16 * 1024,
             memory_bandwidth_gbps=900, fp32_tflops=15.7, pcie_gen=3, pcie_lanes=16,
             form_factor='SXM2', alias='v100-sxm2'),
    GpuModel(key='V100-SXM2-32GB', device_id='1db5', name='Tesla V100-SXM2-32GB',
             architecture=VOLTA, compute_capability='7.0', memory_mib=32 * 1024,
             memory_bandwidth_gbps=900, fp32_tflops=15.7, pcie_gen=3, pcie_lanes=16,
             form_factor='SXM2', alias='v100-sxm2-32g'),
    # NVIDIA "V100S" data sheet: 32 GB HBM2 at 1134 GB/s, 16.4 TFLOPS FP32, PCIe Gen3 x16.
    GpuModel(key='V100S-PCIE-32GB', device_id='1df6', name='Tesla V100S-PCIE-32GB',
             architecture=VOLTA, compute_capability='7.0', memory_mib=32 * 1024,
             memory_bandwidth_gbps=1134, fp32_tflops=16.4, pcie_gen=3, pcie_lanes=16,
             form_factor='PCIe', alias='v100s'),
    # NVIDIA "T4 Tensor Core GPU" data sheet: 16 GB GDDR6 at 320 GB/s, 8.1 TFLOPS FP32,
    # PCIe Gen3 x16. Compute capability 7.5.
    GpuModel(key='T4', device_id='1eb8', name='Tesla T4',
             architecture=TURING, compute_capability='7.5', memory_mib=16 * 1024,
             memory_bandwidth_gbps=320, fp32_tflops=8.1, pcie_gen=3, pcie_lanes=16,
             form_factor='PCIe', alias='t4'),
    # NVIDIA "A10 Tensor Core GPU" data sheet: 24 GB GDDR6 at 600 GB/s, 31.2 TFLOPS FP32,
    # PCIe Gen4 x16. Compute capability 8.6.
    GpuModel(key='A10', device_id='2236', name='NVIDIA A10',
             architecture=AMPERE, compute_capability='8.6', memory_mib=24 * 1024,
             memory_bandwidth_gbps=600, fp32_tflops=31.2, pcie_gen=4, pcie_lanes=16,
             form_factor='PCIe', alias='a10'),
    # NVIDIA "A30 Tensor Core GPU" data sheet: 24 GB HBM2 at 933 GB/s, 10.3 TFLOPS FP32,
    # PCIe Gen4 x16. Compute capability 8.0.
    GpuModel(key='A30', device_id='20b7', name='NVIDIA A30',
             architecture=AMPERE, compute_capability='8.0', memory_mib=24 * 1024,
             memory_bandwidth_gbps=933, fp32_tflops=10.3, pcie_gen=4, pcie_lanes=16,
             form_factor='PCIe', alias='a30'),
    # NVIDIA "A40" data sheet: 48 GB GDDR6 at 696 GB/s, 37.4 TFLOPS FP32, PCIe Gen4 x16.
    # Compute capability 8.6.
    GpuModel(key='A40', device_id='2235', name='NVIDIA A40',
             architecture=AMPERE, compute_capability='8.6', memory_mib=48 * 1024,
             memory_bandwidth_gbps=696, fp32_tflops=37.4, pcie_gen=4, pcie_lanes=16,
             form_factor='PCIe', alias='a40'),
    # NVIDIA "A100 Tensor Core GPU" data sheet: 19.5 TFLOPS FP32; 40 GB HBM2 1555 GB/s;
    # 80 GB HBM2e 1935 GB/s (PCIe) / 2039 GB/s (SXM); PCIe Gen4 x16. Compute capability 8.0.
    GpuModel(key='A100-PCIE-40GB', device_id='20f1', name='NVIDIA A100-PCIE-40GB',
             architecture=AMPERE, compute_capability='8.0', memory_mib=40 * 1024,
             memory_bandwidth_gbps=1555, fp32_tflops=19.5, pcie_gen=4, pcie_lanes=16,
             form_factor='PCIe', alias='a100'),
    GpuModel(key='A100-PCIE-80GB', device_id='20b5', name='NVIDIA A100 80GB PCIe',
             architecture=AMPERE, compute_capability='8.0', memory_mib=80 * 1024,
             memory_bandwidth_gbps=1935, fp32_tflops=19.5, pcie_gen=4, pcie_lanes=16,
             form_factor='PCIe', alias='a100-80g'),
    GpuModel(key='A100-SXM4-40GB', device_id='20b0', name='NVIDIA A100-SXM4-40GB',
             architecture=AMPERE, compute_capability='8.0', memory_mib=40 * 1024,
             memory_bandwidth_gbps=1555, fp32_tflops=19.5, pcie_gen=4, pcie_lanes=16,
             form_factor='SXM4', alias='a100-sxm4'),
    GpuModel(key='A100-SXM4-80GB', device_id='20b2', name='NVIDIA A100-SXM4-80GB',
             architecture=AMPERE, compute_capability='8.0', memory_mib=80 * 1024,
             memory_bandwidth_gbps=2039, fp32_tflops=19.5, pcie_gen=4, pcie_lanes=16,
             form_factor='SXM4', alias='a100-sxm4-80g'),
    # NVIDIA "L4 Tensor Core GPU" data sheet: 24 GB GDDR6 at 300 GB/s, 30.3 TFLOPS FP32,
    # PCIe Gen4 x16. Compute capability 8.9.
    GpuModel(key='L4', device_id='27b8', name='NVIDIA L4',
             architecture=ADA, compute_capability='8.9', memory_mib=24 * 1024,
             memory_bandwidth_gbps=300, fp32_tflops=30.3, pcie_gen=4, pcie_lanes=16,
             form_factor='PCIe', alias='l4'),
    # NVIDIA "L40S GPU" data sheet: 48 GB GDDR6 at 864 GB/s, 91.6 TFLOPS FP32, PCIe Gen4 x16.
    # Compute capability 8.9.
    GpuModel(key='L40S', device_id='26b9', name='NVIDIA L40S',
             architecture=ADA, compute_capability='8.9', memory_mib=48 * 1024,
             memory_bandwidth_gbps=864, fp32_tflops=91.6, pcie_gen=4, pcie_lanes=16,
             form_factor='PCIe', alias='l40s'),
    # NVIDIA "H100 Tensor Core GPU" data sheet: SXM 80 GB HBM3 at 3.35 TB/s, 67 TFLOPS FP32;
    # PCIe 80 GB HBM2e at 2 TB/s, 51 TFLOPS FP32; both PCIe Gen5 x16. Compute capability 9.0.
    GpuModel(key='H100-PCIE-80GB', device_id='2331', name='NVIDIA H100 PCIe',
             architecture=HOPPER, compute_capability='9.0', memory_mib=80 * 1024,
             memory_bandwidth_gbps=2000, fp32_tflops=51.0, pcie_gen=5, pcie_lanes=16,
             form_factor='PCIe', alias='h100'),
    GpuModel(key='H100-SXM5-80GB', device_id='2330', name='NVIDIA H100 80GB HBM3',
             architecture=HOPPER, compute_capability='9.0', memory_mib=80 * 1024,
             memory_bandwidth_gbps=3350, fp32_tflops=67.0, pcie_gen=5, pcie_lanes=16,
             form_factor='SXM5', alias='h100-sxm5'),
    # NVIDIA "H200 Tensor Core GPU" data sheet: H200 SXM 141 GB HBM3e at 4.8 TB/s, 67 TFLOPS
    # FP32, PCIe Gen5 x16. Compute capability 9.0.
    GpuModel(key='H200-SXM5-141GB', device_id='2335', name='NVIDIA H200',
             architecture=HOPPER, compute_capability='9.0', memory_mib=141 * 1024,
             memory_bandwidth_gbps=4800, fp32_tflops=67.0, pcie_gen=5, pcie_lanes=16,
             form_factor='SXM5', alias='h200'),
)

_BY_KEY = {m.key.lower(): m for m in _MODELS}
_BY_ALIAS = {m.alias.lower(): m for m in _MODELS}
_BY_PCI_ID = {m.pci_id: m for m in _MODELS}

_PCI_ID_RE = re.compile(r'^(?:0x)?([0-9a-f]{4})[:.](?:0x)?([0-9a-f]{4})$')
_NVSMI_DEVICE_ID_RE = re.compile(r'^0x([0-9a-f]{4})([0-9a-f]{4})$')


def models() -> tuple[GpuModel, ...]:
    """Return every model of the catalog, in catalog order."""
    return _MODELS


def keys() -> list[str]:
    """Return every model key, in catalog order."""
    return [m.key for m in _MODELS]


def aliases() -> list[str]:
    """Return every default alias, in catalog order."""
    return [m.alias for m in _MODELS]


def normalize_pci_id(pci_id: str) -> Optional[str]:
    """Return ``vvvv:dddd`` (lower case) for a PCI id, or None when it is not one.

    Accepts ``10de:15f8``, ``10DE:15F8``, ``0x10de:0x15f8`` and the ``pci.device_id`` form of
    ``nvidia-smi`` (``0x15F810DE``: device id in the high half).
    """
    if not isinstance(pci_id, str):
        return None
    text = pci_id.strip().lower()
    match = _PCI_ID_RE.match(text)
    if match:
        return '%s:%s' % match.groups()
    match = _NVSMI_DEVICE_ID_RE.match(text)
    if match:
        device, vendor = match.groups()
        return '%s:%s' % (vendor, device)
    return None


def by_key(key: str) -> Optional[GpuModel]:
    """Return the model whose key is *key* (case-insensitive), or None."""
    return _BY_KEY.get(key.strip().lower()) if isinstance(key, str) else None


def by_alias(alias: str) -> Optional[GpuModel]:
    """Return the model whose default alias is *alias* (case-insensitive), or None."""
    return _BY_ALIAS.get(alias.strip().lower()) if isinstance(alias, str) else None


def by_pci_id(pci_id: str) -> Optional[GpuModel]:
    """Return the model with PCI id *pci_id* (any form :func:`normalize_pci_id` takes)."""
    normalized = normalize_pci_id(pci_id)
    return _BY_PCI_ID.get(normalized) if normalized else None


def find(ident: Union[str, GpuModel]) -> Optional[GpuModel]:
    """Return the model that *ident* names as key, alias or PCI id, or None."""
    if isinstance(ident, GpuModel):
        return ident
    return by_key(ident) or by_alias(ident) or by_pci_id(ident)


def get(ident: Union[str, GpuModel], *, prop: str = 'gpu_model') -> GpuModel:
    """Return the model *ident* names; raise UnknownGpuModel (naming *prop*) when none."""
    model = find(ident)
    if model is None:
        raise exception.UnknownGpuModel(value=ident, prop=prop, known=keys())
    return model


# The PCI id database.

@dataclasses.dataclass(frozen=True)
class GpuDescription:
    """What heat-gpu knows about a PCI id.

    ``source`` is ``catalog`` (``model`` set, every figure known), ``pci.ids`` (only the name,
    from the system database; ``model`` is None and no figure is guessed) or ``unknown``.
    """

    pci_id: str
    name: Optional[str]
    source: str
    model: Optional[GpuModel] = None
    vendor_name: Optional[str] = None

    @property
    def known(self) -> bool:
        """True when the catalog has figures for this GPU."""
        return self.model is not None


def pci_ids_path(*, path: Optional[str] = None) -> Optional[str]:
    """Return the PCI id database to read, or None when there is none.

    *path* wins, else the configured one, else the first existing default path.
    """
    candidates = [path] if path else config.pci_ids_candidates()
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    if path or len(candidates) == 1:
        LOG.warning('PCI id database %s not found; set [heat_gpu] pci_ids_path or %s',
                    candidates[0], config.PCI_IDS_ENV)
    return None


@functools.lru_cache(maxsize=8)
def _read_pci_ids(path: str, mtime: float) -> dict[str, tuple[str, dict[str, str]]]:
    """Parse *path* into ``{vendor: (vendor name, {device: device name})}``.

    ``mtime`` is only part of the cache key, so an updated file is read again.
    """
    vendors: dict[str, tuple[str, dict[str, str]]] = {}
    devices: Optional[dict[str, str]] = None
    with open(path, encoding='utf-8', errors='replace') as stream:
        for line in stream:
            if not line.strip() or line.startswith('#'):
                continue
            if line.startswith('C '):
                break  # the device class list follows the vendors; it names no device
            if line.startswith('\t\t'):
                continue  # subsystem
            if line.startswith('\t'):
                if devices is not None:
                    dev_id, _, dev_name = line.strip().partition(' ')
                    devices[dev_id.lower()] = dev_name.strip()
                continue
            vendor_id, _, vendor_name = line.strip().partition(' ')
            devices = {}
            vendors[vendor_id.lower()] = (vendor_name.strip(), devices)
    return vendors


def lookup_pci_ids(pci_id: str, *,
                   path: Optional[str] = None) -> tuple[Optional[str], Optional[str]]:
    """Return ``(vendor name, device name)`` of *pci_id* from the PCI id database.

    Either is None when the database, the vendor or the device is absent.
    """
    normalized = normalize_pci_id(pci_id)
    db_path = pci_ids_path(path=path)
    if normalized is None or db_path is None:
        return None, None
    try:
        vendors = _read_pci_ids(db_path, os.stat(db_path).st_mtime)
    except OSError as exc:
        LOG.warning('Cannot read the PCI id database %s: %s', db_path, exc)
        return None, None
    vendor_id, device_id = normalized.split(':')
    vendor_name, devices = vendors.get(vendor_id, (None, {}))
    return vendor_name, devices.get(device_id)


def describe(pci_id: str, *, path: Optional[str] = None) -> GpuDescription:
    """Describe the GPU with PCI id *pci_id*.

    Catalog models come with every figure; other ids are named from the PCI id database (at
    *path*, the configured path or the system one) and marked unknown to the catalog; ids found
    nowhere are reported as unknown.
    """
    normalized = normalize_pci_id(pci_id)
    if normalized is None:
        return GpuDescription(pci_id=str(pci_id), name=None, source='unknown')
    model = _BY_PCI_ID.get(normalized)
    if model is not None:
        return GpuDescription(pci_id=normalized, name=model.name, source='catalog', model=model,
                              vendor_name='NVIDIA Corporation')
    vendor_name, device_name = lookup_pci_ids(normalized, path=path)
    if device_name:
        return GpuDescription(pci_id=normalized, name=device_name, source='pci.ids',
                              vendor_name=vendor_name)
    return GpuDescription(pci_id=normalized, name=None, source='unknown', vendor_name=vendor_name)


# Figures the sample programs compare against.

def pcie_theoretical_gbps(*, gen: int, lanes: int) -> float:
    """Theoretical one-direction PCIe rate in GB/s for a link of *gen* and *lanes*."""
    if gen not in PCIE_GT_PER_LANE:
        raise ValueError('PCIe generation %r; accepted: %s' % (gen, sorted(PCIE_GT_PER_LANE)))
    if lanes not in (1, 2, 4, 8, 16, 32):
        raise ValueError('PCIe lanes %r; accepted: 1, 2, 4, 8, 16, 32' % (lanes,))
    return PCIE_GT_PER_LANE[gen] * PCIE_ENCODING[gen] * lanes / 8


def expected_h2d_gbps(model: Union[str, GpuModel], *, efficiency: float = H2D_EFFICIENCY) -> float:
    """Host-to-device copy rate (GB/s, pinned memory) a healthy *model* reaches.

    The theoretical rate of its PCIe link times *efficiency* (see ``H2D_EFFICIENCY``).
    """
    gpu = get(model)
    return round(pcie_theoretical_gbps(gen=gpu.pcie_gen, lanes=gpu.pcie_lanes) * efficiency, 2)


def memory_bandwidth_gbps(model: Union[str, GpuModel]) -> float:
    """Datasheet peak memory bandwidth of *model* in GB/s."""
    return float(get(model).memory_bandwidth_gbps)


def fp32_tflops(model: Union[str, GpuModel]) -> float:
    """Datasheet peak FP32 throughput of *model* in TFLOPS."""
    return float(get(model).fp32_tflops)


def by_architecture(architecture: str) -> list[GpuModel]:
    """Return the models of *architecture* (case-insensitive)."""
    wanted = architecture.strip().lower()
    return [m for m in _MODELS if m.architecture.lower() == wanted]


def match_name(name: str, *, candidates: Iterable[GpuModel] = _MODELS) -> Optional[GpuModel]:
    """Return the model whose ``nvidia-smi`` name is *name* (case-insensitive), or None."""
    wanted = name.strip().lower()
    for model in candidates:
        if model.name.lower() == wanted:
            return model
    return None
