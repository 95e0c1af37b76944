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

"""OS::GPU::CudaInstance when things go wrong: a silent guest, reboots, deletes, contention.

Every test ends with nothing left behind (the base class checks stacks, servers, flavors, PCI
claims and Neutron's ports, floating IPs, security groups, routers and networks), and stacks end
in a final state (COMPLETE or FAILED, then deleted).
"""

import collections
import json
import os
import re
import signal
import socket
import textwrap
import time

from heatclient import exc as heat_exc

from tests.functional import base

PHASES = ('detect', 'prepare-kernel', 'install-driver', 'reboot', 'install-cuda', 'verify')

INSTANCE_TEMPLATE = textwrap.dedent('''\
    heat_template_version: 2021-04-16
    parameters:
      flavor: {type: string}
      image: {type: string, default: ubuntu-22.04-gpu}
      bootstrap_timeout: {type: number, default: 600}
    resources:
      gpu_vm:
        type: OS::GPU::CudaInstance
        properties:
          flavor: {get_param: flavor}
          image: {get_param: image}
          networks: [{allocate_network: none}]
          bootstrap_timeout: {get_param: bootstrap_timeout}
    outputs:
      server_id:
        value: {get_resource: gpu_vm}
      phase_times:
        value: {get_attr: [gpu_vm, phase_times]}
      bootstrap_status:
        value: {get_attr: [gpu_vm, bootstrap_status]}
    ''')

# The same with a mirror for the NVIDIA downloads.
MIRROR_TEMPLATE = INSTANCE_TEMPLATE.replace(
    '  bootstrap_timeout: {type: number, default: 600}\n',
    '  bootstrap_timeout: {type: number, default: 600}\n  mirror_url: {type: string}\n'
).replace(
    '      bootstrap_timeout: {get_param: bootstrap_timeout}\n',
    '      bootstrap_timeout: {get_param: bootstrap_timeout}\n'
    '      mirror_url: {get_param: mirror_url}\n')

# A CudaInstance on a port of the demo project's network (a real Neutron port, bound by ML2).
PORT_TEMPLATE = textwrap.dedent('''\
    heat_template_version: 2021-04-16
    parameters:
      flavor: {type: string}
      image: {type: string, default: ubuntu-22.04-cuda-prebaked}
    resources:
      port:
        type: OS::Neutron::Port
        properties:
          network: private
      gpu_vm:
        type: OS::GPU::CudaInstance
        properties:
          flavor: {get_param: flavor}
          image: {get_param: image}
          networks: [{port: {get_resource: port}}]
          bootstrap_timeout: 600
    outputs:
      server_id:
        value: {get_resource: gpu_vm}
      port_id:
        value: {get_resource: port}
      bootstrap_status:
        value: {get_attr: [gpu_vm, bootstrap_status]}
    ''')


class FaultTestCase(base.FunctionalTestCase):

    def outputs(self, stack) -> dict:
        return {o['output_key']: o['output_value'] for o in stack.outputs}

    def phase_events(self, stack_id: str) -> list[str]:
        """The phases the guest announced, in the guest's order.

        Heat's events are in the order heat's workers handled the signals, which with several
        workers may differ from the order the guest sent them in; the event of a numbered
        signal ends with its number "(signal N)".
        """
        events = self.heat_demo.events.list(stack_id, resource_name='gpu_vm',
                                            sort_dir='asc', sort_keys='event_time')
        phases = []
        for event in events:
            match = re.match(r'^Signal: phase (\S+?)(?::.*?)?(?: \(signal (\d+)\))?$',
                             event.resource_status_reason or '', re.S)
            if match:
                phases.append((int(match.group(2) or 0), len(phases), match.group(1)))
        return [phase for _, _, phase in sorted(phases)]

    def assert_stack_deleted(self, stack_id: str) -> None:
        """Heat shows a deleted stack by id as DELETE_COMPLETE for a while, then not at all."""
        try:
            status = self.heat_demo.stacks.get(stack_id).stack_status
        except heat_exc.HTTPNotFound:
            return
        self.assertEqual('DELETE_COMPLETE', status)

    def server_of(self, stack_id: str) -> str | None:
        resource = self.heat_demo.resources.get(stack_id, 'gpu_vm')
        return resource.physical_resource_id or None

    def silent_mirror(self) -> str:
        """An https URL on 127.0.0.1 whose server accepts connections and never answers."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(listener.close)
        listener.bind(('127.0.0.1', 0))
        listener.listen(16)
        return 'https://127.0.0.1:%d/nvidia' % listener.getsockname()[1]

    def engine_log_offsets(self) -> dict:
        """Where each heat-engine's log ends now (its workers all write to it)."""
        return {name: os.path.getsize(os.path.join(self.cloud.logs, name + '.log'))
                for name in self.cloud.heat_engines}

    def engine_logs_since(self, offsets: dict) -> dict:
        """What each heat-engine logged since ``offsets``."""
        logs = {}
        for name, offset in offsets.items():
            with open(os.path.join(self.cloud.logs, name + '.log'), encoding='utf-8',
                      errors='replace') as f:
                f.seek(offset)
                logs[name] = f.read()
        return logs

    def guest_commands(self, server_id: str) -> list[dict]:
        """What the guest's stub commands recorded (gpusim's commands.jsonl)."""
        path = self.cloud.path('guests', server_id, 'disk', '.gpusim', 'commands.jsonl')
        with open(path, encoding='utf-8') as f:
            return [json.loads(line) for line in f if line.strip()]


class TestGuestFaults(FaultTestCase):

    def test_guest_that_never_reports_times_out_naming_the_phase(self):
        # The mirror hangs: the guest announces its first phases, then waits on a download
        # that never finishes and never sends a final status. The plugin's own deadline ends it.
        flavor = self.create_gpu_flavor(alias='p100', count=1)
        stack_id = self.create_stack(template=MIRROR_TEMPLATE, parameters={
            'flavor': flavor.id, 'bootstrap_timeout': 60, 'mirror_url': self.silent_mirror()})
        error = self.assertRaises(base.StackFailed, self.wait_for_stack, stack_id,
                                  'CREATE_COMPLETE', timeout=240)
        self.assertEqual('CREATE_FAILED', self.heat_demo.stacks.get(stack_id).stack_status)
        phases = self.phase_events(stack_id)
        self.assertNotEqual([], phases, 'the guest announced no phase before it hung')
        # Announced in order, each once, and it never got to the end.
        self.assertEqual(list(PHASES[:len(phases)]), phases)
        self.assertNotIn('verify', phases)
        resource = self.heat_demo.resources.get(stack_id, 'gpu_vm')
        self.assertEqual('CREATE_FAILED', resource.resource_status)
        self.assertIn('GPU bootstrap did not finish within 60 s (last phase: %s)' % phases[-1],
                      resource.resource_status_reason)
        self.assertIn('raise bootstrap_timeout or check the console log', str(error))
        server_id = resource.physical_resource_id
        self.assertTrue(server_id)
        self.assertEqual(1, len(self.pci_devices(instance_uuid=server_id)))

        self.delete_stack(stack_id)
        self.assert_gone(server_id)

    def test_reboot_mid_install_resumes_once(self):
        flavor = self.create_gpu_flavor(alias='p100', count=1)
        stack_id = self.create_stack(template=INSTANCE_TEMPLATE,
                                     parameters={'flavor': flavor.id})
        stack = self.wait_for_stack(stack_id, 'CREATE_COMPLETE')
        outputs = self.outputs(stack)
        server_id = outputs['server_id']
        # Every phase was announced exactly once, in order, the reboot included.
        self.assertEqual(list(PHASES), self.phase_events(stack_id))
        self.assertEqual(set(PHASES), set(outputs['phase_times']))
        self.assertEqual('SUCCESS', outputs['bootstrap_status'])

        console = self.admin.compute.get_server_console_output(server_id)['output']
        self.assertEqual(1, console.count('guest: the guest rebooted'), console[-3000:])
        # The driver went in before the reboot, CUDA after it, each exactly once: the packages'
        # maintainer scripts, which the guest's real dpkg ran, told the simulated kernel.
        installs = collections.defaultdict(list)
        for cmd in self.guest_commands(server_id):
            if cmd['cmd'] == 'gpusim-pkg-hook' and cmd['args'][0] == 'configure':
                kind = 'driver' if cmd['args'][1].startswith('nvidia-driver-') else \
                    'toolkit' if cmd['args'][1].startswith('cuda-toolkit-') else cmd['args'][1]
                installs[kind].append(cmd['boot'])
        self.assertEqual({'driver': [1], 'toolkit': [2]},
                         {k: v for k, v in installs.items()}, installs)

        self.delete_stack(stack_id)
        self.assert_gone(server_id)


class TestDeletes(FaultTestCase):

    def test_delete_while_create_in_progress(self):
        flavor = self.create_gpu_flavor(alias='p100', count=1)
        stack_id = self.create_stack(template=INSTANCE_TEMPLATE,
                                     parameters={'flavor': flavor.id})
        server_id = self.wait_until(lambda: self.server_of(stack_id),
                                    what='the server of stack %s' % stack_id, timeout=120)
        self.wait_until(lambda: self.phase_events(stack_id),
                        what='the first phase signal of stack %s' % stack_id, timeout=120)
        self.assertEqual('CREATE_IN_PROGRESS', self.heat_demo.stacks.get(stack_id).stack_status)
        self.assertEqual(1, len(self.pci_devices(instance_uuid=server_id)))

        self.delete_stack(stack_id)
        self.assert_stack_deleted(stack_id)
        self.assert_gone(server_id)

    def test_delete_after_server_removed_by_hand(self):
        flavor = self.create_gpu_flavor(alias='p100', count=1)
        stack_id = self.create_stack(template=INSTANCE_TEMPLATE, parameters={
            'flavor': flavor.id, 'image': 'ubuntu-22.04-cuda-prebaked'})
        stack = self.wait_for_stack(stack_id, 'CREATE_COMPLETE')
        server_id = self.outputs(stack)['server_id']

        self.admin.compute.delete_server(server_id)
        self.wait_until(lambda: self.server_gone(server_id),
                        what='the admin deleting server %s' % server_id, timeout=120)

        self.delete_stack(stack_id)
        self.assert_stack_deleted(stack_id)
        self.assert_gone(server_id)


class TestContention(FaultTestCase):

    A100 = '20b5'

    def _a100_holders(self) -> dict:
        """A100 device (address@host) -> the instance nova's PCI tracker gave it to."""
        return {'%s@%s' % (d['address'], d['host']): d['instance_uuid']
                for d in self.pci_devices()
                if d['product_id'] == self.A100 and d['status'] != 'available'}

    def _a100_placement_usage(self, providers: list[str]) -> dict:
        """Per A100 resource provider: its consumers and the units they hold."""
        usage = {}
        for rp in providers:
            allocs = self.placement_get('/resource_providers/%s/allocations' % rp)['allocations']
            usage[rp] = {consumer: a['resources'].get('CUSTOM_PCI_10DE_20B5', 0)
                         for consumer, a in allocs.items()}
        return usage

    def test_three_stacks_race_for_two_a100(self):
        flavor = self.create_gpu_flavor(alias='a100-80g', count=2)
        providers = [p['uuid'] for p in
                     self.placement_get('/resource_providers?resources=CUSTOM_PCI_10DE_20B5:1')
                     ['resource_providers']]
        self.assertEqual(2, len(providers))
        stacks = [self.create_stack(template=INSTANCE_TEMPLATE, parameters={
            'flavor': flavor.id, 'image': 'ubuntu-22.04-cuda-prebaked'}) for _ in range(3)]

        seen_holders = set()
        polls_while_racing = 0
        deadline = time.monotonic() + base.STACK_TIMEOUT
        while True:
            holders = self._a100_holders()
            # One instance holds both A100s or none does; no device is in two hands.
            self.assertLessEqual(len(set(holders.values())), 1, holders)
            seen_holders.update(holders.values())
            for rp, consumers in self._a100_placement_usage(providers).items():
                self.assertLessEqual(sum(consumers.values()), 1, (rp, consumers))
            states = [self.heat_demo.stacks.get(s).stack_status for s in stacks]
            if all(s in ('CREATE_COMPLETE', 'CREATE_FAILED') for s in states):
                break
            polls_while_racing += 1
            self.assertLess(time.monotonic(), deadline, 'stacks still running: %s' % states)
            time.sleep(1)

        done = {s: self.heat_demo.stacks.get(s) for s in stacks}
        won = [s for s, st in done.items() if st.stack_status == 'CREATE_COMPLETE']
        self.assertEqual(1, len(won), {s: st.stack_status for s, st in done.items()})
        winner = self.outputs(done[won[0]])['server_id']
        self.assertEqual({winner}, set(self._a100_holders().values()))
        self.assertEqual({winner}, seen_holders)
        # The claims were looked at while the stacks still ran, not only afterwards.
        self.assertGreaterEqual(polls_while_racing, 1)
        for stack_id, stack in done.items():
            if stack_id in won:
                continue
            self.assertIn('No valid host', stack.stack_status_reason)
            self.delete_stack(stack_id)
        for stack_id in stacks:
            self.delete_stack(stack_id)
        self.assert_gone(winner)
        self.assertEqual({}, self._a100_holders())


class TestServiceRestarts(FaultTestCase):
    """Services of the cloud restarted under a create: the stack still ends in a final state."""

    def _hold_scheduler(self) -> None:
        """Freeze nova-scheduler so new servers stay in BUILD until ``_release_scheduler``."""
        pgid = self.cloud.pid('nova-scheduler')
        self.assertIsNotNone(pgid, 'nova-scheduler is not running')
        os.killpg(pgid, signal.SIGSTOP)
        self.addCleanup(self._release_scheduler)

    def _release_scheduler(self) -> None:
        pgid = self.cloud.pid('nova-scheduler')
        if pgid is not None:
            os.killpg(pgid, signal.SIGCONT)

    def test_nova_api_crash_while_the_server_builds(self):
        # The scheduler is held so the server is still BUILDing (the resource polls nova for it)
        # when nova-api dies; the resource waits the outage out instead of failing the stack.
        flavor = self.create_gpu_flavor(alias='p100', count=1)
        engine_logs = self.engine_log_offsets()
        self._hold_scheduler()
        stack_id = self.create_stack(template=INSTANCE_TEMPLATE, parameters={
            'flavor': flavor.id, 'image': 'ubuntu-22.04-cuda-prebaked'})
        server_id = self.wait_until(lambda: self.server_of(stack_id),
                                    what='the server of stack %s' % stack_id, timeout=120)
        self.assertEqual('BUILD', self.admin.compute.get_server(server_id).status)

        # nova-api stays down until the resource has met the outage: it asks nova only every
        # [heat_gpu] server_poll_interval seconds, longer than a restart may take.
        outage = 'the Compute API did not answer while server %s builds' % server_id
        self.cloud.restart(['nova-api'], crash=True, while_down=lambda: self.wait_until(
            lambda: outage in ''.join(self.engine_logs_since(engine_logs).values()),
            what='heat-engine meeting the nova-api outage', timeout=120))
        self._release_scheduler()

        stack = self.wait_for_stack(stack_id, 'CREATE_COMPLETE')
        self.assertEqual(server_id, self.outputs(stack)['server_id'])
        self.assertEqual('SUCCESS', self.outputs(stack)['bootstrap_status'])
        self.assertEqual(1, len(self.pci_devices(instance_uuid=server_id)))
        # The resource did meet the outage (else this test proved nothing) and got over it.
        log = ''.join(self.engine_logs_since(engine_logs).values())
        self.assertIn(outage, log)
        self.assertIn('the Compute API answers again after', log)

        self.delete_stack(stack_id)
        self.assert_stack_deleted(stack_id)
        self.assert_gone(server_id)

    def test_neutron_server_crash_while_the_server_builds(self):
        # The port exists and the server waits in BUILD (scheduler held) when neutron-server dies;
        # the scheduler goes on while neutron is down, so nova-compute binds the port during the
        # outage or just after it. The stack ends complete with the port bound and ACTIVE, or
        # failed with a reason; either way its delete leaves no port, server or GPU behind.
        flavor = self.create_gpu_flavor(alias='p100', count=1)
        self._hold_scheduler()
        stack_id = self.create_stack(template=PORT_TEMPLATE, parameters={'flavor': flavor.id})
        server_id = self.wait_until(lambda: self.server_of(stack_id),
                                    what='the server of stack %s' % stack_id, timeout=120)
        self.assertEqual('BUILD', self.admin.compute.get_server(server_id).status)
        port_id = self.heat_demo.resources.get(stack_id, 'port').physical_resource_id
        self.assertEqual('DOWN', self.admin.network.get_port(port_id).status)

        self.cloud.restart(['neutron-server'], crash=True, while_down=self._release_scheduler)
        servers = {server_id}

        try:
            stack = self.wait_for_stack(stack_id, 'CREATE_COMPLETE')
        except base.StackFailed as exc:
            self.assertIn('CREATE_FAILED', str(exc))
        else:
            outputs = self.outputs(stack)
            self.assertEqual(port_id, outputs['port_id'])
            self.assertEqual('SUCCESS', outputs['bootstrap_status'])
            # The server nova built during the outage may have gone to ERROR (nova could not
            # read the port from the restarting neutron-server); the instance then made another
            # on the same port.
            servers.add(outputs['server_id'])
            server = self.admin.compute.get_server(outputs['server_id'])
            port = self.admin.network.get_port(port_id)
            self.assertEqual(('ACTIVE', server.compute_host, server.id),
                             (port.status, port.binding_host_id, port.device_id))

        self.delete_stack(stack_id)
        self.assert_stack_deleted(stack_id)
        for server in servers:
            self.assert_gone(server)
        self.assertEqual([], list(self.admin.network.ports(id=port_id)))
