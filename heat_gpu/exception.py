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

"""Errors raised by heat-gpu, each with a message a user can act on.

Every error carries the keyword arguments it was built with as attributes, so callers (the Heat
resources, the CLI) can turn them into their own error types without parsing the message.
"""

from typing import Any, Iterable, Optional

from oslo_log import log as logging

LOG = logging.getLogger(__name__)


def _accepted(values: Iterable[Any]) -> str:
    return ', '.join(str(v) for v in values)


class HeatGpuError(Exception):
    """Base class of every heat-gpu error.

    Subclasses set ``msg_fmt``; the keyword arguments fill it and are kept as attributes.
    """

    msg_fmt = 'An unknown heat-gpu error occurred.'

    def __init__(self, message: Optional[str] = None, **kwargs: Any) -> None:
        self.kwargs = kwargs
        for key, value in kwargs.items():
            setattr(self, key, value)
        if message is None:
            try:
                message = self.msg_fmt % kwargs
            except (KeyError, TypeError, ValueError):
                LOG.exception('Could not format the %(cls)s message with %(kw)s',
                              {'cls': type(self).__name__, 'kw': kwargs})
                message = self.msg_fmt
        self.message = message
        super().__init__(message)

    def __str__(self) -> str:
        return self.message


class InvalidGpuRequest(HeatGpuError):
    """A GPU request (flavor properties or extra specs) breaks a rule.

    ``prop`` names the property or extra spec key, ``value`` the bad value and ``accepted`` what
    would be accepted.
    """

    msg_fmt = 'Invalid value %(value)r for %(prop)s: %(accepted)s.'

    def __init__(self, *, prop: str, value: Any, accepted: str) -> None:
        super().__init__(prop=prop, value=value, accepted=accepted)


class UnknownGpuModel(HeatGpuError):
    """A model key, alias or PCI id is not in the catalog."""

    msg_fmt = ('Unknown GPU model %(value)r for %(prop)s; accepted: %(accepted)s '
               '(keys, aliases or PCI ids of the heat-gpu catalog; operators can map their own '
               'alias names with the [heat_gpu] alias_map option).')

    def __init__(self, *, value: Any, prop: str = 'gpu_model',
                 known: Iterable[str] = ()) -> None:
        super().__init__(value=value, prop=prop, accepted=_accepted(known) or 'none loaded',
                         known=tuple(known))


class FlavorHasNoGpu(HeatGpuError):
    """A flavor chosen for a GPU instance requests no GPU."""

    msg_fmt = ('Flavor %(flavor)s requests no GPU: its extra specs have neither '
               '"pci_passthrough:alias" (PCI passthrough) nor "resources:VGPU" (vGPU). '
               'Choose a GPU flavor, or ask the cloud operator to create one (OS::GPU::Flavor).')

    def __init__(self, *, flavor: str) -> None:
        super().__init__(flavor=flavor)


class UnsupportedCudaVersion(HeatGpuError):
    """A CUDA version cannot build for, or run on, the GPU."""

    msg_fmt = ('CUDA %(version)s does not support %(model)s (%(reason)s); accepted: '
               '%(accepted)s, or "auto".')

    def __init__(self, *, version: str, model: str, reason: str, accepted: str) -> None:
        super().__init__(version=version, model=model, reason=reason, accepted=accepted)


class BootstrapFailed(HeatGpuError):
    """The guest reported that installing or verifying the driver and CUDA failed."""

    msg_fmt = 'GPU bootstrap failed in phase %(phase)s: %(reason)s'

    def __init__(self, *, phase: str, reason: str, log_tail: Iterable[str] = ()) -> None:
        super().__init__(phase=phase, reason=reason, log_tail=list(log_tail))


class BootstrapTimeout(BootstrapFailed):
    """The guest did not report a final status in time."""

    msg_fmt = ('GPU bootstrap did not finish within %(timeout)s s (last phase: %(phase)s); '
               'raise bootstrap_timeout or check the console log of the server.')

    def __init__(self, *, phase: str, timeout: int) -> None:
        HeatGpuError.__init__(self, phase=phase, timeout=timeout,
                              reason='timeout after %s s' % timeout, log_tail=[])


class SampleJobFailed(HeatGpuError):
    """One or more GPU sample programs failed or fell below their threshold."""

    msg_fmt = 'GPU sample job failed: %(reason)s'

    def __init__(self, *, reason: str, results: Iterable[Any] = ()) -> None:
        super().__init__(reason=reason, results=list(results))


class PciIdsUnavailable(HeatGpuError):
    """The system PCI id database could not be read."""

    msg_fmt = ('Cannot read the PCI id database %(path)s: %(reason)s; install the pci.ids '
               'package or set [heat_gpu] pci_ids_path (or HEAT_GPU_PCI_IDS).')

    def __init__(self, *, path: str, reason: str) -> None:
        super().__init__(path=path, reason=reason)


class InvalidSampleOutput(HeatGpuError):
    """The sample runner's output is not the JSON document heat-gpu expects.

    ``field`` is the path of the offending part (``samples[2].ratio``), ``value`` what was found
    and ``accepted`` what would have been accepted.
    """

    msg_fmt = ('Sample runner output is malformed: %(field)s is %(value)s; accepted: '
               '%(accepted)s.')

    def __init__(self, *, field: str, value: Any, accepted: str) -> None:
        text = repr(value)
        if len(text) > 120:
            text = text[:117] + '...'
        super().__init__(field=field, value=text, accepted=accepted)
