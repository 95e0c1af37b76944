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

"""OS::GPU::SampleJob: GPU sample programs run on a CudaInstance as a software deployment."""

import dataclasses
import datetime
import json
from typing import Any, Optional

from oslo_config import cfg
from oslo_log import log as logging
from oslo_utils import timeutils

from heat.common import exception
from heat.engine import attributes
from heat.engine import constraints
from heat.engine import properties
from heat.engine import resource
from heat.engine.resources.openstack.heat import software_deployment
from heat.engine import support
from heat.objects import resource as resource_objects
from heat.rpc import api as rpc_api

from heat_gpu import config
from heat_gpu import exception as gpu_exception
from heat_gpu import heat_compat
from heat_gpu import overlay
from heat_gpu import results

LOG = logging.getLogger(__name__)

heat_compat.serialize_yaql_parsing()

_Deployment = software_deployment.SoftwareDeployment

STDERR_TAIL_LINES = 20


@dataclasses.dataclass
class _JobWait:
    """What check_*_complete polls: the deployment and its deadline."""

    deadline: datetime.datetime
    timeout: int


class SampleJob(_Deployment):
    """Runs GPU sample programs on an OS::GPU::CudaInstance and reports the results.

    The job is a Heat software deployment: Heat puts the sample runner (a ``script`` config whose
    inputs are the samples, thresholds and the expected figures of the GPU model) into the
    instance's metadata; the heat-gpu agent on the instance (or os-collect-config with the
    heat-agents script hook) runs it and signals the output back. Each sample compiles a CUDA
    program for the GPU's own architecture, runs it and compares the measured figure
    (bandwidth, throughput) with the catalog figure of the GPU model. The resource fails, naming
    the failing samples and why, when a sample fails or falls below its threshold. Changing any
    property (``rerun`` exists for that) runs the job again.
    """

    support_status = support.SupportStatus(
        status=support.SUPPORTED,
        message='Provided by the heat-gpu plugin (heat_gpu/resources in plugin_dirs).')

    PROPERTIES = (
        INSTANCE, SAMPLES, MIN_RATIO, THRESHOLDS, TIMEOUT, RERUN,
    ) = (
        'instance', 'samples', 'min_ratio', 'thresholds', 'timeout', 'rerun',
    )

    ATTRIBUTES = (
        RESULTS, PASSED, SUMMARY, RAW,
    ) = (
        'results', 'passed', 'summary', 'raw',
    )

    properties_schema = {
        INSTANCE: properties.Schema(
            properties.Schema.STRING,
            'The OS::GPU::CudaInstance (or the ID of a server with user_data_format '
            'SOFTWARE_CONFIG that runs the heat-gpu agent) to run the samples on.',
            required=True),
        SAMPLES: properties.Schema(
            properties.Schema.LIST,
            'Sample programs to run. Default: every sample that applies to the instance '
            '(p2p needs two GPUs).',
            schema=properties.Schema(
                properties.Schema.STRING,
                constraints=[constraints.AllowedValues(results.SAMPLE_NAMES)]),
            update_allowed=True),
        MIN_RATIO: properties.Schema(
            properties.Schema.NUMBER,
            'Fraction of the expected figure (catalog bandwidth or throughput of the GPU '
            'model) a sample must reach to pass. Default: the [heat_gpu] sample_min_ratio '
            'option (0.8).',
            constraints=[constraints.Range(0.0, 1.0)],
            update_allowed=True),
        THRESHOLDS: properties.Schema(
            properties.Schema.MAP,
            'Per-sample minimum ratios that override min_ratio, e.g. {"bandwidth": 0.6}.',
            default={},
            update_allowed=True),
        TIMEOUT: properties.Schema(
            properties.Schema.INTEGER,
            'Seconds to wait for the results. Default: the [heat_gpu] sample_timeout option '
            '(1800).',
            constraints=[constraints.Range(30, 86400)],
            update_allowed=True),
        RERUN: properties.Schema(
            properties.Schema.STRING,
            'Any string; changing it runs the samples again on a stack update.',
            default='',
            update_allowed=True),
    }

    attributes_schema = {
        RESULTS: attributes.Schema(
            'Result of each sample: a list of maps with name, gpu_index, passed, metric, '
            'unit, measured, expected, ratio and detail.',
            type=attributes.Schema.LIST),
        PASSED: attributes.Schema(
            'True when every sample passed.', type=attributes.Schema.BOOLEAN),
        SUMMARY: attributes.Schema(
            'One line for humans, e.g. "4/4 passed; H2D 11.9 GB/s = 95% of PCIe Gen3 x16".',
            type=attributes.Schema.STRING),
        RAW: attributes.Schema(
            'The sample runner\'s JSON output, unchanged.', type=attributes.Schema.STRING),
        _Deployment.STDOUT: _Deployment.attributes_schema[_Deployment.STDOUT],
        _Deployment.STDERR: _Deployment.attributes_schema[_Deployment.STDERR],
        _Deployment.STATUS_CODE: _Deployment.attributes_schema[_Deployment.STATUS_CODE],
    }

    def validate(self) -> None:
        resource.Resource.validate(self)
        try:
            results.validate_thresholds(min_ratio=self._min_ratio(),
                                        thresholds=self.properties[self.THRESHOLDS])
        except gpu_exception.HeatGpuError as ex:
            raise exception.StackValidationFailed(resource=self, message=str(ex))
        instance = self.properties[self.INSTANCE]
        if not instance:  # e.g. a get_attr of a resource not created yet
            return
        target = self.stack.resource_by_refid(instance)
        if target is None:
            self._validate_foreign_server(instance)
        elif target.properties.get('user_data_format') != 'SOFTWARE_CONFIG':
            raise exception.StackValidationFailed(
                resource=self,
                message='Invalid value %r for instance: %s has user_data_format %s; an '
                        'OS::GPU::CudaInstance or a server with SOFTWARE_CONFIG is accepted.'
                        % (instance, target.name, target.properties.get('user_data_format')))

    def _validate_foreign_server(self, instance: str) -> None:
        """A server ID from outside this stack must be a server heat made for software configs.

        Heat delivers a deployment through the metadata of the server's own heat resource (and
        the agent polls that with its stack user's credentials): a server heat does not manage,
        or a name, never gets the job, which would only time out.
        """
        accepted = ('Accepted: an OS::GPU::CudaInstance of this stack ({get_resource: <name>}) '
                    'or the ID of a server that an OS::GPU::CudaInstance (or an OS::Nova::Server '
                    'with user_data_format SOFTWARE_CONFIG) of one of your stacks created.')
        rows = resource_objects.Resource.get_all_by_physical_resource_id(self.context, instance)
        for row in rows:
            if 'os-collect-config' in (row.rsrc_metadata or {}):
                return
        if rows:
            problem = ('server %s of resource %s was not made with user_data_format '
                       'SOFTWARE_CONFIG, so nothing on it fetches the job'
                       % (instance, rows[0].name))
        else:
            try:
                server = self.client_plugin('nova').get_server(instance)
            except exception.EntityNotFound:
                problem = 'no server has this ID'
            else:
                problem = ('server %s (%s) was not created by heat, so heat cannot deliver the '
                           'job to it' % (getattr(server, 'name', instance), instance))
        raise exception.StackValidationFailed(
            resource=self,
            message='Invalid value %r for instance: %s. %s' % (instance, problem, accepted))

    def handle_create(self) -> _JobWait:
        super().handle_create()
        return self._wait()

    def handle_update(self, json_snippet: Any, tmpl_diff: Any, prop_diff: dict) -> _JobWait:
        previous = self._get_derived_config_id() if self.resource_id else None
        self.properties = json_snippet.properties(self.properties_schema, self.context)
        self._handle_action(self.UPDATE, prev_derived_config=previous)
        return self._wait()

    def check_create_complete(self, wait: _JobWait) -> bool:
        return self._check_job(wait)

    def check_update_complete(self, wait: _JobWait) -> bool:
        return self._check_job(wait)

    def get_attribute(self, key: str, *path: Any) -> Any:
        """Resolve through the attribute schema (SoftwareDeployment maps keys to outputs)."""
        return resource.Resource.get_attribute(self, key, *path)

    def _resolve_attribute(self, name: str) -> Any:
        if self.resource_id is None:
            return None
        outputs = self._deployment()[rpc_api.SOFTWARE_DEPLOYMENT_OUTPUT_VALUES] or {}
        if name not in self.ATTRIBUTES:
            return outputs.get(name)
        stdout = outputs.get(self.STDOUT)
        if not stdout:
            return None
        if name == self.RAW:
            return stdout
        try:
            report = self._evaluate(stdout)
        except gpu_exception.HeatGpuError as ex:
            LOG.warning('%s: cannot read the sample results: %s', self.name, ex)
            return None
        if name == self.RESULTS:
            return [dict(r) for r in report.results]
        if name == self.PASSED:
            return report.passed
        return report.summary

    def _handle_action(self, action: str, config: Any = None,
                       prev_derived_config: Any = None) -> Any:
        """Deploy the sample runner on CREATE and UPDATE; the other actions deploy nothing.

        SoftwareDeployment's code reads its own properties (server, config, input_values, ...);
        they are derived from this resource's properties for the duration of the call.
        """
        if action not in (self.CREATE, self.UPDATE):
            return None
        overrides = {
            _Deployment.SERVER: self.properties[self.INSTANCE],
            _Deployment.CONFIG: None,
            _Deployment.INPUT_VALUES: self._inputs(),
            _Deployment.DEPLOY_ACTIONS: [self.CREATE, self.UPDATE],
            _Deployment.NAME: None,
            _Deployment.SIGNAL_TRANSPORT: self.HEAT_SIGNAL,
        }
        with overlay.properties_overridden(self, overrides):
            return super()._handle_action(action, config=self._source_config(),
                                          prev_derived_config=prev_derived_config)

    def _source_config(self) -> dict:
        return {
            rpc_api.SOFTWARE_CONFIG_NAME: None,
            rpc_api.SOFTWARE_CONFIG_GROUP: 'script',
            rpc_api.SOFTWARE_CONFIG_CONFIG: results.runner_script(),
            rpc_api.SOFTWARE_CONFIG_OPTIONS: {},
            rpc_api.SOFTWARE_CONFIG_INPUTS: [],
            rpc_api.SOFTWARE_CONFIG_OUTPUTS: [],
        }

    def _min_ratio(self) -> float:
        value = self.properties[self.MIN_RATIO]
        return float(value if value is not None else cfg.CONF.heat_gpu.sample_min_ratio)

    def _timeout(self) -> int:
        value = self.properties[self.TIMEOUT]
        return int(value if value is not None else cfg.CONF.heat_gpu.sample_timeout)

    def _instance_facts(self) -> dict:
        """GPUs, model and mode of the instance when it is a CudaInstance of this stack."""
        instance = self.properties[self.INSTANCE]
        target = self.stack.resource_by_refid(instance) if instance else None
        facts = getattr(target, 'gpu_facts', None)
        return facts() if callable(facts) else {}

    def _inputs(self) -> dict:
        facts = self._instance_facts()
        try:
            return results.runner_inputs(
                samples=self.properties[self.SAMPLES], min_ratio=self._min_ratio(),
                thresholds=self.properties[self.THRESHOLDS], gpus=facts.get('gpus') or (),
                gpu_model=facts.get('gpu_model'), vgpu=facts.get('gpu_mode') == 'vgpu',
                rerun=self.properties[self.RERUN])
        except gpu_exception.HeatGpuError as ex:
            raise exception.StackValidationFailed(resource=self, message=str(ex))

    def _evaluate(self, stdout: str) -> Any:
        inputs = self._inputs()
        facts = self._instance_facts()
        return results.evaluate(stdout, min_ratio=self._min_ratio(),
                                thresholds=self.properties[self.THRESHOLDS],
                                expected=json.loads(inputs['HEAT_GPU_EXPECTED']),
                                vgpu=facts.get('gpu_mode') == 'vgpu',
                                expected_gpus=(facts.get('gpu_count')
                                               or len(facts.get('gpus') or ()) or None))

    def _wait(self) -> _JobWait:
        timeout = self._timeout()
        return _JobWait(deadline=timeutils.utcnow() + datetime.timedelta(seconds=timeout),
                        timeout=timeout)

    def _deployment(self) -> dict:
        return self.rpc_client().show_software_deployment(self.context, self.resource_id)

    def _check_job(self, wait: _JobWait) -> bool:
        sd = self._deployment()
        status = sd[rpc_api.SOFTWARE_DEPLOYMENT_STATUS]
        if status == self.IN_PROGRESS:
            if timeutils.utcnow() > wait.deadline:
                self._handle_cancel()
                raise exception.Error(
                    'GPU sample job did not report within %d s (timeout); is the heat-gpu '
                    'agent running on the instance? Raise timeout for slow GPUs.'
                    % wait.timeout)
            return False
        outputs = sd[rpc_api.SOFTWARE_DEPLOYMENT_OUTPUT_VALUES] or {}
        stdout = outputs.get(self.STDOUT) or ''
        try:
            report = self._evaluate(stdout)
        except gpu_exception.HeatGpuError as ex:
            raise exception.Error(
                'GPU sample job failed: %s (status %s: %s)%s' % (
                    ex, outputs.get(self.STATUS_CODE),
                    sd[rpc_api.SOFTWARE_DEPLOYMENT_STATUS_REASON],
                    _tail(outputs.get(self.STDERR))))
        if not report.passed:
            error = gpu_exception.SampleJobFailed(reason=results.failure_reason(report),
                                                  results=report.results)
            raise exception.Error('%s (%s)' % (error, report.summary.split('; ')[0]))
        if status == self.FAILED:
            raise exception.Error(
                'GPU sample job failed: %s%s' % (
                    sd[rpc_api.SOFTWARE_DEPLOYMENT_STATUS_REASON],
                    _tail(outputs.get(self.STDERR))))
        return True


def _is_ratio(value: Any) -> bool:
    try:
        return 0.0 <= float(value) <= 1.0 and not isinstance(value, bool)
    except (TypeError, ValueError):
        return False


def _tail(text: Optional[str]) -> str:
    lines = (text or '').strip().splitlines()[-STDERR_TAIL_LINES:]
    return '\nLast %d lines of stderr:\n%s' % (len(lines), '\n'.join(lines)) if lines else ''


def resource_mapping() -> dict:
    config.register_opts(cfg.CONF)
    return {'OS::GPU::SampleJob': SampleJob}
