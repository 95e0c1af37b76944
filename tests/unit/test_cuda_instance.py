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

"""OS::GPU::CudaInstance in a Heat engine with a fake novaclient."""

# heat.tests.common must be imported before anything imports heat.engine.stack.
from heat.tests import common  # isort: skip

import base64
import copy
import datetime
import email
import gzip
import json
import os
import shutil
import subprocess
import tempfile

from keystoneauth1 import exceptions as ks_exceptions
from novaclient import exceptions as nova_exceptions
from oslo_config import cfg
from oslo_utils import timeutils
import testscenarios
import yaml

from heat.common import exception
from heat.common import template_format
from heat.common import timeutils as heat_timeutils
from heat.engine.clients.os import glance
from heat.engine.clients.os import nova
from heat.engine import resource
from heat.engine import scheduler
from heat.objects import event as event_object
from heat.tests.openstack.nova import fakes as fakes_nova
from heat.tests import utils

from heat_gpu.resources import cuda_instance
from tests.unit import base
from tests.unit import test_agent
from tools.gpusim import gpusim

#: Nova refuses user data longer than this once base64-encoded.
NOVA_USER_DATA_LIMIT = 65535

TENANT_SCRIPT = '#!/bin/sh\necho tenant-part > /tmp/tenant\n'

TEMPLATE = '''
heat_template_version: 2021-04-16
resources:
  gpu_vm:
    type: OS::GPU::CudaInstance
    properties:
      image: ubuntu-22.04
      flavor: gpu.p100
      user_data: |
        #!/bin/sh
        echo tenant-part > /tmp/tenant
'''

load_tests = testscenarios.load_tests_apply_scenarios

FLAVOR_SPECS = {
    'gpu.p100': {'pci_passthrough:alias': 'p100:1', 'hw:pci_numa_affinity_policy': 'preferred'},
    'gpu.a100x2': {'pci_passthrough:alias': 'a100:2'},
    'gpu.vgpu': {'resources:VGPU': '1', 'trait:CUSTOM_NVIDIA_11': 'required'},
    'm1.large': {'hw:cpu_policy': 'dedicated'},
    'gpu.vgpu2': {'resources:VGPU': '2'},
    'gpu.both': {'pci_passthrough:alias': 'p100:1', 'resources:VGPU': '1'},
}

GPU = {'index': 0, 'name': 'Tesla P100-PCIE-16GB', 'pci_address': '0000:00:05.0',
       'memory_mib': 16384, 'uuid': 'GPU-4b5c1d2e', 'pci_id': '10de:15f8'}


TOP = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..')


class FakeFlavor:
    def __init__(self, name: str) -> None:
        self.id = name
        self.name = name
        self.ram = 16384
        self.disk = 40
        self.extra_specs = copy.deepcopy(FLAVOR_SPECS[name])


class FakeImage:
    status = 'active'
    min_ram = 0
    min_disk = 0


def report(**kwargs) -> str:
    doc = {'phase': 'verify', 'phases': {'detect': 1.5, 'install-driver': 120.0},
           'gpus': [GPU], 'driver_version': '550.163.01', 'cuda_version': '12.4',
           'method': 'packages', 'distro': 'ubuntu-22.04', 'log_tail': ['line 1', 'line 2']}
    doc.update(kwargs)
    return json.dumps(doc)


def bootstrap_settings(user_data: str) -> dict:
    """Find /etc/heat-gpu/bootstrap.json in the cloud-config part of the user data."""
    for part in email.message_from_string(user_data).walk():
        if part.get_content_type() != 'text/cloud-config':
            continue
        doc = yaml.safe_load(part.get_payload(decode=True))
        for entry in (doc or {}).get('write_files', []):
            if entry.get('path') != '/etc/heat-gpu/bootstrap.json':
                continue
            content = entry['content']
            encoding = entry.get('encoding', '')
            if 'b64' in encoding or 'base64' in encoding:
                content = base64.b64decode(content)
            if 'gz' in encoding:
                content = gzip.decompress(content)
            if isinstance(content, bytes):
                content = content.decode('utf-8')
            return json.loads(content)
    raise AssertionError('no bootstrap.json in the user data')


def attr(rsrc, name: str):
    """Read an attribute afresh (Heat caches resolved attributes per resource object)."""
    rsrc.attributes.reset_resolved_values()
    return rsrc.FnGetAtt(name)


def payloads(user_data: str) -> list:
    return [p.get_payload(decode=True).decode('utf-8')
            for p in email.message_from_string(user_data).walk() if not p.is_multipart()]


class CudaInstanceTestBase(common.HeatTestCase):

    def setUp(self):
        base.init_global_environment()
        super().setUp()
        for name, cls in cuda_instance.resource_mapping().items():
            resource._register_class(name, cls)
        cfg.CONF.set_override('action_retry_limit', 0)
        self.fc = fakes_nova.FakeClient()
        self.patchobject(nova.NovaClientPlugin, 'client', return_value=self.fc)
        self.patchobject(nova.NovaClientPlugin, 'find_flavor_by_name_or_id',
                         side_effect=lambda name: name)
        self.patchobject(nova.NovaClientPlugin, 'get_flavor', side_effect=FakeFlavor)
        self.patchobject(glance.GlanceClientPlugin, 'find_image_by_name_or_id',
                         side_effect=lambda name: name)
        self.patchobject(glance.GlanceClientPlugin, 'get_image', return_value=FakeImage())
        self.stub_ImageConstraint_validate()
        self.stub_FlavorConstraint_validate()
        self.server = self.fc.servers.list()[1]
        self.server.status = 'BUILD'
        self.create = self.patchobject(self.fc.servers, 'create', return_value=self.server)
        self.patchobject(self.fc.servers, 'get', return_value=self.server)
        self.patchobject(cuda_instance.CudaInstance, 'store_external_ports')

    def _stack(self, stack_name='gpu-stack', **props):
        tmpl = template_format.parse(TEMPLATE)
        tmpl['resources']['gpu_vm']['properties'].update(props)
        return utils.parse_stack(tmpl, stack_name=stack_name)

    def _start(self, **props):
        stack = self._stack(**props)
        rsrc = stack['gpu_vm']
        runner = scheduler.TaskRunner(rsrc.create)
        runner.start()
        return stack, rsrc, runner

    def _events(self, stack):
        return [e.resource_status_reason
                for e in event_object.Event.get_all_by_stack(stack.context, stack.id)]


class CudaInstanceTest(CudaInstanceTestBase):

    def test_flavor_without_gpu_fails_validation(self):
        stack = self._stack(flavor='m1.large')
        exc = self.assertRaises(exception.StackValidationFailed, stack['gpu_vm'].validate)
        self.assertIn('Flavor m1.large requests no GPU', str(exc))
        self.assertIn('pci_passthrough:alias', str(exc))

    def test_flavor_without_gpu_stops_create_before_boot(self):
        stack = self._stack(flavor='m1.large')
        rsrc = stack['gpu_vm']
        exc = self.assertRaises(exception.ResourceFailure, scheduler.TaskRunner(rsrc.create))
        self.assertIn('m1.large', str(exc))
        self.create.assert_not_called()
        self.assertIsNone(rsrc.resource_id)

    def test_gpu_flavors_validate(self):
        for flavor in ('gpu.p100', 'gpu.a100x2', 'gpu.vgpu'):
            stack = self._stack(stack_name='gpu-%s' % flavor.replace('.', '-'), flavor=flavor)
            self.assertIsNone(stack['gpu_vm'].validate())

    def test_cuda_version_too_new_for_pascal(self):
        stack = self._stack(cuda_version='13.0')
        exc = self.assertRaises(exception.StackValidationFailed, stack['gpu_vm'].validate)
        self.assertIn('13.0', str(exc))
        self.assertIn('P100', str(exc))

    def test_cuda_version_fine_for_ampere(self):
        stack = self._stack(flavor='gpu.a100x2', cuda_version='12.4')
        self.assertIsNone(stack['gpu_vm'].validate())

    def test_open_modules_refused_for_pascal(self):
        stack = self._stack(kernel_modules='open')
        exc = self.assertRaises(exception.StackValidationFailed, stack['gpu_vm'].validate)
        self.assertIn('kernel_modules', str(exc))
        self.assertIn('proprietary', str(exc))
        self.assertIn('P100-PCIE-16GB', str(exc))

    def test_cuda_version_pattern(self):
        stack = self._stack(cuda_version='latest')
        exc = self.assertRaises(exception.StackValidationFailed, stack['gpu_vm'].validate)
        self.assertIn('cuda_version', str(exc))
        self.assertIn('MAJOR.MINOR', str(exc))

    def test_gpu_model_hint_unknown(self):
        stack = self._stack(flavor='gpu.vgpu', gpu_model='Z9000')
        exc = self.assertRaises(exception.StackValidationFailed, stack['gpu_vm'].validate)
        self.assertIn('Z9000', str(exc))
        self.assertIn('gpu_model', str(exc))

    def test_http_mirror_refused(self):
        stack = self._stack(mirror_url='http://mirror.example.com/nvidia')
        exc = self.assertRaises(exception.StackValidationFailed, stack['gpu_vm'].validate)
        self.assertIn('mirror_url', str(exc))
        self.assertIn('http://mirror.example.com/nvidia', str(exc))
        self.assertIn('https://', str(exc))

    def test_bad_checksum_refused(self):
        stack = self._stack(checksums={'cuda.run': 'abc123'})
        exc = self.assertRaises(exception.StackValidationFailed, stack['gpu_vm'].validate)
        self.assertIn('checksums.cuda.run', str(exc))
        self.assertIn('64 hex', str(exc))

    def test_explicit_runfile_without_its_checksum_refused(self):
        from heat_gpu import cuda
        runfile = cuda.select(gpu_model='P100-PCIE-16GB').candidates[0]['runfile']
        stack = self._stack(install_method='runfile',
                            checksums={'cuda-keyring_1.1-1_all.deb': 'ab' * 32})
        exc = self.assertRaises(exception.StackValidationFailed, stack['gpu_vm'].validate)
        self.assertIn("Invalid value 'runfile' for install_method", str(exc))
        self.assertIn('add checksums: {%s: <sha256>}' % runfile, str(exc))
        self.assertIn("NVIDIA lists checksums on the runfile's download page", str(exc))
        # The server is never booted.
        exc = self.assertRaises(exception.ResourceFailure,
                                scheduler.TaskRunner(stack['gpu_vm'].create))
        self.assertIn(runfile, str(exc))
        self.create.assert_not_called()

    def test_explicit_runfile_with_its_checksum_validates(self):
        from heat_gpu import cuda
        runfile = cuda.release('12.4').runfile
        stack = self._stack(install_method='runfile', cuda_version='12.4',
                            checksums={runfile: 'cd' * 32})
        self.assertIsNone(stack['gpu_vm'].validate())
        # A checksum for another line's runfile does not do for an explicit cuda_version.
        stack = self._stack(stack_name='other-runfile', install_method='runfile',
                            cuda_version='12.4',
                            checksums={cuda.release('12.8').runfile: 'cd' * 32})
        exc = self.assertRaises(exception.StackValidationFailed, stack['gpu_vm'].validate)
        self.assertIn(runfile, str(exc))

    def test_auto_method_needs_no_runfile_checksum(self):
        stack = self._stack(install_method='auto')
        self.assertIsNone(stack['gpu_vm'].validate())

    def test_timeout_range(self):
        stack = self._stack(bootstrap_timeout=10)
        exc = self.assertRaises(exception.StackValidationFailed, stack['gpu_vm'].validate)
        self.assertIn('bootstrap_timeout', str(exc))

    def test_software_config_format_is_fixed(self):
        stack = self._stack(user_data_format='RAW')
        exc = self.assertRaises(exception.StackValidationFailed, stack['gpu_vm'].validate)
        self.assertIn('user_data_format', str(exc))
        self.assertIn('SOFTWARE_CONFIG', str(exc))

    def test_user_data_carries_settings_and_tenant_part(self):
        stack, rsrc, runner = self._start(cuda_version='12.4', mirror_url='https://m.example/nv')
        self.assertEqual(self.server.id, rsrc.resource_id)
        user_data = self.create.call_args.kwargs['userdata']
        settings = bootstrap_settings(user_data)
        signal = settings['signal']
        self.assertEqual('HEAT_SIGNAL', signal['transport'])
        self.assertEqual(rsrc._get_user_id(), signal['user_id'])
        self.assertEqual(rsrc.password, signal['password'])
        self.assertTrue(signal['password'])
        self.assertEqual(stack.stack_user_project_id, signal['project_id'])
        self.assertEqual('gpu-stack/%s' % stack.id, signal['stack_id'])
        self.assertEqual('gpu_vm', signal['resource_name'])
        self.assertEqual('12.4', settings['cuda_version'])
        self.assertEqual('https://m.example/nv', settings['mirror_url'])
        self.assertEqual(['EB693B3035CD5710E231E123A4B469963BF863CC'],
                         settings['keyring_fingerprints'])
        parts = payloads(user_data)
        self.assertIn(TENANT_SCRIPT, parts)
        self.assertTrue(any(p.startswith('#!/bin/bash') and 'heat-gpu' in p for p in parts))
        self.assertNotIn(stack.context.auth_token, user_data)
        self.assertLessEqual(len(base64.b64encode(user_data.encode('utf-8'))),
                             NOVA_USER_DATA_LIMIT)
        occ = rsrc.metadata_get()['os-collect-config']['heat']
        self.assertEqual(signal['user_id'], occ['user_id'])
        self.assertEqual(signal['password'], occ['password'])

    def test_operator_keyring_fingerprints_reach_the_guest(self):
        mine = 'a1' * 20
        cfg.CONF.set_override('trusted_keyring_fingerprints',
                              ['EB693B3035CD5710E231E123A4B469963BF863CC', mine],
                              group='heat_gpu')
        self.addCleanup(cfg.CONF.clear_override, 'trusted_keyring_fingerprints',
                        group='heat_gpu')
        self._start()
        settings = bootstrap_settings(self.create.call_args.kwargs['userdata'])
        self.assertEqual(['EB693B3035CD5710E231E123A4B469963BF863CC', mine.upper()],
                         settings['keyring_fingerprints'])

    def test_instance_keyring_fingerprints_replace_the_option(self):
        mine = 'b2' * 20
        self._start(keyring_fingerprints=[mine])
        settings = bootstrap_settings(self.create.call_args.kwargs['userdata'])
        self.assertEqual([mine.upper()], settings['keyring_fingerprints'])

    def test_bad_keyring_fingerprint_is_refused(self):
        stack = self._stack(keyring_fingerprints=['3bf863cc'])
        exc = self.assertRaises(exception.StackValidationFailed, stack['gpu_vm'].validate)
        self.assertIn('keyring_fingerprints', str(exc))
        self.assertIn('keyring_fingerprints[0]', str(exc))
        self.assertIn("'3bf863cc' is not accepted; accepted: an OpenPGP fingerprint of 40 hex "
                      "digits without blanks", str(exc))
        # gpg prints fingerprints in groups of four: refused with the same words.
        grouped = 'EB69 3B30 35CD 5710 E231 E123 A4B4 6996 3BF8 63CC'
        stack = self._stack(stack_name='grouped', keyring_fingerprints=[grouped])
        exc = self.assertRaises(exception.StackValidationFailed, stack['gpu_vm'].validate)
        self.assertIn("'EB69 3B30 35CD", str(exc))
        self.assertIn('40 hex digits without blanks', str(exc))

    def test_progress_then_success(self):
        stack, rsrc, runner = self._start()
        self.server.status = 'ACTIVE'
        self.assertFalse(runner.step())
        rsrc.signal({'status': 'IN_PROGRESS', 'id': 'heat-gpu', 'reason': 'driver 550',
                     'data': json.dumps({'phase': 'install-driver', 'phases': {'detect': 1.5}})})
        self.assertFalse(runner.step())
        self.assertIn('Signal: phase install-driver: driver 550', self._events(stack))
        self.assertEqual('IN_PROGRESS', attr(rsrc, 'bootstrap_status'))
        rsrc.signal({'status': 'SUCCESS', 'id': 'heat-gpu', 'reason': 'verified',
                     'data': report()})
        runner.run_to_completion()
        self.assertEqual((rsrc.CREATE, rsrc.COMPLETE), rsrc.state)
        self.assertEqual([GPU], attr(rsrc, 'gpus'))
        self.assertEqual(1, attr(rsrc, 'gpu_count'))
        self.assertEqual('550.163.01', attr(rsrc, 'driver_version'))
        self.assertEqual('12.4', attr(rsrc, 'cuda_version'))
        self.assertEqual({'detect': 1.5, 'install-driver': 120.0}, attr(rsrc, 'phase_times'))
        self.assertEqual('SUCCESS', attr(rsrc, 'bootstrap_status'))
        self.assertIsNone(attr(rsrc, 'failure_reason'))
        self.assertEqual(['line 1', 'line 2'], attr(rsrc, 'log_tail'))

    def _later(self, seconds):
        """Move heat's clock on by seconds (from the overridden time, if any)."""
        if not timeutils.utcnow.override_time:
            self.addCleanup(timeutils.clear_time_override)
        timeutils.set_time_override(timeutils.utcnow() + datetime.timedelta(seconds=seconds))

    def test_success_waits_for_active_server(self):
        stack, rsrc, runner = self._start()
        rsrc.signal({'status': 'SUCCESS', 'data': report()})
        self.assertFalse(runner.step())
        self.server.status = 'ACTIVE'
        self.assertFalse(runner.step())  # nova is asked again only after server_poll_interval
        self._later(10)
        self.assertTrue(runner.step())

    def test_nova_is_asked_once_per_poll_interval(self):
        cfg.CONF.set_override('server_poll_interval', 30, group='heat_gpu')
        stack, rsrc, runner = self._start()
        get = self.fc.servers.get
        for _ in range(5):
            self.assertFalse(runner.step())
        self.assertEqual(1, get.call_count)
        self._later(29)
        self.assertFalse(runner.step())
        self.assertEqual(1, get.call_count)
        self._later(1)
        self.assertFalse(runner.step())
        self.assertFalse(runner.step())
        self.assertEqual(2, get.call_count)

    def test_each_new_guest_report_asks_nova_at_once(self):
        cfg.CONF.set_override('server_poll_interval', 600, group='heat_gpu')
        stack, rsrc, runner = self._start()
        get = self.fc.servers.get
        self.assertFalse(runner.step())
        self.assertEqual(1, get.call_count)
        rsrc.signal({'status': 'IN_PROGRESS', 'data': json.dumps({'phase': 'detect'})})
        self.assertFalse(runner.step())
        self.assertEqual(2, get.call_count)
        # More progress of the same kind is no news: nova is not asked again.
        rsrc.signal({'status': 'IN_PROGRESS', 'data': json.dumps({'phase': 'install-driver'})})
        self.assertFalse(runner.step())
        self.assertEqual(2, get.call_count)
        self.server.status = 'ACTIVE'
        rsrc.signal({'status': 'SUCCESS', 'data': report()})
        self.assertTrue(runner.step())
        self.assertEqual(3, get.call_count)
        self.assertEqual((rsrc.CREATE, rsrc.COMPLETE), rsrc.state)

    def test_server_in_error_is_noticed_at_the_next_poll(self):
        stack, rsrc, runner = self._start()
        self.assertFalse(runner.step())
        self.server.status = 'ERROR'
        self.server.fault = {'message': 'Build of instance aborted: spawn failed', 'code': 500}
        self.assertFalse(runner.step())
        self._later(10)
        exc = self.assertRaises(exception.ResourceFailure, runner.run_to_completion)
        self.assertIn('spawn failed', str(exc))

    def test_short_compute_api_outage_while_building_is_waited_out(self):
        stack, rsrc, runner = self._start()
        rsrc.signal({'status': 'SUCCESS', 'data': report()})
        get = self.fc.servers.get
        get.side_effect = ks_exceptions.ConnectFailure('Connection refused')
        self.assertFalse(runner.step())
        self._later(60)
        get.side_effect = nova_exceptions.ClientException(503, 'Service Unavailable')
        get.side_effect.http_status = 503
        self.assertFalse(runner.step())
        get.side_effect = None
        self.server.status = 'ACTIVE'
        self._later(10)
        self.assertTrue(runner.step())
        self.assertEqual((rsrc.CREATE, rsrc.COMPLETE), rsrc.state)

    def test_long_compute_api_outage_fails_naming_the_server(self):
        cfg.CONF.set_override('api_outage_tolerance', 120, group='heat_gpu')
        stack, rsrc, runner = self._start()
        self.fc.servers.get.side_effect = ks_exceptions.ConnectFailure('Connection refused')
        self.assertFalse(runner.step())
        self._later(121)
        exc = self.assertRaises(exception.ResourceFailure, runner.run_to_completion)
        self.assertIn('could not be reached for 120 s while server', str(exc))
        self.assertIn('api_outage_tolerance', str(exc))
        self.assertIn('Connection refused', str(exc))

    def test_outage_tolerance_restarts_after_the_api_answers(self):
        cfg.CONF.set_override('api_outage_tolerance', 120, group='heat_gpu')
        stack, rsrc, runner = self._start()
        get = self.fc.servers.get
        start = timeutils.utcnow()
        self.addCleanup(timeutils.clear_time_override)
        get.side_effect = ks_exceptions.ConnectFailure('refused')
        self.assertFalse(runner.step())
        timeutils.set_time_override(start + datetime.timedelta(seconds=100))
        get.side_effect = None
        self.assertFalse(runner.step())
        # A second outage is measured from its own start, not from the first one.
        timeutils.set_time_override(start + datetime.timedelta(seconds=110))
        get.side_effect = ks_exceptions.ConnectFailure('refused')
        self.assertFalse(runner.step())
        timeutils.set_time_override(start + datetime.timedelta(seconds=200))
        self.assertFalse(runner.step())
        timeutils.set_time_override(start + datetime.timedelta(seconds=231))
        self.assertRaises(exception.ResourceFailure, runner.run_to_completion)

    def test_a_client_error_is_not_an_outage(self):
        stack, rsrc, runner = self._start()
        self.fc.servers.get.side_effect = nova_exceptions.ClientException(400, 'Bad Request')
        self.fc.servers.get.side_effect.http_status = 400
        exc = self.assertRaises(exception.ResourceFailure, runner.run_to_completion)
        self.assertNotIn('api_outage_tolerance', str(exc))

    def test_outage_tolerance_zero_fails_at_once(self):
        cfg.CONF.set_override('api_outage_tolerance', 0, group='heat_gpu')
        stack, rsrc, runner = self._start()
        self.fc.servers.get.side_effect = ks_exceptions.ConnectFailure('Connection refused')
        exc = self.assertRaises(exception.ResourceFailure, runner.run_to_completion)
        self.assertIn('could not be reached for 0 s', str(exc))

    def _nova_holds(self, servers: dict) -> None:
        """Fake nova GETs and DELETEs the servers of *servers* (id -> server) and no others."""
        def get(server_id):
            if server_id not in servers:
                raise nova_exceptions.NotFound(404)
            return servers[server_id]

        self.fc.servers.get.side_effect = get
        self.patchobject(self.fc.servers, 'delete',
                         side_effect=lambda server_id: servers.pop(server_id))

    NO_HOST = {'message': 'No valid host was found. There are not enough hosts available.',
               'code': 500}

    def test_no_valid_host_names_the_gpu_request(self):
        stack, rsrc, runner = self._start()
        self.server.status = 'ERROR'
        self.server.fault = self.NO_HOST
        exc = self.assertRaises(exception.ResourceFailure, runner.run_to_completion)
        self.assertIsInstance(exc.exc, exception.ResourceInError)
        text = str(exc)
        self.assertIn("Invalid value 'gpu.p100' for flavor: no compute host has the 1 GPU(s)", text)
        self.assertIn('pci_passthrough:alias=p100:1', text)
        self.assertIn('No valid host was found', text)
        self.assertEqual(1, self.create.call_count)

    def test_no_valid_host_is_retried_like_a_nova_server(self):
        # Servers scheduled together can lose a GPU to each other while others are free; heat's
        # action_retry_limit deletes the failed server and boots a new one with new credentials.
        cfg.CONF.set_override('action_retry_limit', 1)
        self.patchobject(heat_timeutils, 'retry_backoff_delay', return_value=0.01)
        lost, second = self.fc.servers.list()[1], self.fc.servers.list()[2]
        lost.status, lost.fault = 'ERROR', self.NO_HOST
        second.status = 'BUILD'
        servers = {lost.id: lost, second.id: second}
        self.create.side_effect = [lost, second]
        self._nova_holds(servers)
        stack = self._stack()
        rsrc = stack['gpu_vm']
        runner = scheduler.TaskRunner(rsrc.create)
        runner.start()
        while self.create.call_count < 2:
            self.assertFalse(runner.step())
        self.assertEqual([lost.id], [c.args[0] for c in self.fc.servers.delete.call_args_list])
        self.assertEqual(second.id, rsrc.resource_id)
        second.status = 'ACTIVE'
        rsrc.signal({'status': 'SUCCESS', 'data': report()})
        runner.run_to_completion()
        self.assertEqual((rsrc.CREATE, rsrc.COMPLETE), rsrc.state)
        self.assertEqual({second.id}, set(servers))

    def test_no_valid_host_retries_are_capped(self):
        # heat would retry action_retry_limit (5) times with growing pauses; a GPU request no host
        # can hold fails after [heat_gpu] no_valid_host_retries instead.
        cfg.CONF.set_override('action_retry_limit', 5)
        cfg.CONF.set_override('no_valid_host_retries', 1, group='heat_gpu')
        self.patchobject(heat_timeutils, 'retry_backoff_delay', return_value=0.01)
        servers, booted = {}, []

        def create(*args, **kwargs):
            server = self.fc.servers.list()[1 + len(booted)]
            server.status, server.fault = 'ERROR', self.NO_HOST
            servers[server.id] = server
            booted.append(server.id)
            return server

        self.create.side_effect = create
        self._nova_holds(servers)
        stack = self._stack()
        exc = self.assertRaises(exception.ResourceFailure,
                                scheduler.TaskRunner(stack['gpu_vm'].create))
        self.assertEqual(2, self.create.call_count)
        self.assertEqual(booted[:1], [c.args[0] for c in self.fc.servers.delete.call_args_list])
        self.assertIn('2 attempt(s); [heat_gpu] no_valid_host_retries', str(exc))
        self.assertIn('pci_passthrough:alias=p100:1', str(exc))
        # A later create (a new traversal of the stack) counts from zero again.
        stack['gpu_vm'].stack.current_traversal = 'another-traversal'
        self.assertEqual(1, stack['gpu_vm']._count_no_host_failure())

    def test_late_progress_does_not_undo_success(self):
        stack, rsrc, runner = self._start()
        rsrc.signal({'status': 'SUCCESS', 'data': report()})
        rsrc.signal({'status': 'IN_PROGRESS', 'data': json.dumps({'phase': 'verify'})})
        self.assertEqual('SUCCESS', attr(rsrc, 'bootstrap_status'))

    def test_signals_out_of_order_and_repeated(self):
        # The guest numbers its signals; heat may get them late, twice, or in another order.
        stack, rsrc, runner = self._start()

        def send(status, seq, phase):
            rsrc.signal({'status': status, 'data': report(seq=seq, phase=phase)})

        def recorded():
            return attr(rsrc, 'bootstrap_status'), rsrc._guest_state()[2].get('phase')

        send('IN_PROGRESS', 3, 'install-cuda')
        send('IN_PROGRESS', 2, 'install-driver')   # overtaken by 3: history only
        send('IN_PROGRESS', 3, 'install-cuda')     # a repeat: ignored
        self.assertEqual(('IN_PROGRESS', 'install-cuda'), recorded())
        send('SUCCESS', 5, 'verify')
        send('IN_PROGRESS', 4, 'verify')           # older than the final one: history only
        send('FAILURE', 6, 'verify')               # after the final one: the first final stays
        send('SUCCESS', 5, 'verify')               # the final signal retried: ignored
        self.assertEqual(('SUCCESS', 'verify'), recorded())
        # Every signal but the repeats and the second final became an event.
        signals = sorted(r for r in self._events(stack) if r.startswith('Signal: '))
        self.assertEqual(['Signal: GPU ready: driver 550.163.01, CUDA 12.4, 1 GPU(s)',
                          'Signal: phase install-cuda (signal 3)',
                          'Signal: phase install-driver (signal 2)',
                          'Signal: phase verify (signal 4)'], signals)
        self.assertEqual(['gpu_guest'], [k for k in rsrc.data() if k.startswith('gpu_g')])
        self.server.status = 'ACTIVE'
        runner.run_to_completion()
        self.assertEqual((rsrc.CREATE, rsrc.COMPLETE), rsrc.state)

    def test_final_status_applies_whatever_its_number(self):
        stack, rsrc, runner = self._start()
        rsrc.signal({'status': 'IN_PROGRESS', 'data': report(seq=7, phase='verify')})
        rsrc.signal({'status': 'FAILURE', 'reason': 'no GPU',
                     'data': report(seq=6, phase='detect')})
        self.assertEqual('FAILURE', attr(rsrc, 'bootstrap_status'))
        self.assertRaises(exception.ResourceFailure, runner.run_to_completion)

    def test_unnumbered_signals_in_arrival_order(self):
        # A guest of an earlier release sends no seq: its signals count in the order they come.
        stack, rsrc, runner = self._start()
        rsrc.signal({'status': 'IN_PROGRESS', 'data': report(phase='install-cuda')})
        rsrc.signal({'status': 'IN_PROGRESS', 'data': report(phase='install-driver')})
        self.assertEqual('install-driver', rsrc._guest_state()[2].get('phase'))

    def test_failure_reports_reason_and_log_tail(self):
        stack, rsrc, runner = self._start()
        tail = ['dkms: building nvidia/550', 'error: kernel headers 5.15.0-91 not found']
        rsrc.signal({'status': 'FAILURE', 'id': 'heat-gpu',
                     'reason': 'install linux-headers-5.15.0-91-generic and retry',
                     'data': report(phase='install-driver', log_tail=tail)})
        exc = self.assertRaises(exception.ResourceFailure, runner.run_to_completion)
        self.assertIn('GPU bootstrap failed in phase install-driver', str(exc))
        self.assertIn('install linux-headers-5.15.0-91-generic and retry', str(exc))
        self.assertIn('error: kernel headers 5.15.0-91 not found', str(exc))
        self.assertEqual((rsrc.CREATE, rsrc.FAILED), rsrc.state)
        self.assertIn('kernel headers 5.15.0-91 not found', rsrc.status_reason)
        self.assertEqual('FAILURE', attr(rsrc, 'bootstrap_status'))
        self.assertEqual('install linux-headers-5.15.0-91-generic and retry',
                         attr(rsrc, 'failure_reason'))
        self.assertEqual(tail, attr(rsrc, 'log_tail'))

    def test_timeout(self):
        stack, rsrc, runner = self._start(bootstrap_timeout=600)
        self.server.status = 'ACTIVE'
        rsrc.signal({'status': 'IN_PROGRESS', 'data': json.dumps({'phase': 'install-cuda'})})
        self.assertFalse(runner.step())
        self._later(601)
        exc = self.assertRaises(exception.ResourceFailure, runner.run_to_completion)
        self.assertIn('did not finish within 600 s', str(exc))
        self.assertIn('install-cuda', str(exc))

    def test_bad_signal_named(self):
        stack, rsrc, runner = self._start()
        exc = self.assertRaises(exception.ResourceFailure, rsrc.signal, {'status': 'DONE'})
        self.assertIn("'DONE'", str(exc))
        self.assertIn('IN_PROGRESS, SUCCESS, FAILURE', str(exc))
        exc = self.assertRaises(exception.ResourceFailure, rsrc.signal,
                                {'status': 'SUCCESS', 'data': 'not json'})
        self.assertIn('JSON', str(exc))
        self.assertIsNone(attr(rsrc, 'bootstrap_status'))

    def test_attributes_before_any_report(self):
        stack, rsrc, runner = self._start()
        self.assertIsNone(attr(rsrc, 'gpus'))
        self.assertIsNone(attr(rsrc, 'gpu_count'))
        self.assertIsNone(attr(rsrc, 'bootstrap_status'))

    def test_delete_removes_server_and_stack_user(self):
        stack, rsrc, runner = self._start()
        self.server.status = 'ACTIVE'
        rsrc.signal({'status': 'SUCCESS', 'data': report()})
        runner.run_to_completion()
        self.assertIsNotNone(rsrc.data().get('user_id'))
        delete = self.patchobject(self.fc.servers, 'delete')
        self.patchobject(self.fc.servers, 'get', side_effect=fakes_nova.fake_exception())
        scheduler.TaskRunner(rsrc.delete)()
        self.assertEqual((rsrc.DELETE, rsrc.COMPLETE), rsrc.state)
        delete.assert_called_once_with(self.server.id)
        self.assertNotIn('user_id', rsrc.data())

    def _boot_in_gpusim(self, *, prebaked: bool, faults: tuple = ()):
        """Run the real bootstrap.sh in gpusim with the settings from this resource's user data.

        Returns the stack, the resource, its create runner and the signals the guest sent.
        """
        stack, rsrc, runner = self._start()
        self.server.status = 'ACTIVE'
        settings = bootstrap_settings(self.create.call_args.kwargs['userdata'])
        signal = settings['signal']
        cloud = test_agent.FakeCloud(
            project=signal['project_id'], stack_path=signal['stack_id'],
            server_resource='gpu_vm', server=(signal['user_id'], signal['password']),
            signallers=((signal['user_id'], signal['password']),))
        cloud.__enter__()
        self.addCleanup(cloud.__exit__)
        signal['auth_url'] = cloud.auth_url
        root = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, root, True)
        env = gpusim.make_guest(root, distro='ubuntu', version='22.04', prebaked=prebaked,
                                faults=faults,
                                devices=[{'pci_address': GPU['pci_address'], 'vendor_id': '10de',
                                          'product_id': '15f8', 'numa_node': 0}])
        self.addCleanup(gpusim.stop_services, root)
        os.makedirs(os.path.dirname(env['HEAT_GPU_SETTINGS']), exist_ok=True)
        with open(env['HEAT_GPU_SETTINGS'], 'w') as f:
            json.dump(settings, f)
        subprocess.run(['bash', os.path.join(TOP, 'heat_gpu', 'guest', 'bootstrap.sh')],
                       env={**os.environ, **env}, capture_output=True, text=True, timeout=120,
                       check=False)
        self.assertEqual({'gpu_vm'}, set(cloud.signalled))
        return stack, rsrc, runner, cloud.signals

    def test_real_boot_script_reports_success(self):
        """A pre-baked P100 image: the boot script detects, verifies and reports in seconds."""
        stack, rsrc, runner, signals = self._boot_in_gpusim(prebaked=True)
        self.assertEqual('SUCCESS', signals[-1]['status'])
        # Numbered from 1 in the order sent.
        self.assertEqual(list(range(1, len(signals) + 1)),
                         [json.loads(body['data'])['seq'] for body in signals])
        for body in signals:
            rsrc.signal(body)
        runner.run_to_completion()
        self.assertEqual((rsrc.CREATE, rsrc.COMPLETE), rsrc.state)
        gpus = attr(rsrc, 'gpus')
        self.assertEqual(1, attr(rsrc, 'gpu_count'))
        self.assertEqual('Tesla P100-PCIE-16GB', gpus[0]['name'])
        self.assertEqual(GPU['pci_address'].lower(), gpus[0]['pci_address'].lower())
        self.assertTrue(attr(rsrc, 'driver_version'))
        self.assertTrue(attr(rsrc, 'cuda_version'))
        self.assertIn('detect', attr(rsrc, 'phase_times'))

    def test_real_boot_script_failure_reaches_the_event(self):
        """No GPU on the guest's PCI bus: FAILURE with the guest's reason and log tail."""
        stack, rsrc, runner, signals = self._boot_in_gpusim(prebaked=False, faults=('no-gpu',))
        self.assertEqual('FAILURE', signals[-1]['status'])
        for body in signals:
            rsrc.signal(body)
        exc = self.assertRaises(exception.ResourceFailure, runner.run_to_completion)
        self.assertEqual((rsrc.CREATE, rsrc.FAILED), rsrc.state)
        self.assertIn('GPU bootstrap failed in phase detect', str(exc))
        self.assertIn(signals[-1]['reason'], rsrc.status_reason)
        tail = attr(rsrc, 'log_tail')
        self.assertTrue(tail)
        self.assertIn(tail[-1], rsrc.status_reason)


class CudaInstanceBadInputTest(CudaInstanceTestBase):
    """Each bad input fails validation naming what is wrong; no server is created."""

    scenarios = [
        ('vgpu count above one', dict(props=dict(flavor='gpu.vgpu2'), expect=["'2'"])),
        ('passthrough and vgpu', dict(props=dict(flavor='gpu.both'), expect=['not both'])),
        ('mirror without host', dict(props=dict(mirror_url='https:///nvidia'),
                                     expect=['with a host name'])),
        ('mirror with blank', dict(props=dict(mirror_url='https://mirror example.com/nvidia'),
                                   expect=['with a host name'])),
        ('mirror bad port', dict(props=dict(mirror_url='https://mirror.example.com:99999/n'),
                                 expect=['with a host name'])),
        ('mirror with query', dict(props=dict(mirror_url='https://m.example/x?y=1'),
                                   expect=['with a host name'])),
        ('cloud-config not yaml', dict(props=dict(user_data='#cloud-config\nruncmd: [unclosed\n'),
                                       expect=['not valid YAML', 'user_data'])),
        ('cloud-config a list', dict(props=dict(user_data='#cloud-config\n- a\n'),
                                     expect=['is a list', 'user_data'])),
        ('cuda version word', dict(props=dict(cuda_version='twelve'),
                                   expect=["'twelve'", 'MAJOR.MINOR'])),
        ('driver branch short', dict(props=dict(driver_branch='55'), expect=["'55'"])),
    ]

    def test_refused(self):
        stack = self._stack(**self.props)
        exc = self.assertRaises(exception.StackValidationFailed, stack['gpu_vm'].validate)
        for text in self.expect:
            self.assertIn(text, str(exc))
        self.create.assert_not_called()


class CudaInstanceUserDataSizeTest(CudaInstanceTestBase):
    """User data nova would refuse is refused at validate: its size, the limit, a way out."""

    @staticmethod
    def _script(size: int, fill: str = 'x') -> str:
        head = '#!/bin/sh\n# payload\n'
        return head + fill * (size - len(head.encode('utf-8'))) + '\n'

    def test_too_large_user_data_is_refused_at_validate(self):
        stack = self._stack(user_data=self._script(70000))
        exc = self.assertRaises(exception.StackValidationFailed, stack['gpu_vm'].validate)
        message = str(exc)
        self.assertIn("Invalid value '#!/bin/sh' (70001 bytes) for user_data", message)
        self.assertIn('once base64-encoded, and nova accepts at most 65535', message)
        self.assertRegex(message, r'Accepted: a user_data of at most about \d+ bytes here')
        self.assertIn('OS::Heat::SoftwareDeployment', message)
        self.assertIn('into the image', message)
        self.create.assert_not_called()

    def test_validate_measures_what_create_sends(self):
        """The limit validate names is the one the create would reach, within a few bytes."""
        stack = self._stack(user_data=self._script(100))
        rsrc = stack['gpu_vm']
        self.assertIsNone(rsrc.validate())
        big = self._stack(stack_name='big', user_data=self._script(70000))
        exc = self.assertRaises(exception.StackValidationFailed, big['gpu_vm'].validate)
        most = int(str(exc).split('at most about ')[1].split(' ')[0])
        # Just under what validate accepts passes validate and the create, and nova takes it.
        stack = self._stack(stack_name='fits', user_data=self._script(most - 200))
        self.assertIsNone(stack['gpu_vm'].validate())
        stack, rsrc, runner = self._start(stack_name='created', user_data=self._script(most - 200))
        self.addCleanup(runner.cancel)
        sent = self.create.call_args.kwargs['userdata']
        self.assertLessEqual(len(base64.b64encode(sent.encode('utf-8'))), NOVA_USER_DATA_LIMIT)
        # Just over is refused.
        stack = self._stack(stack_name='over', user_data=self._script(most + 200))
        self.assertRaises(exception.StackValidationFailed, stack['gpu_vm'].validate)

    def test_non_ascii_user_data_counts_as_heat_encodes_it(self):
        # Heat base64-encodes a non-ASCII part inside its multipart: 6500 bytes of 2-byte UTF-8
        # characters are over the limit although 6500 bytes of ASCII are not.
        ascii_stack = self._stack(user_data=self._script(6500))
        self.assertIsNone(ascii_stack['gpu_vm'].validate())
        stack = self._stack(stack_name='utf8', user_data=self._script(3250 + 10, fill='\u00e9'))
        exc = self.assertRaises(exception.StackValidationFailed, stack['gpu_vm'].validate)
        self.assertIn('for user_data', str(exc))

    def test_create_checks_before_the_boot(self):
        """A software config's content is known only at create: refused there, never booted."""
        stack = self._stack(user_data='5a8f3c2e-1d4b-4c6a-9e7f-0b1c2d3e4f5a')
        rsrc = stack['gpu_vm']
        self.patchobject(cuda_instance.CudaInstance, 'get_software_config',
                         return_value=self._script(70000))
        self.assertIsNone(rsrc.validate())
        exc = self.assertRaises(exception.ResourceFailure, scheduler.TaskRunner(rsrc.create))
        self.assertIn('for user_data', str(exc))
        self.assertIn('nova accepts at most 65535', str(exc))
        self.create.assert_not_called()
        self.assertIsNone(rsrc.resource_id)

    def test_large_metadata_leaves_no_room(self):
        tmpl = template_format.parse(TEMPLATE)
        tmpl['resources']['gpu_vm']['metadata'] = {'blob': 'm' * 60000}
        stack = utils.parse_stack(tmpl, stack_name='meta')
        exc = self.assertRaises(exception.StackValidationFailed, stack['gpu_vm'].validate)
        self.assertIn('no user_data fits', str(exc))
        self.assertIn("resource's metadata", str(exc))


class CudaInstanceGoodInputTest(CudaInstanceTestBase):

    def test_cloud_config_and_mirror_with_port_pass(self):
        stack = self._stack(user_data='#cloud-config\npackages: [htop]\n',
                            mirror_url='https://mirror.example.com:8443/nvidia')
        self.assertIsNone(stack['gpu_vm'].validate())
