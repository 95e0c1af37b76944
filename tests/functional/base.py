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

"""Base class of the end-to-end tests: real clients against the local cloud.

The first test of a run starts the local cloud (``tools/localcloud/cloud.py``; a file lock in its
state directory makes concurrent starts wait for each other, and ``start`` is a fast no-op when the
cloud already runs). Every test gets openstacksdk connections and heat clients for the admin and the
``demo`` tenant, helpers that create flavors and stacks which are removed again at cleanup, and a
final check that nothing the test created is left behind.
"""

import os
import time
import uuid

from heatclient import client as heat_client
from heatclient import exc as heat_exc
from openstack import exceptions as sdk_exc
import testtools

from tools.localcloud import cloud as localcloud

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PREFIX = 'hgft-'
# Names of this test process start with RUN_PREFIX, so the leak check ignores what other runs
# (a demo, a second test run) create on the same cloud meanwhile.
RUN_PREFIX = '%s%s-' % (PREFIX, uuid.uuid4().hex[:4])
STACK_TIMEOUT = float(os.environ.get('HEAT_GPU_FUNCTIONAL_STACK_TIMEOUT', '420'))
# How long nova may keep the GPUs of a deleted server. A compute host frees them when the server is
# deleted, but when its periodic resource audit (every 60 s) read the host's servers just before
# that, the audit counts the server's devices once more and only the next audit frees them (seen
# on the local cloud: a P100 held 63 s after its server was deleted). Two audits and a margin.
RELEASE_TIMEOUT = 150.0


class StackFailed(AssertionError):
    """A stack ended in a FAILED state or did not finish in time."""


class FunctionalTestCase(testtools.TestCase):
    """A test that talks to the local cloud exactly as a user would."""

    cloud = None

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        if FunctionalTestCase.cloud is None:
            cloud = localcloud.ensure_running()
            # The tests name hosts, devices and counts of the "test" host layout.
            if cloud.settings['layout'] != 'test':
                raise RuntimeError(
                    'the functional tests need a local cloud with the "test" host layout; the '
                    'one in %s has "%s". Point HEAT_GPU_CLOUD_DIR at another state directory.'
                    % (cloud.state, cloud.settings['layout']))
            FunctionalTestCase.cloud = cloud

    def setUp(self) -> None:
        super().setUp()
        self.admin = self.cloud.connection(admin=True)
        self.demo = self.cloud.connection(admin=False)
        self.heat_admin = self.heat_client(admin=True)
        self.heat_demo = self.heat_client(admin=False)
        self._baseline = self._inventory()
        # Cleanups run last-in first-out: this one runs after every delete the test added.
        self.addCleanup(self.assert_nothing_leaked)

    # Clients

    def heat_client(self, *, admin: bool):
        conn = self.cloud.connection(admin=admin)
        return heat_client.Client('1', session=conn.session, region_name=localcloud.REGION,
                                  interface='public')

    @staticmethod
    def unique_name(kind: str) -> str:
        return '%s%s-%s' % (RUN_PREFIX, kind, uuid.uuid4().hex[:8])

    # Creating things (each removed at cleanup)

    def create_gpu_flavor(self, *, alias: str, count: int, vcpus: int = 2, ram: int = 2048,
                          disk: int = 10):
        """A private flavor requesting ``count`` devices of a ``[pci] alias``, usable by demo."""
        flavor = self.admin.compute.create_flavor(
            name=self.unique_name('flavor-%s-%d' % (alias, count)), vcpus=vcpus, ram=ram,
            disk=disk, is_public=False)
        self.addCleanup(self.admin.compute.delete_flavor, flavor, ignore_missing=True)
        self.admin.compute.create_flavor_extra_specs(
            flavor, {'pci_passthrough:alias': '%s:%d' % (alias, count)})
        self.admin.compute.flavor_add_tenant_access(flavor, self.demo.current_project_id)
        return flavor

    def create_stack(self, *, template: str, parameters: dict | None = None,
                     client=None) -> str:
        """Create a stack (as demo unless another heat client is given); return its id."""
        client = client or self.heat_demo
        name = self.unique_name('stack')
        resp = client.stacks.create(stack_name=name, template=template,
                                    parameters=parameters or {}, timeout_mins=10)
        stack_id = resp['stack']['id']
        self.addCleanup(self.delete_stack, stack_id, client=client)
        return stack_id

    def delete_stack(self, stack_id: str, *, client=None) -> None:
        client = client or self.heat_demo
        try:
            client.stacks.delete(stack_id)
        except heat_exc.HTTPNotFound:
            return
        self.wait_for_stack(stack_id, 'DELETE_COMPLETE', client=client)

    # Waiting

    def wait_for_stack(self, stack_id: str, status: str, *, client=None,
                       timeout: float = STACK_TIMEOUT):
        """Wait until the stack reaches ``status`` (e.g. CREATE_COMPLETE); fail on *_FAILED.

        A deleted stack counts as DELETE_COMPLETE. The failure message carries the stack's
        reason and the reasons of its failed resources.
        """
        client = client or self.heat_demo
        deadline = time.monotonic() + timeout
        while True:
            try:
                stack = client.stacks.get(stack_id)
            except heat_exc.HTTPNotFound:
                if status == 'DELETE_COMPLETE':
                    return None
                raise
            if stack.stack_status == status:
                return stack
            if stack.stack_status.endswith('_FAILED'):
                raise StackFailed('stack %s is %s, not %s: %s%s' % (
                    stack_id, stack.stack_status, status, stack.stack_status_reason,
                    self._failed_resources(stack_id, client=client)))
            if time.monotonic() > deadline:
                raise StackFailed('stack %s still %s after %d s (waiting for %s)%s' % (
                    stack_id, stack.stack_status, timeout, status,
                    self._failed_resources(stack_id, client=client)))
            time.sleep(2)

    @staticmethod
    def _failed_resources(stack_id: str, *, client) -> str:
        try:
            resources = client.resources.list(stack_id, nested_depth=2)
        except heat_exc.HTTPException:
            return ''
        lines = ['\n  %s (%s): %s %s' % (r.resource_name, r.resource_type, r.resource_status,
                                         r.resource_status_reason)
                 for r in resources if not r.resource_status.endswith('_COMPLETE')]
        return ''.join(lines)

    def wait_for_server(self, server_id: str, *, statuses: tuple = ('ACTIVE', 'ERROR'),
                        timeout: float = 300.0):
        deadline = time.monotonic() + timeout
        while True:
            server = self.admin.compute.get_server(server_id)
            if server.status in statuses:
                return server
            if time.monotonic() > deadline:
                self.fail('server %s still %s after %d s (waiting for %s)' % (
                    server_id, server.status, timeout, '/'.join(statuses)))
            time.sleep(2)

    def server_gone(self, server_id: str) -> bool:
        """True when nova no longer has the server (admins still read it as DELETED)."""
        try:
            return self.admin.compute.get_server(server_id).status == 'DELETED'
        except sdk_exc.NotFoundException:
            return True

    def wait_until(self, predicate, *, what: str, timeout: float = 60.0):
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                self.fail('%s did not happen within %d s' % (what, timeout))
            time.sleep(1)

    # Nova's view of the GPUs

    def assert_server_released(self, server_id: str) -> None:
        """The server is gone; neither nova's PCI tracker nor placement holds anything for it."""
        self.wait_until(lambda: self.server_gone(server_id),
                        what='deletion of server %s' % server_id, timeout=120)
        self.wait_until(lambda: not self.pci_devices(instance_uuid=server_id),
                        what='nova releasing the GPUs of server %s' % server_id,
                        timeout=RELEASE_TIMEOUT)
        self.wait_until(
            lambda: not self.placement_get('/allocations/%s' % server_id)['allocations'],
            what='placement dropping the allocations of server %s' % server_id,
            timeout=RELEASE_TIMEOUT)

    def assert_gone(self, server_id: str) -> None:
        """The server is gone already (its stack was deleted) and its GPUs are released."""
        self.assertTrue(self.server_gone(server_id), 'server %s still exists' % server_id)
        self.assert_server_released(server_id)

    def pci_devices(self, *, instance_uuid: str | None = None) -> list[dict]:
        """Rows of nova's pci_devices table (the PCI tracker's own records)."""
        devices = self.cloud.nova_pci_devices()
        if instance_uuid is not None:
            devices = [d for d in devices if d['instance_uuid'] == instance_uuid]
        return devices

    def placement_get(self, path: str, *, microversion: str = '1.39') -> dict:
        resp = self.admin.session.get(
            self.cloud.url('placement') + path,
            headers={'OpenStack-API-Version': 'placement %s' % microversion}, timeout=30)
        return resp.json()

    # Leaks

    def _inventory(self) -> dict:
        """What this run's tests create, by kind (only names starting with RUN_PREFIX count)."""
        servers = {s.id: s.name for s in self.admin.compute.servers(all_projects=True)}
        pci = {}
        for dev in self.cloud.nova_pci_devices():
            owner = dev['instance_uuid']
            if dev['status'] == 'available' or not owner:
                continue
            # A device held by a server that no longer exists is a leak whoever created it.
            if owner not in servers or servers[owner].startswith(RUN_PREFIX):
                pci['%s@%s' % (dev['address'], dev['host'])] = owner
        return {
            'servers': {k: v for k, v in servers.items() if v.startswith(RUN_PREFIX)},
            'flavors': {f.id: f.name for f in self.admin.compute.flavors(is_public=None)
                        if f.name.startswith(RUN_PREFIX)},
            # heat denies stacks:global_index by default: ask each project for its own stacks.
            'stacks': {s.id: s.stack_name for client in (self.heat_admin, self.heat_demo)
                       for s in client.stacks.list() if s.stack_name.startswith(RUN_PREFIX)},
            'pci_in_use': pci,
            # The users heat creates for signals and metadata (named after stack and resource).
            'stack_users': {u.id: u.name for u in self.admin.identity.users(
                                domain_id=self._stack_user_domain())
                            if u.name.startswith(RUN_PREFIX)},
            **self._network_inventory(servers),
        }

    def _network_inventory(self, servers: dict) -> dict:
        """Neutron's objects of this run, for the leak check.

        Named after the run, or unnamed (what nova makes for a server, a floating IP, has no
        name of ours), or serving a server of this run or one that is gone. The cloud's own
        networks, router and the default security groups never count.
        """
        net = self.admin.network
        own_networks = {localcloud.PUBLIC_NETWORK['name'], localcloud.PRIVATE_NETWORK['name']}

        def ours(name: str | None) -> bool:
            return not name or name.startswith(RUN_PREFIX)

        ports = {}
        for p in net.ports():
            if p.device_owner and p.device_owner.startswith('network:'):
                # Router interfaces and gateways, DHCP: they go with their router or network.
                owned = ours(p.name) and p.device_owner not in (
                    'network:router_interface', 'network:router_gateway', 'network:dhcp')
            elif p.device_owner and p.device_owner.startswith('compute:'):
                owned = (p.device_id not in servers
                         or servers[p.device_id].startswith(RUN_PREFIX))
            else:
                owned = ours(p.name)
            if owned:
                ports[p.id] = p.name or p.device_id or '(unnamed)'
        return {
            'ports': ports,
            'floating_ips': {f.id: f.floating_ip_address for f in net.ips()
                             if not f.port_id or f.port_id in ports},
            'security_groups': {g.id: g.name for g in net.security_groups()
                                if g.name != 'default' and ours(g.name)},
            'routers': {r.id: r.name for r in net.routers()
                        if r.name != localcloud.ROUTER and ours(r.name)},
            'networks': {n.id: n.name for n in net.networks()
                         if n.name not in own_networks and ours(n.name)},
        }

    def _stack_user_domain(self) -> str:
        if not hasattr(FunctionalTestCase, '_heat_domain_id'):
            FunctionalTestCase._heat_domain_id = self.admin.identity.find_domain(
                'heat', ignore_missing=False).id
        return FunctionalTestCase._heat_domain_id

    def assert_nothing_leaked(self) -> None:
        """Everything this test created is gone again (compared with the start of the test)."""
        def leftovers() -> dict:
            now = self._inventory()
            return {kind: {k: v for k, v in items.items() if k not in self._baseline[kind]}
                    for kind, items in now.items()
                    if any(k not in self._baseline[kind] for k in items)}

        # A deleted server's GPUs may stay claimed until nova's next resource audit.
        deadline = time.monotonic() + RELEASE_TIMEOUT
        left = leftovers()
        while left and time.monotonic() < deadline:
            time.sleep(2)
            left = leftovers()
        self.assertEqual({}, left, 'left behind by this test')
