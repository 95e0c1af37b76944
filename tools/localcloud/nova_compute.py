"""Start nova-compute with the local cloud's virt driver importable.

nova loads ``compute_driver`` only from inside the ``nova.virt`` package (it imports
``nova.virt.<compute_driver>``). This launcher adds this directory to that package's search path, so
``compute_driver = localcloud_virt.fakegpu.FakeGpuDriver`` resolves to ``localcloud_virt/fakegpu.py``
here, and then runs nova's own ``nova-compute`` entry point with the same arguments.
"""

import os
import sys

from nova.cmd.compute import main

import nova.virt

if __name__ == '__main__':
    nova.virt.__path__.append(os.path.dirname(os.path.abspath(__file__)))
    sys.argv[0] = 'nova-compute'
    sys.exit(main())
