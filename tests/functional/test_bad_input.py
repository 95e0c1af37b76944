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

"""Bad input is refused by the real Heat at ``stack create``, before any cloud object exists.

One scenario per bad input, across the three resource types and the templates in ``hot/``. Each
creates the stack with the input and expects HTTP 400 whose message names the property, the bad
value and what would be accepted; then nothing may exist: no stack by that name (in any state),
no server or flavor named after it, no PCI device newly claimed for such a server.
"""

import os
from typing import Any

from heatclient.common import template_utils
from heatclient import exc as heat_exc
import testscenarios
import yaml

from tests.functional import base

load_tests = testscenarios.load_tests_apply_scenarios

IMAGE = 'ubuntu-22.04-gpu'
P100 = {'pci_passthrough:alias': 'p100:1'}
CATALOG_KEYS = 'P100-PCIE-16GB, P100-SXM2-16GB'
GPU_KEYS_REMEDY = 'is set from the GPU properties'
LONG_ALIAS = 'a' * 257
#: A tenant script whose user data, with the boot script and heat's parts, is over nova's limit.
BIG_SCRIPT = '#!/bin/sh\n' + '# filler\n' * 7000
GROUPED_FINGERPRINT = 'EB69 3B30 35CD 5710 E231 E123 A4B4 6996 3BF8 63CC'


def flavor_case(props: dict, *expect: str) -> dict:
    """An OS::GPU::Flavor (created by the admin) with *props* over a valid P100 flavor."""
    return {'kind': 'flavor', 'props': props, 'expected': expect}


def instance_case(props: dict, *expect: str, specs: dict | None = None) -> dict:
    """An OS::GPU::CudaInstance on a flavor with extra specs *specs* (default: one P100)."""
    return {'kind': 'instance', 'props': props, 'expected': expect,
            'specs': P100 if specs is None else specs}


def job_case(props: dict, *expect: str) -> dict:
    """An OS::GPU::SampleJob on a valid CudaInstance of a P100 flavor."""
    return {'kind': 'job', 'props': props, 'expected': expect, 'specs': P100}


def hot_case(path: str, params: dict, *expect: str, specs: dict | None = None,
             admin: bool = False, at_create: bool = False) -> dict:
    """A template of hot/ with *params*; FLAVOR in a value is a flavor with *specs*.

    ``at_create``: free text that a nested resource checks (a form cannot carry a list with
    allowed values): the stack is accepted and fails at once, before anything is made.
    """
    return {'kind': 'hot', 'path': path, 'params': params, 'expected': expect, 'specs': specs,
            'as_admin': admin, 'at_create': at_create}


SCENARIOS = [
    # OS::GPU::Flavor: counts, types, models, aliases, modes, conflicting extra specs, sizes.
    ('flavor_count_0', flavor_case({'gpu_count': 0}, 'gpu_count', '0 is out of range',
                                   'min: 1, max: 16')),
    ('flavor_count_17', flavor_case({'gpu_count': 17}, 'gpu_count', '17 is out of range',
                                    'min: 1, max: 16')),
    ('flavor_count_not_int', flavor_case({'gpu_count': 'two'}, 'gpu_count', "'two'",
                                         'is not an integer')),
    ('flavor_unknown_model', flavor_case({'gpu_model': 'P200-FAKE'}, 'gpu_model',
                                         "'P200-FAKE'", CATALOG_KEYS, 'alias_map')),
    ('flavor_unknown_alias_as_model', flavor_case({'gpu_model': 'p999'}, 'gpu_model', "'p999'",
                                                  'accepted: P100-PCIE-12GB')),
    ('flavor_alias_colon', flavor_case({'gpu_model': None, 'pci_alias': 'p100:2'}, 'pci_alias',
                                       "'p100:2'", 'without ":" or ","')),
    ('flavor_alias_comma', flavor_case({'gpu_model': None, 'pci_alias': 'p100,t4'},
                                       'pci_alias', "'p100,t4'", 'without ":" or ","')),
    ('flavor_alias_blank', flavor_case({'gpu_model': None, 'pci_alias': ' p100'}, 'pci_alias',
                                       "' p100'", 'without leading or trailing blanks')),
    ('flavor_alias_too_long', flavor_case({'gpu_model': None, 'pci_alias': LONG_ALIAS},
                                          'pci_alias', 'length (257) is out of range',
                                          'max: 256')),
    ('flavor_no_model_no_alias', flavor_case({'gpu_model': None}, 'gpu_model',
                                             'Invalid value None', 'or a pci_alias',
                                             'give at least one')),
    ('flavor_unknown_mode', flavor_case({'gpu_mode': 'sriov'}, 'gpu_mode', '"sriov"',
                                        '["passthrough", "vgpu"]')),
    ('flavor_vgpu_count_2', flavor_case({'gpu_mode': 'vgpu', 'gpu_count': 2}, 'gpu_count',
                                        'Invalid value 2', 'from 1 to 1',
                                        'one virtual GPU per instance')),
    ('flavor_vgpu_with_alias', flavor_case({'gpu_mode': 'vgpu', 'gpu_model': None,
                                            'pci_alias': 'p100'}, 'pci_alias', "'p100'",
                                           'no value when gpu_mode is vgpu')),
    ('flavor_trait_on_passthrough', flavor_case({'vgpu_trait': 'CUSTOM_NVIDIA_11'},
                                                'vgpu_trait', "'CUSTOM_NVIDIA_11'",
                                                'no value when gpu_mode is passthrough')),
    ('flavor_trait_lower_case', flavor_case({'gpu_mode': 'vgpu', 'vgpu_trait': 'custom_x'},
                                            'vgpu_trait', '"custom_x"', '^CUSTOM_[A-Z0-9_]+$')),
    ('flavor_extra_spec_alias', flavor_case(
        {'extra_specs': {'pci_passthrough:alias': 'p100:2'}},
        'extra_specs.pci_passthrough:alias', "'p100:2'", GPU_KEYS_REMEDY, 'set it there')),
    ('flavor_extra_spec_vgpu', flavor_case(
        {'extra_specs': {'resources:VGPU': '1'}}, 'extra_specs.resources:VGPU', "'1'",
        GPU_KEYS_REMEDY)),
    ('flavor_extra_spec_numa', flavor_case(
        {'extra_specs': {'hw:pci_numa_affinity_policy': 'required'}},
        'extra_specs.hw:pci_numa_affinity_policy', "'required'", 'numa_affinity_policy')),
    ('flavor_extra_specs_not_map', flavor_case({'extra_specs': 'x=y'}, 'extra_specs', '"x=y"',
                                               'is not a map')),
    ('flavor_negative_ram', flavor_case({'ram': -1}, 'properties.ram', '-1 is out of range',
                                        'min: 1')),
    ('flavor_ram_not_int', flavor_case({'ram': 'lots'}, 'properties.ram', "'lots'",
                                       'is not an integer')),
    ('flavor_zero_vcpus', flavor_case({'vcpus': 0}, 'vcpus', '0 is out of range', 'min: 1')),
    ('flavor_negative_disk', flavor_case({'disk': -5}, 'disk', '-5 is out of range',
                                         'min: 0')),
    ('flavor_numa_policy', flavor_case({'numa_affinity_policy': 'strict'},
                                       'numa_affinity_policy', '"strict"',
                                       '["required", "preferred", "legacy", "socket"]')),
    ('flavor_hide_not_bool', flavor_case({'hide_hypervisor_id': 'maybe'}, 'hide_hypervisor_id',
                                         '"maybe"', 'is not a valid boolean')),
    ('flavor_ram_above_nova', flavor_case({'ram': 2 ** 31}, 'properties.ram',
                                          '2147483648 is out of range', 'max: 2147483647')),
    ('flavor_vcpus_above_nova', flavor_case({'vcpus': 2 ** 31}, 'properties.vcpus',
                                            '2147483648 is out of range', 'max: 2147483647')),
    ('flavor_name_blank_end', flavor_case({'name': '{tag}-flavor '}, 'properties.name',
                                          "Invalid value '{tag}-flavor ' for name",
                                          'a blank at its start or end',
                                          "e.g. '{tag}-flavor'")),
    ('flavor_unknown_tenant', flavor_case({'tenants': ['hgft-no-such-project']}, 'tenants[0]',
                                          "'hgft-no-such-project'", 'could not be found')),

    # OS::GPU::CudaInstance: flavors without (or with a broken) GPU request, CUDA, downloads.
    ('instance_plain_flavor', instance_case({}, 'requests no GPU', '{flavor}',
                                            '"pci_passthrough:alias"', 'Choose a GPU flavor',
                                            specs={})),
    ('instance_alias_count_0', instance_case({}, 'pci_passthrough:alias', "'p100:0'",
                                             'counts of at least 1',
                                             specs={'pci_passthrough:alias': 'p100:0'})),
    ('instance_vgpu_count_2', instance_case({}, 'resources:VGPU', "'2'", 'from 1 to 1',
                                            'one virtual GPU per instance',
                                            specs={'resources:VGPU': '2'})),
    ('instance_passthrough_and_vgpu', instance_case(
        {}, 'resources:VGPU', 'pci_passthrough:alias=p100:1', 'not both',
        specs={'pci_passthrough:alias': 'p100:1', 'resources:VGPU': '1'})),
    ('instance_no_such_flavor', instance_case({'flavor': 'hgft-no-such-flavor'}, 'flavor',
                                              "'hgft-no-such-flavor'", 'No Flavor matching')),
    ('instance_cuda_13_on_p100', instance_case({'cuda_version': '13.0'}, 'CUDA 13.0',
                                               'P100-PCIE-16GB', 'sm_60',
                                               'accepted: 12.9, 12.8')),
    ('instance_unknown_cuda', instance_case({'cuda_version': '9.9'}, 'cuda_version', "'9.9'",
                                            'a CUDA release heat-gpu installs: 12.9')),
    ('instance_cuda_not_version', instance_case({'cuda_version': 'twelve'}, 'cuda_version',
                                                "'twelve'", 'MAJOR.MINOR, e.g. 12.4')),
    ('instance_branch_two_digits', instance_case({'driver_branch': '55'}, 'driver_branch',
                                                 "'55'", 'a three-digit branch')),
    ('instance_branch_too_new_for_p100', instance_case(
        {'driver_branch': '590'}, 'driver_branch', "'590'", 'up to 580', 'Pascal')),
    ('instance_open_modules_on_p100', instance_case(
        {'kernel_modules': 'open'}, 'kernel_modules', "'open'", 'proprietary or auto',
        'Pascal')),
    ('instance_install_method', instance_case({'install_method': 'pip'}, 'install_method',
                                              '"pip"', '"packages", "runfile"')),
    ('instance_http_mirror', instance_case(
        {'mirror_url': 'http://mirror.example.com/nvidia'}, 'mirror_url',
        "'http://mirror.example.com/nvidia'", 'https://')),
    ('instance_mirror_without_host', instance_case(
        {'mirror_url': 'https:///nvidia'}, 'mirror_url', "'https:///nvidia'",
        'with a host name')),
    ('instance_mirror_with_space', instance_case(
        {'mirror_url': 'https://mirror example.com/nvidia'}, 'mirror_url',
        "'https://mirror example.com/nvidia'", 'no spaces')),
    ('instance_mirror_bad_port', instance_case(
        {'mirror_url': 'https://mirror.example.com:99999/nvidia'}, 'mirror_url',
        "'https://mirror.example.com:99999/nvidia'", 'https://mirror.example.com/nvidia')),
    ('instance_checksum_short', instance_case(
        {'checksums': {'cuda_12.4.1_550.54.15_linux.run': 'abc123'}},
        'checksums.cuda_12.4.1_550.54.15_linux.run', "'abc123'", '64 hex digits')),
    ('instance_checksum_not_hex', instance_case(
        {'checksums': {'cuda-keyring_1.1-1_all.deb': 'z' * 64}},
        'checksums.cuda-keyring_1.1-1_all.deb', "'%s'" % ('z' * 64), '64 hex digits')),
    ('instance_checksums_not_map', instance_case({'checksums': 'abc'}, 'checksums', '"abc"',
                                                 'is not a map')),
    ('instance_timeout_too_short', instance_case({'bootstrap_timeout': 10}, 'bootstrap_timeout',
                                                 '10 is out of range', 'min: 60, max: 86400')),
    ('instance_timeout_not_int', instance_case({'bootstrap_timeout': 'soon'},
                                               'bootstrap_timeout', "'soon'",
                                               'is not an integer')),
    ('instance_unknown_model_hint', instance_case(
        {'gpu_model': 'X1000'}, 'gpu_model', "'X1000'", CATALOG_KEYS,
        specs={'pci_passthrough:alias': 'mygpu:1'})),
    ('instance_user_data_format', instance_case({'user_data_format': 'RAW'},
                                                'user_data_format', '"RAW"',
                                                '["SOFTWARE_CONFIG"]')),
    ('instance_cloud_config_not_yaml', instance_case(
        {'user_data': '#cloud-config\nruncmd: [unclosed\n'}, 'user_data',
        'runcmd: [unclosed', 'not valid YAML', 'a YAML mapping of cloud-init modules')),
    ('instance_cloud_config_list', instance_case(
        {'user_data': '#cloud-config\n- apt-get install htop\n'}, 'user_data',
        '- apt-get install htop', 'is a list, not a mapping',
        'a YAML mapping of cloud-init modules')),
    ('instance_user_data_too_large', instance_case(
        {'user_data': BIG_SCRIPT}, "Invalid value '#!/bin/sh' (63010 bytes) for user_data",
        'bytes once base64-encoded, and nova accepts at most 65535',
        'Accepted: a user_data of at most about', 'OS::Heat::SoftwareDeployment',
        'into the image')),
    ('instance_fingerprint_grouped', instance_case(
        {'keyring_fingerprints': [GROUPED_FINGERPRINT]}, 'keyring_fingerprints[0]',
        repr(GROUPED_FINGERPRINT), 'an OpenPGP fingerprint of 40 hex digits without blanks')),

    # OS::GPU::SampleJob: thresholds, samples and the instance.
    ('job_min_ratio_above_1', job_case({'min_ratio': 1.5}, 'min_ratio', '1.5 is out of range',
                                       'min: 0.0, max: 1.0')),
    ('job_min_ratio_negative', job_case({'min_ratio': -0.1}, 'min_ratio', '-0.1 is out of range',
                                        'min: 0.0, max: 1.0')),
    ('job_unknown_sample', job_case({'samples': ['fft']}, 'samples[0]', '"fft"',
                                    '"vector_add", "bandwidth", "gemm"')),
    ('job_samples_not_list', job_case({'samples': 'gemm'}, 'samples', 'gemm', 'is not a list')),
    ('job_threshold_above_1', job_case({'thresholds': {'bandwidth': 2}},
                                       'thresholds.bandwidth', 'Invalid value 2',
                                       'a number from 0.0 to 1.0')),
    ('job_threshold_unknown_sample', job_case({'thresholds': {'fft': 0.5}}, 'thresholds',
                                              "'fft'", 'bandwidth.d2d_bandwidth')),
    ('job_instance_no_such_server', job_case(
        {'instance': 'hgft-no-such-server'},
        "Invalid value 'hgft-no-such-server' for instance: no server has this ID",
        'Accepted: an OS::GPU::CudaInstance of this stack',
        'user_data_format SOFTWARE_CONFIG')),
    ('job_instance_unknown_id', job_case(
        {'instance': '0b9e3c1a-5d2f-4e8b-9a71-3c6d2e1f0a4b'},
        "Invalid value '0b9e3c1a-5d2f-4e8b-9a71-3c6d2e1f0a4b' for instance: no server has "
        'this ID', 'Accepted: an OS::GPU::CudaInstance of this stack')),
    ('job_timeout_too_short', job_case({'timeout': 5}, 'timeout', '5 is out of range',
                                       'min: 30')),

    # The templates of hot/.
    ('hot_instance_plain_flavor', hot_case('hot/gpu_instance.yaml', {'flavor': 'FLAVOR'},
                                           'requests no GPU', '{flavor}', 'Choose a GPU flavor',
                                           specs={})),
    ('hot_instance_cuda_13_on_p100', hot_case(
        'hot/gpu_instance.yaml', {'flavor': 'FLAVOR', 'cuda_version': '13.0'}, 'CUDA 13.0',
        'P100-PCIE-16GB', 'accepted: 12.9', specs=P100)),
    ('hot_instance_min_percent', hot_case('hot/gpu_instance.yaml',
                                          {'flavor': 'FLAVOR', 'min_percent': '150'},
                                          'min_percent', '150 is out of range', 'max: 100',
                                          specs=P100)),
    ('hot_instance_no_such_key', hot_case('hot/gpu_instance.yaml',
                                          {'flavor': 'FLAVOR', 'key_name': 'hgft-no-such-key'},
                                          'key_name', 'hgft-no-such-key', 'could not be found',
                                          specs=P100)),
    ('hot_instance_install_method', hot_case('hot/gpu_instance.yaml',
                                             {'flavor': 'FLAVOR', 'install_method': 'pip'},
                                             'install_method', 'pip', 'preinstalled',
                                             specs=P100)),
    ('hot_instance_no_such_flavor', hot_case('hot/gpu_instance.yaml',
                                             {'flavor': 'hgft-no-such-flavor'}, 'flavor',
                                             'hgft-no-such-flavor', 'No Flavor matching')),
    ('hot_instance_no_such_network', hot_case('hot/gpu_instance.yaml',
                                              {'flavor': 'FLAVOR', 'network': 'hgft-no-such-net'},
                                              "Parameter 'network' is invalid", 'hgft-no-such-net',
                                              'Unable to find network', specs=P100)),
    # The next two reach OS::GPU::ServerAccess, which heat validates when it creates the nested
    # stack: the stack fails at once, naming the value and the rule, before anything is made.
    ('hot_instance_allowed_from_not_cidr', hot_case(
        'hot/gpu_instance.yaml', {'flavor': 'FLAVOR', 'allowed_from': 'anywhere'},
        'remote_ip_prefix', "'anywhere'", 'Invalid net cidr', specs=P100, at_create=True)),
    ('hot_instance_no_such_external_network', hot_case(
        'hot/gpu_instance.yaml', {'flavor': 'FLAVOR', 'external_network': 'hgft-no-such-ext'},
        'floating_network', "'hgft-no-such-ext'", 'Unable to find network', specs=P100,
        at_create=True)),
    ('hot_cluster_zero_nodes', hot_case('hot/gpu_cluster.yaml',
                                        {'flavor': 'FLAVOR', 'node_count': '0'}, 'node_count',
                                        '0', 'min: 1', specs=P100)),
    # Heat shows a parameter constraint's description instead of its own message, so the next
    # two cannot name the refused value: the description says what is accepted.
    ('hot_multi_cuda_pattern', hot_case('hot/gpu_multi.yaml',
                                        {'flavor': 'FLAVOR', 'cuda_version': 'latest'},
                                        "Parameter 'cuda_version' is invalid",
                                        'auto or MAJOR.MINOR, e.g. 12.4',
                                        specs={'pci_passthrough:alias': 'p100:2'})),
    ('hot_flavors_count_17', hot_case('hot/gpu_flavors.yaml', {'gpu_counts': '1,17'},
                                      'gpu_counts', '"17"', '"16"', admin=True, at_create=True)),
    ('hot_flavors_unknown_model', hot_case('hot/gpu_flavors.yaml',
                                           {'gpu_models': 'P100-PCIE-16GB,P200-FAKE'},
                                           'gpu_models', 'P200-FAKE', 'A100-PCIE-80GB',
                                           admin=True, at_create=True)),
]


class TestBadInput(base.FunctionalTestCase):
    """Each scenario: stack create answers 400 with an actionable message; nothing is left."""

    scenarios = SCENARIOS

    def setUp(self) -> None:
        # Every name this test uses starts with its own tag, so the baseline inventory is empty
        # and the leak check ignores what concurrent tests create on the shared cloud meanwhile.
        self.tag = self.unique_name('bad')
        self.stack_name = self.tag + '-stack'
        self.flavor_name = None
        self.inventory_ready = False
        super().setUp()
        self.client = self.heat_demo
        self.inventory_ready = True

    def _inventory(self) -> dict:
        """Stacks, servers, flavors and PCI claims carrying this test's tag."""
        if not self.inventory_ready:
            return {'servers': {}, 'flavors': {}, 'stacks': {}, 'pci_in_use': {}}
        # Filtered on the server side: listing every server and stack takes seconds here.
        mine = {s.id: s.name for s in self.admin.compute.servers(all_projects=True,
                                                                 name='^' + self.tag)}
        return {
            'servers': mine,
            'flavors': {f.id: f.name for f in self.admin.compute.flavors(is_public=None)
                        if f.name.startswith(self.tag)},
            # The project of the client that sent the create is where a stack would be. Heat
            # lists a stack it just deleted as DELETE_COMPLETE for a moment: that one is gone.
            'stacks': {s.id: '%s %s' % (s.stack_name, s.stack_status)
                       for s in self.client.stacks.list(filters={'name': self.stack_name})
                       if s.stack_status != 'DELETE_COMPLETE'},
            'pci_in_use': {k: v for k, v in self._claims().items() if v in mine},
        }

    # Building the request

    def _flavor(self, specs: dict) -> str:
        """A private flavor with *specs* that demo may use; removed at cleanup."""
        flavor = self.admin.compute.create_flavor(name=self.tag + '-given-flavor', vcpus=1,
                                                  ram=512, disk=1, is_public=False)
        self.addCleanup(self.admin.compute.delete_flavor, flavor, ignore_missing=True)
        if specs:
            self.admin.compute.create_flavor_extra_specs(flavor, specs)
        self.admin.compute.flavor_add_tenant_access(flavor, self.demo.current_project_id)
        self.flavor_name = flavor.name
        return flavor.id

    def _instance(self, props: dict) -> dict:
        merged = {'flavor': self._flavor(self.specs), 'image': IMAGE,
                  'networks': [{'allocate_network': 'none'}]}
        merged.update(props)
        return {'type': 'OS::GPU::CudaInstance', 'properties': merged}

    def _request(self) -> tuple[Any, dict]:
        """The heat client to use and the keyword arguments of stacks.create."""
        kwargs: dict = {'stack_name': self.stack_name, 'parameters': {}, 'timeout_mins': 10}
        if self.kind == 'hot':
            files, template = template_utils.get_template_contents(
                template_file=os.path.join(base.REPO, self.path))
            params = dict(self.params)
            if self.path != 'hot/gpu_flavors.yaml':
                params.setdefault('image', IMAGE)
            if 'network' in (template.get('parameters') or {}):
                params.setdefault('network', base.localcloud.PRIVATE_NETWORK['name'])
            else:
                # Flavors this test made would carry its tag (the leak check sees them).
                params.setdefault('name_prefix', self.tag)
            if 'FLAVOR' in params.values():
                flavor_id = self._flavor(self.specs)
                params = {k: flavor_id if v == 'FLAVOR' else v for k, v in params.items()}
            kwargs.update(template=template, files=files, parameters=params)
            return (self.heat_admin if self.as_admin else self.heat_demo), kwargs
        if self.kind == 'flavor':
            props = {'name': self.stack_name + '-flavor', 'vcpus': 2, 'ram': 1024,
                     'gpu_model': 'p100'}
            props.update({k: v.format(tag=self.tag) if isinstance(v, str) else v
                          for k, v in self.props.items()})
            resources = {'gpu_flavor': {'type': 'OS::GPU::Flavor', 'properties': {
                k: v for k, v in props.items() if v is not None}}}
        elif self.kind == 'instance':
            resources = {'gpu_vm': self._instance(self.props)}
        else:
            resources = {'gpu_vm': self._instance({}),
                         'samples': {'type': 'OS::GPU::SampleJob', 'properties': dict(
                             {'instance': {'get_resource': 'gpu_vm'}}, **self.props)}}
        template = {'heat_template_version': '2021-04-16', 'resources': resources}
        kwargs['template'] = yaml.safe_dump(template)
        return (self.heat_admin if self.kind == 'flavor' else self.heat_demo), kwargs

    # What must not exist afterwards

    def _claims(self) -> dict:
        """PCI device (address@host) -> the instance nova's PCI tracker holds it for."""
        return {'%s@%s' % (d['address'], d['host']): d['instance_uuid']
                for d in self.pci_devices() if d['status'] != 'available' and d['instance_uuid']}

    def _assert_nothing_created(self, claims_before: dict) -> None:
        now = self._inventory()
        now['flavors'] = {k: v for k, v in now['flavors'].items() if v != self.flavor_name}
        # A new claim counts unless a live server of another test on the shared cloud holds it.
        now['pci_in_use'] = {k: v for k, v in self._claims().items()
                             if claims_before.get(k) != v
                             and (v in now['servers'] or self.server_gone(v))}
        self.assertEqual({'servers': {}, 'flavors': {}, 'stacks': {}, 'pci_in_use': {}}, now,
                         'created for a refused stack')

    def test_refused_at_create(self):
        self.client, kwargs = self._request()
        claims_before = self._claims()
        if getattr(self, 'at_create', False):
            stack_id = self.client.stacks.create(**kwargs)['stack']['id']
            self.addCleanup(self.delete_stack, stack_id, client=self.client)
            error = self.assertRaises(base.StackFailed, self.wait_for_stack, stack_id,
                                      'CREATE_COMPLETE', client=self.client)
            for part in self.expected:
                self.assertIn(part, str(error))
            self.delete_stack(stack_id, client=self.client)
            self._assert_nothing_created(claims_before)
            return
        try:
            resp = self.client.stacks.create(**kwargs)
        except heat_exc.HTTPBadRequest as ex:
            message = str(ex)
        else:
            self.addCleanup(self.delete_stack, resp['stack']['id'], client=self.client)
            self.fail('stack create accepted the bad input of %s' % self.id())
        for part in self.expected:
            self.assertIn(part.format(flavor=self.flavor_name, tag=self.tag), message)
        self._assert_nothing_created(claims_before)
