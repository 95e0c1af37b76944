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

"""heat_gpu.results: parsing the runner's document, thresholds, catalog figures, summary."""

import copy
import json
import os
import shutil
import subprocess
import sys
from typing import Optional

import testscenarios
import testtools

from heat_gpu import catalog
from heat_gpu import exception
from heat_gpu import results

load_tests = testscenarios.load_tests_apply_scenarios


def sample(name: str, metric: str, unit: str, measured: Optional[float], *, gpu: Optional[int] = 0,
           correct: bool = True, **detail) -> dict:
    """One result as run-samples.sh writes it when it was given no expected figure."""
    return {'name': name, 'gpu_index': gpu, 'passed': correct, 'metric': metric, 'unit': unit,
            'measured': measured, 'expected': None, 'ratio': None,
            'detail': dict(correct=correct, message='ok' if correct else 'wrong result',
                           **detail)}


def gpu(index: int, name: str, memory_mib: int) -> dict:
    return {'index': index, 'name': name, 'pci_address': '0000:00:%02x.0' % (5 + index),
            'memory_mib': memory_mib, 'uuid': 'GPU-%d' % index}


def machine(name: str, memory_mib: int, figures: list[tuple[float, float, float, float]]) -> dict:
    """A runner document for len(figures) GPUs of one model: (h2d, d2h, d2d, sgemm) each."""
    samples, gpus = [], []
    for i, (h2d, d2h, d2d, tflops) in enumerate(figures):
        gpus.append(gpu(i, name, memory_mib))
        samples += [
            sample('device_query', 'memory_mib', 'MiB', memory_mib, gpu=i),
            sample('vector_add', 'max_abs_error', '', 0, gpu=i, mismatches=0),
            sample('bandwidth', 'h2d_bandwidth', 'GB/s', h2d, gpu=i),
            sample('bandwidth', 'd2h_bandwidth', 'GB/s', d2h, gpu=i),
            sample('bandwidth', 'd2d_bandwidth', 'GB/s', d2d, gpu=i),
            sample('gemm', 'sgemm_throughput', 'TFLOPS', tflops, gpu=i),
        ]
    if len(figures) == 1:
        samples.append(sample('p2p', 'p2p_bandwidth', 'GB/s', None, gpu=None, skipped=True))
    else:
        samples += [sample('p2p', 'p2p_bandwidth', 'GB/s', 20.8, gpu=0, peer_index=1),
                    sample('p2p', 'p2p_bandwidth', 'GB/s', 20.9, gpu=1, peer_index=0)]
    return {'samples': samples, 'gpus': gpus, 'passed': True}


P100 = machine('Tesla P100-PCIE-16GB', 16276, [(11.74, 12.61, 551.32, 8.636)])
A100X2 = machine('NVIDIA A100-PCIE-40GB', 40326,
                 [(24.12, 26.20, 1297.84, 17.801), (24.31, 26.17, 1301.06, 17.845)])


def find(report: results.Report, metric: str, gpu_index: Optional[int] = 0) -> results.SampleResult:
    found = [s for s in report.samples if s.metric == metric and s.gpu_index == gpu_index]
    assert len(found) == 1, found
    return found[0]


class EvaluateTest(testtools.TestCase):

    def test_p100_against_the_catalog(self) -> None:
        report = results.evaluate(json.dumps(P100))
        p100 = catalog.get('P100-PCIE-16GB')

        self.assertTrue(report.passed)
        h2d = find(report, 'h2d_bandwidth')
        self.assertEqual(catalog.expected_h2d_gbps(p100), h2d.expected)
        self.assertEqual(round(11.74 / catalog.expected_h2d_gbps(p100), 3), h2d.ratio)
        self.assertEqual('PCIe Gen3 x16', h2d.detail['basis'])
        self.assertEqual(0.8, h2d.detail['threshold'])
        sgemm = find(report, 'sgemm_throughput')
        self.assertEqual(round(p100.fp32_tflops * results.SGEMM_EFFICIENCY, 2), sgemm.expected)
        self.assertEqual(p100.fp32_tflops, sgemm.detail['peak'])
        d2d = find(report, 'd2d_bandwidth')
        self.assertEqual(round(p100.memory_bandwidth_gbps * results.D2D_EFFICIENCY, 2),
                         d2d.expected)
        memory = find(report, 'memory_mib')
        self.assertEqual(p100.memory_mib, memory.expected)
        self.assertEqual(round(16276 / 16384, 3), memory.ratio)
        self.assertIsNone(find(report, 'max_abs_error').ratio)
        self.assertIsNone(find(report, 'p2p_bandwidth', None).ratio)
        self.assertEqual('4/4 passed (p2p skipped); H2D 11.7 GB/s = 99% of expected for PCIe '
                         'Gen3 x16; SGEMM 8.6 TFLOPS = 93% of P100-PCIE-16GB peak',
                         report.summary)
        self.assertEqual(report.results, report.as_dict()['samples'])
        self.assertEqual(set(results._SAMPLE_KEYS), set(report.results[0]))

    def test_two_a100_summary(self) -> None:
        report = results.evaluate(json.dumps(A100X2))
        self.assertTrue(report.passed)
        self.assertEqual('5/5 passed on 2 GPUs; H2D 24.1 GB/s (lowest, GPU0) = 102% of expected '
                         'for PCIe Gen4 x16; SGEMM 17.8 TFLOPS (lowest, GPU0) = 91% of '
                         'A100-PCIE-40GB peak', report.summary)
        self.assertEqual([0, 1], [s.gpu_index for s in report.samples
                                  if s.metric == 'p2p_bandwidth'])

    def test_fewer_gpus_than_the_instance_was_given_fails(self) -> None:
        self.assertTrue(results.evaluate(json.dumps(P100), expected_gpus=1).passed)
        report = results.evaluate(json.dumps(P100), expected_gpus=2)
        self.assertFalse(report.passed)
        missing = find(report, 'gpu_count', None)
        self.assertEqual(('device_query', 1, 2), (missing.name, missing.measured,
                                                  missing.expected))
        self.assertIn('FAILED: device_query GPUs: 1 of 2 GPUs visible to CUDA', report.summary)

    def test_slow_link_fails_min_ratio_and_thresholds_override(self) -> None:
        doc = copy.deepcopy(P100)
        doc['samples'][2]['measured'] = 7.1
        report = results.evaluate(doc, min_ratio=0.8)
        self.assertFalse(report.passed)
        self.assertEqual(['h2d_bandwidth'], [s.metric for s in report.failures()])
        self.assertTrue(report.summary.startswith(
            '3/4 passed (p2p skipped); FAILED: bandwidth GPU0 H2D 7.1 GB/s = 60% of expected '
            '(< 80%); H2D 7.1 GB/s = 60% of expected for PCIe Gen3 x16'), report.summary)
        self.assertEqual('bandwidth GPU0 H2D 7.1 GB/s = 60% of expected (< 80%)',
                         results.failure_reason(report))

        self.assertTrue(results.evaluate(doc, thresholds={'bandwidth': 0.6}).passed)
        self.assertFalse(results.evaluate(doc, thresholds={'bandwidth': 0.61}).passed)
        specific = results.evaluate(doc, min_ratio=0.95,
                                    thresholds={'bandwidth': 0.99,
                                                'bandwidth.h2d_bandwidth': 0.5})
        self.assertEqual({'h2d_bandwidth': 0.5, 'd2h_bandwidth': 0.99, 'd2d_bandwidth': 0.99,
                          'sgemm_throughput': 0.95, 'memory_mib': 0.95},
                         {s.metric: s.detail['threshold'] for s in specific.samples
                          if 'threshold' in s.detail})
        self.assertTrue(specific.passed)
        strict = results.evaluate(doc, min_ratio=0.5, thresholds={'device_query': 1.0})
        self.assertEqual(['memory_mib'], [s.metric for s in strict.failures()])
        self.assertTrue(results.evaluate(doc, min_ratio=0).passed)

    def test_incorrect_result_fails_whatever_the_ratio(self) -> None:
        doc = copy.deepcopy(P100)
        gemm = doc['samples'][5]
        gemm['detail'].update(correct=False, message='max_rel_error 0.3 above 1e-4')
        report = results.evaluate(doc, min_ratio=0)
        self.assertFalse(report.passed)
        self.assertEqual('gemm GPU0 SGEMM: max_rel_error 0.3 above 1e-4',
                         results.failure_reason(report))
        self.assertNotIn('SGEMM 8.6', report.summary)

    def test_gpu_unknown_to_the_catalog_is_judged_on_correctness(self) -> None:
        doc = copy.deepcopy(P100)
        doc['gpus'][0]['name'] = 'NVIDIA Example Accelerator'
        report = results.evaluate(doc)
        self.assertTrue(report.passed)
        self.assertEqual([None] * len(report.samples), [s.ratio for s in report.samples])
        self.assertEqual('4/4 passed (p2p skipped); H2D 11.7 GB/s; SGEMM 8.6 TFLOPS',
                         report.summary)

    def test_runner_figures_used_when_catalog_has_none(self) -> None:
        doc = copy.deepcopy(P100)
        doc['gpus'][0]['name'] = 'NVIDIA Example Accelerator'
        doc['samples'][2].update(expected=20.0, ratio=0.587, passed=False)
        report = results.evaluate(doc)
        self.assertEqual((20.0, 0.587, False), (find(report, 'h2d_bandwidth').expected,
                                                find(report, 'h2d_bandwidth').ratio,
                                                find(report, 'h2d_bandwidth').passed))

    def test_caller_figures_win(self) -> None:
        report = results.evaluate(P100, expected={'*': {'h2d_bandwidth': 10.0},
                                                  '0': {'sgemm_throughput': {'value': 10.0,
                                                                             'basis': 'x'}}})
        self.assertEqual(1.174, find(report, 'h2d_bandwidth').ratio)
        self.assertEqual(0.864, find(report, 'sgemm_throughput').ratio)
        self.assertEqual('x', find(report, 'sgemm_throughput').detail['basis'])

    def test_vgpu_memory_is_not_compared(self) -> None:
        doc = copy.deepcopy(P100)
        doc['samples'][0]['measured'] = 3840  # a 4 GB vGPU profile
        self.assertFalse(results.evaluate(doc).passed)
        report = results.evaluate(doc, vgpu=True)
        self.assertTrue(report.passed)
        self.assertIsNone(find(report, 'memory_mib').expected)

    def test_failed_program_without_gpu(self) -> None:
        doc = {'samples': [sample('gemm', 'sgemm_throughput', 'TFLOPS', None, gpu=None,
                                  correct=False)], 'gpus': []}
        doc['samples'][0]['detail']['message'] = 'compilation failed: ' + 'x' * 200
        report = results.evaluate(doc)
        self.assertFalse(report.passed)
        self.assertEqual('0/1 passed; FAILED: gemm SGEMM: compilation failed: ' + 'x' * 77
                         + '...', report.summary)

    def test_many_failures_are_counted(self) -> None:
        doc = copy.deepcopy(A100X2)
        for s in doc['samples']:
            if s['name'] == 'bandwidth':
                s['measured'] = 1.0
        report = results.evaluate(doc)
        self.assertEqual(6, len(report.failures()))
        self.assertIn('(+4 more)', report.summary)
        self.assertEqual(6, results.failure_reason(report).count('GB/s = '))


class ParseErrorTest(testtools.TestCase):

    def _sample_with(self, **changes) -> dict:
        doc = copy.deepcopy(P100)
        doc['samples'][2].update(changes)
        return doc

    scenarios = [
        ('empty', dict(output='', field='the output', accepted='see deploy_stderr')),
        ('not json', dict(output='nvcc fatal: oops', field='the output',
                          accepted='one JSON document')),
        ('list', dict(output='[]', field='the output', accepted='"samples" and "gpus"')),
        ('no samples', dict(output='{"gpus": []}', field='"samples"', accepted='a list')),
        ('runner error', dict(output='{"samples": [], "error": "samples has unknown name(s) x"}',
                              field='"gpus"', accepted='the runner said: samples has unknown')),
        ('gpus not list', dict(output='{"samples": [], "gpus": {}}', field='"gpus"',
                               accepted='a list')),
        ('gpu without index', dict(output='{"samples": [], "gpus": [{"name": "x"}]}',
                                   field='gpus[0]', accepted='an integer "index"')),
        ('missing keys', dict(output={'samples': [{'name': 'gemm'}], 'gpus': []},
                              field='samples[0] (missing gpu_index, passed, metric, unit, '
                                    'measured, expected, ratio, detail)',
                              accepted='the keys name, gpu_index')),
        ('unknown sample', dict(output={'samples': [dict(sample('gemm', 'sgemm_throughput', '',
                                                                1.0), name='matmul')],
                                        'gpus': []},
                                field='samples[0].name',
                                accepted='device_query, vector_add, bandwidth, gemm, p2p')),
        ('wrong metric', dict(output={'samples': [sample('gemm', 'tflops', '', 1.0)],
                                      'gpus': []},
                              field='samples[0].metric', accepted='for gemm: sgemm_throughput')),
        ('measured text', dict(output=lambda self: self._sample_with(measured='11.7'),
                               field='samples[2].measured', accepted='a number or null')),
        ('nan', dict(output=lambda self: self._sample_with(ratio=float('nan')),
                     field='samples[2].ratio', accepted='a number or null')),
        ('zero expected', dict(output=lambda self: self._sample_with(expected=0),
                               field='samples[2].expected', accepted='a positive number')),
        ('passed text', dict(output=lambda self: self._sample_with(passed='yes'),
                             field='samples[2].passed', accepted='true or false')),
        ('bad gpu index', dict(output=lambda self: self._sample_with(gpu_index=-1),
                               field='samples[2].gpu_index', accepted='a GPU index')),
        ('detail text', dict(output=lambda self: self._sample_with(detail='fine'),
                             field='samples[2].detail', accepted='"correct" and "message"')),
        ('detail without correct', dict(output=lambda self: self._sample_with(detail={}),
                                        field='samples[2].detail.correct',
                                        accepted='true or false')),
    ]

    def test_error_names_field_and_accepted(self) -> None:
        output = self.output(self) if callable(self.output) else self.output
        error = self.assertRaises(exception.InvalidSampleOutput, results.parse, output)
        self.assertEqual(self.field, error.field)
        self.assertIn(self.accepted, error.accepted)
        self.assertIn('Sample runner output is malformed: %s is ' % self.field, str(error))
        self.assertIsInstance(error, exception.HeatGpuError)
        # evaluate() reports the same error.
        self.assertRaises(exception.InvalidSampleOutput, results.evaluate, output)


class ParseTest(testtools.TestCase):

    def test_text_bytes_and_mapping_give_the_same_document(self) -> None:
        text = json.dumps(P100)
        self.assertEqual(results.parse(text), results.parse(text.encode('utf-8')))
        self.assertEqual(results.parse(text), results.parse(P100))
        self.assertEqual(P100['samples'], results.parse('\n%s\n' % text)['samples'])

    def test_long_bad_value_is_shortened(self) -> None:
        error = self.assertRaises(exception.InvalidSampleOutput, results.parse, 'x' * 1000)
        self.assertEqual(120, len(error.value))
        self.assertTrue(error.value.endswith('...'))


class ThresholdsTest(testtools.TestCase):

    def test_validate(self) -> None:
        self.assertEqual((0.8, {'gemm': 0.5, 'bandwidth.d2d_bandwidth': 1.0}),
                         results.validate_thresholds(
                             min_ratio=0.8, thresholds={'gemm': 0.5,
                                                        'bandwidth.d2d_bandwidth': 1}))
        error = self.assertRaises(exception.InvalidGpuRequest, results.validate_thresholds,
                                  min_ratio=1.2)
        self.assertEqual("Invalid value 1.2 for min_ratio: a number from 0.0 to 1.0.",
                         str(error))
        error = self.assertRaises(exception.InvalidGpuRequest, results.validate_thresholds,
                                  thresholds={'gemm.tflops': 0.5})
        self.assertEqual('thresholds', error.prop)
        self.assertEqual('gemm.tflops', error.value)
        self.assertIn('gemm.sgemm_throughput', error.accepted)
        error = self.assertRaises(exception.InvalidGpuRequest, results.validate_thresholds,
                                  thresholds={'gemm': True})
        self.assertEqual('thresholds.gemm', error.prop)

    def test_most_specific_wins(self) -> None:
        t = {'bandwidth': 0.6, 'bandwidth.d2d_bandwidth': 0.4}
        self.assertEqual(0.4, results.threshold_for('bandwidth', 'd2d_bandwidth',
                                                    min_ratio=0.8, thresholds=t))
        self.assertEqual(0.6, results.threshold_for('bandwidth', 'h2d_bandwidth',
                                                    min_ratio=0.8, thresholds=t))
        self.assertEqual(0.8, results.threshold_for('gemm', 'sgemm_throughput',
                                                    min_ratio=0.8, thresholds=t))


class RunnerInputsTest(testtools.TestCase):

    def test_environment_values_are_strings(self) -> None:
        env = results.runner_inputs(samples=['gemm', 'bandwidth'], min_ratio=0.7,
                                    thresholds={'gemm': 0.5}, gpu_model='a100', rerun=None)
        self.assertEqual({'HEAT_GPU_SAMPLES', 'HEAT_GPU_MIN_RATIO', 'HEAT_GPU_THRESHOLDS',
                          'HEAT_GPU_EXPECTED', 'HEAT_GPU_RERUN'}, set(env))
        self.assertTrue(all(isinstance(v, str) for v in env.values()))
        self.assertEqual('bandwidth gemm', env['HEAT_GPU_SAMPLES'])
        self.assertEqual(0.7, float(env['HEAT_GPU_MIN_RATIO']))
        self.assertEqual({'gemm': 0.5}, json.loads(env['HEAT_GPU_THRESHOLDS']))
        expected = json.loads(env['HEAT_GPU_EXPECTED'])
        self.assertEqual(['*'], list(expected))
        self.assertEqual(results.expected_figures('A100-PCIE-40GB'), expected['*'])
        self.assertEqual(catalog.expected_h2d_gbps('a100'),
                         expected['*']['h2d_bandwidth']['value'])

    def test_per_gpu_figures_and_vgpu(self) -> None:
        env = results.runner_inputs(gpus=[{'index': 0, 'name': 'Tesla T4'},
                                          {'index': 1, 'pci_id': '10de:15f8'},
                                          {'index': 2, 'name': 'unknown'}], vgpu=True)
        expected = json.loads(env['HEAT_GPU_EXPECTED'])
        self.assertEqual(['0', '1'], sorted(expected))
        self.assertNotIn('memory_mib', expected['0'])
        self.assertEqual(round(8.1 * results.SGEMM_EFFICIENCY_BY_CC['7.5'], 2),
                         expected['0']['sgemm_throughput']['value'])
        self.assertEqual('P100-PCIE-16GB', expected['1']['d2d_bandwidth']['basis'])
        self.assertEqual(results.SAMPLES, tuple(env['HEAT_GPU_SAMPLES'].split()))

    def test_rejects_unknown_sample(self) -> None:
        error = self.assertRaises(exception.InvalidGpuRequest, results.runner_inputs,
                                  samples=['gemm', 'nbody'])
        self.assertEqual(('samples', 'nbody'), (error.prop, error.value))
        self.assertEqual('device_query, vector_add, bandwidth, gemm, p2p', error.accepted)

    def test_unknown_model_is_an_error(self) -> None:
        self.assertRaises(exception.UnknownGpuModel, results.runner_inputs, gpu_model='Z9000')


class RunnerScriptTest(testtools.TestCase):

    def test_carries_every_source_and_passes_shellcheck(self) -> None:
        script = results.runner_script()
        self.assertEqual(len(results.SAMPLES) + 1, len(results.SAMPLE_SOURCES))
        for filename in results.SAMPLE_SOURCES:
            with open(os.path.join(results.SAMPLES_DIR, filename), encoding='utf-8') as f:
                self.assertIn(f.read().rstrip('\n'), script)
            self.assertIn('cat > "$src/%s" <<' % filename, script)
        self.assertTrue(script.startswith('#!/bin/bash\n'))
        shellcheck = (shutil.which('shellcheck')
                      or os.path.join(os.path.dirname(sys.executable), 'shellcheck'))
        proc = subprocess.run([shellcheck, '-'], input=script, capture_output=True, text=True,
                              timeout=120, check=False)
        self.assertEqual(0, proc.returncode, proc.stdout)
