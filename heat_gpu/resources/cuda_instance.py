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

"""OS::GPU::CudaInstance: a Nova server on a GPU flavor that installs and proves CUDA."""

import base64
import collections.abc
import dataclasses
import datetime
import json
import re
from typing import Any, Optional
import urllib.parse

from keystoneauth1 import exceptions as ks_exceptions
from oslo_config import cfg
from oslo_log import log as logging
from oslo_utils import timeutils
from oslo_utils import uuidutils
import yaml

from heat.common import exception
from heat.engine import attributes
from heat.engine import constraints
from heat.engine import properties
from heat.engine import resource
from heat.engine.resources.openstack.nova import server
from heat.engine import support
from heat.objects import resource_data as resource_data_objects

from heat_gpu import catalog
from heat_gpu import config
from heat_gpu import cuda
from heat_gpu import exception as gpu_exception
from heat_gpu import gpu_request
from heat_gpu import heat_compat
from heat_gpu import overlay
from heat_gpu import resource_state
from heat_gpu import userdata

LOG = logging.getLogger(__name__)

heat_compat.serialize_yaql_parsing()

_Server = server.Server

#: Statuses the guest sends (doc/architecture.md "Signal body").
GUEST_STATUSES = (GUEST_IN_PROGRESS, GUEST_SUCCESS, GUEST_FAILURE) = (
    'IN_PROGRESS', 'SUCCESS', 'FAILURE')

#: Statuses after which the guest has nothing more to say.
_FINAL_STATUSES = (GUEST_SUCCESS, GUEST_FAILURE)
#: Resource data key holding the guest's last signal, one JSON object (status, reason, report,
#: seq) written atomically (heat_gpu.resource_state): any engine worker may handle a signal.
_GUEST_KEY = 'gpu_guest'
#: Keys earlier releases kept the same facts in, one row each; read for resources they created.
_STATUS_KEY, _REASON_KEY, _REPORT_KEY = 'gpu_status', 'gpu_reason', 'gpu_report'
#: Resource data key holding what the flavor asks for: gpu_mode, gpu_count, gpu_model.
_FACTS_KEY = 'gpu_request'
#: Resource data key counting "No valid host" failures of the current create.
_NO_HOST_KEY = 'gpu_no_valid_host'

_SHA256_RE = re.compile(r'^[0-9a-fA-F]{64}$')
_CUDA_RE = r'^(auto|\d+\.\d+)$'
_BRANCH_RE = r'^(auto|\d{3})$'
LOG_TAIL_LINES = 20
#: What nova's scheduler puts in the server fault when no host can take the flavor.
_NO_VALID_HOST = 'No valid host'


class _Pattern(constraints.AllowedPattern):
    """An allowed_pattern constraint whose error names the refused value besides the rule."""

    @classmethod
    def _name(cls) -> str:
        return 'allowed_pattern'

    def validate(self, value: Any, schema: Any = None, context: Any = None) -> None:
        if not self._is_valid(value, schema, context):
            raise ValueError('%r is not accepted; accepted: %s' % (
                value, self.description or self._str()))


@dataclasses.dataclass
class _BootWait:
    """What check_create_complete polls: the server, the deadline and whether it is ACTIVE."""

    server_id: str
    deadline: datetime.datetime
    timeout: int
    active: bool = False
    # When the Compute API first failed to answer in the current outage (None: it answers).
    outage_since: Optional[datetime.datetime] = None
    # When nova is asked next for the server's status, and the guest status it was last asked at.
    next_server_check: Optional[datetime.datetime] = None
    guest_status_at_check: Optional[str] = None


class CudaInstance(_Server):
    """A Nova server on a GPU flavor that installs the NVIDIA driver and CUDA and proves them.

    Every property of OS::Nova::Server applies. The flavor must request a GPU (a PCI passthrough
    alias or a vGPU); that is checked before the server is booted. At first boot the instance
    detects its GPUs, installs the driver and CUDA (or finds them in a pre-baked image), reboots
    when needed, and verifies the GPU; the resource reaches CREATE_COMPLETE only after the guest
    reports success. Each phase appears as a stack event; a failure reports the guest's reason and
    the last lines of its log. The guest needs cloud-init, bash and python3, and reaches the
    Keystone and Heat APIs (the credentials are those of a user Heat creates for this resource
    only). The instance also runs the heat-gpu agent, so software deployments and
    OS::GPU::SampleJob work on it.
    """

    support_status = support.SupportStatus(
        status=support.SUPPORTED,
        message='Provided by the heat-gpu plugin (heat_gpu/resources in plugin_dirs).')

    PROPERTIES = (
        CUDA_VERSION, DRIVER_BRANCH, INSTALL_METHOD, KERNEL_MODULES, MIRROR_URL,
        KEYRING_FINGERPRINTS, CHECKSUMS, BOOTSTRAP_TIMEOUT, GPU_MODEL,
    ) = (
        'cuda_version', 'driver_branch', 'install_method', 'kernel_modules', 'mirror_url',
        'keyring_fingerprints', 'checksums', 'bootstrap_timeout', 'gpu_model',
    )

    INSTALL_METHODS = ('auto', 'packages', 'runfile', 'preinstalled')
    KERNEL_MODULE_FLAVOURS = ('auto', 'open', 'proprietary')

    ATTRIBUTES = (
        GPUS, GPU_COUNT, DRIVER_VERSION, CUDA_VERSION_ATTR, PHASE_TIMES, BOOTSTRAP_STATUS,
        FAILURE_REASON, LOG_TAIL,
    ) = (
        'gpus', 'gpu_count', 'driver_version', 'cuda_version', 'phase_times',
        'bootstrap_status', 'failure_reason', 'log_tail',
    )

    properties_schema = dict(_Server.properties_schema)
    properties_schema.update({
        _Server.USER_DATA_FORMAT: properties.Schema(
            properties.Schema.STRING,
            'How the user data is formatted: always SOFTWARE_CONFIG, so the boot script and '
            'the heat-gpu agent run and software deployments work. The tenant\'s user_data is '
            'kept as its own part.',
            default=_Server.SOFTWARE_CONFIG,
            constraints=[constraints.AllowedValues([_Server.SOFTWARE_CONFIG])]),
        _Server.USER_DATA: properties.Schema(
            properties.Schema.STRING,
            'The tenant\'s own user data for cloud-init (a #cloud-config document, a script '
            'starting with #!, a MIME multipart, or the ID of a software config), run beside '
            'the boot script. Nova takes at most 65535 bytes of base64 user data, and the boot '
            'script, its files and heat\'s own parts take most of that: user data that would '
            'go over is refused at validation, naming how much fits (about 7 KB of ASCII). '
            'Larger content belongs in the image, in an OS::Heat::SoftwareDeployment or in a '
            'download at boot. Changes replace the server by default (user_data_update_policy).',
            default='',
            update_allowed=True),
        _Server.SOFTWARE_CONFIG_TRANSPORT: properties.Schema(
            properties.Schema.STRING,
            'How the server receives its software configuration: always POLL_SERVER_HEAT '
            '(the Heat API with the credentials of this resource\'s stack user).',
            default=_Server.POLL_SERVER_HEAT,
            constraints=[constraints.AllowedValues([_Server.POLL_SERVER_HEAT])]),
        _Server.FLAVOR_UPDATE_POLICY: properties.Schema(
            properties.Schema.STRING,
            'What a flavor update does: REPLACE the server (the new server installs and '
            'proves CUDA on the GPUs of the new flavor, so gpus and the sample results '
            'describe them) or RESIZE it (nova moves it to the new flavor without a new '
            'bootstrap: gpus and the other GPU attributes keep describing the first boot).',
            default='REPLACE',
            constraints=[constraints.AllowedValues(['REPLACE', 'RESIZE'])],
            update_allowed=True),
        _Server.USER_DATA_UPDATE_POLICY: properties.Schema(
            properties.Schema.STRING,
            'What a user_data update does: REPLACE the server (which installs CUDA again) or '
            'IGNORE the change. REBUILD is not offered: it would drop the boot script.',
            default='REPLACE',
            constraints=[constraints.AllowedValues(['REPLACE', 'IGNORE'])],
            update_allowed=True),
        CUDA_VERSION: properties.Schema(
            properties.Schema.STRING,
            'CUDA toolkit version to install: "auto" (the newest line the GPU supports) or '
            'MAJOR.MINOR, e.g. 12.4. Default: the [heat_gpu] default_cuda_version option '
            '(auto).',
            constraints=[_Pattern(
                _CUDA_RE, description='"auto" or MAJOR.MINOR, e.g. 12.4')]),
        DRIVER_BRANCH: properties.Schema(
            properties.Schema.STRING,
            'NVIDIA driver branch: "auto" (matches the CUDA version) or a branch number, '
            'e.g. 550. Default: the [heat_gpu] default_driver_branch option (auto).',
            constraints=[_Pattern(
                _BRANCH_RE, description='"auto" or a three-digit branch, e.g. 550')]),
        INSTALL_METHOD: properties.Schema(
            properties.Schema.STRING,
            'How to install: "packages" (NVIDIA\'s distribution repositories), "runfile" '
            '(the NVIDIA .run installer), "preinstalled" (the image has them; only verify) '
            'or "auto" (pre-installed when nvidia-smi works, else packages where NVIDIA '
            'publishes them for the distribution, else the runfile). The runfile runs as root, '
            'so "runfile" needs its SHA-256 in checksums (refused at validation otherwise).',
            default='auto',
            constraints=[constraints.AllowedValues(INSTALL_METHODS)]),
        KERNEL_MODULES: properties.Schema(
            properties.Schema.STRING,
            'NVIDIA kernel modules: "open", "proprietary" or "auto" (open where the GPU '
            'supports them, Turing and newer; proprietary for Pascal and Volta).',
            default='auto',
            constraints=[constraints.AllowedValues(KERNEL_MODULE_FLAVOURS)]),
        MIRROR_URL: properties.Schema(
            properties.Schema.STRING,
            'Base URL (https://) of a mirror of the NVIDIA repositories and installers, for clouds '
            'whose instances cannot reach the internet. Default: the [heat_gpu] mirror_url '
            'option; unset means NVIDIA\'s own sites.'),
        KEYRING_FINGERPRINTS: properties.Schema(
            properties.Schema.LIST,
            'OpenPGP fingerprints (40 hex digits) of the repository keys the guest accepts in '
            'the cuda-keyring package of mirror_url (Debian and Ubuntu images): the boot script '
            'refuses a keyring that holds any other key. Set it for a mirror that re-signs '
            'NVIDIA\'s repositories with a key of its own. Default: the [heat_gpu] '
            'trusted_keyring_fingerprints option (NVIDIA\'s key unless the operator changed it).',
            schema=properties.Schema(
                properties.Schema.STRING,
                constraints=[_Pattern(
                    r'^[0-9A-Fa-f]{40}$',
                    description='an OpenPGP fingerprint of 40 hex digits without blanks, e.g. '
                                'EB693B3035CD5710E231E123A4B469963BF863CC')])),
        CHECKSUMS: properties.Schema(
            properties.Schema.MAP,
            'SHA-256 checksums (64 hex digits) of downloaded files, keyed by file name, '
            'e.g. {"cuda_12.4.1_550.54.15_linux.run": "367d2299..."}. A download whose '
            'checksum differs stops the install. Required for the CUDA runfile (NVIDIA lists '
            'checksums on the runfile\'s download page): the guest refuses to run a runfile '
            'whose checksum is not given. Optional for cuda-keyring_1.1-1_all.deb, whose '
            'keyring is checked anyway against the [heat_gpu] trusted_keyring_fingerprints '
            'option.',
            default={}),
        BOOTSTRAP_TIMEOUT: properties.Schema(
            properties.Schema.INTEGER,
            'Seconds to wait for the guest to report that the driver and CUDA work, counted '
            'from the server create request. Default: the [heat_gpu] bootstrap_timeout '
            'option (3600).',
            constraints=[constraints.Range(60, 86400)]),
        GPU_MODEL: properties.Schema(
            properties.Schema.STRING,
            'Catalog key of the GPU model (e.g. P100-PCIE-16GB), for a flavor whose PCI alias '
            'or vGPU request does not name one. Used to choose and check the CUDA version.'),
    })

    attributes_schema = dict(_Server.attributes_schema)
    attributes_schema.update({
        GPUS: attributes.Schema(
            'GPUs the guest sees: a list of maps with index, name, pci_address, memory_mib, '
            'uuid and pci_id.',
            type=attributes.Schema.LIST),
        GPU_COUNT: attributes.Schema(
            'Number of GPUs the guest sees.', type=attributes.Schema.INTEGER),
        DRIVER_VERSION: attributes.Schema(
            'Installed NVIDIA driver version, e.g. 550.163.01.', type=attributes.Schema.STRING),
        CUDA_VERSION_ATTR: attributes.Schema(
            'Installed CUDA toolkit version, e.g. 12.4.', type=attributes.Schema.STRING),
        PHASE_TIMES: attributes.Schema(
            'Seconds spent in each boot phase (detect, prepare-kernel, install-driver, reboot, '
            'install-cuda, verify).', type=attributes.Schema.MAP),
        BOOTSTRAP_STATUS: attributes.Schema(
            'Last status the guest reported: IN_PROGRESS, SUCCESS or FAILURE; empty before '
            'the first report.', type=attributes.Schema.STRING),
        FAILURE_REASON: attributes.Schema(
            'What failed and what to do, when the guest reported FAILURE.',
            type=attributes.Schema.STRING),
        LOG_TAIL: attributes.Schema(
            'Last lines of the guest\'s bootstrap log, from its latest report.',
            type=attributes.Schema.LIST),
    })

    signal_needs_metadata_updates = False

    # A guest FAILURE or a timeout raises exception.Error, not ResourceInError: Heat would delete
    # and re-create the server action_retry_limit times, repeating an install that takes an hour
    # and fails the same way. Nova's "No valid host" for the GPU flavor stays a ResourceInError,
    # retried like OS::Nova::Server's: nova's scheduler claims only the first allocation candidate
    # of each host, so servers scheduled together can all reach for one GPU and fail while others
    # are free. Only [heat_gpu] no_valid_host_retries times, though (heat's action_retry_limit,
    # 5 by default, with its growing pauses makes a request no host can hold fail minutes late).

    def validate(self) -> None:
        super().validate()
        self._validate_download_settings()
        self._validate_tenant_cloud_config()
        request = (self._gpu_request(missing_flavor_ok=True) if self.properties[self.FLAVOR]
                   else None)
        tenant_user_data = self.properties[self.USER_DATA]
        # A software config's id is read at create (and checked there, before the boot).
        if request is not None and not uuidutils.is_uuid_like(tenant_user_data or ''):
            self._check_user_data_size(request, tenant_user_data or None,
                                       self._signal_target(placeholder=True))

    def handle_create(self) -> _BootWait:
        request = self._gpu_request(missing_flavor_ok=False)
        for key in (_STATUS_KEY, _REASON_KEY, _REPORT_KEY):
            self.data_delete(key)
        # A create retried after "No valid host" starts a new guest: forget the last one's.
        resource_state.update(self.context, self.id, _GUEST_KEY, lambda current: {})
        model = self._model(request)
        self.data_set(_FACTS_KEY, json.dumps({
            'gpu_mode': request.mode, 'gpu_count': request.count,
            'gpu_model': model.key if model else None,
            'flavor': str(self.properties[self.FLAVOR]),
            'gpu_specs': request.to_extra_specs()}))
        self._create_transport_credentials(self.properties)
        tenant_user_data = self.properties[self.USER_DATA]
        if tenant_user_data and uuidutils.is_uuid_like(tenant_user_data):
            tenant_user_data = self.get_software_config(tenant_user_data)
        signal = self._signal_target()
        user_data = self._check_user_data_size(request, tenant_user_data or None, signal)
        timeout = self._bootstrap_timeout()
        deadline = timeutils.utcnow() + datetime.timedelta(seconds=timeout)
        with overlay.properties_overridden(self, {self.USER_DATA: user_data}):
            server_id = super().handle_create()
        LOG.info('%s (stack %s): server %s created; waiting up to %d s for its guest',
                 self.name, self.stack.id, server_id, timeout)
        return _BootWait(server_id=server_id, deadline=deadline, timeout=timeout)

    def handle_signal(self, details: Any = None) -> str:
        """Record a guest's signal: the newest one is the resource's state, every one an event.

        Signals may reach heat in any order and more than once (heat-api hands each to any
        worker of any engine without waiting for the last one; the guest retries its final
        signal, and a retry may overtake a slow first try), while another worker polls this
        resource. The guest numbers its signals (report ``seq``), and the check and the write
        are one atomic step (heat_gpu.resource_state):

        - a number seen before is a repeat: ignored;
        - progress older than the recorded signal, or after the final status, is history: it
          becomes an event, the recorded state stays;
        - after a final status (SUCCESS, FAILURE) another final one is ignored;
        - a signal without a number (a guest of an earlier release) counts in arrival order.
        """
        status, reason, report = self._parse_signal(details)
        seq = report.get('seq')
        if not isinstance(seq, int) or isinstance(seq, bool):
            seq = None
        outcome = []

        def decide(current: Optional[dict]) -> Optional[dict]:
            current = current or {}
            stored, stored_seq = current.get('status'), current.get('seq')
            seen = set(current.get('seen') or ())
            if seq is not None and seq in seen:
                outcome.append('ignored: signal %d was recorded already' % seq)
                return None
            late = None
            if stored in _FINAL_STATUSES:
                if seq is None or status != GUEST_IN_PROGRESS:
                    outcome.append('ignored: the guest already reported %s' % stored)
                    return None
                late = 'after %s' % stored
            elif (status == GUEST_IN_PROGRESS and seq is not None
                  and isinstance(stored_seq, int) and seq < stored_seq):
                # (A final status is the guest's last word whatever its number.)
                late = 'after signal %d' % stored_seq
            if seq is not None:
                seen.add(seq)
            if late:
                outcome.append('recorded as history (it came %s)' % late)
                return dict(current, seen=sorted(seen))
            outcome.append('recorded')
            return {'status': status, 'reason': reason, 'report': report, 'seq': seq,
                    'seen': sorted(seen)}

        resource_state.update(self.context, self.id, _GUEST_KEY, decide)
        phase = report.get('phase') or 'boot'
        LOG.info('%s (stack %s): guest signal %s (phase %s, seq %s) %s',
                 self.name, self.stack.id, status, phase, seq, outcome[0])
        if outcome[0].startswith('ignored'):
            raise resource.NoActionRequired(res_name=self.name, reason=outcome[0])
        if status == GUEST_IN_PROGRESS:
            # The number shows the guest's order where heat's events are in another one.
            return 'phase %s%s%s' % (phase, ': %s' % reason if reason else '',
                                     ' (signal %d)' % seq if seq is not None else '')
        if status == GUEST_SUCCESS:
            return 'GPU ready: driver %s, CUDA %s, %d GPU(s)%s' % (
                report.get('driver_version'), report.get('cuda_version'),
                len(report.get('gpus') or []), ', %s' % reason if reason else '')
        return self._failure_text(reason, report)

    def check_create_complete(self, wait: _BootWait) -> bool:
        status, reason, report = self._guest_state()
        if status == GUEST_FAILURE:
            raise exception.Error(self._failure_text(reason, report))
        if not wait.active and self._server_check_due(wait, status):
            wait.active = self._server_active(wait)
        if wait.active and status == GUEST_SUCCESS:
            return True
        if timeutils.utcnow() > wait.deadline:
            error = gpu_exception.BootstrapTimeout(phase=report.get('phase') or 'boot',
                                                   timeout=wait.timeout)
            raise exception.Error(str(error))
        return False

    def _server_check_due(self, wait: _BootWait, guest_status: Optional[str]) -> bool:
        """Whether to ask nova for the server now.

        Every [heat_gpu] server_poll_interval seconds, and at once when the guest reported
        something new: a guest that reports is running, and its SUCCESS must not wait.
        """
        now = timeutils.utcnow()
        news = guest_status is not None and guest_status != wait.guest_status_at_check
        if not news and wait.next_server_check is not None and now < wait.next_server_check:
            return False
        wait.guest_status_at_check = guest_status
        wait.next_server_check = now + datetime.timedelta(
            seconds=cfg.CONF.heat_gpu.server_poll_interval)
        return True

    def _server_active(self, wait: _BootWait) -> bool:
        """Whether nova has the server ACTIVE; a short Compute API outage only means "not yet".

        A nova-api restart while the server builds would otherwise fail a stack whose server
        and guest are fine. The outage is tolerated for [heat_gpu] api_outage_tolerance seconds.
        """
        try:
            active = super().check_create_complete(wait.server_id)
        except exception.ResourceInError as ex:
            if _NO_VALID_HOST not in str(ex):
                raise
            text = self._no_gpu_host_text(ex.kwargs.get('status_reason') or str(ex))
            failures = self._count_no_host_failure()
            if failures > cfg.CONF.heat_gpu.no_valid_host_retries:
                raise exception.Error('%s (%d attempt(s); [heat_gpu] no_valid_host_retries)'
                                      % (text, failures)) from ex
            raise exception.ResourceInError(resource_status='ERROR',
                                            status_reason=text) from ex
        except Exception as ex:
            if not _is_api_outage(ex):
                raise
            now = timeutils.utcnow()
            tolerance = cfg.CONF.heat_gpu.api_outage_tolerance
            if wait.outage_since is None:
                wait.outage_since = now
                LOG.warning('%s: the Compute API did not answer while server %s builds (%s); '
                            'waiting up to %d s for it to return', self.name, wait.server_id,
                            ex, tolerance)
            if (now - wait.outage_since).total_seconds() >= tolerance:
                raise exception.Error(
                    'The Compute API could not be reached for %d s while server %s was '
                    'building (last error: %s). The server may still exist: delete the stack '
                    'to remove it, check nova-api, and raise [heat_gpu] api_outage_tolerance '
                    'if restarts take longer.' % (tolerance, wait.server_id, ex)) from ex
            return False
        if wait.outage_since is not None:
            LOG.info('%s: the Compute API answers again after %d s', self.name,
                     (timeutils.utcnow() - wait.outage_since).total_seconds())
            wait.outage_since = None
        return active

    def _count_no_host_failure(self) -> int:
        """Count one more "No valid host" of this create (heat's retries included)."""
        traversal = self.stack.current_traversal or ''

        def bump(stored: Optional[dict]) -> dict:
            stored = stored or {}
            count = stored.get('count', 0) + 1 if stored.get('traversal') == traversal else 1
            return {'traversal': traversal, 'count': count}

        return resource_state.update(self.context, self.id, _NO_HOST_KEY, bump)[0]['count']

    def _resolve_attribute(self, name: str) -> Any:
        if name not in self.ATTRIBUTES:
            return super()._resolve_attribute(name)
        status, reason, report = self._guest_state()
        if name == self.BOOTSTRAP_STATUS:
            return status
        if name == self.FAILURE_REASON:
            return reason if status == GUEST_FAILURE else None
        if name == self.GPU_COUNT:
            return len(report['gpus']) if 'gpus' in report else None
        if name == self.PHASE_TIMES:
            return report.get('phases')
        return report.get(name)

    def gpu_facts(self) -> dict:
        """What OS::GPU::SampleJob needs: gpus (as reported), gpu_model, gpu_mode, gpu_count."""
        facts = json.loads(self._fresh_data().get(_FACTS_KEY) or '{}')
        facts['gpus'] = self._guest_state()[2].get('gpus') or []
        return facts

    def _no_gpu_host_text(self, nova_fault: str) -> str:
        """Nova's bare "No valid host" for a GPU flavor, as the GPU request it could not place."""
        facts = json.loads(self._fresh_data().get(_FACTS_KEY) or '{}')
        request = ', '.join('%s=%s' % item for item in sorted(
            (facts.get('gpu_specs') or {}).items())) or 'a GPU'
        value = facts.get('flavor') or str(self.properties[self.FLAVOR])
        try:
            name = self._flavor_name(self.client_plugin().get_flavor(value))
        except Exception as ex:
            LOG.debug('Flavor %s not readable for the error message: %s', value, ex)
            name = value
        shown = repr(value) if name == value else '%r (flavor %s)' % (value, name)
        return ('Invalid value %s for %s: no compute host has the %s GPU(s) it requests free '
                '(%s); nova: %s. Accepted: a flavor asking for no more GPUs than one host has '
                'free. Wait until GPUs are released, or ask the cloud operator whether a host '
                'has that many (nova [pci] device_spec and [pci] alias for passthrough, enabled '
                'vGPU types for vGPU) and PciPassthroughFilter is enabled.'
                % (shown, self.FLAVOR, facts.get('gpu_count') or 'requested', request,
                   nova_fault))

    def _flavor_name(self, flavor: Any) -> str:
        name = getattr(flavor, 'name', None)
        return name or str(self.properties[self.FLAVOR])

    def _gpu_request(self, *, missing_flavor_ok: bool) -> Optional[gpu_request.GpuRequest]:
        """Return the flavor's GPU request; raise StackValidationFailed when it has none."""
        flavor_id = self.properties[self.FLAVOR]
        try:
            flavor = self.client_plugin().get_flavor(flavor_id)
            specs = getattr(flavor, 'extra_specs', None)
            if not isinstance(specs, dict):
                specs = flavor.get_keys()
        except Exception as ex:
            if missing_flavor_ok and self.client_plugin().is_not_found(ex):
                return None
            raise
        try:
            request = gpu_request.parse_gpu_request(specs)
            if request is None:
                raise gpu_exception.FlavorHasNoGpu(flavor=self._flavor_name(flavor))
            self._check_cuda(request)
        except gpu_exception.HeatGpuError as ex:
            raise exception.StackValidationFailed(resource=self, message=str(ex))
        return request

    def _model(self, request: gpu_request.GpuRequest) -> Optional[catalog.GpuModel]:
        hint = self.properties[self.GPU_MODEL]
        if hint:
            return catalog.get(hint, prop=self.GPU_MODEL)
        return request.model

    def _check_cuda(self, request: gpu_request.GpuRequest) -> None:
        """Check the CUDA version, driver branch and module flavour against the GPU model."""
        choice = cuda.select(
            gpu_model=self._model(request),
            cuda_version=self._setting(self.CUDA_VERSION, 'default_cuda_version'),
            driver_branch=self._setting(self.DRIVER_BRANCH, 'default_driver_branch'),
            kernel_modules=self.properties[self.KERNEL_MODULES],
            install_method=self.properties[self.INSTALL_METHOD])
        if choice.install_method == cuda.RUNFILE:
            self._check_runfile_checksum(choice)

    def _check_runfile_checksum(self, choice: cuda.Selection) -> None:
        """The runfile runs as root in the guest: its sha256 must be in checksums."""
        checksums = self.properties[self.CHECKSUMS] or {}
        runfiles = [c['runfile'] for c in choice.candidates if c.get('runfile')]
        if not runfiles or any(r in checksums for r in runfiles):
            return
        raise gpu_exception.HeatGpuError(
            'Invalid value %r for %s: the guest runs the CUDA runfile as root only when its '
            'sha256 is known, and checksums does not name %s (the runfile of CUDA %s)%s. '
            'Accepted: add checksums: {%s: <sha256>} (NVIDIA lists checksums on the '
            'runfile\'s download page), or install_method packages or auto.'
            % (cuda.RUNFILE, self.INSTALL_METHOD, runfiles[0], choice.cuda_version,
               ' nor the runfile of another CUDA line cuda_version auto may pick'
               if len(runfiles) > 1 else '', runfiles[0]))

    def _validate_download_settings(self) -> None:
        mirror = self.properties[self.MIRROR_URL]
        if mirror is not None and not _is_https_base_url(mirror):
            raise exception.StackValidationFailed(
                resource=self,
                message='Invalid value %r for mirror_url: an https:// base URL with a host name '
                        'and no spaces, query or fragment is accepted, e.g. '
                        'https://mirror.example.com/nvidia (the downloads carry the driver the '
                        'guest runs as root).' % mirror)
        for name, digest in (self.properties[self.CHECKSUMS] or {}).items():
            if not isinstance(digest, str) or not _SHA256_RE.match(digest):
                raise exception.StackValidationFailed(
                    resource=self,
                    message='Invalid value %r for checksums.%s: a SHA-256 digest of 64 hex '
                            'digits is accepted.' % (digest, name))

    def _validate_tenant_cloud_config(self) -> None:
        """A tenant's ``#cloud-config`` user data must be a YAML mapping (cloud-init's rule)."""
        user_data = self.properties[self.USER_DATA]
        if not isinstance(user_data, str) or not user_data.lstrip().startswith('#cloud-config'):
            return
        problem = None
        try:
            document = yaml.safe_load(user_data)
        except yaml.YAMLError as ex:
            mark = getattr(ex, 'problem_mark', None)
            problem = 'it is not valid YAML (%s%s)' % (
                getattr(ex, 'problem', None) or type(ex).__name__,
                ' at line %d' % (mark.line + 1) if mark is not None else '')
        else:
            if document is not None and not isinstance(document, dict):
                problem = 'its YAML is a %s, not a mapping' % type(document).__name__
        if problem:
            first = user_data.strip().splitlines()[:3]
            raise exception.StackValidationFailed(
                resource=self,
                message='Invalid value %r for user_data: %s; a #cloud-config document that is '
                        'a YAML mapping of cloud-init modules is accepted, e.g. '
                        '"#cloud-config\\npackages: [htop]" (or a shell script starting '
                        'with #!).' % ('\n'.join(first), problem))

    def _setting(self, prop: str, option: str) -> Any:
        value = self.properties[prop]
        return value if value is not None else getattr(cfg.CONF.heat_gpu, option)

    def _bootstrap_timeout(self) -> int:
        return int(self._setting(self.BOOTSTRAP_TIMEOUT, 'bootstrap_timeout'))

    def _signal_target(self, *, placeholder: bool = False) -> dict:
        """HEAT_SIGNAL credentials of this resource's stack user (the polling user).

        ``placeholder``: values as long as the ones the create will have, for measuring the user
        data before the stack user exists (keystone ids are up to 64 characters, heat's
        generated passwords 32).
        """
        if placeholder:
            return {
                'transport': 'HEAT_SIGNAL',
                'auth_url': self.context.auth_url or 'https://keystone.example.com:5000/v3',
                'user_id': 'u' * 64,
                'password': 'p' * 32,
                'project_id': 'p' * 64,
                'stack_id': '%s/%s' % (self.stack.name, 'i' * 36),
                'resource_name': self.name,
                'region_name': self._get_region_name(),
            }
        return {
            'transport': 'HEAT_SIGNAL',
            'auth_url': self.keystone().server_keystone_endpoint_url(
                fallback_endpoint=self.context.auth_url),
            'user_id': self._get_user_id(),
            'password': self.password,
            'project_id': self.stack.stack_user_project_id,
            'stack_id': self.stack.identifier().stack_path(),
            'resource_name': self.name,
            'region_name': self._get_region_name(),
        }

    def _encoded_user_data_size(self, user_data: str, signal: dict) -> int:
        """Bytes of the base64 user data nova gets: *user_data* inside heat's own multipart.

        Heat's SOFTWARE_CONFIG format adds its cloud-config, boot hook and part handler, and the
        server's metadata (the polling credentials of *signal* among it) as cfn-init-data.
        """
        metadata = dict(self.t.metadata() or {})
        metadata.setdefault('deployments', [])
        metadata['os-collect-config'] = {
            'collectors': ['heat'],
            'heat': {k: v for k, v in signal.items() if k != 'transport'}}
        blob = self.client_plugin().build_userdata(
            metadata, user_data, instance_user=None, user_data_format=self.SOFTWARE_CONFIG)
        return len(base64.b64encode(blob.encode('utf-8')))

    def _check_user_data_size(self, request: gpu_request.GpuRequest,
                              tenant_user_data: Optional[str], signal: dict) -> str:
        """The user data this instance boots with; StackValidationFailed when nova refuses it."""
        settings = self._settings(request, signal=signal)
        user_data = userdata.build_user_data(settings=settings, tenant_user_data=tenant_user_data)
        size = self._encoded_user_data_size(user_data, signal)
        limit = userdata.NOVA_USER_DATA_LIMIT
        if size <= limit:
            return user_data
        ours = self._encoded_user_data_size(userdata.build_user_data(settings=settings), signal)
        tenant = tenant_user_data or ''
        tenant_bytes = len(tenant.encode('utf-8'))
        first = tenant.strip().split('\n', 1)[0]
        shown = repr(first[:60] + ('...' if len(first) > 60 else ''))
        if ours >= limit or not tenant_bytes:
            fits = ('no user_data fits: the boot script and heat\'s parts alone take %d bytes '
                    '(the resource\'s metadata goes into the user data too; keep it small)'
                    % ours)
        else:
            # The tenant's part grows as it did here (base64, MIME headers) when it shrinks.
            most = tenant_bytes * (limit - ours) // (size - ours)
            fits = 'a user_data of at most about %d bytes here' % most
        raise exception.StackValidationFailed(
            resource=self,
            message='Invalid value %s (%d bytes) for user_data: with the boot script, its '
                    'files and heat\'s own parts the user data would be %d bytes once '
                    'base64-encoded, and nova accepts at most %d (its API\'s limit on '
                    'user_data). Accepted: %s. Put large files into the image, deliver them '
                    'with an OS::Heat::SoftwareConfig and OS::Heat::SoftwareDeployment (they '
                    'reach the server through the Heat API, not the user data), or fetch them '
                    'at boot (e.g. a script that downloads them).'
                    % (shown, tenant_bytes, size, limit, fits))

    def _settings(self, request: gpu_request.GpuRequest, *,
                  signal: Optional[dict] = None) -> dict:
        model = self._model(request)
        return {
            'signal': signal if signal is not None else self._signal_target(),
            'cuda_version': self._setting(self.CUDA_VERSION, 'default_cuda_version'),
            'driver_branch': self._setting(self.DRIVER_BRANCH, 'default_driver_branch'),
            'install_method': self.properties[self.INSTALL_METHOD],
            'kernel_modules': self.properties[self.KERNEL_MODULES],
            'mirror_url': self._setting(self.MIRROR_URL, 'mirror_url'),
            'checksums': dict(self.properties[self.CHECKSUMS] or {}),
            'keyring_fingerprints': [f.upper() for f in
                                     self.properties[self.KEYRING_FINGERPRINTS] or
                                     config.trusted_keyring_fingerprints()],
            'gpu_model': model.key if model else None,
            'gpu_mode': request.mode,
            'gpu_count': request.count,
            'timeout': self._bootstrap_timeout(),
        }

    def _guest_state(self) -> tuple[Optional[str], Optional[str], dict]:
        """The guest's last status, reason and report, read fresh from the database."""
        data = self._fresh_data()
        if _GUEST_KEY in data:
            guest = resource_state.decode(data[_GUEST_KEY]) or {}
            report = guest.get('report') if isinstance(guest.get('report'), dict) else {}
            return guest.get('status'), guest.get('reason'), report
        try:
            report = json.loads(data.get(_REPORT_KEY) or '{}')
        except ValueError:
            report = {}
        return data.get(_STATUS_KEY), data.get(_REASON_KEY), report

    def _fresh_data(self) -> dict:
        """The resource data as stored now (signals arrive in other threads or engines)."""
        if self.id is None:
            return {}
        try:
            return resource_data_objects.ResourceData.get_all(self)
        except exception.NotFound:
            return {}

    def _parse_signal(self, details: Any) -> tuple[str, str, dict]:
        if not isinstance(details, collections.abc.Mapping):
            raise ValueError('Invalid signal body %r for %s: a JSON object with "status" (%s), '
                             '"reason" and "data" is accepted.'
                             % (details, self.name, ', '.join(GUEST_STATUSES)))
        status = details.get('status')
        if status not in GUEST_STATUSES:
            raise ValueError('Invalid value %r for the signal "status" of %s: one of %s is '
                             'accepted.' % (status, self.name, ', '.join(GUEST_STATUSES)))
        reason = str(details.get('reason') or '')
        data = details.get('data') or {}
        if isinstance(data, str):
            try:
                data = json.loads(data)
            except ValueError:
                raise ValueError('Invalid signal "data" for %s: a JSON-encoded object is '
                                 'accepted, got %r.' % (self.name, data[:200]))
        if not isinstance(data, collections.abc.Mapping):
            raise ValueError('Invalid signal "data" for %s: a JSON object is accepted, got %r.'
                             % (self.name, data))
        return status, reason, dict(data)

    @staticmethod
    def _failure_text(reason: Optional[str], report: dict) -> str:
        error = gpu_exception.BootstrapFailed(phase=report.get('phase') or 'boot',
                                              reason=reason or 'no reason given',
                                              log_tail=report.get('log_tail') or [])
        tail = [str(line) for line in error.log_tail][-LOG_TAIL_LINES:]
        if not tail:
            return str(error)
        return '%s\nLast %d log lines:\n%s' % (error, len(tail), '\n'.join(tail))


def _is_api_outage(ex: Exception) -> bool:
    """An error that says the API is (briefly) unreachable, not that the request is wrong."""
    if isinstance(ex, (ks_exceptions.ConnectFailure, ks_exceptions.ConnectTimeout)):
        return True
    if isinstance(ex, (ks_exceptions.BadGateway, ks_exceptions.ServiceUnavailable,
                       ks_exceptions.GatewayTimeout)):
        return True
    code = getattr(ex, 'code', None) or getattr(ex, 'http_status', None)
    return code in (502, 503, 504)


def _is_https_base_url(url: str) -> bool:
    """True for an https URL with a host, a valid port and no blanks, query or fragment."""
    if any(c.isspace() for c in url):
        return False
    try:
        parts = urllib.parse.urlsplit(url)
        port_ok = parts.port is None or parts.port > 0
    except ValueError:  # a port that is not a number from 0 to 65535
        return False
    return (parts.scheme == 'https' and bool(parts.hostname) and port_ok and not parts.query
            and not parts.fragment)


def resource_mapping() -> dict:
    config.register_opts(cfg.CONF)
    return {'OS::GPU::CudaInstance': CudaInstance}
