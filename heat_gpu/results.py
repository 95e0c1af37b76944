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

"""Results of the GPU sample programs: parse, judge against thresholds, summarize.

Plain Python, no Heat import. The guest runs ``heat_gpu/samples/run-samples.sh``, which prints one
JSON document ``{"samples": [...], "gpus": [...]}``. :func:`parse` checks that document strictly,
:func:`evaluate` fills in the expected figures from the catalog (by the GPU names the runner
reports), applies ``min_ratio`` and the per-sample thresholds and writes the one-line summary.
:func:`runner_inputs` builds the inputs the runner reads, so the guest applies the same rules for
its exit status.

Expected figures (what a healthy GPU of the model reaches, see ``doc/architecture.md``):

* ``h2d_bandwidth`` / ``d2h_bandwidth``: :func:`heat_gpu.catalog.expected_h2d_gbps` (the model's
  PCIe link at the catalog's practical efficiency).
* ``d2d_bandwidth``: the datasheet memory bandwidth times ``D2D_EFFICIENCY``.
* ``sgemm_throughput``: the datasheet FP32 peak times the SGEMM efficiency of the architecture.
* ``memory_mib``: the nominal memory (PCI passthrough only; a vGPU sees its profile's share).
* ``max_abs_error`` and ``p2p_bandwidth`` have no expected figure: they pass on correctness.
"""

import dataclasses
import json
import math
import os
from typing import Any, Iterable, Mapping, Optional, Union

from heat_gpu import catalog
from heat_gpu import exception

SAMPLES = ('device_query', 'vector_add', 'bandwidth', 'gemm', 'p2p')
SAMPLE_NAMES = SAMPLES

#: The CUDA sources and the runner script, shipped as package data.
SAMPLES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'samples')
#: The header every sample program includes (``#include "sample_common.cuh"``).
SAMPLE_HEADER = 'sample_common.cuh'
#: The files in SAMPLES_DIR the runner compiles: one source per sample and the shared header.
SAMPLE_SOURCES = tuple(name + '.cu' for name in SAMPLES) + (SAMPLE_HEADER,)
_HEREDOC_END = 'HEAT_GPU_SAMPLE_EOF'

#: sample -> its metrics and their units, in the order the runner reports them.
METRICS = {
    'device_query': (('memory_mib', 'MiB'),),
    'vector_add': (('max_abs_error', ''),),
    'bandwidth': (('h2d_bandwidth', 'GB/s'), ('d2h_bandwidth', 'GB/s'),
                  ('d2d_bandwidth', 'GB/s')),
    'gemm': (('sgemm_throughput', 'TFLOPS'),),
    'p2p': (('p2p_bandwidth', 'GB/s'),),
}

DEFAULT_MIN_RATIO = 0.8

#: A device-to-device cudaMemcpy (counted as read plus write, as bandwidth.cu does) reaches about
#: three quarters of the datasheet peak on HBM2 Pascal and more on later parts; a GPU below
#: ``min_ratio`` of this figure has a memory problem (clocks, ECC retirement, a bad profile).
D2D_EFFICIENCY = 0.75

#: Share of the datasheet FP32 peak a large cuBLAS SGEMM sustains. GA10x/AD10x parts (compute
#: capability 8.6 and 8.9) count a second FP32 datapath in their peak that SGEMM keeps only partly
#: busy, and the 70 W T4 (7.5) holds its clocks under boost at full load.
SGEMM_EFFICIENCY = 0.8
SGEMM_EFFICIENCY_BY_CC = {'7.5': 0.5, '8.6': 0.5, '8.9': 0.5}

_SAMPLE_KEYS = ('name', 'gpu_index', 'passed', 'metric', 'unit', 'measured', 'expected',
                'ratio', 'detail')

_SHORT = {'h2d_bandwidth': 'H2D', 'd2h_bandwidth': 'D2H', 'd2d_bandwidth': 'D2D',
          'sgemm_throughput': 'SGEMM', 'memory_mib': 'memory', 'max_abs_error': 'max error',
          'p2p_bandwidth': 'P2P', 'gpu_count': 'GPUs'}


@dataclasses.dataclass(frozen=True)
class SampleResult:
    """One measurement of one sample program on one GPU (``gpu_index`` None: not tied to one)."""

    name: str
    gpu_index: Optional[int]
    passed: bool
    metric: str
    unit: str
    measured: Optional[float]
    expected: Optional[float]
    ratio: Optional[float]
    detail: dict

    @property
    def skipped(self) -> bool:
        return bool(self.detail.get('skipped'))

    def as_dict(self) -> dict:
        return {key: getattr(self, key) for key in _SAMPLE_KEYS}


@dataclasses.dataclass(frozen=True)
class Report:
    """The judged outcome of one run of the sample programs."""

    samples: tuple[SampleResult, ...]
    gpus: tuple[dict, ...]
    passed: bool
    summary: str

    @property
    def results(self) -> list[dict]:
        return [s.as_dict() for s in self.samples]

    def failures(self) -> list[SampleResult]:
        return [s for s in self.samples if not s.passed]

    def as_dict(self) -> dict:
        return {'samples': self.results, 'gpus': [dict(g) for g in self.gpus],
                'passed': self.passed, 'summary': self.summary}


# Parsing.

def _bad(field: str, value: Any, accepted: str) -> exception.InvalidSampleOutput:
    return exception.InvalidSampleOutput(field=field, value=value, accepted=accepted)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _check_sample(index: int, entry: Any) -> dict:
    where = 'samples[%d]' % index
    if not isinstance(entry, dict):
        raise _bad(where, entry, 'an object with the keys %s' % ', '.join(_SAMPLE_KEYS))
    missing = [k for k in _SAMPLE_KEYS if k not in entry]
    if missing:
        raise _bad('%s (missing %s)' % (where, ', '.join(missing)), entry,
                   'an object with the keys %s' % ', '.join(_SAMPLE_KEYS))
    if entry['name'] not in SAMPLES:
        raise _bad(where + '.name', entry['name'], ', '.join(SAMPLES))
    metrics = dict(METRICS[entry['name']])
    if entry['metric'] not in metrics:
        raise _bad(where + '.metric', entry['metric'],
                   'for %s: %s' % (entry['name'], ', '.join(metrics)))
    if not isinstance(entry['unit'], str):
        raise _bad(where + '.unit', entry['unit'], 'a string')
    gpu_index = entry['gpu_index']
    if gpu_index is not None and (not isinstance(gpu_index, int) or isinstance(gpu_index, bool)
                                  or gpu_index < 0):
        raise _bad(where + '.gpu_index', gpu_index, 'a GPU index (0, 1, ...) or null')
    if not isinstance(entry['passed'], bool):
        raise _bad(where + '.passed', entry['passed'], 'true or false')
    for key in ('measured', 'expected', 'ratio'):
        if entry[key] is not None and not _is_number(entry[key]):
            raise _bad('%s.%s' % (where, key), entry[key], 'a number or null')
    if entry['expected'] is not None and entry['expected'] <= 0:
        raise _bad(where + '.expected', entry['expected'], 'a positive number or null')
    detail = entry['detail']
    if not isinstance(detail, dict):
        raise _bad(where + '.detail', detail, 'an object with "correct" and "message"')
    if not isinstance(detail.get('correct'), bool):
        raise _bad(where + '.detail.correct', detail.get('correct'), 'true or false')
    return entry


def parse(output: Union[str, bytes, Mapping]) -> dict:
    """Return the runner's document after checking every part of it.

    *output* is the runner's stdout (text or bytes) or the already decoded document. Raises
    :class:`heat_gpu.exception.InvalidSampleOutput` naming the first part that is missing or wrong.
    """
    if isinstance(output, bytes):
        output = output.decode('utf-8', errors='replace')
    if isinstance(output, str):
        text = output.strip()
        if not text:
            raise _bad('the output', output, 'one JSON document {"samples": [...], "gpus": [...]}'
                       ' (the runner printed nothing: see deploy_stderr)')
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise _bad('the output', text, 'one JSON document (%s)' % exc) from None
    else:
        doc = output
    if not isinstance(doc, Mapping):
        raise _bad('the output', doc, 'a JSON object with "samples" and "gpus"')
    doc = dict(doc)
    for key in ('samples', 'gpus'):
        if key not in doc:
            extra = ' (the runner said: %s)' % doc['error'] if doc.get('error') else ''
            raise _bad('"%s"' % key, 'missing', 'a list%s' % extra)
        if not isinstance(doc[key], list):
            raise _bad('"%s"' % key, doc[key], 'a list')
    for index, gpu in enumerate(doc['gpus']):
        if not isinstance(gpu, dict) or not isinstance(gpu.get('index'), int):
            raise _bad('gpus[%d]' % index, gpu, 'an object with an integer "index"')
    doc['samples'] = [_check_sample(i, s) for i, s in enumerate(doc['samples'])]
    if not doc['samples'] and doc.get('error'):
        raise _bad('"samples"', [], 'at least one result (the runner said: %s)' % doc['error'])
    return doc


# Expected figures and thresholds.

def _figure(value: float, basis: str, **extra: Any) -> dict:
    return dict(value=round(value, 2), basis=basis, **extra)


def expected_figures(model: Union[str, catalog.GpuModel], *, include_memory: bool = True) -> dict:
    """Return ``{metric: {"value", "basis", ...}}`` a healthy *model* reaches.

    *include_memory* False leaves out ``memory_mib`` (a vGPU sees only its profile's memory).
    """
    gpu = catalog.get(model)
    link = 'PCIe Gen%d x%d' % (gpu.pcie_gen, gpu.pcie_lanes)
    h2d = catalog.expected_h2d_gbps(gpu)
    sgemm_eff = SGEMM_EFFICIENCY_BY_CC.get(gpu.compute_capability, SGEMM_EFFICIENCY)
    figures = {
        'h2d_bandwidth': _figure(h2d, link),
        'd2h_bandwidth': _figure(h2d, link),
        'd2d_bandwidth': _figure(gpu.memory_bandwidth_gbps * D2D_EFFICIENCY, gpu.key,
                                 peak=float(gpu.memory_bandwidth_gbps)),
        'sgemm_throughput': _figure(gpu.fp32_tflops * sgemm_eff, gpu.key,
                                    peak=float(gpu.fp32_tflops)),
    }
    if include_memory:
        figures['memory_mib'] = _figure(gpu.memory_mib, gpu.key)
    return figures


def _model_of(gpu: Mapping) -> Optional[catalog.GpuModel]:
    for key in ('gpu_model', 'pci_id'):
        if gpu.get(key):
            model = catalog.find(str(gpu[key]))
            if model is not None:
                return model
    name = gpu.get('name')
    return catalog.match_name(name) if isinstance(name, str) else None


def validate_thresholds(*, min_ratio: Any = DEFAULT_MIN_RATIO,
                        thresholds: Optional[Mapping] = None) -> tuple[float, dict]:
    """Check ``min_ratio`` and ``thresholds``; return them as floats.

    Threshold keys are a sample name (``bandwidth``) or ``sample.metric``
    (``bandwidth.d2d_bandwidth``); values are ratios from 0.0 to 1.0. Raises
    :class:`heat_gpu.exception.InvalidGpuRequest` naming the property and the bad value.
    """
    def ratio(value: Any, prop: str) -> float:
        if not _is_number(value) or not 0 <= value <= 1:
            raise exception.InvalidGpuRequest(prop=prop, value=value,
                                              accepted='a number from 0.0 to 1.0')
        return float(value)

    accepted_keys = list(SAMPLES) + ['%s.%s' % (s, m) for s in SAMPLES for m, _ in METRICS[s]]
    checked = {}
    for key, value in (thresholds or {}).items():
        if key not in accepted_keys:
            raise exception.InvalidGpuRequest(prop='thresholds', value=key,
                                              accepted=', '.join(accepted_keys))
        checked[key] = ratio(value, 'thresholds.%s' % key)
    return ratio(min_ratio, 'min_ratio'), checked


def threshold_for(name: str, metric: str, *, min_ratio: float,
                  thresholds: Mapping[str, float]) -> float:
    """The ratio a result of *name* / *metric* must reach: the most specific threshold wins."""
    return thresholds.get('%s.%s' % (name, metric), thresholds.get(name, min_ratio))


def runner_inputs(*, samples: Optional[Iterable[str]] = None, min_ratio: float = DEFAULT_MIN_RATIO,
                  thresholds: Optional[Mapping] = None, gpus: Iterable[Mapping] = (),
                  gpu_model: Optional[str] = None, vgpu: bool = False,
                  rerun: Optional[str] = None) -> dict[str, str]:
    """The deployment input values of the sample runner, as ``{variable: text}``.

    The guest agent (and heat-agents' script hook) turns every input into an environment variable
    of the same name, which ``run-samples.sh`` reads: ``HEAT_GPU_SAMPLES``, ``HEAT_GPU_MIN_RATIO``,
    ``HEAT_GPU_THRESHOLDS``, ``HEAT_GPU_EXPECTED`` (and ``HEAT_GPU_RERUN``, which only makes a
    changed ``rerun`` a changed deployment). *gpus* is the instance's ``gpus`` attribute (index,
    name, pci_id): each GPU the catalog knows gets its expected figures, so the guest's exit status
    already reflects them. *gpu_model* (a catalog key, alias or PCI id) applies to every GPU the
    list does not name. *vgpu* leaves out the memory check.
    """
    chosen = list(samples) if samples else list(SAMPLES)
    unknown = [s for s in chosen if s not in SAMPLES]
    if unknown:
        raise exception.InvalidGpuRequest(prop='samples', value=', '.join(unknown),
                                          accepted=', '.join(SAMPLES))
    ratio, checked = validate_thresholds(min_ratio=min_ratio, thresholds=thresholds)
    expected = {}
    if gpu_model:
        expected['*'] = expected_figures(gpu_model, include_memory=not vgpu)
    for position, gpu in enumerate(gpus):
        model = _model_of(gpu)
        if model is not None:
            index = gpu.get('index', position)
            expected[str(index)] = expected_figures(model, include_memory=not vgpu)
    return {
        'HEAT_GPU_SAMPLES': ' '.join(s for s in SAMPLES if s in chosen),
        'HEAT_GPU_MIN_RATIO': repr(ratio),
        'HEAT_GPU_THRESHOLDS': json.dumps(checked, sort_keys=True),
        'HEAT_GPU_EXPECTED': json.dumps(expected, sort_keys=True),
        'HEAT_GPU_RERUN': '' if rerun is None else str(rerun),
    }


def runner_script() -> str:
    """The ``script`` config a SampleJob deploys: the runner and the program sources in one file.

    It writes the sources and their shared header to ``$HEAT_GPU_WORK_DIR/src`` (default
    ``/var/lib/heat-gpu/samples/src`` under ``HEAT_GPU_ROOT``) and runs ``run-samples.sh`` from
    there, so the guest needs nothing of heat-gpu beyond the agent.
    """
    parts = ['#!/bin/bash',
             '# heat-gpu sample job: writes the sample sources and the runner, then runs it.',
             'set -eu -o pipefail',
             ': "${HEAT_GPU_ROOT:=}"',
             ': "${HEAT_GPU_WORK_DIR:=$HEAT_GPU_ROOT/var/lib/heat-gpu/samples}"',
             'src=$HEAT_GPU_WORK_DIR/src',
             'mkdir -p "$src"']
    for filename in SAMPLE_SOURCES + ('run-samples.sh',):
        with open(os.path.join(SAMPLES_DIR, filename), encoding='utf-8') as stream:
            text = stream.read()
        if _HEREDOC_END in text.splitlines():
            raise ValueError('%s contains the line %s' % (filename, _HEREDOC_END))
        parts += ["cat > \"$src/%s\" <<'%s'" % (filename, _HEREDOC_END),
                  text.rstrip('\n'), _HEREDOC_END]
    parts += ['export HEAT_GPU_ROOT HEAT_GPU_WORK_DIR',
              'exec bash "$src/run-samples.sh"']
    return '\n'.join(parts) + '\n'


def failure_reason(report: Report) -> str:
    """Every failed result in one line: which sample, on which GPU, and why."""
    failed = report.failures()
    if not failed:
        return 'no sample failed'
    return '; '.join(_describe(r) for r in failed)


# Judging.

def _lookup(table: Mapping, gpu_index: Optional[int], metric: str) -> Any:
    if gpu_index is not None and metric in (table.get(str(gpu_index)) or {}):
        return table[str(gpu_index)][metric]
    return (table.get('*') or {}).get(metric)


def evaluate(output: Union[str, bytes, Mapping], *, min_ratio: Any = DEFAULT_MIN_RATIO,
             thresholds: Optional[Mapping] = None, expected: Optional[Mapping] = None,
             vgpu: bool = False, expected_gpus: Optional[int] = None) -> Report:
    """Parse the runner's output and judge every result.

    Expected figures come from *expected* (``{gpu index or "*": {metric: value or {"value",
    "basis"}}}``, as :func:`runner_inputs` makes), else from the catalog model the runner's GPU
    name matches, else from what the runner reported. A result passes when its program ran
    correctly and, where it has an expected figure, ``measured / expected`` reaches its threshold.
    With *expected_gpus* (the GPUs the instance was given), a run whose device query worked but
    saw fewer GPUs fails: the missing ones would otherwise go unjudged.
    """
    doc = parse(output)
    ratio_min, checked = validate_thresholds(min_ratio=min_ratio, thresholds=thresholds)
    gpus = tuple(dict(g) for g in doc['gpus'])
    by_index = {g['index']: g for g in gpus}
    results = []
    for entry in doc['samples']:
        name, metric, gpu_index = entry['name'], entry['metric'], entry['gpu_index']
        detail = dict(entry['detail'])
        figure = None
        if metric != 'max_abs_error' and gpu_index is not None:
            figure = _lookup(expected or {}, gpu_index, metric)
            if figure is None and gpu_index in by_index:
                model = _model_of(by_index[gpu_index])
                if model is not None:
                    figure = expected_figures(model, include_memory=not vgpu).get(metric)
        if isinstance(figure, Mapping):
            detail.update({k: v for k, v in figure.items() if k != 'value'})
            figure = figure.get('value')
        value = float(figure) if figure is not None else entry['expected']
        measured = entry['measured']
        ratio = round(measured / value, 3) if value and measured is not None else None
        detail.pop('threshold', None)
        if ratio is not None:
            detail['threshold'] = threshold_for(name, metric, min_ratio=ratio_min,
                                                thresholds=checked)
        passed = detail['correct'] and (ratio is None or ratio >= detail['threshold'])
        results.append(SampleResult(name=name, gpu_index=gpu_index, passed=passed,
                                    metric=metric, unit=entry['unit'], measured=measured,
                                    expected=value, ratio=ratio, detail=detail))
    queried = any(r.name == 'device_query' and r.detail.get('correct') for r in results)
    if expected_gpus is not None and queried and len(gpus) < expected_gpus:
        results.append(SampleResult(
            name='device_query', gpu_index=None, passed=False, metric='gpu_count', unit='',
            measured=len(gpus), expected=expected_gpus, ratio=None,
            detail={'correct': False,
                    'message': '%d of %d GPUs visible to CUDA; a GPU the instance was given is '
                               'missing (check nvidia-smi -q and the host\'s PCI passthrough)'
                               % (len(gpus), expected_gpus)}))
    samples = tuple(results)
    passed = bool(samples) and all(s.passed for s in samples)
    return Report(samples=samples, gpus=gpus, passed=passed,
                  summary=summarize(samples, gpus=gpus))


def _fmt(value: float) -> str:
    return ('%.1f' % value) if abs(value) >= 1 else ('%.3g' % value)


def _describe(result: SampleResult) -> str:
    where = '' if result.gpu_index is None else ' GPU%d' % result.gpu_index
    label = '%s%s %s' % (result.name, where, _SHORT.get(result.metric, result.metric))
    if result.ratio is not None and result.detail['correct']:
        return '%s %s %s = %d%% of expected (< %d%%)' % (
            label, _fmt(result.measured), result.unit, round(result.ratio * 100),
            round(result.detail['threshold'] * 100))
    message = str(result.detail.get('message') or 'failed')
    if len(message) > 100:
        message = message[:97] + '...'
    return '%s: %s' % (label, message)


def _highlight(results: list[SampleResult], metric: str) -> Optional[str]:
    measured = [r for r in results if r.metric == metric and r.measured is not None
                and r.detail.get('correct')]
    if not measured:
        return None
    worst = min(measured, key=lambda r: r.measured)
    text = '%s %s %s' % (_SHORT[metric], _fmt(worst.measured), worst.unit)
    if len({r.gpu_index for r in measured}) > 1:
        text += ' (lowest, GPU%d)' % worst.gpu_index
    peak = worst.detail.get('peak')
    basis = worst.detail.get('basis')
    if peak:
        text += ' = %d%% of %s peak' % (round(worst.measured / peak * 100), basis or 'datasheet')
    elif worst.ratio is not None:
        text += ' = %d%% of expected for %s' % (round(worst.ratio * 100), basis or 'the GPU')
    return text


def summarize(samples: Iterable[SampleResult], *, gpus: Iterable[Mapping] = ()) -> str:
    """Return the one line a human reads first.

    For example ``4/4 passed (p2p skipped); H2D 11.7 GB/s = 99% of expected for PCIe Gen3 x16;
    SGEMM 8.6 TFLOPS = 93% of P100-PCIE-16GB peak``.
    """
    results = list(samples)
    names = [n for n in SAMPLES if any(r.name == n for r in results)]
    skipped = [n for n in names if all(r.skipped for r in results if r.name == n)]
    judged = [n for n in names if n not in skipped]
    ok = [n for n in judged if all(r.passed for r in results if r.name == n)]
    if not results:
        return 'no sample ran'
    parts = ['%d/%d passed' % (len(ok), len(judged))]
    if skipped:
        parts[0] += ' (%s skipped)' % ', '.join(skipped)
    gpu_count = len(list(gpus))
    if gpu_count > 1:
        parts[0] += ' on %d GPUs' % gpu_count
    failed = [r for r in results if not r.passed]
    if failed:
        shown = [_describe(r) for r in failed[:2]]
        more = ' (+%d more)' % (len(failed) - 2) if len(failed) > 2 else ''
        parts.append('FAILED: ' + '; '.join(shown) + more)
    for metric in ('h2d_bandwidth', 'sgemm_throughput'):
        text = _highlight(results, metric)
        if text:
            parts.append(text)
    return '; '.join(parts)
