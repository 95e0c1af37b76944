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

"""Start nova-compute with the local cloud's virt driver importable.

nova loads ``compute_driver`` only from inside the ``nova.virt`` package (it imports
``nova.virt.<compute_driver>``). This launcher adds this directory to that package's search path, so
``compute_driver = localcloud_virt.fakegpu.FakeGpuDriver`` resolves to
``localcloud_virt/fakegpu.py`` here, and then runs nova's own ``nova-compute`` entry point with the
same arguments.
"""

import os
import sys

from nova.cmd.compute import main

import nova.virt

if __name__ == '__main__':
    nova.virt.__path__.append(os.path.dirname(os.path.abspath(__file__)))
    sys.argv[0] = 'nova-compute'
    sys.exit(main())
