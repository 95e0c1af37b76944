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

"""OS::GPU::FlavorSetMember: one flavor of hot/gpu_flavors.yaml, a template the plugin ships.

Member INDEX of a flavor set: an OS::GPU::Flavor for one GPU model and count, from the template
``heat_gpu/templates/flavor_set_member.yaml``, registered as a type (see :mod:`heat_gpu.templates`).
Its parameters check every model and count of the set, so one bad entry fails the stack's
validation before any flavor is made.
"""

from heat_gpu import templates


def resource_mapping() -> dict:
    return templates.mapping('OS::GPU::FlavorSetMember')
