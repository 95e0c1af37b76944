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

"""An empty network service for a cloud without Neutron.

Nova always asks the network API about an instance's ports, even for servers booted with
``networks: none``: on delete (``deallocate_for_instance``, ``get_instance_nw_info``) and when the
API shows a server (security groups of its ports). This WSGI application answers those read
requests the way Neutron answers for a server that has no ports: empty collections. Everything else
is refused with 404, so a caller that really needs networking fails loudly. Nova reaches it
through ``[neutron] endpoint_override``; it is not in the service catalog, so Heat and the clients
see a cloud without a network service.
"""

import json

_COLLECTIONS = {
    'ports', 'networks', 'subnets', 'security-groups', 'security_groups', 'floatingips',
    'extensions', 'trunks', 'qos/policies',
}


def _collection(path: str) -> str:
    name = path.strip('/')
    if name.startswith('v2.0/'):
        name = name[len('v2.0/'):]
    if name.endswith('.json'):
        name = name[:-len('.json')]
    return name


def application(environ: dict, start_response) -> list:
    method = environ.get('REQUEST_METHOD', 'GET')
    path = environ.get('PATH_INFO', '/')
    name = _collection(path)
    if method == 'GET' and name in ('', 'v2.0'):
        body = {'resources': [{'name': c, 'collection': c} for c in sorted(_COLLECTIONS)]}
        status = '200 OK'
    elif method == 'GET' and name in _COLLECTIONS:
        body = {name.replace('-', '_').split('/')[-1]: []}
        status = '200 OK'
    else:
        body = {'NeutronError': {
            'type': 'HTTPNotFound',
            'message': 'This cloud has no network service: %s %s is not available; boot '
                       'servers with networks "none".' % (method, path),
            'detail': ''}}
        status = '404 Not Found'
    data = json.dumps(body).encode()
    start_response(status, [('Content-Type', 'application/json'),
                            ('Content-Length', str(len(data)))])
    return [data]
