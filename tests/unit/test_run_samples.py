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

"""The real sample runner (run-samples.sh) in a sandbox, with stub nvcc and nvidia-smi.

The stub nvcc builds programs that replay recorded outputs (tests/unit/fixtures/samples), which
test_samples_format keeps in the exact format the .cu programs print.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Optional

import testtools

from heat_gpu import results
from tests.unit.test_samples_compile import format_keys
from tests.unit.test_samples_compile import program_source

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUNNER = os.path.join(TOP, 'heat_gpu', 'samples', 'run-samples.sh')
FIXTURES = os.path.join(TOP, 'tests', 'unit', 'fixtures')
STUB_BIN = os.path.join(FIXTURES, 'bin')


class RunSamplesTest(testtools.TestCase):

    def setUp(self) -> None:
        super().setUp()
        self.tmp = tempfile.mkdtemp(prefix='heat-gpu-samples-')
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
        self.root = os.path.join(self.tmp, 'root')
        self.outputs = os.path.join(self.tmp, 'outputs')
        self.log = os.path.join(self.tmp, 'nvcc.log')
        os.makedirs(self.root)
        self.use_machine('p100x1')

    def use_machine(self, machine: str) -> None:
        shutil.rmtree(self.outputs, ignore_errors=True)
        shutil.copytree(os.path.join(FIXTURES, 'samples', machine), self.outputs)

    def recorded(self, name: str) -> dict:
        with open(os.path.join(self.outputs, name + '.json'), encoding='utf-8') as stream:
            return json.load(stream)

    def record(self, name: str, doc: Optional[dict] = None, *, rc: Optional[int] = None,
               stderr: Optional[str] = None, compile_error: Optional[str] = None) -> None:
        base = os.path.join(self.outputs, name)
        if doc is not None:
            with open(base + '.json', 'w', encoding='utf-8') as stream:
                stream.write(json.dumps(doc) + '\n')
        for suffix, text in (('.rc', rc), ('.stderr', stderr),
                             ('.compile-error', compile_error)):
            if text is not None:
                with open(base + suffix, 'w', encoding='utf-8') as stream:
                    stream.write('%s\n' % text)

    def run_samples(self, *, caps: Optional[str] = '6.0', inputs: Optional[dict] = None,
                    nvcc: bool = True, script: str = RUNNER,
                    **env: str) -> tuple[int, dict, str]:
        environ = {
            'PATH': STUB_BIN + ':/usr/bin:/bin',
            'HOME': self.tmp,
            'PYTHON': sys.executable,
            'HEAT_GPU_ROOT': self.root,
            'STUB_NVCC_LOG': self.log,
            'STUB_SAMPLE_OUTPUTS': self.outputs,
        }
        if nvcc:
            environ['NVCC'] = os.path.join(STUB_BIN, 'nvcc')
        if caps is not None:
            environ['STUB_COMPUTE_CAPS'] = caps
        if inputs is not None:
            path = os.path.join(self.tmp, 'inputs.json')
            with open(path, 'w', encoding='utf-8') as stream:
                json.dump(inputs, stream)
            environ['HEAT_GPU_SAMPLE_INPUTS'] = path
        environ.update(env)
        argv = ['bash', script] if script == RUNNER else [script]
        proc = subprocess.run(argv, env=environ, capture_output=True, text=True,
                              timeout=60, check=False)
        lines = proc.stdout.strip().splitlines()
        self.assertEqual(1, len(lines), 'stdout must be one JSON document: %r\nstderr: %s'
                         % (proc.stdout, proc.stderr))
        return proc.returncode, json.loads(lines[0]), proc.stderr

    def nvcc_calls(self) -> list[str]:
        with open(self.log, encoding='utf-8') as stream:
            return [line.split() for line in stream if line.startswith('nvcc ')
                    and '--version' not in line]

    def program_runs(self) -> list[str]:
        with open(self.log, encoding='utf-8') as stream:
            return [line.split()[1] for line in stream if line.startswith('run ')]

    def by(self, doc: dict, name: str, metric: Optional[str] = None) -> list[dict]:
        return [s for s in doc['samples']
                if s['name'] == name and (metric is None or s['metric'] == metric)]

    def test_all_samples_single_p100_pass_with_catalog_figures(self) -> None:
        env = results.runner_inputs(gpu_model='P100-PCIE-16GB', min_ratio=0.8)
        rc, doc, _ = self.run_samples(**env)

        self.assertEqual(0, rc)
        self.assertTrue(doc['passed'])
        self.assertEqual(['device_query', 'vector_add', 'bandwidth', 'gemm', 'p2p'],
                         list(dict.fromkeys(s['name'] for s in doc['samples'])))
        for sample in doc['samples']:
            self.assertEqual(set(results._SAMPLE_KEYS), set(sample))
        h2d, = self.by(doc, 'bandwidth', 'h2d_bandwidth')
        self.assertEqual(11.74, h2d['measured'])
        self.assertEqual(11.82, h2d['expected'])
        self.assertEqual(round(11.74 / 11.82, 3), h2d['ratio'])
        self.assertEqual('PCIe Gen3 x16', h2d['detail']['basis'])
        sgemm, = self.by(doc, 'gemm')
        self.assertEqual(8.636, sgemm['measured'])
        self.assertEqual(round(9.3 * results.SGEMM_EFFICIENCY, 2), sgemm['expected'])
        p2p, = self.by(doc, 'p2p')
        self.assertTrue(p2p['passed'])
        self.assertTrue(p2p['detail']['skipped'])
        self.assertIn('at least 2', p2p['detail']['message'])
        self.assertEqual([{'index': 0, 'name': 'Tesla P100-PCIE-16GB',
                           'pci_address': '0000:00:05.0', 'pcie_link_gen_max': 3,
                           'pcie_source': 'nvml'}],
                         [{k: g[k] for k in ('index', 'name', 'pci_address',
                                             'pcie_link_gen_max', 'pcie_source')}
                          for g in doc['gpus']])
        # Built once each, for the GPU's own architecture, and run in PCI bus order.
        built = self.nvcc_calls()
        self.assertEqual(5, len(built))
        for call in built:
            self.assertIn('-arch=sm_60', call)
        gemm_call, = [c for c in built if any(a.endswith('/gemm.cu') for a in c)]
        self.assertIn('-lcublas', gemm_call)
        self.assertIn('-rpath,%s/lib64' % os.path.dirname(STUB_BIN), gemm_call)
        with open(self.log, encoding='utf-8') as stream:
            self.assertIn('run gemm CUDA_DEVICE_ORDER=PCI_BUS_ID', stream.read())

        # The Heat side reaches the same verdict from the same output.
        report = results.evaluate(json.dumps(doc), min_ratio=0.8)
        self.assertTrue(report.passed)
        self.assertEqual([s['passed'] for s in doc['samples']],
                         [s.passed for s in report.samples])

    def test_selection_builds_and_reports_only_chosen_samples(self) -> None:
        rc, doc, _ = self.run_samples(HEAT_GPU_SAMPLES='vector_add, gemm')

        self.assertEqual(0, rc)
        self.assertEqual({'vector_add', 'gemm'}, {s['name'] for s in doc['samples']})
        # device_query always runs: it names the GPUs.
        self.assertEqual(['device_query', 'vector_add', 'gemm'], self.program_runs())
        self.assertEqual('Tesla P100-PCIE-16GB', doc['gpus'][0]['name'])

    def test_inputs_file(self) -> None:
        rc, doc, _ = self.run_samples(inputs={'samples': ['bandwidth']})
        self.assertEqual(0, rc)
        self.assertEqual(['h2d_bandwidth', 'd2h_bandwidth', 'd2d_bandwidth'],
                         [s['metric'] for s in doc['samples']])
        # No expected figures given: the runner judges on correctness only.
        self.assertEqual([None] * 3, [s['ratio'] for s in doc['samples']])

        inputs = {'samples': ['bandwidth'], 'min_ratio': 0.9, 'thresholds': {'bandwidth': 0.95},
                  'expected': {'*': {'h2d_bandwidth': 12.5},
                               '0': {'d2h_bandwidth': {'value': 12.0, 'basis': 'measured'}}}}
        rc, doc, _ = self.run_samples(inputs=inputs)
        self.assertEqual(1, rc)
        self.assertEqual([(12.5, 0.939, False, 0.95), (12.0, 1.051, True, 0.95)],
                         [(s['expected'], s['ratio'], s['passed'], s['detail']['threshold'])
                          for s in doc['samples'][:2]])
        self.assertEqual('measured', doc['samples'][1]['detail']['basis'])
        # The environment wins over the file.
        rc, doc, _ = self.run_samples(inputs=inputs, HEAT_GPU_THRESHOLDS='{}')
        self.assertEqual(0, rc)
        self.assertEqual([0.9, 0.9], [s['detail']['threshold'] for s in doc['samples'][:2]])

    def test_one_failing_sample_exits_nonzero_and_names_it(self) -> None:
        bad = self.recorded('vector_add')
        bad['results'][0].update(mismatches=12, max_abs_error=0.5, correct=False)
        self.record('vector_add', bad, rc=1)

        rc, doc, _ = self.run_samples()

        self.assertEqual(1, rc)
        self.assertFalse(doc['passed'])
        failed = [(s['name'], s['gpu_index']) for s in doc['samples'] if not s['passed']]
        self.assertEqual([('vector_add', 0)], failed)
        self.assertEqual(0.5, self.by(doc, 'vector_add')[0]['measured'])
        self.assertEqual(12, self.by(doc, 'vector_add')[0]['detail']['mismatches'])
        report = results.evaluate(json.dumps(doc))
        self.assertFalse(report.passed)
        self.assertIn('FAILED: vector_add GPU0 max error: wrong result', report.summary)

    def test_thresholds_passed_in_decide(self) -> None:
        slow = self.recorded('bandwidth')
        slow['results'][0]['h2d_gbps'] = 7.1  # about an x8 link
        self.record('bandwidth', slow)
        env = results.runner_inputs(samples=['bandwidth'], gpu_model='p100', min_ratio=0.8)

        rc, doc, _ = self.run_samples(**env)
        self.assertEqual(1, rc)
        h2d, = self.by(doc, 'bandwidth', 'h2d_bandwidth')
        self.assertFalse(h2d['passed'])
        self.assertEqual(round(7.1 / 11.82, 3), h2d['ratio'])
        self.assertEqual(0.8, h2d['detail']['threshold'])

        env = results.runner_inputs(samples=['bandwidth'], gpu_model='p100', min_ratio=0.8,
                                    thresholds={'bandwidth.h2d_bandwidth': 0.5})
        rc, doc, _ = self.run_samples(**env)
        self.assertEqual(0, rc)
        self.assertEqual(0.5, self.by(doc, 'bandwidth', 'h2d_bandwidth')[0]['detail']['threshold'])
        self.assertEqual(0.8, self.by(doc, 'bandwidth', 'd2h_bandwidth')[0]['detail']['threshold'])

        env.update(HEAT_GPU_MIN_RATIO='0.99', HEAT_GPU_THRESHOLDS='{"bandwidth": 0.55}')
        rc, doc, _ = self.run_samples(**env)
        self.assertEqual(0, rc)
        verdicts = {s['metric']: s['passed'] for s in doc['samples']}
        self.assertEqual({'h2d_bandwidth': True, 'd2h_bandwidth': True,
                          'd2d_bandwidth': True}, verdicts)
        env.update(HEAT_GPU_THRESHOLDS='{}')
        rc, doc, _ = self.run_samples(**env)
        self.assertEqual(1, rc)
        self.assertEqual({'h2d_bandwidth': False, 'd2h_bandwidth': True,
                          'd2d_bandwidth': True},
                         {s['metric']: s['passed'] for s in doc['samples']})

    def test_arch_detection(self) -> None:
        self.use_machine('a100x2')
        rc, doc, _ = self.run_samples(caps='8.0 8.0', HEAT_GPU_SAMPLES='vector_add')
        self.assertEqual(0, rc)
        self.assertIn('-arch=sm_80', self.nvcc_calls()[0])

        os.remove(self.log)
        self.run_samples(caps='7.0\n8.0 7.0', HEAT_GPU_SAMPLES='vector_add')
        call = self.nvcc_calls()[0]
        self.assertIn('-gencode=arch=compute_70,code=sm_70', call)
        self.assertIn('-gencode=arch=compute_80,code=sm_80', call)

        os.remove(self.log)
        self.run_samples(caps=None, HEAT_GPU_SAMPLES='vector_add')
        self.assertIn('-arch=native', self.nvcc_calls()[0])

        os.remove(self.log)
        self.run_samples(caps='8.0', HEAT_GPU_SAMPLES='vector_add', HEAT_GPU_CUDA_ARCH='sm_90')
        self.assertIn('-arch=sm_90', self.nvcc_calls()[0])

    def test_toolkit_that_dropped_the_arch_fails_with_nvcc_message(self) -> None:
        rc, doc, stderr = self.run_samples(caps='6.0', STUB_NVCC_ARCHS='75 80 90',
                                           STUB_NVCC_RELEASE='13.0')
        self.assertEqual(1, rc)
        for sample in doc['samples']:
            self.assertFalse(sample['passed'])
            self.assertIn("Unsupported gpu architecture 'compute_60'",
                          sample['detail']['message'])
        self.assertEqual('13.0', doc['toolkit']['release'])
        self.assertEqual([], self.program_runs())
        self.assertIn("Unsupported gpu architecture 'compute_60'", stderr)

    def test_compile_error_of_one_program(self) -> None:
        self.record('gemm', compile_error='gemm.cu(12): fatal error: cublas_v2.h: No such file')
        rc, doc, _ = self.run_samples()
        self.assertEqual(1, rc)
        gemm, = self.by(doc, 'gemm')
        self.assertFalse(gemm['passed'])
        self.assertIsNone(gemm['gpu_index'])
        self.assertIn('compilation failed: gemm.cu(12): fatal error: cublas_v2.h',
                      gemm['detail']['message'])
        self.assertTrue(all(s['passed'] for s in doc['samples'] if s['name'] != 'gemm'))

    def test_crashing_program_without_json(self) -> None:
        os.remove(os.path.join(self.outputs, 'bandwidth.json'))
        self.record('bandwidth', rc=139, stderr='Segmentation fault')
        rc, doc, _ = self.run_samples(HEAT_GPU_SAMPLES='bandwidth')
        self.assertEqual(1, rc)
        sample, = doc['samples']
        self.assertFalse(sample['passed'])
        self.assertIn('no JSON result (exit status 139); stderr: Segmentation fault',
                      sample['detail']['message'])

    def test_program_level_error_is_reported(self) -> None:
        self.record('device_query', {
            'program': 'device_query', 'cuda_driver_version': 0,
            'cuda_runtime_version': 12040, 'nvml': False,
            'error': 'cudaErrorInsufficientDriver: CUDA driver version is insufficient',
            'results': []}, rc=1)
        rc, doc, _ = self.run_samples(HEAT_GPU_SAMPLES='device_query')
        self.assertEqual(1, rc)
        self.assertEqual([], doc['gpus'])
        sample, = doc['samples']
        self.assertIn('cudaErrorInsufficientDriver', sample['detail']['message'])

    def test_nvcc_missing(self) -> None:
        rc, doc, _ = self.run_samples(nvcc=False, HEAT_GPU_SAMPLES='vector_add',
                                      PATH='/usr/bin:/bin')
        self.assertEqual(1, rc)
        sample, = doc['samples']
        self.assertIn('nvcc not found', sample['detail']['message'])

    def test_invalid_inputs_exit_2_with_error_document(self) -> None:
        rc, doc, stderr = self.run_samples(HEAT_GPU_SAMPLES='vector_add,matmul')
        self.assertEqual(2, rc)
        self.assertEqual([], doc['samples'])
        self.assertIn('samples has unknown name(s) matmul; accepted: device_query, '
                      'vector_add, bandwidth, gemm, p2p', doc['error'])
        rc, doc, _ = self.run_samples(HEAT_GPU_MIN_RATIO='1.5')
        self.assertEqual(2, rc)
        self.assertIn("min_ratio is 1.5; accepted: a number from 0.0 to 1.0", doc['error'])
        rc, doc, _ = self.run_samples(HEAT_GPU_THRESHOLDS='{"gemm.tflops": 0.5}')
        self.assertEqual(2, rc)
        self.assertIn("thresholds has unknown key 'gemm.tflops'; accepted:", doc['error'])
        self.assertIn('gemm.sgemm_throughput', doc['error'])

    def test_two_gpus_p2p_and_sysfs_link_fallback(self) -> None:
        self.use_machine('a100x2')
        for bus, speed in (('0000:00:06.0', '16.0 GT/s PCIe'), ('0000:00:07.0', '8.0 GT/s PCIe')):
            sysdir = os.path.join(self.root, 'sys', 'bus', 'pci', 'devices', bus)
            os.makedirs(sysdir)
            for name, value in (('current_link_speed', speed), ('max_link_speed', speed),
                                ('current_link_width', '16'), ('max_link_width', '16')):
                with open(os.path.join(sysdir, name), 'w', encoding='ascii') as stream:
                    stream.write(value + '\n')
        env = results.runner_inputs(gpus=[{'index': 0, 'name': 'NVIDIA A100-PCIE-40GB'},
                                          {'index': 1, 'pci_id': '10de:20f1'}])
        rc, doc, _ = self.run_samples(caps='8.0 8.0', **env)
        self.assertEqual(0, rc, doc)
        self.assertEqual([(4, 16, 'sysfs'), (3, 16, 'sysfs')],
                         [(g['pcie_link_gen_max'], g['pcie_link_width'], g['pcie_source'])
                          for g in doc['gpus']])
        self.assertEqual([(0, 1), (1, 0)],
                         [(s['gpu_index'], s['detail']['peer_index'])
                          for s in self.by(doc, 'p2p')])
        self.assertEqual([0, 1], [s['gpu_index'] for s in self.by(doc, 'gemm')])
        self.assertEqual('Gen3 x16', self.by(doc, 'device_query')[1]['detail']['pcie'])

    def test_rebuild_only_when_source_or_flags_change(self) -> None:
        work = os.path.join(self.tmp, 'work')
        self.run_samples(HEAT_GPU_SAMPLES='vector_add', HEAT_GPU_WORK_DIR=work)
        self.assertEqual(2, len(self.nvcc_calls()))
        self.run_samples(HEAT_GPU_SAMPLES='vector_add', HEAT_GPU_WORK_DIR=work)
        self.assertEqual(2, len(self.nvcc_calls()))
        self.run_samples(caps='7.0', HEAT_GPU_SAMPLES='vector_add', HEAT_GPU_WORK_DIR=work)
        self.assertEqual(4, len(self.nvcc_calls()))
        self.assertEqual(['device_query', 'vector_add'] * 3, self.program_runs())
        # The header the programs include is part of their source: a change rebuilds them.
        # HEAT_GPU_SAMPLES_DIR is a guest path: the script finds it under HEAT_GPU_ROOT.
        src = os.path.join(self.root, 'opt', 'src')
        shutil.copytree(results.SAMPLES_DIR, src)
        self.run_samples(caps='7.0', HEAT_GPU_SAMPLES='vector_add', HEAT_GPU_WORK_DIR=work,
                         HEAT_GPU_SAMPLES_DIR='/opt/src')
        self.assertEqual(4, len(self.nvcc_calls()))
        with open(os.path.join(src, results.SAMPLE_HEADER), 'a', encoding='utf-8') as stream:
            stream.write('// changed\n')
        self.run_samples(caps='7.0', HEAT_GPU_SAMPLES='vector_add', HEAT_GPU_WORK_DIR=work,
                         HEAT_GPU_SAMPLES_DIR='/opt/src')
        self.assertEqual(6, len(self.nvcc_calls()))

    def test_work_dir_defaults_under_root(self) -> None:
        self.run_samples(HEAT_GPU_SAMPLES='vector_add')
        work = os.path.join(self.root, 'var', 'lib', 'heat-gpu', 'samples')
        self.assertTrue(os.access(os.path.join(work, 'bin', 'vector_add'), os.X_OK))
        with open(os.path.join(work, 'inputs.json'), encoding='utf-8') as stream:
            self.assertEqual(['vector_add'], json.load(stream)['samples'])

    def test_deployed_script_runs_like_the_agent_runs_it(self) -> None:
        # The SampleJob deploys results.runner_script() with results.runner_inputs() as inputs;
        # the agent writes the config to a file and runs it with the inputs in its environment.
        script = os.path.join(self.tmp, 'config')
        with open(script, 'w', encoding='utf-8') as stream:
            stream.write(results.runner_script())
        os.chmod(script, 0o700)
        env = results.runner_inputs(gpus=[{'index': 0, 'pci_id': '10de:15f8'}], rerun='2')
        rc, doc, _ = self.run_samples(script=script, **env)

        self.assertEqual(0, rc)
        src = os.path.join(self.root, 'var', 'lib', 'heat-gpu', 'samples', 'src')
        for filename in results.SAMPLE_SOURCES:
            with open(os.path.join(src, filename), encoding='utf-8') as copy, \
                    open(os.path.join(results.SAMPLES_DIR, filename),
                         encoding='utf-8') as original:
                self.assertEqual(original.read(), copy.read())
        self.assertEqual(5, len(self.nvcc_calls()))
        self.assertEqual(sorted(os.path.join(src, n + '.cu') for n in results.SAMPLES),
                         sorted(a for c in self.nvcc_calls() for a in c if a.endswith('.cu')))
        # Every program finds the header it includes in the sources directory.
        for call in self.nvcc_calls():
            self.assertEqual(src, call[call.index('-I') + 1], call)
        report = results.evaluate(json.dumps(doc))
        self.assertTrue(report.passed)
        self.assertEqual(doc['samples'], report.results)


class RecordedOutputFormatTest(testtools.TestCase):
    """The recorded outputs the stub nvcc replays have exactly the keys the .cu programs print."""

    def test_recorded_outputs_match_the_printf_formats(self) -> None:
        machines = sorted(os.listdir(os.path.join(FIXTURES, 'samples')))
        self.assertEqual(['a100x2', 'p100x1'], machines)
        for name in results.SAMPLES:
            formats = format_keys(program_source(name))
            entry_formats = [keys for keys in formats if 'gpu_index' in keys]
            doc_formats = [keys for keys in formats if 'results' in keys]
            self.assertEqual(1, len(entry_formats), name)
            self.assertTrue(doc_formats, name)
            seen = set()
            for machine in machines:
                path = os.path.join(FIXTURES, 'samples', machine, name + '.json')
                with open(path, encoding='utf-8') as stream:
                    text = stream.read()
                self.assertEqual(1, len(text.strip().splitlines()), path)
                doc = json.loads(text)
                self.assertIn(set(doc), doc_formats, path)
                self.assertEqual(name, doc['program'], path)
                seen |= set(doc)
                for entry in doc['results']:
                    self.assertEqual(entry_formats[0], set(entry), path)
                    seen |= set(entry)
            every_key = set().union(*formats)
            # p2p's failure document ("status": "error") has no recording; all its keys are
            # shared with the others.
            self.assertEqual(every_key, seen, name)
