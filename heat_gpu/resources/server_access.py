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

"""OS::GPU::ServerAccess: how a server of the hot/ templates is reached (a template of the plugin).

A security group (ping and the given TCP ports from the given addresses), a port on the tenant's
network in it, and an optional floating IP on an external network: the template
``heat_gpu/templates/server_access.yaml``, registered as a type (see :mod:`heat_gpu.templates`),
so that every template that makes a server gets the same network access from one place.
"""

from heat_gpu import templates


def resource_mapping() -> dict:
    return templates.mapping('OS::GPU::ServerAccess')
