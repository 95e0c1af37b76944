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

import unicodedata

from heat.common import exception
from heat.common.i18n import _
from heat.engine import attributes
from heat.engine import constraints
from heat.engine import properties
from heat.engine import resource
from heat.engine import rsrc_defn
from heat.engine import support
from heat.engine import translation
from oslo_log import log as logging

from heat_gpu import exception as gpu_exception
from heat_gpu import gpu_request
from heat_gpu import heat_compat

LOG = logging.getLogger(__name__)

#: Nova keeps flavor sizes in 32-bit signed integers and refuses larger ones.
NOVA_MAX_INT = 0x7FFFFFFF

heat_compat.serialize_yaql_parsing()


class GpuFlavor(resource.Resource):
    """A nova flavor whose extra specs request GPUs.

    The flavor asks for whole GPUs by PCI passthrough (``pci_passthrough:alias``, the alias names
    a device class of nova's ``[pci] alias``) or for virtual GPUs (``resources:VGPU``, optionally
    pinned to a vGPU type by a ``CUSTOM_`` trait), plus the GPU extras
    ``hw:pci_numa_affinity_policy`` and ``hw:hide_hypervisor_id``. Give ``gpu_model`` (a key of the
    heat-gpu catalog such as ``P100-PCIE-16GB``, or its alias such as ``p100``) and the alias name
    follows from it, or give the cloud's own ``pci_alias``. Sizes (vcpus, ram, disk, ephemeral,
    swap), the name and the visibility cannot change on a nova flavor, so changing them replaces
    the flavor; GPU properties, extra specs and tenants are updated in place.

    Admin only: a user who is not an admin (heat's ``context_is_admin`` rule) is refused when the
    stack is validated, before anything is created; nova refuses flavor creation to other users
    anyway. (A ``resource_types:OS::GPU::Flavor`` line in heat's policy file is not enough: heat
    checks resource types only against rules it registers in its own code.) The flavor is private
    by default and shared with ``tenants`` (or with the stack's project when the list is empty).
    The compute hosts need IOMMU, vfio-pci, ``[pci] device_spec``, ``[pci] alias``
    and the ``PciPassthroughFilter`` for passthrough, or enabled mdev types for vGPU.
    """

    support_status = support.SupportStatus(
        status=support.SUPPORTED,
        message=_('Provided by the heat-gpu plugin (heat_gpu/resources in plugin_dirs).'))

    default_client_name = 'nova'

    entity = 'flavors'

    PROPERTIES = (
        NAME, GPU_MODE, GPU_MODEL, PCI_ALIAS, GPU_COUNT, VGPU_TRAIT,
        VCPUS, RAM, DISK, EPHEMERAL, SWAP, IS_PUBLIC, TENANTS,
        NUMA_AFFINITY_POLICY, HIDE_HYPERVISOR_ID, EXTRA_SPECS,
    ) = (
        'name', 'gpu_mode', 'gpu_model', 'pci_alias', 'gpu_count', 'vgpu_trait',
        'vcpus', 'ram', 'disk', 'ephemeral', 'swap', 'is_public', 'tenants',
        'numa_affinity_policy', 'hide_hypervisor_id', 'extra_specs',
    )

    ATTRIBUTES = (
        FLAVOR_ID_ATTR, NAME_ATTR, EXTRA_SPECS_ATTR, GPU_MODEL_ATTR, GPU_COUNT_ATTR,
        GPU_MODE_ATTR,
    ) = (
        'flavor_id', 'name', 'extra_specs', 'gpu_model', 'gpu_count', 'gpu_mode',
    )

    properties_schema = {
        NAME: properties.Schema(
            properties.Schema.STRING,
            _('Name of the flavor. Defaults to a unique name made from the stack and resource '
              'names. Changing it replaces the flavor.'),
            constraints=[constraints.Length(min=1, max=255)],
        ),
        GPU_MODE: properties.Schema(
            properties.Schema.STRING,
            _('How the GPU is given to the instance: "passthrough" (a whole GPU through '
              'pci_passthrough:alias) or "vgpu" (a virtual GPU through resources:VGPU).'),
            default=gpu_request.PASSTHROUGH,
            constraints=[constraints.AllowedValues(gpu_request.GPU_MODES)],
            update_allowed=True,
        ),
        GPU_MODEL: properties.Schema(
            properties.Schema.STRING,
            _('GPU model: a key or alias of the heat-gpu catalog (e.g. P100-PCIE-16GB or '
              'p100). Optional when pci_alias is given; for passthrough, the default alias '
              'name is derived from it.'),
            update_allowed=True,
        ),
        PCI_ALIAS: properties.Schema(
            properties.Schema.STRING,
            _('Name of the PCI alias in nova\'s [pci] alias option that matches the GPU '
              '(passthrough only). Defaults to the catalog alias of gpu_model, e.g. p100.'),
            constraints=[constraints.Length(min=1, max=gpu_request.ALIAS_MAX_LENGTH)],
            update_allowed=True,
        ),
        GPU_COUNT: properties.Schema(
            properties.Schema.INTEGER,
            _('Number of GPUs per instance (1 for vgpu: nova attaches one virtual GPU per '
              'instance).'),
            default=1,
            constraints=[constraints.Range(min=gpu_request.MIN_GPUS,
                                           max=gpu_request.MAX_PASSTHROUGH_GPUS)],
            update_allowed=True,
        ),
        VGPU_TRAIT: properties.Schema(
            properties.Schema.STRING,
            _('Custom placement trait that selects the vGPU type, e.g. CUSTOM_NVIDIA_11; '
              'required by the flavor as trait:<name>=required (vgpu only).'),
            constraints=[constraints.AllowedPattern(r'^CUSTOM_[A-Z0-9_]+$'),
                         constraints.Length(max=gpu_request.TRAIT_MAX_LENGTH)],
            update_allowed=True,
        ),
        VCPUS: properties.Schema(
            properties.Schema.INTEGER,
            _('Number of virtual CPUs. Changing it replaces the flavor.'),
            required=True,
            constraints=[constraints.Range(min=1, max=NOVA_MAX_INT)],
        ),
        RAM: properties.Schema(
            properties.Schema.INTEGER,
            _('Memory in MiB. Changing it replaces the flavor.'),
            required=True,
            constraints=[constraints.Range(min=1, max=NOVA_MAX_INT)],
        ),
        DISK: properties.Schema(
            properties.Schema.INTEGER,
            _('Root disk size in GiB; 0 boots on a root disk the size of the image. Changing '
              'it replaces the flavor.'),
            default=0,
            constraints=[constraints.Range(min=0, max=NOVA_MAX_INT)],
        ),
        EPHEMERAL: properties.Schema(
            properties.Schema.INTEGER,
            _('Size of a secondary ephemeral disk in GiB. Changing it replaces the flavor.'),
            default=0,
            constraints=[constraints.Range(min=0, max=NOVA_MAX_INT)],
        ),
        SWAP: properties.Schema(
            properties.Schema.INTEGER,
            _('Swap space in MiB. Changing it replaces the flavor.'),
            default=0,
            constraints=[constraints.Range(min=0, max=NOVA_MAX_INT)],
        ),
        IS_PUBLIC: properties.Schema(
            properties.Schema.BOOLEAN,
            _('Whether every project can use the flavor. GPU flavors are private by default. '
              'Changing it replaces the flavor.'),
            default=False,
        ),
        TENANTS: properties.Schema(
            properties.Schema.LIST,
            _('Projects (names or ids) that may use a private flavor. Empty: the stack\'s '
              'project.'),
            default=[],
            update_allowed=True,
            schema=properties.Schema(
                properties.Schema.STRING,
                _('A project name or id.'),
                constraints=[constraints.CustomConstraint('keystone.project')],
            ),
        ),
        NUMA_AFFINITY_POLICY: properties.Schema(
            properties.Schema.STRING,
            _('NUMA affinity of the PCI devices (hw:pci_numa_affinity_policy). Unset: nova\'s '
              'default (legacy).'),
            constraints=[constraints.AllowedValues(gpu_request.NUMA_POLICIES)],
            update_allowed=True,
        ),
        HIDE_HYPERVISOR_ID: properties.Schema(
            properties.Schema.BOOLEAN,
            _('Hide the hypervisor from the guest (hw:hide_hypervisor_id), which older NVIDIA '
              'drivers on consumer GPUs and Windows guests need (error 43). Unset: not set.'),
            update_allowed=True,
        ),
        EXTRA_SPECS: properties.Schema(
            properties.Schema.MAP,
            _('Further extra specs, merged with the GPU ones. Keys the GPU properties set '
              '(pci_passthrough:alias, resources:VGPU, the vGPU trait, '
              'hw:pci_numa_affinity_policy, hw:hide_hypervisor_id) are refused here.'),
            default={},
            update_allowed=True,
        ),
    }

    attributes_schema = {
        FLAVOR_ID_ATTR: attributes.Schema(
            _('ID of the flavor.'),
            type=attributes.Schema.STRING,
        ),
        NAME_ATTR: attributes.Schema(
            _('Name of the flavor.'),
            type=attributes.Schema.STRING,
        ),
        EXTRA_SPECS_ATTR: attributes.Schema(
            _('Extra specs of the flavor as nova holds them.'),
            type=attributes.Schema.MAP,
        ),
        GPU_MODEL_ATTR: attributes.Schema(
            _('Catalog key of the GPU model (e.g. P100-PCIE-16GB); null when the alias names '
              'no catalog model.'),
            type=attributes.Schema.STRING,
        ),
        GPU_COUNT_ATTR: attributes.Schema(
            _('Number of GPUs per instance.'),
            type=attributes.Schema.INTEGER,
        ),
        GPU_MODE_ATTR: attributes.Schema(
            _('GPU mode: passthrough or vgpu.'),
            type=attributes.Schema.STRING,
        ),
    }

    def translation_rules(self, props):
        return [
            translation.TranslationRule(
                props,
                translation.TranslationRule.RESOLVE,
                [self.TENANTS],
                client_plugin=self.client_plugin('keystone'),
                finder='get_project_id'),
        ]

    def validate(self):
        super().validate()
        if not self.context.is_admin:
            raise exception.StackValidationFailed(message=_(
                '%(type)s "%(name)s": only cloud administrators may create flavors (user %(user)s '
                'is not an admin). Ask your operator for a GPU flavor, or use an existing one: '
                'openstack flavor list --long shows their pci_passthrough:alias extra specs.')
                % {'type': self.type(), 'name': self.name,
                   'user': self.context.username or self.context.user_id})
        self._validate_name(self.properties[self.NAME])
        self._extra_specs(self.properties)

    def _validate_name(self, name) -> None:
        """Nova's rule for names: printable characters, no blank at either end."""
        if not name:
            return
        blank_end = _is_blank(name[0]) or _is_blank(name[-1])
        unprintable = [c for c in name if not _is_printable(c)]
        if not blank_end and not unprintable:
            return
        problem = ('it has a blank at its start or end' if blank_end else
                   'it has the unprintable character %r' % unprintable[0])
        example = ''.join(c for c in name.strip() if _is_printable(c)) or 'gpu.p100'
        raise self._validation_error(gpu_exception.HeatGpuError(
            'Invalid value %r for name: %s; nova accepts a flavor name of printable '
            'characters without blanks at its start or end, e.g. %r.'
            % (name, problem, example), prop=self.NAME))

    def handle_create(self):
        specs = self._extra_specs(self.properties)
        flavor = self.client().flavors.create(
            name=self.properties[self.NAME] or self.physical_resource_name(),
            ram=self.properties[self.RAM],
            vcpus=self.properties[self.VCPUS],
            disk=self.properties[self.DISK],
            flavorid='auto',
            ephemeral=self.properties[self.EPHEMERAL],
            swap=self.properties[self.SWAP],
            is_public=self.properties[self.IS_PUBLIC])
        self.resource_id_set(flavor.id)
        flavor.set_keys(specs)
        if not self.properties[self.IS_PUBLIC]:
            for tenant in self._tenants(self.properties[self.TENANTS]):
                self.client().flavor_access.add_tenant_access(flavor, tenant)

    def handle_update(self, json_snippet, tmpl_diff, prop_diff):
        if not prop_diff:
            return
        after_props = json_snippet.properties(self.properties_schema, self.context)
        flavor = self.client().flavors.get(self.resource_id)
        if set(prop_diff) - {self.TENANTS}:
            self._update_extra_specs(flavor, self._extra_specs(after_props))
        if self.TENANTS in prop_diff and not after_props[self.IS_PUBLIC]:
            self._update_tenants(flavor, self._tenants(prop_diff[self.TENANTS]))

    def _resolve_attribute(self, name):
        if name == self.FLAVOR_ID_ATTR:
            return self.resource_id
        if name in (self.GPU_MODEL_ATTR, self.GPU_COUNT_ATTR, self.GPU_MODE_ATTR):
            request = self._gpu_request(self.properties)
            return {self.GPU_MODEL_ATTR: request.model_key,
                    self.GPU_COUNT_ATTR: request.count,
                    self.GPU_MODE_ATTR: request.mode}[name]
        if self.resource_id is None:
            return None
        flavor = self.client().flavors.get(self.resource_id)
        if name == self.NAME_ATTR:
            return flavor.name
        if name == self.EXTRA_SPECS_ATTR:
            return flavor.get_keys()
        return None

    def get_live_resource_data(self):
        try:
            flavor = self.client().flavors.get(self.resource_id)
            return {self.EXTRA_SPECS: flavor.get_keys()}
        except Exception as ex:
            if self.client_plugin().is_not_found(ex):
                raise exception.EntityNotFound(entity='Resource', name=self.name)
            raise

    def parse_live_resource_data(self, resource_properties, resource_data):
        gpu_keys = self._gpu_request(resource_properties).gpu_keys()
        specs = {k: v for k, v in resource_data[self.EXTRA_SPECS].items() if k not in gpu_keys}
        return {self.EXTRA_SPECS: specs}

    def _gpu_request(self, props: properties.Properties) -> gpu_request.GpuRequest:
        """Build the GPU request from *props*; StackValidationFailed when it is bad."""
        try:
            return gpu_request.build_request(
                mode=props[self.GPU_MODE], model=props[self.GPU_MODEL],
                alias=props[self.PCI_ALIAS], count=props[self.GPU_COUNT],
                vgpu_trait=props[self.VGPU_TRAIT],
                numa_affinity_policy=props[self.NUMA_AFFINITY_POLICY],
                hide_hypervisor_id=props[self.HIDE_HYPERVISOR_ID])
        except gpu_exception.HeatGpuError as exc:
            raise self._validation_error(exc)

    def _extra_specs(self, props: properties.Properties) -> dict:
        """The flavor's whole extra specs (GPU and free-form) for *props*."""
        try:
            return gpu_request.merge_extra_specs(self._gpu_request(props),
                                                 props[self.EXTRA_SPECS],
                                                 prop=self.EXTRA_SPECS)
        except gpu_exception.HeatGpuError as exc:
            raise self._validation_error(exc)

    def _validation_error(self, exc: gpu_exception.HeatGpuError) -> exception.StackValidationFailed:
        prop = getattr(exc, 'prop', None) or self.GPU_MODEL
        path = [self.stack.t.RESOURCES, self.name,
                self.stack.t.get_section_name(rsrc_defn.PROPERTIES)] + prop.split('.', 1)
        return exception.StackValidationFailed(error=_('Property error'), path=path,
                                               message=str(exc))

    def _tenants(self, tenants) -> list:
        return list(tenants or []) or [self.stack.context.project_id]

    def _update_extra_specs(self, flavor, wanted: dict) -> None:
        current = flavor.get_keys()
        stale = sorted(set(current) - set(wanted))
        if stale:
            flavor.unset_keys(stale)
        changed = {k: v for k, v in wanted.items() if current.get(k) != v}
        if changed:
            flavor.set_keys(changed)

    def _update_tenants(self, flavor, wanted: list) -> None:
        access = self.client().flavor_access
        current = [a.tenant_id for a in access.list(flavor=self.resource_id)]
        for tenant in sorted(set(current) - set(wanted)):
            access.remove_tenant_access(flavor, tenant)
        for tenant in [t for t in wanted if t not in current]:
            access.add_tenant_access(flavor, tenant)


def _is_blank(char: str) -> bool:
    return char.isspace() or unicodedata.category(char) == 'Zs'


def _is_printable(char: str) -> bool:
    """Nova's printable characters: letters, marks, numbers, punctuation, symbols, spaces."""
    return unicodedata.category(char)[0] in 'LMNPS' or unicodedata.category(char) == 'Zs'


def resource_mapping():
    return {
        'OS::GPU::Flavor': GpuFlavor,
    }
