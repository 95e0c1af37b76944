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

"""OS::GPU::ClusterNode: one node of hot/gpu_cluster.yaml, a template the plugin ships.

A CudaInstance with the sample programs run on it (peer-to-peer too with two or more GPUs): the
template ``heat_gpu/templates/cluster_node.yaml``, registered as a type (see
:mod:`heat_gpu.templates`), so a ResourceGroup of nodes needs no nested file from the client.
"""

from heat_gpu import templates


def resource_mapping() -> dict:
    return templates.mapping('OS::GPU::ClusterNode')
