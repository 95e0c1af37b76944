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

"""Heat as production runs it: two heat-engines of four workers each, heat-api of two.

The local cloud's "production" heat layout (the default; tools/localcloud/cloud.py
HEAT_LAYOUTS). A guest's signal goes from heat-api to any worker of either engine, while the
worker that created the resource polls it; the plugin's state must stay consistent whichever
process writes or reads it, and a GPU must never be given to two servers.
"""

import collections
import concurrent.futures
import json
import random
import re
import textwrap

from tests.functional import base
from tests.functional.test_faults import FaultTestCase
from tests.functional.test_faults import INSTANCE_TEMPLATE
from tests.functional.test_faults import MIRROR_TEMPLATE

# Two GPU instances in one stack, on the image with the driver and CUDA baked in.
PAIR_TEMPLATE = textwrap.dedent('''\
    heat_template_version: 2021-04-16
    parameters:
      flavor: {type: string}
      image: {type: string, default: ubuntu-22.04-cuda-prebaked}
    resources:
      gpu_a:
        type: OS::GPU::CudaInstance
        properties:
          flavor: {get_param: flavor}
          image: {get_param: image}
          networks: [{allocate_network: none}]
      gpu_b:
        type: OS::GPU::CudaInstance
        properties:
          flavor: {get_param: flavor}
          image: {get_param: image}
          networks: [{allocate_network: none}]
    outputs:
      servers:
        value: [{get_resource: gpu_a}, {get_resource: gpu_b}]
      status:
        value: [{get_attr: [gpu_a, bootstrap_status]}, {get_attr: [gpu_b, bootstrap_status]}]
      gpus:
        value: [{get_attr: [gpu_a, gpus]}, {get_attr: [gpu_b, gpus]}]
    ''')

# What the plugin logs (oslo.log's default format carries the process id after the time).
_LOG_LINE = re.compile(
    r'^\S+ \S+ (?P<pid>\d+) INFO \S*cuda_instance \[[^\]]*\] '
    r'(?P<resource>\S+) \(stack (?P<stack>[0-9a-f-]{36})\): (?P<what>.*)$', re.M)


class ProductionHeatTestCase(FaultTestCase):

    def setUp(self) -> None:
        super().setUp()
        layout = self.cloud.heat_layout
        if layout['engines'] < 2 or layout['engine_workers'] < 2:
            self.skipTest('the local cloud runs heat as "%s"; these tests need several engines '
                          'and workers (HEAT_GPU_CLOUD_HEAT=production, the default)'
                          % self.cloud.heat_layout_name)

    def plugin_log(self, offsets: dict) -> list[dict]:
        """The plugin's log lines since ``offsets``: engine, worker pid, stack, resource, text."""
        lines = []
        for engine, text in self.engine_logs_since(offsets).items():
            for match in _LOG_LINE.finditer(text):
                lines.append(dict(match.groupdict(), engine=engine))
        return lines


class TestProductionHeat(ProductionHeatTestCase):

    def test_stacks_at_once_are_served_by_every_engine(self):
        # Two stacks of two GPU instances each, created at once, take four of the cloud's six
        # P100s: each server gets its own GPU, and the work is spread over both engines.
        flavor = self.create_gpu_flavor(alias='p100', count=1)
        offsets = self.engine_log_offsets()
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            stacks = list(pool.map(
                lambda _: self.create_stack(template=PAIR_TEMPLATE,
                                            parameters={'flavor': flavor.id}), range(2)))
        servers = []
        for stack_id in stacks:
            outputs = self.outputs(self.wait_for_stack(stack_id, 'CREATE_COMPLETE'))
            self.assertEqual(['SUCCESS', 'SUCCESS'], outputs['status'])
            self.assertEqual([1, 1], [len(g) for g in outputs['gpus']])
            servers.extend(outputs['servers'])

        # No GPU double-booked: nova's tracker gives each server one device of its own.
        devices = {s: [d['address'] for d in self.pci_devices(instance_uuid=s)] for s in servers}
        self.assertEqual([1] * 4, [len(a) for a in devices.values()], devices)
        self.assertEqual(4, len({a[0] for a in devices.values()}), devices)

        log = [line for line in self.plugin_log(offsets) if line['stack'] in stacks]
        created = {(e['stack'], e['resource']): (e['engine'], e['pid']) for e in log
                   if e['what'].startswith('server ')}
        self.assertEqual(4, len(created), log)
        recorded = [e for e in log if e['what'].startswith('guest signal ')
                    and e['what'].endswith(' recorded')]
        # Both engines took part, and signals were handled by other workers than the one that
        # created and polls the resource (while it polled: the resource completed on SUCCESS).
        engines = {e['engine'] for e in log}
        self.assertEqual(set(self.cloud.heat_engines), engines, log)
        elsewhere = [e for e in recorded
                     if (e['engine'], e['pid']) != created[(e['stack'], e['resource'])]]
        self.assertTrue(elsewhere, 'every signal landed on the polling worker: %s' % log)
        workers = collections.Counter((e['engine'], e['pid']) for e in log)
        self.assertGreater(len(workers), 2, workers)

        for stack_id in stacks:
            self.delete_stack(stack_id)
        for server_id in servers:
            self.assert_gone(server_id)

    def test_signals_late_repeated_and_out_of_order(self):
        # The guest hangs on its mirror after its first phases; then signals for its resource
        # come from many clients at once, numbered out of order, repeated, and after the final
        # one. Whichever workers handle them, the resource holds the final one, heat lists every
        # signal once as an event, and a FAILURE after the SUCCESS changes nothing.
        flavor = self.create_gpu_flavor(alias='p100', count=1)
        stack_id = self.create_stack(template=MIRROR_TEMPLATE, parameters={
            'flavor': flavor.id, 'bootstrap_timeout': 400, 'mirror_url': self.silent_mirror()})
        self.wait_until(lambda: self.phase_events(stack_id), timeout=240,
                        what='the first phase signal of stack %s' % stack_id)

        def body(status: str, seq: int, **report) -> dict:
            data = {'seq': seq, 'phase': 'p%d' % seq}
            data.update(report)
            return {'status': status, 'id': 'heat-gpu', 'reason': 'test signal %d' % seq,
                    'data': json.dumps(data)}

        def send_all(bodies: list) -> None:
            with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
                list(pool.map(lambda b: self.heat_demo.resources.signal(
                    stack_id, 'gpu_vm', data=b), bodies))

        rng = random.Random(18)
        progress = [body('IN_PROGRESS', seq) for seq in range(100, 140)]
        bodies = progress + progress[::3]
        rng.shuffle(bodies)
        send_all(bodies)
        # Every signal is one event, the repeats none, whatever the order they came in.
        expected = sorted('p%d' % seq for seq in range(100, 140))

        def ours() -> list:
            return sorted(p for p in self.phase_events(stack_id) if re.match(r'^p\d+$', p))

        self.wait_until(lambda: len(ours()) >= len(expected), timeout=60,
                        what='the 40 signals recorded')
        self.assertEqual(expected, ours())
        self.assertEqual('CREATE_IN_PROGRESS', self.heat_demo.stacks.get(stack_id).stack_status)

        final = body('SUCCESS', 200, gpus=[{'index': 0, 'name': 'Tesla P100-PCIE-16GB'}],
                     driver_version='test-200', cuda_version='12.4')
        bodies = [body('IN_PROGRESS', seq) for seq in range(140, 200)] + [final] * 4
        rng.shuffle(bodies)
        send_all(bodies)
        stack = self.wait_for_stack(stack_id, 'CREATE_COMPLETE', timeout=120)
        # After the final one: a newer FAILURE and progress change nothing. (Heat handles a
        # signal after its API call returns: wait until the plugin has logged all three.)
        offsets = self.engine_log_offsets()
        send_all([body('FAILURE', 300), final, body('IN_PROGRESS', 301)])

        def handled() -> dict:
            return {int(m.group(1)): line['what'] for line in self.plugin_log(offsets)
                    for m in [re.search(r', seq (\d+)\) ', line['what'])]
                    if line['stack'] == stack_id and m}

        self.wait_until(lambda: {200, 300, 301} <= set(handled()), timeout=60,
                        what='the signals after the final one handled')
        self.assertIn('ignored: the guest already reported SUCCESS', handled()[300])
        self.assertIn('recorded as history (it came after SUCCESS)', handled()[301])
        self.assertIn('ignored: signal 200 was recorded already', handled()[200])
        resource = self.heat_demo.resources.get(
            stack_id, 'gpu_vm', with_attr=['bootstrap_status', 'driver_version', 'failure_reason'])
        self.assertEqual('CREATE_COMPLETE', resource.resource_status)
        self.assertEqual('SUCCESS', resource.attributes['bootstrap_status'])
        self.assertEqual('test-200', resource.attributes['driver_version'])
        self.assertIsNone(resource.attributes['failure_reason'])
        events = self.heat_demo.events.list(stack_id, resource_name='gpu_vm')
        ready = [e for e in events if (e.resource_status_reason or '').startswith(
            'Signal: GPU ready')]
        self.assertEqual(1, len(ready), [e.resource_status_reason for e in events])
        failed = [e for e in events if 'failed' in (e.resource_status_reason or '')]
        self.assertEqual([], failed)
        # The progress sent with and after the final one is history: one event each.
        self.assertEqual(sorted('p%d' % seq for seq in list(range(100, 200)) + [301]), ours())
        self.assertEqual('CREATE_COMPLETE', stack.stack_status)

        server_id = resource.physical_resource_id
        self.delete_stack(stack_id)
        self.assert_gone(server_id)

    def test_engine_killed_while_the_other_takes_the_rest(self):
        # Two stacks build; the engine holding the first one's instance is killed. While it is
        # down a third stack is created and completes on the other engine; the guest of the
        # first keeps signalling and its signals are recorded. Heat's convergence engine does
        # not resume a resource whose engine died: that stack stays CREATE_IN_PROGRESS until
        # cancelled (the README's advice), then its delete frees the GPU. A stack the surviving
        # engine held completes.
        flavor = self.create_gpu_flavor(alias='p100', count=1)
        first, second = (self.create_stack(template=INSTANCE_TEMPLATE,
                                           parameters={'flavor': flavor.id}) for _ in range(2))
        for stack_id in (first, second):
            self.wait_until(lambda s=stack_id: self.phase_events(s), timeout=240,
                            what='the first phase signal of stack %s' % stack_id)
        holders = {s: self.cloud.engines_holding(s) for s in (first, second)}
        self.assertEqual(1, len(holders[first]), holders)
        killed = holders[first][0]
        survivor = [name for name in self.cloud.heat_engines if name != killed][0]
        servers = {s: self.server_of(s) for s in (first, second)}

        third = []

        def while_down() -> None:
            stack_id = self.create_stack(template=INSTANCE_TEMPLATE, parameters={
                'flavor': flavor.id, 'image': 'ubuntu-22.04-cuda-prebaked'})
            third.append(stack_id)
            self.wait_for_stack(stack_id, 'CREATE_COMPLETE')
            servers[stack_id] = self.server_of(stack_id)
            # The first stack's guest signals through heat-api to the surviving engine.
            self.wait_until(lambda: 'verify' in self.phase_events(first), timeout=300,
                            what='the guest of stack %s signalling %s' % (first, survivor))

        self.cloud.restart([killed], crash=True, while_down=while_down)

        self.assertEqual('CREATE_IN_PROGRESS', self.heat_demo.stacks.get(first).stack_status)
        if killed in holders[second]:
            self.assertEqual('CREATE_IN_PROGRESS',
                             self.heat_demo.stacks.get(second).stack_status)
            stuck = [first, second]
        else:
            self.wait_for_stack(second, 'CREATE_COMPLETE')
            stuck = [first]
        # No GPU double-booked across the three servers.
        devices = {s: [d['address'] for d in self.pci_devices(instance_uuid=srv)]
                   for s, srv in servers.items()}
        self.assertEqual([1, 1, 1], [len(a) for a in devices.values()], devices)
        self.assertEqual(3, len({a[0] for a in devices.values()}), devices)

        for stack_id in stuck:
            self.heat_demo.actions.cancel_without_rollback(stack_id)
            error = self.assertRaises(base.StackFailed, self.wait_for_stack, stack_id,
                                      'CREATE_COMPLETE', timeout=120)
            self.assertIn('CREATE_FAILED', str(error))
        for stack_id, server_id in servers.items():
            self.delete_stack(stack_id)
            self.assert_stack_deleted(stack_id)
            self.assert_gone(server_id)
