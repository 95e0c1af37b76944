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

"""Shared pieces of the unit tests that run resources in heat's own engine code."""

# heat.tests.common must be imported before heat.engine.stack (oslo.service backend selection).
from heat.tests import common  # isort: skip

import importlib
import logging
import os
import pkgutil
import sys

import fixtures
from heat.engine import resource
from heat.engine import resources
from oslo_config import cfg


def init_global_environment() -> None:
    """Load heat's global environment from the installed heat (``sys.prefix/etc/heat``).

    HeatTestCase looks for etc/heat beside the heat package, where only a source tree has it;
    a heat wheel installs it under the environment's prefix instead.
    """
    env_dir = os.path.join(sys.prefix, 'etc', 'heat', 'environment.d')
    if os.path.isdir(env_dir):
        cfg.CONF.set_default('environment_dir', env_dir)
    with fixtures.FakeLogger(level=logging.WARNING):
        resources.initialise()


def register_plugin() -> None:
    """Register every resource type of heat_gpu.resources, as heat's plugin loader does.

    Registration lives in heat's global environment, which other tests reload; a test that
    needs the plugin's types registers them itself instead of relying on the test order.
    """
    import heat_gpu.resources as package
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f'{package.__name__}.{info.name}')
        for name, cls in getattr(module, 'resource_mapping', dict)().items():
            resource._register_class(name, cls)


class HeatGpuTestCase(common.HeatTestCase):
    """HeatTestCase with heat's global environment loaded from the installed heat."""

    def setUp(self):
        init_global_environment()
        super().setUp()
