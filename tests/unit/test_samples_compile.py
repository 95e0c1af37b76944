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

"""The CUDA sample programs compile and link with NVIDIA's nvcc from PyPI (test-requirements.txt:
nvidia-cuda-nvcc, nvidia-cuda-runtime, nvidia-cuda-cccl, nvidia-cublas), one nvcc call per program
for every architecture, and the binaries print their JSON document even on a machine without a GPU.
"""

import glob
import json
import os
import re
import shutil
import subprocess
import sysconfig
import tempfile
from typing import Optional

import testscenarios
import testtools

from heat_gpu import results

load_tests = testscenarios.load_tests_apply_scenarios

SAMPLES_DIR = results.SAMPLES_DIR
ARCHS = ('75', '80', '90')
LEGACY_ARCHS = ('60', '70')
LIBS = {'gemm': ['-lcublas'], 'device_query': ['-ldl']}
COMPILE_TIMEOUT = 300


def find_toolkit() -> Optional[str]:
    """The directory of the PyPI CUDA toolkit (``site-packages/nvidia/cuXX``), if installed.

    ``HEAT_GPU_TEST_NVCC`` may name another nvcc; its toolkit directory is then its parent's parent.
    """
    override = os.environ.get('HEAT_GPU_TEST_NVCC')
    if override:
        return os.path.dirname(os.path.dirname(os.path.abspath(override)))
    for base in {sysconfig.get_paths()['purelib'], sysconfig.get_paths()['platlib']}:
        found = sorted(glob.glob(os.path.join(base, 'nvidia', '*', 'bin', 'nvcc')))
        if found:
            return os.path.dirname(os.path.dirname(found[-1]))
    return None


def gencode(archs: tuple[str, ...]) -> list[str]:
    return ['-gencode=arch=compute_%s,code=sm_%s' % (a, a) for a in archs]


#: The header helpers that print a document with a format of their own.
PRINTING_HELPERS = ('print_document(', 'run_each_gpu(')


def program_source(name: str) -> str:
    """The text whose printf formats make sample NAME's output.

    Its ``.cu`` source, followed by the shared header when the source includes it and prints
    through one of the header's helpers (whose format is then the program's too).
    """
    with open(os.path.join(SAMPLES_DIR, name + '.cu'), encoding='utf-8') as stream:
        source = stream.read()
    includes = '#include "%s"' % results.SAMPLE_HEADER in source
    if includes and any(helper in source for helper in PRINTING_HELPERS):
        with open(os.path.join(SAMPLES_DIR, results.SAMPLE_HEADER), encoding='utf-8') as stream:
            source += stream.read()
    return source


def format_keys(source: str) -> list[set[str]]:
    """The JSON keys of each printf/snprintf format string of a .cu source."""
    calls = re.findall(r'printf\(\s*(?:line,\s*sizeof\(line\),\s*)?((?:"(?:[^"\\]|\\.)*"\s*)+)',
                       source)
    found = []
    for literals in calls:
        keys = set(re.findall(r'\\"([a-z_0-9]+)\\": ', literals))
        if keys:
            found.append(keys)
    return found


class ToolkitFixture:
    """One temporary library directory with the link names the wheels leave out."""

    def __init__(self, toolkit: str, tmp: str) -> None:
        self.toolkit = toolkit
        self.nvcc = os.path.join(toolkit, 'bin', 'nvcc')
        self.libdir = os.path.join(tmp, 'lib')
        os.makedirs(self.libdir, exist_ok=True)
        # The wheels ship libcublas.so.13 but not the libcublas.so a -lcublas link looks for.
        for versioned in glob.glob(os.path.join(toolkit, 'lib', 'lib*.so.*')):
            plain = re.sub(r'\.so\..*$', '.so', os.path.basename(versioned))
            if not os.path.exists(os.path.join(toolkit, 'lib', plain)):
                link = os.path.join(self.libdir, plain)
                if not os.path.lexists(link):
                    os.symlink(versioned, link)

    def compile(self, name: str, archs: tuple[str, ...], out: str) -> subprocess.CompletedProcess:
        argv = [self.nvcc, '-O2', '-std=c++17', '-Xcompiler', '-Wall,-Wextra', *gencode(archs),
                '-o', out, os.path.join(SAMPLES_DIR, name + '.cu'), '-L' + self.libdir,
                *LIBS.get(name, [])]
        return subprocess.run(argv, capture_output=True, text=True, timeout=COMPILE_TIMEOUT,
                              check=False)

    def accepts(self, arch: str) -> bool:
        proc = subprocess.run([self.nvcc, '--list-gpu-arch'], capture_output=True, text=True,
                              timeout=60, check=False)
        return 'compute_%s' % arch in proc.stdout.split()

    def release(self) -> str:
        proc = subprocess.run([self.nvcc, '--version'], capture_output=True, text=True,
                              timeout=60, check=False)
        match = re.search(r'release (\d+\.\d+)', proc.stdout)
        return match.group(1) if match else 'unknown'


class CompileSamplesTest(testtools.TestCase):

    scenarios = [(name, {'program': name}) for name in results.SAMPLES]

    def setUp(self) -> None:
        super().setUp()
        toolkit = find_toolkit()
        self.assertIsNotNone(toolkit, 'nvcc from PyPI is not installed: pip install -c '
                             'constraints.txt -r test-requirements.txt')
        self.tmp = tempfile.mkdtemp(prefix='heat-gpu-nvcc-')
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
        self.kit = ToolkitFixture(toolkit, self.tmp)

    def test_compiles_links_and_prints_its_document(self) -> None:
        out = os.path.join(self.tmp, self.program)
        proc = self.kit.compile(self.program, ARCHS, out)
        self.assertEqual(0, proc.returncode, 'nvcc %s (sm_%s) failed:\n%s%s' % (
            self.program, ', sm_'.join(ARCHS), proc.stdout, proc.stderr))
        self.assertNotIn('warning', (proc.stdout + proc.stderr).lower(),
                         'nvcc warned:\n%s' % proc.stderr)
        with open(out, 'rb') as stream:
            binary = stream.read()
        # The fatbinary embeds one cubin per architecture, each naming its target.
        for arch in ARCHS:
            self.assertIn(b'sm_%s' % arch.encode(), binary)

        # Here (no GPU, no driver) the program must still print its one JSON document.
        env = dict(os.environ, LD_LIBRARY_PATH=os.path.join(self.kit.toolkit, 'lib'))
        run = subprocess.run([out], capture_output=True, text=True, timeout=120, env=env,
                             check=False)
        lines = run.stdout.strip().splitlines()
        self.assertEqual(1, len(lines), 'expected one JSON line, got %r (stderr %r)'
                         % (run.stdout, run.stderr))
        doc = json.loads(lines[0])
        self.assertEqual(self.program, doc['program'])
        self.assertIsInstance(doc['results'], list)
        formats = format_keys(program_source(self.program))
        self.assertIn(set(doc), formats)
        for entry in doc['results']:
            self.assertIn(set(entry), formats)
        if doc['error'] is not None:
            self.assertEqual(1, run.returncode)
            self.assertEqual([], doc['results'])


class LegacyArchitecturesTest(testtools.TestCase):
    """Pascal (sm_60) and Volta (sm_70), when the installed nvcc still builds for them."""

    def test_compile_for_sm60_and_sm70(self) -> None:
        toolkit = find_toolkit()
        self.assertIsNotNone(toolkit, 'nvcc from PyPI is not installed')
        tmp = tempfile.mkdtemp(prefix='heat-gpu-nvcc-')
        self.addCleanup(shutil.rmtree, tmp, ignore_errors=True)
        kit = ToolkitFixture(toolkit, tmp)
        missing = [a for a in LEGACY_ARCHS if not kit.accepts(a)]
        if missing:
            self.skipTest('nvcc %s (nvidia-cuda-nvcc from PyPI) no longer builds for sm_%s: '
                          'CUDA 13.0 dropped Pascal and Volta. CUDA 12.x toolkits (NVIDIA\'s '
                          'packages or runfile) still build for them; PyPI has no CUDA 12 nvcc '
                          '(nvidia-cuda-nvcc-cu12 ships only ptxas)'
                          % (kit.release(), ', sm_'.join(missing)))
        for name in results.SAMPLES:
            proc = kit.compile(name, LEGACY_ARCHS, os.path.join(tmp, name))
            self.assertEqual(0, proc.returncode, 'nvcc %s (sm_60, sm_70) failed:\n%s%s'
                             % (name, proc.stdout, proc.stderr))
