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

"""Rules for the flavor extra specs that request GPUs, in both directions.

Plain Python, no Heat import. :func:`build_request` checks a GPU request given as flavor properties,
:meth:`GpuRequest.to_extra_specs` and :func:`merge_extra_specs` turn it into nova extra specs, and
:func:`parse_gpu_request` reads an existing flavor's extra specs back into a request.

The legal values follow nova's own validators (``nova/api/validation/extra_specs/``) and parsers:

* ``pci_passthrough:alias`` is ``name:count[,name:count]`` (validator pattern
  ``[^:]+:\\d+(?:\\s*,\\s*[^:]+:\\d+)*``; ``nova.pci.request`` splits on ``,`` and ``:`` and strips
  the name). An alias name in ``[pci] alias`` is 1 to 256 characters (``_ALIAS_SCHEMA``), so a name
  cannot hold ``:`` or ``,`` and leading or trailing blanks are lost.
* ``resources{group}:VGPU`` is an integer; ``{group}`` is ``[a-zA-Z0-9_-]{1,64}`` or empty. Nova's
  virtual GPU guide says the hypervisors accept a single virtual GPU per instance, hence
  ``MAX_VGPUS = 1``.
* ``trait{group}:CUSTOM_X`` is ``required`` or ``forbidden``; placement limits custom trait names to
  ``^CUSTOM_[A-Z0-9_]+$`` and 255 characters.
* ``hw:pci_numa_affinity_policy`` is one of ``required``, ``preferred``, ``legacy``, ``socket``.
* ``hw:hide_hypervisor_id`` is boolean-like (``oslo_utils.strutils`` strict strings).

Nova's validator accepts any pass-through count; heat-gpu takes 1 to ``MAX_PASSTHROUGH_GPUS``
(16, the most GPUs a single host board carries), since 0 requests nothing.
"""

import dataclasses
import re
from typing import Any, Mapping, Optional

from oslo_log import log as logging

from heat_gpu import catalog
from heat_gpu import config
from heat_gpu import exception

LOG = logging.getLogger(__name__)

PASSTHROUGH = 'passthrough'
VGPU = 'vgpu'
GPU_MODES = (PASSTHROUGH, VGPU)

ALIAS_KEY = 'pci_passthrough:alias'
VGPU_KEY = 'resources:VGPU'
NUMA_POLICY_KEY = 'hw:pci_numa_affinity_policy'
HIDE_HYPERVISOR_ID_KEY = 'hw:hide_hypervisor_id'

NUMA_POLICIES = ('required', 'preferred', 'legacy', 'socket')
TRAIT_VALUES = ('required', 'forbidden')

MIN_GPUS = 1
MAX_PASSTHROUGH_GPUS = 16
MAX_VGPUS = 1
ALIAS_MAX_LENGTH = 256
TRAIT_MAX_LENGTH = 255

TRUE_STRINGS = ('1', 't', 'true', 'on', 'y', 'yes')
FALSE_STRINGS = ('0', 'f', 'false', 'off', 'n', 'no')

_GROUP = r'[a-zA-Z0-9_-]{0,64}'
_VGPU_KEY_RE = re.compile(r'^resources(%s):VGPU$' % _GROUP)
_TRAIT_KEY_RE = re.compile(r'^trait(%s):(CUSTOM_[A-Z0-9_]+)$' % _GROUP)
_CUSTOM_TRAIT_RE = re.compile(r'^CUSTOM_[A-Z0-9_]+$')
_ALIAS_SPEC_RE = re.compile(r'^[^:]+:\d+(?:\s*,\s*[^:]+:\d+)*$')

ALIAS_RULE = ('1 to %d printable characters without ":" or "," and without leading or trailing '
              'blanks (a "name" of nova\'s [pci] alias)' % ALIAS_MAX_LENGTH)
TRAIT_RULE = ('CUSTOM_ followed by upper-case letters, digits and "_", at most %d characters '
              '(e.g. CUSTOM_NVIDIA_11)' % TRAIT_MAX_LENGTH)


def _count_rule(mode: str) -> str:
    if mode == VGPU:
        return 'an integer from %d to %d (nova attaches one virtual GPU per instance)' % (
            MIN_GPUS, MAX_VGPUS)
    return 'an integer from %d to %d' % (MIN_GPUS, MAX_PASSTHROUGH_GPUS)


def _invalid(prop: str, value: Any, accepted: str) -> exception.InvalidGpuRequest:
    return exception.InvalidGpuRequest(prop=prop, value=value, accepted=accepted)


def validate_alias_name(name: Any, *, prop: str = 'pci_alias') -> str:
    """Return *name* when nova can take it as a PCI alias name; raise InvalidGpuRequest."""
    if (not isinstance(name, str) or not 1 <= len(name) <= ALIAS_MAX_LENGTH
            or ':' in name or ',' in name or name != name.strip()
            or not name.isprintable()):
        raise _invalid(prop, name, ALIAS_RULE)
    return name


def validate_count(count: Any, *, mode: str = PASSTHROUGH, prop: str = 'gpu_count') -> int:
    """Return *count* as an int when it is a legal GPU count for *mode*."""
    maximum = MAX_VGPUS if mode == VGPU else MAX_PASSTHROUGH_GPUS
    try:
        number = int(str(count).strip())
    except (TypeError, ValueError):
        raise _invalid(prop, count, _count_rule(mode))
    if isinstance(count, bool) or not MIN_GPUS <= number <= maximum:
        raise _invalid(prop, count, _count_rule(mode))
    return number


def validate_trait(trait: Any, *, prop: str = 'vgpu_trait') -> str:
    """Return *trait* when it is a legal custom trait name."""
    if (not isinstance(trait, str) or len(trait) > TRAIT_MAX_LENGTH
            or not _CUSTOM_TRAIT_RE.match(trait)):
        raise _invalid(prop, trait, TRAIT_RULE)
    return trait


def validate_numa_policy(policy: Any, *, prop: str = 'numa_affinity_policy') -> str:
    if policy not in NUMA_POLICIES:
        raise _invalid(prop, policy, 'one of ' + ', '.join(NUMA_POLICIES))
    return policy


def parse_bool(value: Any, *, prop: str = 'hide_hypervisor_id') -> bool:
    """Parse a boolean-like value the way nova's extra spec validator does (strict)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE_STRINGS:
        return True
    if text in FALSE_STRINGS:
        return False
    raise _invalid(prop, value, 'a boolean: one of ' + ', '.join(TRUE_STRINGS + FALSE_STRINGS))


def model_for_alias(alias: str, *,
                    alias_map: Optional[Mapping[str, str]] = None) -> Optional[catalog.GpuModel]:
    """Return the catalog model a PCI alias name stands for, or None.

    The operator's ``[heat_gpu] alias_map`` wins; then the catalog's default aliases and keys
    (``p100``, ``P100-PCIE-16GB``).
    """
    mapping = config.alias_map() if alias_map is None else dict(alias_map)
    for name, key in mapping.items():
        if name.lower() == alias.strip().lower():
            model = catalog.find(key)
            if model is None:
                LOG.warning('[heat_gpu] alias_map maps %(alias)s to %(key)s, which is not a '
                            'catalog key; accepted: %(keys)s',
                            {'alias': name, 'key': key, 'keys': ', '.join(catalog.keys())})
            return model
    return catalog.by_alias(alias) or catalog.by_key(alias)


@dataclasses.dataclass(frozen=True)
class GpuRequest:
    """A flavor's GPU request.

    ``aliases`` holds ``(alias name, count)`` pairs for PCI passthrough; ``vgpu_count`` and
    ``vgpu_trait`` (and ``vgpu_group``, the request group suffix) describe a vGPU request.
    ``model`` is the catalog model when the alias (or the operator's alias map) names one.
    """

    mode: str
    aliases: tuple[tuple[str, int], ...] = ()
    vgpu_count: int = 0
    vgpu_trait: Optional[str] = None
    vgpu_group: str = ''
    numa_affinity_policy: Optional[str] = None
    hide_hypervisor_id: Optional[bool] = None
    model: Optional[catalog.GpuModel] = None

    @property
    def count(self) -> int:
        """Total number of GPUs (physical or virtual) the flavor asks for."""
        if self.mode == VGPU:
            return self.vgpu_count
        return sum(n for _, n in self.aliases)

    @property
    def alias(self) -> Optional[str]:
        """The first (usually only) alias name of a passthrough request."""
        return self.aliases[0][0] if self.aliases else None

    @property
    def model_key(self) -> Optional[str]:
        return self.model.key if self.model else None

    def gpu_keys(self) -> set[str]:
        """The extra spec keys this request sets."""
        return set(self.to_extra_specs())

    def to_extra_specs(self) -> dict[str, str]:
        """Return the nova extra specs of this request, values as strings."""
        specs: dict[str, str] = {}
        if self.mode == PASSTHROUGH:
            specs[ALIAS_KEY] = ','.join('%s:%d' % pair for pair in self.aliases)
        else:
            specs['resources%s:VGPU' % self.vgpu_group] = str(self.vgpu_count)
            if self.vgpu_trait:
                specs['trait%s:%s' % (self.vgpu_group, self.vgpu_trait)] = 'required'
        if self.numa_affinity_policy:
            specs[NUMA_POLICY_KEY] = self.numa_affinity_policy
        if self.hide_hypervisor_id is not None:
            specs[HIDE_HYPERVISOR_ID_KEY] = 'true' if self.hide_hypervisor_id else 'false'
        return specs


def build_request(*, mode: str = PASSTHROUGH, model: Optional[str] = None,
                  alias: Optional[str] = None, count: Any = 1, vgpu_trait: Optional[str] = None,
                  numa_affinity_policy: Optional[str] = None,
                  hide_hypervisor_id: Any = None,
                  alias_map: Optional[Mapping[str, str]] = None) -> GpuRequest:
    """Check a GPU request given as OS::GPU::Flavor properties and return it.

    For passthrough, *alias* defaults to the model's default alias and, when given alone, the
    model is looked up from it (``None`` when the alias names no catalog model). Raises
    InvalidGpuRequest or UnknownGpuModel naming the property, the value and what is accepted.
    """
    if mode not in GPU_MODES:
        raise _invalid('gpu_mode', mode, 'one of ' + ', '.join(GPU_MODES))
    gpu = catalog.get(model, prop='gpu_model') if model else None
    number = validate_count(count, mode=mode)
    policy = validate_numa_policy(numa_affinity_policy) if numa_affinity_policy else None
    hide = None if hide_hypervisor_id is None else parse_bool(hide_hypervisor_id)
    if mode == VGPU:
        if alias:
            raise _invalid('pci_alias', alias,
                           'no value when gpu_mode is vgpu (PCI aliases are for passthrough)')
        trait = validate_trait(vgpu_trait) if vgpu_trait else None
        return GpuRequest(mode=VGPU, vgpu_count=number, vgpu_trait=trait,
                          numa_affinity_policy=policy, hide_hypervisor_id=hide, model=gpu)
    if vgpu_trait:
        raise _invalid('vgpu_trait', vgpu_trait, 'no value when gpu_mode is passthrough')
    if alias:
        name = validate_alias_name(alias)
        if gpu is None:
            gpu = model_for_alias(name, alias_map=alias_map)
    elif gpu is not None:
        name = gpu.alias
    else:
        raise _invalid('gpu_model', None,
                       'a catalog key (%s) or a pci_alias; give at least one'
                       % ', '.join(catalog.keys()))
    return GpuRequest(mode=PASSTHROUGH, aliases=((name, number),), numa_affinity_policy=policy,
                      hide_hypervisor_id=hide, model=gpu)


def is_gpu_key(key: str) -> bool:
    """True for an extra spec key that requests or tunes a GPU (reserved for the GPU request)."""
    return (key in (ALIAS_KEY, NUMA_POLICY_KEY, HIDE_HYPERVISOR_ID_KEY)
            or bool(_VGPU_KEY_RE.match(key)))


def merge_extra_specs(request: GpuRequest,
                      extra_specs: Optional[Mapping[str, Any]] = None, *,
                      prop: str = 'extra_specs') -> dict[str, str]:
    """Return the request's extra specs merged with free-form *extra_specs*.

    A free-form key that a GPU property controls (``pci_passthrough:alias``,
    ``resources{group}:VGPU``, the NUMA and hypervisor-id keys, the vGPU trait) is an error, even
    when the values agree: one place sets each key.
    """
    specs = request.to_extra_specs()
    merged: dict[str, str] = {}
    for key, value in (extra_specs or {}).items():
        if not isinstance(key, str) or not key:
            raise _invalid(prop, key, 'non-empty string keys')
        if is_gpu_key(key) or key in specs:
            raise _invalid('%s.%s' % (prop, key), value,
                           'no value: %s is set from the GPU properties (gpu_mode, gpu_model, '
                           'pci_alias, gpu_count, vgpu_trait, numa_affinity_policy, '
                           'hide_hypervisor_id); set it there' % key)
        merged[key] = value if isinstance(value, str) else _spec_string(value)
    merged.update(specs)
    return merged


def _spec_string(value: Any) -> str:
    if isinstance(value, bool):
        return 'true' if value else 'false'
    return str(value)


def parse_alias_spec(value: Any, *, prop: str = ALIAS_KEY) -> tuple[tuple[str, int], ...]:
    """Parse a ``pci_passthrough:alias`` value into ``((name, count), ...)``."""
    if not isinstance(value, str) or not _ALIAS_SPEC_RE.match(value.strip()):
        raise _invalid(prop, value, 'name:count[,name:count], e.g. p100:1')
    pairs = []
    for item in value.split(','):
        name, _, number = item.partition(':')
        pairs.append((name.strip(), int(number)))
    return tuple(pairs)


def parse_gpu_request(extra_specs: Optional[Mapping[str, Any]], *,
                      alias_map: Optional[Mapping[str, str]] = None) -> Optional[GpuRequest]:
    """Read a flavor's extra specs back into a GpuRequest; None when they request no GPU.

    Raises InvalidGpuRequest (naming the extra spec key) when a GPU key holds a value nova
    would refuse, so a broken flavor is reported before a server is booted on it.
    """
    specs = dict(extra_specs or {})
    policy = specs.get(NUMA_POLICY_KEY)
    if policy is not None:
        validate_numa_policy(policy, prop=NUMA_POLICY_KEY)
    hide = specs.get(HIDE_HYPERVISOR_ID_KEY)
    hide_value = None if hide is None else parse_bool(hide, prop=HIDE_HYPERVISOR_ID_KEY)

    vgpu = _parse_vgpu(specs)
    if ALIAS_KEY in specs:
        if vgpu is not None:
            raise _invalid(vgpu[0], specs[vgpu[0]],
                           'no vGPU request in a flavor that also has %s=%s: a GPU flavor asks '
                           'for whole GPUs (%s) or one virtual GPU (%s), not both'
                           % (ALIAS_KEY, specs[ALIAS_KEY], ALIAS_KEY, VGPU_KEY))
        pairs = parse_alias_spec(specs[ALIAS_KEY])
        for name, number in pairs:
            if number < MIN_GPUS:
                raise _invalid(ALIAS_KEY, specs[ALIAS_KEY],
                               'counts of at least %d per alias' % MIN_GPUS)
        model = None
        for name, _ in pairs:
            model = model_for_alias(name, alias_map=alias_map)
            if model is not None:
                break
        return GpuRequest(mode=PASSTHROUGH, aliases=pairs, numa_affinity_policy=policy,
                          hide_hypervisor_id=hide_value, model=model)

    if vgpu is None:
        return None
    key, number = vgpu
    group = _VGPU_KEY_RE.match(key).group(1)
    trait = None
    for tkey, tvalue in sorted(specs.items()):
        tmatch = _TRAIT_KEY_RE.match(tkey)
        if tmatch and tmatch.group(1) == group and tvalue == 'required':
            trait = tmatch.group(2)
            break
    return GpuRequest(mode=VGPU, vgpu_count=number, vgpu_trait=trait, vgpu_group=group,
                      numa_affinity_policy=policy, hide_hypervisor_id=hide_value)


def _parse_vgpu(specs: Mapping[str, Any]) -> Optional[tuple[str, int]]:
    """The first ``resources{group}:VGPU`` key asking for a vGPU, and its count; or None."""
    for key, value in sorted(specs.items()):
        if not _VGPU_KEY_RE.match(key):
            continue
        try:
            number = int(str(value).strip())
        except ValueError:
            raise _invalid(key, value, 'an integer of at least %d' % MIN_GPUS)
        if number < MIN_GPUS:
            continue  # resources:VGPU=0 asks for no vGPU
        if number > MAX_VGPUS:
            raise _invalid(key, value, _count_rule(VGPU))
        return key, number
    return None
