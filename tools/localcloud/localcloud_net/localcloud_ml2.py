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

"""The local cloud's ML2 mechanism driver: the simulated compute hosts' "virtual switch".

The local cloud runs the real neutron-server with ML2; only the data plane is simulated (its
instances share the host's network, there is no switch to program and no agent to report). ML2
asks each mechanism driver whether it can bind a port on a host; this driver answers for the
simulated compute hosts (``[localcloud] hosts``): it binds the port's first segment of a type it
serves with vif type ``ovs`` and puts the port ACTIVE at once, as an agent would after wiring it.
Ports on any other host (or none) are left to ML2, which reports them unbound, as in a real
cloud. Neutron loads mechanism drivers only through the entry point namespace
``neutron.ml2.mechanism_drivers``: the ``localcloud_ml2-1.0.dist-info`` directory beside this
module declares ``localcloud`` there, and ``cloud.py`` puts this directory on neutron-server's
``PYTHONPATH``.
"""

from neutron_lib.api.definitions import portbindings
from neutron_lib import constants
from neutron_lib.plugins.ml2 import api
from oslo_config import cfg
from oslo_log import log as logging

LOG = logging.getLogger(__name__)

OPTS = [
    cfg.ListOpt('hosts', default=[],
                help='The simulated compute hosts this driver binds ports on.'),
    cfg.ListOpt('network_types', default=['flat', 'vxlan', 'geneve', 'vlan', 'local'],
                help='Segment types the simulated switch carries.'),
]
cfg.CONF.register_opts(OPTS, group='localcloud')

VIF_TYPE = portbindings.VIF_TYPE_OVS
VIF_DETAILS = {portbindings.CAP_PORT_FILTER: True, portbindings.OVS_HYBRID_PLUG: False}


class LocalCloudMechanismDriver(api.MechanismDriver):
    """Binds every port on the simulated hosts (normal vnic type) and makes it ACTIVE."""

    def initialize(self) -> None:
        self.hosts = frozenset(cfg.CONF.localcloud.hosts)
        self.network_types = frozenset(cfg.CONF.localcloud.network_types)
        LOG.info('localcloud mechanism driver: binding ports on %s', ', '.join(sorted(self.hosts)))

    @property
    def connectivity(self) -> str:
        # Layer 2: ML2 lets an l2 driver bind ports that have no IP address, too.
        return portbindings.CONNECTIVITY_L2

    def bind_port(self, context) -> None:
        port = context.current
        vnic_type = port.get(portbindings.VNIC_TYPE, portbindings.VNIC_NORMAL)
        if context.host not in self.hosts or vnic_type != portbindings.VNIC_NORMAL:
            return
        for segment in context.segments_to_bind:
            if segment[api.NETWORK_TYPE] in self.network_types:
                context.set_binding(segment[api.ID], VIF_TYPE, dict(VIF_DETAILS),
                                    status=constants.PORT_STATUS_ACTIVE)
                LOG.debug('bound port %s on %s to segment %s', port['id'], context.host,
                          segment[api.ID])
                return
