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

"""Security of the GPU stacks on the local cloud.

- The user data and the instance hold no credential but the stack-domain user Heat creates for the
  CudaInstance; no secret of the cloud or of its users shows up in user data, metadata, the guest's
  files, the console, stack outputs, events or resource attributes.
- No secret in any log of the cloud.
- A download whose sha256 differs from the given checksum stops the bootstrap.
- GPU flavors are private unless asked otherwise.
- Every socket of the cloud's processes is bound to the loopback address.
"""

import base64
import email
import gzip
import hashlib
import ipaddress
import json
import os
import socket
import struct
import textwrap
from typing import Any, Iterable, Iterator

from openstack import exceptions as sdk_exc
import yaml

from tests.functional import base
from tools.localcloud import mirror

PREBAKED_IMAGE = 'ubuntu-22.04-cuda-prebaked'
IMAGE = 'ubuntu-22.04-gpu'

INSTANCE_TEMPLATE = textwrap.dedent('''\
    heat_template_version: 2021-04-16
    parameters:
      flavor: {type: string}
      image: {type: string, default: %s}
      checksums: {type: json, default: {}}
      faults: {type: string, default: ''}
    resources:
      gpu_vm:
        type: OS::GPU::CudaInstance
        properties:
          flavor: {get_param: flavor}
          image: {get_param: image}
          networks: [{allocate_network: none}]
          metadata: {heat_gpu_sim_faults: {get_param: faults}}
          checksums: {get_param: checksums}
          bootstrap_timeout: 300
    outputs:
      server_id:
        value: {get_resource: gpu_vm}
      bootstrap_status:
        value: {get_attr: [gpu_vm, bootstrap_status]}
      driver_version:
        value: {get_attr: [gpu_vm, driver_version]}
    ''' % PREBAKED_IMAGE)

# The same with a mirror for the NVIDIA downloads.
MIRROR_TEMPLATE = INSTANCE_TEMPLATE.replace(
    '  faults: {type: string, default: \'\'}\n',
    '  faults: {type: string, default: \'\'}\n  mirror_url: {type: string}\n'
).replace(
    '      checksums: {get_param: checksums}\n',
    '      checksums: {get_param: checksums}\n      mirror_url: {get_param: mirror_url}\n')

FLAVORS_TEMPLATE = textwrap.dedent('''\
    heat_template_version: 2021-04-16
    parameters:
      prefix: {type: string}
      demo_project: {type: string}
    resources:
      private_default:
        type: OS::GPU::Flavor
        properties:
          name: {list_join: ['', [{get_param: prefix}, '-default']]}
          gpu_model: P100-PCIE-16GB
          vcpus: 1
          ram: 1024
          disk: 10
      shared_with_demo:
        type: OS::GPU::Flavor
        properties:
          name: {list_join: ['', [{get_param: prefix}, '-shared']]}
          gpu_model: P100-PCIE-16GB
          vcpus: 1
          ram: 1024
          disk: 10
          tenants: [{get_param: demo_project}]
      public:
        type: OS::GPU::Flavor
        properties:
          name: {list_join: ['', [{get_param: prefix}, '-public']]}
          gpu_model: P100-PCIE-16GB
          vcpus: 1
          ram: 1024
          disk: 10
          is_public: true
    outputs:
      ids:
        value:
          private_default: {get_resource: private_default}
          shared_with_demo: {get_resource: shared_with_demo}
          public: {get_resource: public}
    ''')

#: Keys under which a document carries a credential.
CREDENTIAL_KEYS = ('password', 'passwd', 'token', 'secret', 'credential', 'private_key',
                   'access_key', 'secret_key')
#: Where the instance may keep its stack user's password: the boot script's settings (mode 0600)
#: and heat's own os-collect-config data (the x-cfninitdata part of heat's SOFTWARE_CONFIG).
PASSWORD_FILES = ('etc/heat-gpu/bootstrap.json', 'var/lib/heat-cfntools/cfn-init-data')
#: Services that answer HTTP, and the port each must listen on.
HTTP_SERVICES = ('keystone', 'glance', 'placement', 'nova-api', 'neutron-server', 'heat-api')
LOOPBACK = ('127.0.0.1', '::1', '::ffff:127.0.0.1')
TCP_LISTEN = '0A'


# What a document says: decoded text, and the credentials in it

def user_data_texts(user_data: bytes) -> list[tuple[str, str]]:
    """(label, text) of everything in MIME user data: each part, and each file it writes.

    Part payloads are decoded by their transfer encoding, and cloud-config ``write_files``
    contents by their ``encoding`` (``b64``, ``gz+b64``), so a secret cannot hide in an encoding.
    """
    texts = [('user data', user_data.decode('utf-8', 'replace'))]
    msg = email.message_from_bytes(user_data)
    for index, part in enumerate(msg.walk()):
        if part.is_multipart():
            continue
        label = 'user data part %d (%s, %s)' % (index, part.get_content_type(),
                                                part.get_filename())
        body = part.get_payload(decode=True) or b''
        texts.append((label, body.decode('utf-8', 'replace')))
        if part.get_content_type() != 'text/cloud-config':
            continue
        config = yaml.safe_load(body) or {}
        for entry in config.get('write_files') or []:
            content = entry.get('content') or ''
            encoding = entry.get('encoding') or ''
            if encoding in ('b64', 'base64'):
                content = base64.b64decode(content).decode('utf-8', 'replace')
            elif encoding in ('gz+b64', 'gzip+base64', 'gz+base64'):
                content = gzip.decompress(base64.b64decode(content)).decode('utf-8', 'replace')
            texts.append(('%s: write_files %s' % (label, entry['path']), content))
    return texts


def documents(text: str) -> Iterator[Any]:
    """The JSON or YAML document a text holds, if any."""
    for load in (json.loads, yaml.safe_load):
        try:
            yield load(text)
            return
        except (ValueError, yaml.YAMLError):
            continue


def credentials(doc: Any, path: str = '') -> Iterator[tuple[str, str, Any]]:
    """(path, key, value) of every non-empty value under a credential-like key of *doc*."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            where = '%s/%s' % (path, key)
            if (isinstance(key, str) and value and not isinstance(value, (dict, list))
                    and any(word in key.lower() for word in CREDENTIAL_KEYS)):
                yield where, key, value
            yield from credentials(value, where)
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            yield from credentials(value, '%s/%d' % (path, index))


def holders(doc: Any, user_id: str) -> Iterator[Any]:
    """The dicts of *doc* that name *user_id* as ``user_id``."""
    if isinstance(doc, dict):
        if doc.get('user_id') == user_id:
            yield doc
        for value in doc.values():
            yield from holders(value, user_id)
    elif isinstance(doc, list):
        for value in doc:
            yield from holders(value, user_id)


# Sockets of processes (Linux /proc)

def _proc_table() -> dict[int, tuple[int, int, int]]:
    """pid -> (ppid, process group, session) of every process."""
    table = {}
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open('/proc/%s/stat' % entry, encoding='utf-8') as f:
                fields = f.read().rsplit(')', 1)[1].split()
            table[int(entry)] = (int(fields[1]), int(fields[2]), int(fields[3]))
        except (OSError, IndexError, ValueError):
            continue
    return table


def process_tree(leader: int, table: dict[int, tuple[int, int, int]]) -> set[int]:
    """*leader*, its process group and session, and all their descendants."""
    pids = {leader} | {pid for pid, (_, pgrp, sid) in table.items() if leader in (pgrp, sid)}
    grew = True
    while grew:
        children = {pid for pid, (ppid, _, _) in table.items() if ppid in pids} - pids
        pids |= children
        grew = bool(children)
    return {pid for pid in pids if pid in table}


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        fds = os.listdir('/proc/%d/fd' % pid)
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink('/proc/%d/fd/%s' % (pid, fd))
        except OSError:
            continue
        if target.startswith('socket:['):
            inodes.add(int(target[8:-1]))
    return inodes


def _address(hex_addr: str) -> str:
    """An address of /proc/net/{tcp,udp}[6] (32-bit words in host byte order) as text."""
    if len(hex_addr) == 8:
        return socket.inet_ntop(socket.AF_INET, struct.pack('<I', int(hex_addr, 16)))
    packed = b''.join(struct.pack('<I', int(hex_addr[i:i + 8], 16)) for i in range(0, 32, 8))
    return str(ipaddress.ip_address(packed))


def inet_sockets() -> dict[int, dict]:
    """inode -> {proto, local, port, remote_port, state} of every TCP and UDP socket."""
    out = {}
    for proto in ('tcp', 'tcp6', 'udp', 'udp6'):
        try:
            with open('/proc/net/%s' % proto, encoding='ascii') as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], int(fields[9])
            if not inode:
                continue
            address, port = local.rsplit(':', 1)
            out[inode] = {'proto': proto, 'local': _address(address), 'port': int(port, 16),
                          'remote_port': int(remote.rsplit(':', 1)[1], 16), 'state': state}
    return out


def unix_socket_paths() -> dict[int, str]:
    """inode -> path of every bound unix socket."""
    out = {}
    with open('/proc/net/unix', encoding='utf-8') as f:
        for line in f.read().splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 8:
                out[int(fields[6])] = fields[7]
    return out


class SecurityTestCase(base.FunctionalTestCase):

    @staticmethod
    def outputs(stack: Any) -> dict:
        return {o['output_key']: o['output_value'] for o in stack.outputs}

    def cloud_secrets(self) -> dict[str, str]:
        """name -> value of what nobody but the cloud may know: its passwords and live tokens."""
        with open(self.cloud.path('secrets.json'), encoding='utf-8') as f:
            found = {'secrets.json %s' % name: value for name, value in json.load(f).items()}
        self.assertTrue({'admin', 'demo', 'rabbit', 'heat'} <= {n.split()[1] for n in found},
                        sorted(found))
        found['admin token'] = self.admin.session.get_token()
        found['demo token'] = self.demo.session.get_token()
        found['demo token (heat client)'] = self.heat_demo.http_client.session.get_token()
        return found

    def stack_user(self, stack_id: str) -> dict:
        """The os-collect-config credentials heat keeps for the instance (its stack user)."""
        metadata = self.heat_demo.resources.metadata(stack_id, 'gpu_vm')
        creds = metadata['os-collect-config']['heat']
        self.assertTrue(creds['user_id'] and creds['password'], creds.keys())
        return creds

    def launch_instance(self, **parameters: Any) -> str:
        flavor = self.create_gpu_flavor(alias='p100', count=1)
        template = MIRROR_TEMPLATE if 'mirror_url' in parameters else INSTANCE_TEMPLATE
        return self.create_stack(template=template,
                                 parameters={'flavor': flavor.id, **parameters})

    def server_as_admin(self, server_id: str) -> dict:
        """The server as nova shows it to an admin, user data included (microversion >= 2.3)."""
        resp = self.admin.compute.get('/servers/%s' % server_id, microversion='2.3')
        return resp.json()['server']

    def guest_files(self, server_id: str) -> Iterator[tuple[str, bytes]]:
        """(path relative to the guest's /, content) of every regular file the guest wrote.

        That is the instance's own disk layer: the guest root below it is Debian's packages.
        """
        root = self.cloud.path('guests', server_id, 'disk')
        self.assertTrue(os.path.isdir(root), root)
        for dirpath, _, names in os.walk(root):
            for name in names:
                path = os.path.join(dirpath, name)
                if os.path.islink(path) or not os.path.isfile(path):
                    continue
                with open(path, 'rb') as f:
                    yield os.path.relpath(path, root), f.read()

    @staticmethod
    def root_only(path: str) -> bool:
        """Whether only root can read *path* (its mode, or a directory on its way, says so)."""
        while len(path) > 1:
            mode = os.stat(path).st_mode
            if os.path.isdir(path) and mode & 0o011 == 0 or (
                    not os.path.isdir(path) and mode & 0o044 == 0):
                return True
            if path.endswith('/disk'):
                return False
            path = os.path.dirname(path)
        return False

    @staticmethod
    def findings(texts: Iterable[tuple[str, str | bytes]],
                 secrets: dict[str, str]) -> list[str]:
        """'<where>: <secret name>' for every secret found in a text (the value is not shown)."""
        out = []
        for where, text in texts:
            data = text if isinstance(text, bytes) else text.encode('utf-8', 'replace')
            out.extend('%s: %s' % (where, name) for name, value in secrets.items()
                       if value and value.encode() in data)
        return out


class TestCredentials(SecurityTestCase):

    def test_instance_holds_only_its_stack_user(self):
        secrets = self.cloud_secrets()
        stack_id = self.launch_instance()
        stack = self.wait_for_stack(stack_id, 'CREATE_COMPLETE')
        server_id = self.outputs(stack)['server_id']
        metadata = self.heat_demo.resources.metadata(stack_id, 'gpu_vm')
        creds = self.stack_user(stack_id)
        user_id, password = creds['user_id'], creds['password']

        server = self.server_as_admin(server_id)
        user_data = base64.b64decode(server.pop('OS-EXT-SRV-ATTR:user_data'))
        texts = user_data_texts(user_data)
        settings = json.loads(next(text for label, text in texts
                                   if label.endswith('write_files /' + PASSWORD_FILES[0])))
        # The boot script signals as the very user heat polls with: one credential, not two.
        self.assertEqual((user_id, password, creds['project_id']),
                         (settings['signal']['user_id'], settings['signal']['password'],
                          settings['signal']['project_id']))

        resource = self.heat_demo.resources.get(stack_id, 'gpu_vm', with_attr=['show'])
        events = [self.heat_demo.events.get(stack_id, e.resource_name, e.id).to_dict()
                  for e in self.heat_demo.events.list(stack_id)]
        self.assertNotEqual([], events)
        console = self.admin.compute.get_server_console_output(server_id)['output']
        guest = list(self.guest_files(server_id))
        api_views = [('server (admin view, without user data)', json.dumps(server)),
                     ('nova server metadata', json.dumps(server['metadata'])),
                     ('heat resource metadata', json.dumps(metadata)),
                     ('resource attributes', json.dumps(resource.attributes)),
                     ('stack', json.dumps(stack.to_dict())),
                     ('stack outputs', json.dumps(stack.outputs)),
                     ('events', json.dumps(events)),
                     ('console output', console)]

        # No secret of the cloud or its users, anywhere.
        self.assertEqual([], self.findings(texts + api_views + guest, secrets))

        # The stack user's password only where the instance needs it, never in what is shown
        # to people (outputs, events, console) or in any other file of the guest.
        pw = {'stack user password': password}
        self.assertEqual([], self.findings(
            [view for view in api_views if view[0] in (
                'server (admin view, without user data)', 'nova server metadata',
                'stack outputs', 'events', 'console output')], pw))
        holding = sorted(path for path, data in guest if password.encode() in data)
        self.assertIn(PASSWORD_FILES[0], holding)
        # Besides those, only cloud-init's own copies of the user data and metadata (under
        # /var/lib/cloud, as on every VM), and none of the files readable by others than root.
        self.assertEqual([], [p for p in holding if p not in PASSWORD_FILES
                              and not p.startswith('var/lib/cloud/')])
        disk = self.cloud.path('guests', server_id, 'disk')
        self.assertEqual([], [p for p in holding if not self.root_only(os.path.join(disk, p))])

        # Every credential in a structured document is that password, next to that user id.
        structured = [(label, doc) for label, text in texts for doc in documents(text)]
        structured += [('heat resource metadata', metadata),
                       ('resource attributes', resource.attributes),
                       ('nova server metadata', server['metadata'])]
        structured += [(path, doc) for path, data in guest if path in PASSWORD_FILES
                       for doc in documents(data.decode('utf-8', 'replace'))]
        found = [(label, where, key, value) for label, doc in structured
                 for where, key, value in credentials(doc)]
        self.assertNotEqual([], found)
        self.assertEqual([], [(label, where, key) for label, where, key, value in found
                              if value != password])
        for label, doc in structured:
            for holder in holders(doc, user_id):
                self.assertEqual(password, holder.get('password'), label)

        # Keystone: a user of heat's stack domain, with heat_stack_user on the stack's own
        # project of that domain, and nothing else.
        domain = self.admin.identity.find_domain('heat', ignore_missing=False)
        user = self.admin.identity.get_user(user_id)
        self.assertEqual(domain.id, user.domain_id)
        project = self.admin.identity.get_project(creds['project_id'])
        self.assertEqual(domain.id, project.domain_id)
        self.assertEqual(stack.to_dict()['stack_user_project_id'], project.id)
        self.assertNotEqual(self.demo.current_project_id, project.id)
        assignments = list(self.admin.identity.role_assignments(user_id=user_id))
        self.assertEqual([('project', project.id, 'heat_stack_user')],
                         [(kind, scope['id'], self.admin.identity.get_role(a.role['id']).name)
                          for a in assignments for kind, scope in a.scope.items()])

        self.delete_stack(stack_id)
        self.assertRaises(sdk_exc.NotFoundException, self.admin.identity.get_user, user_id)
        self.assertRaises(sdk_exc.NotFoundException, self.admin.identity.get_project,
                          project.id)


class TestLogs(SecurityTestCase):

    def test_no_secret_in_any_log(self):
        secrets = self.cloud_secrets()
        stack_id = self.launch_instance()
        self.wait_for_stack(stack_id, 'CREATE_COMPLETE')
        secrets['stack user password'] = self.stack_user(stack_id)['password']
        self.delete_stack(stack_id)

        logs = self.cloud.path('log')
        files = []
        for dirpath, _, names in os.walk(logs):
            files.extend(os.path.join(dirpath, n) for n in names)
        # Every service writes a log: the scan cannot pass on an empty directory.
        for service in self.cloud.services():
            self.assertIn(os.path.join(logs, service + '.log'), files)
        found = []
        for path in sorted(files):
            with open(path, 'rb') as f:
                for number, line in enumerate(f, 1):
                    found.extend('%s:%d: %s' % (os.path.relpath(path, self.cloud.state),
                                                number, name)
                                 for name, value in secrets.items() if value.encode() in line)
        self.assertEqual([], found)


class TestDownloads(SecurityTestCase):

    KEYRING = 'cuda-keyring_1.1-1_all.deb'

    def test_tampered_download_stops_the_bootstrap(self):
        # The local cloud's mirror, behind a broken proxy (its "tampered" fault), serves other
        # bytes than the file whose sha256 the tenant gave: the keyring as the mirror has it.
        mirror_url = self.cloud.url('mirror') + '/faults/tampered'
        path = 'compute/cuda/repos/ubuntu2204/x86_64/' + self.KEYRING
        with open(os.path.join(self.cloud.mirror_dir, 'www', path), 'rb') as f:
            good = hashlib.sha256(f.read()).hexdigest()
        stack_id = self.launch_instance(image=IMAGE, mirror_url=mirror_url,
                                        checksums={self.KEYRING: good})
        # Without the check the stack would complete: wait for whichever end comes.
        self.wait_until(
            lambda: self.heat_demo.stacks.get(stack_id).stack_status != 'CREATE_IN_PROGRESS',
            what='stack %s finishing' % stack_id, timeout=base.STACK_TIMEOUT)
        stack = self.heat_demo.stacks.get(stack_id)
        self.assertEqual('CREATE_FAILED', stack.stack_status)
        self.assertIn('checksum mismatch for %s: expected sha256 %s' % (self.KEYRING, good),
                      stack.stack_status_reason)
        resource = self.heat_demo.resources.get(stack_id, 'gpu_vm',
                                                with_attr=['failure_reason'])
        self.assertIn('sha256', resource.attributes['failure_reason'])
        server_id = resource.physical_resource_id
        # The file came from the mirror, through the fault, and nothing installed or kept it:
        # dpkg never heard of cuda-keyring.
        with open(mirror.access_log_path(self.cloud.mirror_dir), encoding='utf-8') as f:
            fetched = [json.loads(line)['path'] for line in f if line.strip()]
        self.assertIn('/faults/tampered/' + path, fetched)
        written = dict(self.guest_files(server_id))
        self.assertNotIn(b'Package: cuda-keyring', written.get('var/lib/dpkg/status', b''))
        self.assertEqual([], [p for p in written if os.path.basename(p).startswith('cuda-keyring')])
        self.delete_stack(stack_id)


class TestFlavorVisibility(SecurityTestCase):

    def test_gpu_flavors_private_unless_asked(self):
        prefix = self.unique_name('sec')
        demo_project = self.demo.current_project_id
        stack_id = self.create_stack(template=FLAVORS_TEMPLATE, client=self.heat_admin,
                                     parameters={'prefix': prefix,
                                                 'demo_project': demo_project})
        stack = self.wait_for_stack(stack_id, 'CREATE_COMPLETE', client=self.heat_admin)
        ids = self.outputs(stack)['ids']
        flavors = {name: self.admin.compute.get_flavor(fid) for name, fid in ids.items()}
        demo_sees = {f.id for f in self.demo.compute.flavors()}
        admin_project = self.admin.current_project_id

        default = flavors['private_default']
        self.assertFalse(default.is_public)
        # Shared with the project that made it (the admin's), with nobody else.
        self.assertEqual([admin_project], [a['tenant_id'] for a in
                                           self.admin.compute.get_flavor_access(default)])
        self.assertNotIn(default.id, demo_sees)
        self.assertRaises(sdk_exc.NotFoundException, self.demo.compute.get_flavor, default.id)

        shared = flavors['shared_with_demo']
        self.assertFalse(shared.is_public)
        self.assertEqual([demo_project], [a['tenant_id'] for a in
                                          self.admin.compute.get_flavor_access(shared)])
        self.assertIn(shared.id, demo_sees)

        public = flavors['public']
        self.assertTrue(public.is_public)
        self.assertIn(public.id, demo_sees)
        # The tenant sees exactly the flavors it was given and the public one.
        self.assertEqual({shared.id, public.id}, {f.id for f in self.demo.compute.flavors()
                                                  if f.name.startswith(prefix)})

        self.delete_stack(stack_id, client=self.heat_admin)


class TestListeners(SecurityTestCase):

    def test_cloud_listens_on_loopback_only(self):
        running = self.cloud.running()
        self.assertEqual([], [name for name, pid in running.items() if not pid])
        table = _proc_table()
        sockets = inet_sockets()
        unix = unix_socket_paths()
        exposed, listening, inet_of = [], {}, {}
        for service, leader in running.items():
            inet_of[service] = []
            for pid in process_tree(leader, table):
                for inode in socket_inodes(pid):
                    sock = sockets.get(inode)
                    if sock is None:
                        continue
                    inet_of[service].append(sock)
                    tcp_listener = sock['proto'].startswith('tcp') and sock['state'] == TCP_LISTEN
                    # A bound UDP socket without a peer receives from anyone.
                    udp_bound = (sock['proto'].startswith('udp') and sock['port']
                                 and not sock['remote_port'])
                    if not (tcp_listener or udp_bound):
                        continue
                    listening.setdefault(service, set()).add((sock['local'], sock['port']))
                    if sock['local'] not in LOOPBACK:
                        exposed.append('%s (pid %d): %s %s:%d' % (
                            service, pid, sock['proto'], sock['local'], sock['port']))
        self.assertEqual([], exposed)

        # Each network service was seen listening where it should: the scan saw real sockets.
        expected = {service: {self.cloud.port(service)} for service in HTTP_SERVICES}
        expected['rabbitmq'] = {self.cloud.port('rabbitmq'), self.cloud.port('rabbitmq-dist')}
        expected['epmd'] = {self.cloud.port('epmd')}
        for service, ports in expected.items():
            self.assertEqual(set(), ports - {port for _, port in listening.get(service, ())},
                             '%s listens on %s' % (service, listening.get(service)))

        # MariaDB: no TCP or UDP socket at all (--skip-networking), its unix socket only.
        self.assertEqual([], inet_of['mariadb'])
        mariadb_unix = {unix.get(inode) for pid in process_tree(running['mariadb'], table)
                        for inode in socket_inodes(pid)}
        self.assertIn(self.cloud.path('mysql', 'mysqld.sock'), mariadb_unix)
