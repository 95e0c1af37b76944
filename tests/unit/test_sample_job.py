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

"""OS::GPU::SampleJob on a CudaInstance, with heat's real software-config service in-process."""

# heat.tests.common must be imported before anything imports heat.engine.stack.
from heat.tests import common  # isort: skip

import copy
import datetime
import json
import shutil
import tempfile

from oslo_config import cfg
from oslo_utils import timeutils

from heat.common import exception
from heat.common import template_format
from heat.engine.clients.os import glance
from heat.engine.clients.os import nova
from heat.engine import resource
from heat.engine import scheduler
from heat.engine import service_software_config
from heat.engine import stk_defn
from heat.rpc import client as rpc_client
from heat.tests.openstack.nova import fakes as fakes_nova
from heat.tests import utils

from heat_gpu import catalog
from heat_gpu.resources import cuda_instance
from heat_gpu.resources import sample_job
from tests.unit import base
from tests.unit import test_agent
from tests.unit import test_cuda_instance as cuda_tests

TEMPLATE = '''
heat_template_version: 2021-04-16
resources:
  gpu_vm:
    type: OS::GPU::CudaInstance
    properties:
      image: ubuntu-22.04
      flavor: gpu.p100
  samples:
    type: OS::GPU::SampleJob
    properties:
      instance: {get_resource: gpu_vm}
      samples: [device_query, bandwidth]
      thresholds: {bandwidth: 0.7}
      rerun: "1"
'''

P100 = catalog.get('P100-PCIE-16GB')


def sample(name, metric, unit, measured, *, expected=None, passed=True, threshold=None,
           message='ok'):
    """One sample result the way run-samples.sh prints it."""
    ratio = round(measured / expected, 3) if expected else None
    detail = {'correct': True, 'message': message}
    if threshold is not None:
        detail['threshold'] = threshold
    return {'name': name, 'gpu_index': 0, 'passed': passed, 'metric': metric, 'unit': unit,
            'measured': measured, 'expected': expected, 'ratio': ratio, 'detail': detail}


def runner_output(*, h2d=11.6) -> str:
    """A run-samples.sh document for one P100 (the runner's own expected figures)."""
    h2d_expected = catalog.expected_h2d_gbps(P100)
    samples = [
        sample('device_query', 'memory_mib', 'MiB', 16280, expected=16384, threshold=0.8),
        sample('bandwidth', 'h2d_bandwidth', 'GB/s', h2d, expected=h2d_expected,
               passed=h2d / h2d_expected >= 0.7, threshold=0.7),
        sample('bandwidth', 'd2h_bandwidth', 'GB/s', 12.1, expected=h2d_expected, threshold=0.7),
        sample('bandwidth', 'd2d_bandwidth', 'GB/s', 530.2, expected=549.0, threshold=0.7),
    ]
    gpus = [{'index': 0, 'name': 'Tesla P100-PCIE-16GB', 'pci_address': '00000000:00:05.0',
             'uuid': 'GPU-4b5c1d2e', 'memory_mib': 16280, 'compute_capability': '6.0',
             'pcie_link_gen_max': 3, 'pcie_link_width_max': 16, 'pcie_source': 'nvml'}]
    return json.dumps({'samples': samples, 'gpus': gpus,
                       'passed': all(s['passed'] for s in samples),
                       'toolkit': {'nvcc': '12.4'}, 'min_ratio': 0.8,
                       'thresholds': {'bandwidth': 0.7}}, sort_keys=True)


class InProcessEngine(rpc_client.EngineClient):
    """heat-engine's real software-config service, called in-process instead of over RPC."""

    def __init__(self):
        self.service = service_software_config.SoftwareConfigService()

    def call(self, ctxt, msg, version=None, timeout=None):
        method, kwargs = msg
        return getattr(self.service, method)(ctxt, **kwargs)


class SampleJobTest(common.HeatTestCase):

    def setUp(self):
        base.init_global_environment()
        super().setUp()
        for module in (cuda_instance, sample_job):
            for name, cls in module.resource_mapping().items():
                resource._register_class(name, cls)
        cfg.CONF.set_override('action_retry_limit', 0)
        self.fc = fakes_nova.FakeClient()
        self.patchobject(nova.NovaClientPlugin, 'client', return_value=self.fc)
        self.patchobject(nova.NovaClientPlugin, 'find_flavor_by_name_or_id',
                         side_effect=lambda name: name)
        self.patchobject(nova.NovaClientPlugin, 'get_flavor', side_effect=cuda_tests.FakeFlavor)
        self.patchobject(glance.GlanceClientPlugin, 'find_image_by_name_or_id',
                         side_effect=lambda name: name)
        self.patchobject(glance.GlanceClientPlugin, 'get_image',
                         return_value=cuda_tests.FakeImage())
        self.stub_ImageConstraint_validate()
        self.stub_FlavorConstraint_validate()
        self.server = self.fc.servers.list()[1]
        self.server.status = 'ACTIVE'
        self.patchobject(self.fc.servers, 'create', return_value=self.server)
        self.patchobject(self.fc.servers, 'get', return_value=self.server)
        self.patchobject(cuda_instance.CudaInstance, 'store_external_ports')
        self.engine = InProcessEngine()
        self.patchobject(sample_job.SampleJob, 'rpc_client', return_value=self.engine)

    def _stack(self, **props):
        tmpl = template_format.parse(TEMPLATE)
        tmpl['resources']['samples']['properties'].update(props)
        stack = utils.parse_stack(tmpl, stack_name='job-stack')
        vm = stack['gpu_vm']
        runner = scheduler.TaskRunner(vm.create)
        runner.start()
        vm.signal({'status': 'SUCCESS', 'data': cuda_tests.report()})
        runner.run_to_completion()
        # What the engine does when a resource completes, so get_resource sees its server id.
        stk_defn.update_resource_data(stack.defn, vm.name, vm.node_data())
        return stack

    def _start_job(self, stack):
        job = stack['samples']
        runner = scheduler.TaskRunner(job.create)
        runner.start()
        return job, runner

    def _deployments(self, stack):
        return stack['gpu_vm'].metadata_get(refresh=True)['deployments']

    @staticmethod
    def _inputs(deployment):
        return {i['name']: i.get('value') for i in deployment['inputs']}

    def test_deployment_reaches_the_instance(self):
        stack = self._stack()
        job, runner = self._start_job(stack)
        self.assertFalse(runner.step())
        deployments = self._deployments(stack)
        self.assertEqual(1, len(deployments))
        dep = deployments[0]
        self.assertEqual('script', dep['group'])
        self.assertIn('run-samples.sh', dep['config'])
        inputs = self._inputs(dep)
        self.assertEqual('device_query bandwidth', inputs['HEAT_GPU_SAMPLES'])
        self.assertEqual({'bandwidth': 0.7}, json.loads(inputs['HEAT_GPU_THRESHOLDS']))
        self.assertEqual('0.8', inputs['HEAT_GPU_MIN_RATIO'])
        expected = json.loads(inputs['HEAT_GPU_EXPECTED'])
        self.assertEqual(P100.memory_mib, expected['0']['memory_mib']['value'])
        self.assertEqual(round(catalog.expected_h2d_gbps(P100), 2),
                         expected['*']['h2d_bandwidth']['value'])
        self.assertEqual('HEAT_SIGNAL', inputs['deploy_signal_transport'])
        self.assertEqual('samples', inputs['deploy_resource_name'])
        self.assertEqual('job-stack/%s' % stack.id, inputs['deploy_stack_id'])
        self.assertEqual(self.server.id, inputs['deploy_server_id'])
        self.assertEqual('CREATE', inputs['deploy_action'])
        self.assertTrue(inputs['deploy_password'])
        self.assertNotEqual(stack['gpu_vm'].password, inputs['deploy_password'])

    def test_results_from_runner_output(self):
        stack = self._stack()
        job, runner = self._start_job(stack)
        output = runner_output()
        job.signal({'deploy_stdout': output, 'deploy_stderr': 'compiling\n',
                    'deploy_status_code': 0})
        runner.run_to_completion()
        self.assertEqual((job.CREATE, job.COMPLETE), job.state)
        results = cuda_tests.attr(job, 'results')
        self.assertEqual(['device_query', 'bandwidth', 'bandwidth', 'bandwidth'],
                         [r['name'] for r in results])
        h2d = results[1]
        self.assertEqual('h2d_bandwidth', h2d['metric'])
        self.assertEqual(11.6, h2d['measured'])
        self.assertEqual(round(11.6 / h2d['expected'], 3), h2d['ratio'])
        self.assertEqual(0.7, h2d['detail']['threshold'])
        self.assertIs(True, cuda_tests.attr(job, 'passed'))
        summary = cuda_tests.attr(job, 'summary')
        self.assertTrue(summary.startswith('2/2 passed'), summary)
        self.assertIn('H2D 11.6 GB/s', summary)
        self.assertEqual(output, cuda_tests.attr(job, 'raw'))
        self.assertEqual('compiling\n', cuda_tests.attr(job, 'deploy_stderr'))

    def test_failing_sample_fails_with_name_and_reason(self):
        stack = self._stack()
        job, runner = self._start_job(stack)
        job.signal({'deploy_stdout': runner_output(h2d=4.1), 'deploy_stderr': '',
                    'deploy_status_code': 1})
        exc = self.assertRaises(exception.ResourceFailure, runner.run_to_completion)
        self.assertEqual((job.CREATE, job.FAILED), job.state)
        self.assertIn('GPU sample job failed', str(exc))
        self.assertIn('bandwidth GPU0 H2D 4.1 GB/s', str(exc))
        self.assertIn('(1/2 passed)', str(exc))
        self.assertIn('< 70%', str(exc))
        self.assertIs(False, cuda_tests.attr(job, 'passed'))

    def test_unreadable_output_reports_stderr(self):
        stack = self._stack()
        job, runner = self._start_job(stack)
        job.signal({'deploy_stdout': '', 'deploy_stderr': 'nvcc: command not found\n',
                    'deploy_status_code': 127})
        exc = self.assertRaises(exception.ResourceFailure, runner.run_to_completion)
        self.assertIn('nvcc: command not found', str(exc))
        self.assertIn('127', str(exc))
        self.assertIsNone(cuda_tests.attr(job, 'passed'))

    def test_rerun_change_runs_again(self):
        stack = self._stack()
        job, runner = self._start_job(stack)
        job.signal({'deploy_stdout': runner_output(), 'deploy_status_code': 0})
        runner.run_to_completion()
        first = self._deployments(stack)[0]

        props = {k: copy.deepcopy(v) for k, v in job.properties.items() if v is not None}
        props['rerun'] = '2'
        update = scheduler.TaskRunner(job.update, job.t.freeze(properties=props))
        update.start()
        self.assertFalse(update.step())
        second = self._deployments(stack)[0]
        self.assertEqual(1, len(self._deployments(stack)))
        self.assertNotEqual(first['id'], second['id'])
        self.assertEqual('UPDATE', self._inputs(second)['deploy_action'])
        self.assertEqual('2', self._inputs(second)['HEAT_GPU_RERUN'])
        job.signal({'deploy_stdout': runner_output(h2d=11.9), 'deploy_status_code': 0})
        update.run_to_completion()
        self.assertEqual((job.UPDATE, job.COMPLETE), job.state)
        self.assertEqual(11.9, cuda_tests.attr(job, 'results')[1]['measured'])

    def test_timeout(self):
        stack = self._stack(timeout=60)
        job, runner = self._start_job(stack)
        self.assertFalse(runner.step())
        timeutils.set_time_override(timeutils.utcnow() + datetime.timedelta(seconds=61))
        self.addCleanup(timeutils.clear_time_override)
        exc = self.assertRaises(exception.ResourceFailure, runner.run_to_completion)
        self.assertIn('did not report within 60 s', str(exc))
        deployment = self.engine.show_software_deployment(stack.context, job.resource_id)
        self.assertEqual('FAILED', deployment['status'])

    def test_bad_threshold_named(self):
        tmpl = template_format.parse(TEMPLATE)
        tmpl['resources']['samples']['properties']['thresholds'] = {'bandwidth': 1.5}
        stack = utils.parse_stack(tmpl, stack_name='bad-threshold')
        exc = self.assertRaises(exception.StackValidationFailed, stack['samples'].validate)
        self.assertIn('thresholds.bandwidth', str(exc))
        self.assertIn('1.5', str(exc))
        self.assertIn('0.0 to 1.0', str(exc))

    def test_unknown_sample_named(self):
        tmpl = template_format.parse(TEMPLATE)
        tmpl['resources']['samples']['properties']['samples'] = ['stream']
        stack = utils.parse_stack(tmpl, stack_name='bad-sample')
        exc = self.assertRaises(exception.StackValidationFailed, stack['samples'].validate)
        self.assertIn('stream', str(exc))
        self.assertIn('device_query', str(exc))

    def _foreign_job(self, instance):
        """A stack of only a SampleJob whose instance is *instance* (a literal)."""
        tmpl = template_format.parse(TEMPLATE)
        del tmpl['resources']['gpu_vm']
        tmpl['resources']['samples']['properties']['instance'] = instance
        return utils.parse_stack(tmpl, stack_name='foreign-job')

    def test_instance_naming_no_server_is_refused_at_validate(self):
        self.patchobject(nova.NovaClientPlugin, 'get_server', side_effect=exception.EntityNotFound(
            entity='Server', name='no-such-server'))
        stack = self._foreign_job('no-such-server')
        exc = self.assertRaises(exception.StackValidationFailed, stack['samples'].validate)
        self.assertIn("Invalid value 'no-such-server' for instance: no server has this ID.",
                      str(exc))
        self.assertIn('Accepted: an OS::GPU::CudaInstance of this stack ({get_resource: <name>})',
                      str(exc))

    def test_server_heat_does_not_manage_is_refused(self):
        self.server.name = 'hand-made'
        stack = self._foreign_job(self.server.id)
        exc = self.assertRaises(exception.StackValidationFailed, stack['samples'].validate)
        self.assertIn("Invalid value '%s' for instance: server hand-made (%s) was not created by "
                      "heat" % (self.server.id, self.server.id), str(exc))
        self.assertIn('user_data_format SOFTWARE_CONFIG', str(exc))

    def test_instance_of_this_stack_validates_before_it_exists(self):
        stack = utils.parse_stack(template_format.parse(TEMPLATE), stack_name='not-yet')
        get_server = self.patchobject(nova.NovaClientPlugin, 'get_server')
        self.assertIsNone(stack['samples'].validate())
        get_server.assert_not_called()

    def test_cuda_instance_of_another_stack_is_accepted(self):
        vm_stack = self._stack()
        server_id = vm_stack['gpu_vm'].resource_id
        stack = self._foreign_job(server_id)
        self.assertIsNone(stack['samples'].validate())
        # The same server without heat's polling metadata (not SOFTWARE_CONFIG) is refused.
        vm_stack['gpu_vm'].metadata_set({})
        exc = self.assertRaises(exception.StackValidationFailed, stack['samples'].validate)
        self.assertIn('of resource gpu_vm was not made with user_data_format SOFTWARE_CONFIG',
                      str(exc))

    def test_delete_removes_deployment_and_user(self):
        stack = self._stack()
        job, runner = self._start_job(stack)
        job.signal({'deploy_stdout': runner_output(), 'deploy_status_code': 0})
        runner.run_to_completion()
        deployment_id = job.resource_id
        scheduler.TaskRunner(job.delete)()
        self.assertEqual((job.DELETE, job.COMPLETE), job.state)
        self.assertEqual([], self._deployments(stack))
        self.assertRaises(exception.NotFound, self.engine.show_software_deployment,
                          stack.context, deployment_id)
        self.assertNotIn('user_id', job.data())

    def test_agent_runs_the_real_job(self):
        """Heat's deployment metadata -> the real agent -> the real runner -> signal -> verdict.

        The runner finds no nvcc here (PATH is /usr/bin:/bin, the root is empty), so every sample
        fails the way it would on an image without the CUDA toolkit.
        """
        stack = self._stack()
        job, runner = self._start_job(stack)
        self.assertFalse(runner.step())
        heat = dict(stack['gpu_vm'].metadata_get()['os-collect-config']['heat'])
        deployment = copy.deepcopy(self._deployments(stack)[0])
        inputs = self._inputs(deployment)
        cloud = test_agent.FakeCloud(
            project=heat['project_id'], stack_path=heat['stack_id'], server_resource='gpu_vm',
            server=(heat['user_id'], heat['password']),
            signallers=((inputs['deploy_user_id'], inputs['deploy_password']),))
        cloud.__enter__()
        self.addCleanup(cloud.__exit__)
        heat['auth_url'] = cloud.auth_url
        for item in deployment['inputs']:
            if item['name'] == 'deploy_auth_url':
                item['value'] = cloud.auth_url
        cloud.metadata = {'deployments': [deployment], 'os-collect-config': {'heat': heat}}
        root = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, root, True)
        test_agent.write_credentials(root, heat)

        proc = test_agent.run_agent_once(root=root, path='/usr/bin:/bin')
        self.assertEqual(0, proc.returncode, proc.stderr)
        self.assertEqual(['samples'], cloud.signalled)
        body = cloud.signals[0]
        self.assertEqual(1, body['deploy_status_code'])
        self.assertIn('device_query bandwidth', body['deploy_stderr'])

        job.signal(body)
        exc = self.assertRaises(exception.ResourceFailure, runner.run_to_completion)
        self.assertIn('device_query memory: not compiled: nvcc not found', str(exc))
        self.assertIn('(0/2 passed)', str(exc))
        self.assertIs(False, cuda_tests.attr(job, 'passed'))
        self.assertEqual(['device_query', 'bandwidth'],
                         [r['name'] for r in cuda_tests.attr(job, 'results')])
