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

"""Nested templates the plugin registers as resource types of their own.

A tenant's template that used ``type: lib/gpu_node.yaml`` needed the client to send that file:
the openstack client does, Horizon's Launch Stack only fetches absolute http(s) references. A
type of heat's global registry instead names a template by a ``file://`` URL that heat-engine
reads itself, the way heat's own global environment (``/etc/heat/environment.d``) serves its
``file:///etc/heat/templates`` types. The plugin's ``resource_mapping()`` puts these templates in
that registry (a mapping to a string ending in ``.yaml`` is a template resource), so wherever the
plugin is loaded, the types of :data:`TYPES` exist, with their
properties and attributes generated from the templates' parameters and outputs, and no operator
step or client is involved. Without the plugin, ``environments/portable.yaml`` maps the same
names to these files.
"""

import os

DIR = os.path.dirname(os.path.abspath(__file__))

#: The resource types these templates are registered as, and their files (the one list: the
#: plugin's modules, ``environments/portable.yaml`` and the tests take it from here).
TYPES = {
    'OS::GPU::ClusterNode': 'cluster_node.yaml',
    'OS::GPU::FlavorSetMember': 'flavor_set_member.yaml',
    'OS::GPU::ServerAccess': 'server_access.yaml',
}


def path(name: str) -> str:
    """The packaged template *name* (e.g. ``cluster_node.yaml``)."""
    return os.path.join(DIR, name)


def url(name: str) -> str:
    """The ``file://`` URL heat-engine reads the packaged template *name* from."""
    return 'file://' + path(name)


def mapping(type_name: str) -> dict:
    """``resource_mapping()`` of the plugin module that registers *type_name*."""
    return {type_name: url(TYPES[type_name])}
