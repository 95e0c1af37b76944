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

"""Configuration options of heat-gpu: the ``[heat_gpu]`` group of heat.conf.

The options are registered on ``oslo_config.cfg.CONF`` when this module is imported, so the
resources and the CLI read them as ``cfg.CONF.heat_gpu.<name>``. ``list_opts`` feeds
oslo-config-generator (namespace ``heat_gpu``).
"""

import os
from typing import Optional

from oslo_config import cfg
from oslo_config import types
from oslo_log import log as logging

LOG = logging.getLogger(__name__)

GROUP = 'heat_gpu'

#: Environment variable that overrides the PCI id database path (beats the option).
PCI_IDS_ENV = 'HEAT_GPU_PCI_IDS'

#: Where Debian/Ubuntu (pci.ids package) and Fedora/RHEL (hwdata) install the PCI id database.
DEFAULT_PCI_IDS_PATHS = (
    '/usr/share/misc/pci.ids',
    '/usr/share/hwdata/pci.ids',
    '/usr/share/pci.ids',
)

#: The default of trusted_keyring_fingerprints as the help text shows it; a unit test checks that
#: it names heat_gpu.cuda.NVIDIA_REPO_KEY_FINGERPRINTS (imported lazily: cuda imports catalog,
#: which imports this module).
DEFAULT_KEYRING_FINGERPRINTS_TEXT = 'EB693B3035CD5710E231E123A4B469963BF863CC'

heat_gpu_group = cfg.OptGroup(
    name=GROUP,
    title='heat-gpu options',
    help='Options of the heat-gpu resource plugin (OS::GPU::Flavor, OS::GPU::CudaInstance, '
         'OS::GPU::SampleJob).')

heat_gpu_opts = [
    cfg.StrOpt(
        'pci_ids_path',
        help='Path of the PCI id database (pci.ids) used to name GPUs that are not in the '
             'heat-gpu catalog. When unset, the HEAT_GPU_PCI_IDS environment variable is used, '
             'then the first existing file of: %s.' % ', '.join(DEFAULT_PCI_IDS_PATHS)),
    cfg.StrOpt(
        'default_cuda_version',
        default='auto',
        regex=r'^(auto|\d+\.\d+)$',
        help='CUDA version installed when an OS::GPU::CudaInstance leaves cuda_version unset: '
             '"auto" (the newest CUDA line that still supports the GPU) or MAJOR.MINOR, '
             'e.g. 12.4.'),
    cfg.StrOpt(
        'default_driver_branch',
        default='auto',
        regex=r'^(auto|\d{3})$',
        help='NVIDIA driver branch installed when an OS::GPU::CudaInstance leaves driver_branch '
             'unset: "auto" (the branch that matches the CUDA version) or a branch number, '
             'e.g. 550.'),
    cfg.IntOpt(
        'bootstrap_timeout',
        default=3600,
        min=60,
        max=86400,
        help='Seconds an OS::GPU::CudaInstance waits for its guest to report that the driver '
             'and CUDA are installed and verified, when the template does not say.'),
    cfg.IntOpt(
        'api_outage_tolerance',
        default=300,
        min=0,
        max=3600,
        help='Seconds an OS::GPU::CudaInstance keeps waiting for its server to become ACTIVE '
             'while the Compute API cannot be reached or answers 502/503/504 (a nova-api '
             'restart or a load balancer failover), before the resource fails. 0 fails at the '
             'first such error, as OS::Nova::Server does.'),
    cfg.IntOpt(
        'no_valid_host_retries',
        default=2,
        min=0,
        max=10,
        help='How often an OS::GPU::CudaInstance lets heat delete its server and boot a new one '
             'when nova finds no host for its GPU flavor, before it fails (heat\'s '
             'action_retry_limit still caps it). Nova\'s scheduler claims only the first '
             'allocation candidate of each host, so GPU servers scheduled at the same moment can '
             'lose a device to each other while others are free; a request that no host can '
             'hold fails only after these retries, so keep it small.'),
    cfg.IntOpt(
        'server_poll_interval',
        default=10,
        min=1,
        max=600,
        help='Seconds between two requests of an OS::GPU::CudaInstance to nova for the status '
             'of its server while the server builds. A new report from the guest makes it ask '
             'at once, so the interval does not delay a successful create; it only delays '
             'noticing a server that nova put into ERROR. OS::Nova::Server asks about once a '
             'second; with dozens of servers building at the same time that load slows '
             'nova-api.'),
    cfg.FloatOpt(
        'sample_min_ratio',
        default=0.8,
        min=0.0,
        max=1.0,
        help='Default fraction of the expected figure (bandwidth, throughput) a GPU sample '
             'program must reach to pass, when an OS::GPU::SampleJob does not set min_ratio.'),
    cfg.IntOpt(
        'sample_timeout',
        default=1800,
        min=30,
        max=86400,
        help='Seconds an OS::GPU::SampleJob waits for its results, when the template does '
             'not say.'),
    cfg.URIOpt(
        'mirror_url',
        schemes=['https', 'http'],
        help='Base URL of a mirror of the NVIDIA driver and CUDA downloads, for clouds whose '
             'instances cannot reach the internet. Used when an OS::GPU::CudaInstance leaves '
             'mirror_url unset; unset means the NVIDIA download sites.'),
    cfg.ListOpt(
        'trusted_keyring_fingerprints',
        item_type=types.String(regex=r'^[0-9A-Fa-f]{40}$'),
        help='OpenPGP fingerprints (40 hex digits, no blanks) of the keys an instance accepts in '
             'the keyring of NVIDIA\'s cuda-keyring package (Debian and Ubuntu guests): the boot '
             'script refuses to install a cuda-keyring whose keyring holds any other key, so a '
             'mirror or proxy cannot bring its own repository key. Unset means the key NVIDIA '
             'signs its CUDA repositories with, %s (key id 3bf863cc). A list replaces that '
             'default: to add the key of a mirror that re-signs the repository, list both.'
             % DEFAULT_KEYRING_FINGERPRINTS_TEXT),
    cfg.DictOpt(
        'alias_map',
        default={},
        help='Maps PCI alias names of this cloud (nova [pci] alias "name") to heat-gpu catalog '
             'keys, for aliases whose names do not say the GPU model, e.g. '
             '"gpu-big:A100-SXM4-80GB,gpu-small:T4".'),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    """Register the ``[heat_gpu]`` options on *conf* (safe to call more than once)."""
    conf.register_group(heat_gpu_group)
    conf.register_opts(heat_gpu_opts, group=heat_gpu_group)


def list_opts() -> list[tuple[cfg.OptGroup, list[cfg.Opt]]]:
    """Return the options for oslo-config-generator (entry point ``oslo.config.opts``)."""
    return [(heat_gpu_group, list(heat_gpu_opts))]


def pci_ids_candidates(*, conf: Optional[cfg.ConfigOpts] = None) -> list[str]:
    """Return the PCI id database paths to try, in order.

    An explicit setting (the environment variable, then the option) is the only candidate, so a
    wrong path is reported instead of silently falling back to the system file.
    """
    conf = conf if conf is not None else cfg.CONF
    env = os.environ.get(PCI_IDS_ENV)
    if env:
        return [env]
    configured = conf.heat_gpu.pci_ids_path
    if configured:
        return [configured]
    return list(DEFAULT_PCI_IDS_PATHS)


def trusted_keyring_fingerprints(*, conf: Optional[cfg.ConfigOpts] = None) -> list[str]:
    """Return the trusted cuda-keyring fingerprints, upper case.

    The ``[heat_gpu] trusted_keyring_fingerprints`` option, else NVIDIA's repository key
    (``heat_gpu.cuda.NVIDIA_REPO_KEY_FINGERPRINTS``).
    """
    from heat_gpu import cuda
    conf = conf if conf is not None else cfg.CONF
    configured = conf.heat_gpu.trusted_keyring_fingerprints
    if not configured:
        return list(cuda.NVIDIA_REPO_KEY_FINGERPRINTS)
    return [f.upper() for f in configured]


def alias_map(*, conf: Optional[cfg.ConfigOpts] = None) -> dict[str, str]:
    """Return the operator's alias -> catalog key map (``[heat_gpu] alias_map``)."""
    conf = conf if conf is not None else cfg.CONF
    return dict(conf.heat_gpu.alias_map or {})


register_opts(cfg.CONF)
