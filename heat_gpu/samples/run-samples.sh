#!/bin/bash
# heat-gpu sample runner, run in the guest by OS::GPU::SampleJob (a software deployment).
#
# Compiles the chosen CUDA sample programs with the installed toolkit's nvcc for the GPUs' own
# architecture, runs them, and prints ONE JSON document on stdout:
#   {"samples": [{"name", "gpu_index", "passed", "metric", "unit", "measured", "expected",
#                 "ratio", "detail"}, ...],
#    "gpus": [...], "passed": true|false, "toolkit": {...}}
# Progress and compiler output go to stderr. Exit status: 0 when every sample passed, 1 when one
# failed (the JSON says which), 2 when the inputs are invalid (the JSON carries "error").
#
# Inputs (all optional; environment variables win over the inputs file):
#   HEAT_GPU_SAMPLE_INPUTS  JSON file {"samples": [...], "min_ratio": 0.8,
#                           "thresholds": {"bandwidth": 0.7, "bandwidth.d2d_bandwidth": 0.5},
#                           "expected": {"*": {METRIC: VALUE | {"value": V, "basis": TEXT}},
#                                        "0": {...per GPU index...}}}
#   HEAT_GPU_SAMPLES        names, separated by spaces or commas (default: all)
#   HEAT_GPU_MIN_RATIO      0..1; HEAT_GPU_THRESHOLDS / HEAT_GPU_EXPECTED: JSON as above
# Paths and commands (for tests and unusual images):
#   HEAT_GPU_ROOT (prefix of every absolute path), HEAT_GPU_SAMPLES_DIR (guest path of the .cu
#   sources and the sample_common.cuh header they include; default: beside this script),
#   HEAT_GPU_WORK_DIR (build and output files), NVCC, HEAT_GPU_CUDA_ARCH
#   (e.g. "80" or "70 80"; default: detected with nvidia-smi), HEAT_GPU_SAMPLE_TIMEOUT (seconds
#   per program), PYTHON (assembles the JSON; the standard library is enough).
set -eu -o pipefail
[ -n "${HEAT_GPU_TRACE:-}" ] && set -x

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
: "${HEAT_GPU_ROOT:=}"
# A sources directory given by the caller (a deployment input) is a path of the guest, under
# HEAT_GPU_ROOT like every other; by default the sources lie beside this script.
if [ -n "${HEAT_GPU_SAMPLES_DIR:-}" ]; then
    HEAT_GPU_SAMPLES_DIR=$HEAT_GPU_ROOT$HEAT_GPU_SAMPLES_DIR
else
    HEAT_GPU_SAMPLES_DIR=$here
fi
: "${HEAT_GPU_WORK_DIR:=$HEAT_GPU_ROOT/var/lib/heat-gpu/samples}"
: "${HEAT_GPU_SAMPLE_INPUTS:=}"
: "${HEAT_GPU_SAMPLES:=}"
: "${HEAT_GPU_MIN_RATIO:=}"
: "${HEAT_GPU_THRESHOLDS:=}"
: "${HEAT_GPU_EXPECTED:=}"
: "${HEAT_GPU_CUDA_ARCH:=}"
: "${HEAT_GPU_SAMPLE_TIMEOUT:=900}"
: "${NVCC:=}"
: "${PYTHON:=python3}"
# CUDA numbers devices fastest first unless told otherwise; nvidia-smi and nova number them in PCI
# bus order. The same order everywhere lets gpu_index mean one GPU.
export CUDA_DEVICE_ORDER=PCI_BUS_ID
export HEAT_GPU_ROOT HEAT_GPU_SAMPLE_INPUTS HEAT_GPU_SAMPLES HEAT_GPU_MIN_RATIO \
    HEAT_GPU_THRESHOLDS HEAT_GPU_EXPECTED

work=$HEAT_GPU_WORK_DIR

log() {
    echo "run-samples: $*" >&2
}

# The JSON side: input validation and the combined document. Modes: "inputs WORK" checks the inputs
# and writes WORK/inputs.json and WORK/selected (the chosen names), or prints the error document and
# exits 2; "combine WORK" prints the document and exits 0 (all passed) or 1.
helper() {
    "$PYTHON" - "$@" <<'PY'
import json
import os
import sys

KNOWN = ('device_query', 'vector_add', 'bandwidth', 'gemm', 'p2p')
# sample -> (metric, unit, field of the program's result) in the order they are reported.
METRICS = {
    'device_query': [('memory_mib', 'MiB', 'memory_mib')],
    'vector_add': [('max_abs_error', '', 'max_abs_error')],
    'bandwidth': [('h2d_bandwidth', 'GB/s', 'h2d_gbps'), ('d2h_bandwidth', 'GB/s', 'd2h_gbps'),
                  ('d2d_bandwidth', 'GB/s', 'd2d_gbps')],
    'gemm': [('sgemm_throughput', 'TFLOPS', 'tflops')],
    'p2p': [('p2p_bandwidth', 'GB/s', 'gbps')],
}
# Metrics that are a correctness measure, never compared with an expected figure.
NO_RATIO = {'max_abs_error'}
GT_TO_GEN = {'2.5': 1, '5.0': 2, '5': 2, '8.0': 3, '8': 3, '16.0': 4, '16': 4, '32.0': 5,
             '32': 5, '64.0': 6, '64': 6}


class InputError(Exception):
    pass


def load_json(text, what):
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InputError('%s is not valid JSON (%s); accepted: a JSON document' % (what, exc))


def ratio_value(value, what):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise InputError('%s is %r; accepted: a number from 0.0 to 1.0' % (what, value))
    return float(value)


def read_inputs():
    data = {}
    path = os.environ.get('HEAT_GPU_SAMPLE_INPUTS', '')
    if path:
        try:
            with open(path, encoding='utf-8') as stream:
                data = load_json(stream.read(), 'inputs file %s' % path)
        except OSError as exc:
            raise InputError('inputs file %s cannot be read: %s' % (path, exc.strerror))
        if not isinstance(data, dict):
            raise InputError('inputs file %s holds %s; accepted: a JSON object'
                             % (path, type(data).__name__))
    samples = data.get('samples')
    env_samples = os.environ.get('HEAT_GPU_SAMPLES', '')
    if env_samples.strip():
        samples = env_samples.replace(',', ' ').split()
    if samples in (None, []):
        samples = list(KNOWN)
    if not isinstance(samples, list) or not all(isinstance(s, str) for s in samples):
        raise InputError('samples is %r; accepted: a list of names from %s'
                         % (samples, ', '.join(KNOWN)))
    unknown = [s for s in samples if s not in KNOWN]
    if unknown:
        raise InputError('samples has unknown name(s) %s; accepted: %s'
                         % (', '.join(unknown), ', '.join(KNOWN)))
    min_ratio = data.get('min_ratio', 0.8)
    if os.environ.get('HEAT_GPU_MIN_RATIO', ''):
        try:
            min_ratio = float(os.environ['HEAT_GPU_MIN_RATIO'])
        except ValueError:
            raise InputError('min_ratio is %r; accepted: a number from 0.0 to 1.0'
                             % os.environ['HEAT_GPU_MIN_RATIO'])
    min_ratio = ratio_value(min_ratio, 'min_ratio')
    thresholds = data.get('thresholds') or {}
    if os.environ.get('HEAT_GPU_THRESHOLDS', ''):
        thresholds = load_json(os.environ['HEAT_GPU_THRESHOLDS'], 'thresholds')
    if not isinstance(thresholds, dict):
        raise InputError('thresholds is %r; accepted: a map of sample name (or '
                         'sample.metric) to a ratio' % (thresholds,))
    for key, value in thresholds.items():
        name, _, metric = key.partition('.')
        metrics = [m[0] for m in METRICS.get(name, [])]
        if name not in KNOWN or (metric and metric not in metrics):
            accepted = KNOWN + tuple('%s.%s' % (n, m[0]) for n in KNOWN for m in METRICS[n])
            raise InputError('thresholds has unknown key %r; accepted: %s'
                             % (key, ', '.join(accepted)))
        thresholds[key] = ratio_value(value, 'thresholds[%r]' % key)
    expected = data.get('expected') or {}
    if os.environ.get('HEAT_GPU_EXPECTED', ''):
        expected = load_json(os.environ['HEAT_GPU_EXPECTED'], 'expected')
    if not isinstance(expected, dict) or not all(isinstance(v, dict) for v in expected.values()):
        raise InputError('expected is %r; accepted: a map of GPU index (or "*") to a map of '
                         'metric to a number' % (expected,))
    for gpu, figures in expected.items():
        for metric, fig in figures.items():
            value = fig.get('value') if isinstance(fig, dict) else fig
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise InputError('expected[%r][%r] is %r; accepted: a positive number or '
                                 '{"value": number, "basis": text}' % (gpu, metric, fig))
    return {'samples': [s for s in KNOWN if s in samples], 'min_ratio': min_ratio,
            'thresholds': thresholds, 'expected': expected}


def read_program(work, name):
    """Return (document or None, problem text or None) for one program's run."""
    def text(suffix):
        try:
            with open(os.path.join(work, name + suffix), encoding='utf-8',
                      errors='replace') as stream:
                return stream.read()
        except OSError:
            return None

    def tail(body, lines=5):
        return ' | '.join((body or '').strip().splitlines()[-lines:])

    status = (text('.status') or '').strip()
    if status == 'no-nvcc':
        return None, 'not compiled: %s' % (text('.build.log') or '').strip()
    if status == 'compile-failed':
        return None, 'compilation failed: %s' % tail(text('.build.log'), 8)
    rc = (text('.rc') or '').strip()
    out = text('.json') or ''
    doc = None
    for line in out.splitlines():
        line = line.strip()
        if line.startswith('{'):
            try:
                doc = json.loads(line)
            except ValueError:
                doc = None
    if not isinstance(doc, dict) or not isinstance(doc.get('results'), list):
        why = 'timed out' if rc == '124' else 'exit status %s' % (rc or 'unknown')
        return None, ('no JSON result (%s); stderr: %s; stdout: %s'
                      % (why, tail(text('.err')) or '-', tail(out) or '-'))
    if rc == '124':
        return None, 'timed out after %s s' % os.environ.get('HEAT_GPU_SAMPLE_TIMEOUT', '?')
    return doc, None


def sysfs_link(bus_id):
    """PCIe (gen, width, max gen, max width) from sysfs, each None when unknown."""
    root = os.environ.get('HEAT_GPU_ROOT', '')
    base = '%s/sys/bus/pci/devices/%s' % (root, bus_id.lower())

    def read(name):
        try:
            with open(os.path.join(base, name), encoding='ascii') as stream:
                return stream.read().split()[0]
        except (OSError, IndexError):
            return None

    def width(name):
        value = read(name)
        return int(value) if value and value.isdigit() and int(value) > 0 else None

    return (GT_TO_GEN.get(read('current_link_speed') or ''), width('current_link_width'),
            GT_TO_GEN.get(read('max_link_speed') or ''), width('max_link_width'))


def gpus_from(doc):
    gpus = []
    for r in (doc or {}).get('results', []):
        if not isinstance(r, dict) or not isinstance(r.get('gpu_index'), int):
            continue
        bus = str(r.get('pci_bus_id') or '')
        gpu = {'index': r['gpu_index'], 'name': r.get('name'),
               'pci_address': bus.lower() or None, 'uuid': r.get('uuid'),
               'memory_mib': r.get('memory_mib'),
               'compute_capability': r.get('compute_capability'),
               'memory_bandwidth_gbps': r.get('memory_bandwidth_gbps'),
               'ecc_enabled': r.get('ecc_enabled'),
               'pcie_link_gen': r.get('pcie_link_gen'),
               'pcie_link_width': r.get('pcie_link_width'),
               'pcie_link_gen_max': r.get('pcie_link_gen_max'),
               'pcie_link_width_max': r.get('pcie_link_width_max'),
               'pcie_source': 'nvml' if r.get('pcie_link_gen_max') is not None else None}
        if gpu['pcie_source'] is None and bus:
            cur_gen, cur_width, max_gen, max_width = sysfs_link(bus)
            if max_gen is not None or cur_gen is not None:
                gpu.update(pcie_link_gen=cur_gen, pcie_link_width=cur_width,
                           pcie_link_gen_max=max_gen, pcie_link_width_max=max_width,
                           pcie_source='sysfs')
        gpus.append(gpu)
    return gpus


def expected_for(inputs, gpu_index, metric):
    table = inputs['expected']
    fig = (table.get(str(gpu_index)) or {}).get(metric)
    if fig is None:
        fig = (table.get('*') or {}).get(metric)
    if fig is None:
        return None, {}
    if isinstance(fig, dict):
        return float(fig['value']), {k: v for k, v in fig.items() if k != 'value'}
    return float(fig), {}


def threshold_for(inputs, name, metric):
    t = inputs['thresholds']
    return t.get('%s.%s' % (name, metric), t.get(name, inputs['min_ratio']))


def number(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value


def make(inputs, name, metric, unit, gpu_index, measured, correct, message, extra):
    expected = ratio = None
    about = {}
    if metric not in NO_RATIO and gpu_index is not None:
        expected, about = expected_for(inputs, gpu_index, metric)
    detail = {'correct': bool(correct), 'message': message}
    detail.update(extra)
    if expected and measured is not None:
        ratio = round(measured / expected, 3)
        detail['threshold'] = threshold_for(inputs, name, metric)
        detail.update(about)
    passed = bool(correct) and (ratio is None or ratio >= detail['threshold'])
    return {'name': name, 'gpu_index': gpu_index, 'passed': passed, 'metric': metric,
            'unit': unit, 'measured': measured, 'expected': expected, 'ratio': ratio,
            'detail': detail}


EXTRA_FIELDS = ('elements', 'mismatches', 'kernel_ms', 'bytes', 'repetitions', 'pinned', 'n',
                'check_n', 'max_rel_error', 'ms_per_product', 'peer_index', 'peer_access',
                'name', 'compute_capability', 'pci_bus_id', 'ecc_enabled')


def sample_results(inputs, name, doc, problem, gpus):
    metrics = METRICS[name]
    if doc is None or (doc.get('error') and not doc['results']):
        why = problem or doc.get('error')
        return [make(inputs, name, metrics[0][0], metrics[0][1], None, None, False, why, {})]
    if name == 'p2p' and doc.get('status') == 'skipped':
        r = make(inputs, name, metrics[0][0], metrics[0][1], None, None, True,
                 doc.get('reason') or 'skipped', {'skipped': True})
        return [r]
    out = []
    for entry in doc['results']:
        if not isinstance(entry, dict):
            continue
        gpu_index = entry.get('gpu_index')
        extra = {k: entry[k] for k in EXTRA_FIELDS if k in entry}
        error = entry.get('error')
        if name == 'device_query':
            correct = entry.get('usable') is True
            gpu = next((g for g in gpus if g['index'] == gpu_index), {})
            if gpu.get('pcie_link_gen_max'):
                extra['pcie'] = 'Gen%s x%s' % (gpu['pcie_link_gen_max'],
                                               gpu.get('pcie_link_width') or '?')
        elif name in ('vector_add', 'gemm'):
            correct = entry.get('correct') is True and not error
        else:
            correct = not error
        for metric, unit, field in metrics:
            measured = number(entry.get(field))
            message = error or ('ok' if correct else 'wrong result')
            out.append(make(inputs, name, metric, unit, gpu_index, measured, correct, message,
                            dict(extra)))
    if doc.get('error'):
        out.append(make(inputs, name, metrics[0][0], metrics[0][1], None, None, False,
                        doc['error'], {}))
    if not out:
        out.append(make(inputs, name, metrics[0][0], metrics[0][1], None, None, False,
                        'the program reported no result', {}))
    return out


def combine(work):
    with open(os.path.join(work, 'inputs.json'), encoding='utf-8') as stream:
        inputs = json.load(stream)
    dq_doc, dq_problem = read_program(work, 'device_query')
    gpus = gpus_from(dq_doc)
    samples = []
    for name in inputs['samples']:
        doc, problem = (dq_doc, dq_problem) if name == 'device_query' else read_program(work, name)
        samples.extend(sample_results(inputs, name, doc, problem, gpus))
    toolkit = {}
    try:
        with open(os.path.join(work, 'toolkit.json'), encoding='utf-8') as stream:
            toolkit = json.load(stream)
    except (OSError, ValueError):
        pass
    passed = bool(samples) and all(s['passed'] for s in samples)
    result = {'samples': samples, 'gpus': gpus, 'passed': passed, 'toolkit': toolkit,
              'min_ratio': inputs['min_ratio'], 'thresholds': inputs['thresholds']}
    if dq_doc is not None:
        result['cuda_driver_version'] = dq_doc.get('cuda_driver_version')
        result['cuda_runtime_version'] = dq_doc.get('cuda_runtime_version')
    print(json.dumps(result, sort_keys=True))
    return 0 if passed else 1


def main(argv):
    mode, work = argv[1], argv[2]
    if mode == 'inputs':
        try:
            inputs = read_inputs()
        except InputError as exc:
            print(json.dumps({'samples': [], 'gpus': [], 'passed': False, 'error': str(exc)}))
            print('run-samples: invalid input: %s' % exc, file=sys.stderr)
            return 2
        with open(os.path.join(work, 'inputs.json'), 'w', encoding='utf-8') as stream:
            json.dump(inputs, stream)
        with open(os.path.join(work, 'selected'), 'w', encoding='utf-8') as stream:
            stream.write(' '.join(inputs['samples']) + '\n')
        return 0
    return combine(work)


sys.exit(main(sys.argv))
PY
}

# nvcc: $NVCC, else the one on PATH, else the toolkit's usual home.
find_nvcc() {
    local c
    for c in "$NVCC" "$(command -v nvcc || true)" "$HEAT_GPU_ROOT/usr/local/cuda/bin/nvcc"; do
        if [ -n "$c" ] && [ -x "$c" ]; then
            echo "$c"
            return 0
        fi
    done
    return 1
}

# Architectures to build for, as "60 80": HEAT_GPU_CUDA_ARCH, else every distinct compute
# capability nvidia-smi reports; empty when neither says (nvcc then builds for -arch=native).
detect_archs() {
    local caps
    if [ -n "$HEAT_GPU_CUDA_ARCH" ]; then
        caps=${HEAT_GPU_CUDA_ARCH//,/ }
        caps=${caps//sm_/}
    elif command -v nvidia-smi >/dev/null; then
        caps=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null \
            | tr -d ' .' | grep -E '^[0-9]+$' || true)
    else
        caps=
    fi
    # shellcheck disable=SC2086 # one word per architecture
    { printf '%s\n' $caps | grep -E '^[0-9]+$' || true; } | sort -un | tr '\n' ' ' | sed 's/ $//'
}

arch_flags() {
    local archs=$1 a
    if [ -z "$archs" ]; then
        echo "-arch=native"
    elif [ "$(wc -w <<<"$archs")" -eq 1 ]; then
        echo "-arch=sm_$archs"
    else
        for a in $archs; do
            printf -- '-gencode=arch=compute_%s,code=sm_%s ' "$a" "$a"
        done
    fi
}

# Compile one program unless an up-to-date build (same source and header, flags and compiler)
# exists. The programs include sample_common.cuh from the sources directory.
build() {
    local name=$1 nvcc=$2 flags=$3 src header libs=() key toolkit
    src=$HEAT_GPU_SAMPLES_DIR/$name.cu
    header=$HEAT_GPU_SAMPLES_DIR/sample_common.cuh
    toolkit=$(cd "$(dirname "$nvcc")/.." && pwd)
    case "$name" in
        # A runfile install does not add the toolkit's libraries to ld.so.conf: record the path.
        gemm) libs=(-lcublas -Xlinker "-rpath,$toolkit/lib64") ;;
        device_query) libs=(-ldl) ;;
    esac
    if [ ! -f "$src" ]; then
        echo "source $src not found" > "$work/$name.build.log"
        echo compile-failed > "$work/$name.status"
        return 0
    fi
    key=$( { sha256sum < "$src"; [ ! -f "$header" ] || sha256sum < "$header"
        echo "$flags ${libs[*]}"; "$nvcc" --version 2>&1 | tail -n1; } | sha256sum | cut -d' ' -f1)
    if [ -x "$work/bin/$name" ] && [ "$(cat "$work/bin/$name.key" 2>/dev/null)" = "$key" ]; then
        log "$name: up to date"
        echo built > "$work/$name.status"
        return 0
    fi
    log "$name: compiling ($flags)"
    rm -f "$work/bin/$name" "$work/bin/$name.key"
    # shellcheck disable=SC2086 # flags are separate words
    if "$nvcc" -O2 -std=c++17 $flags -I "$HEAT_GPU_SAMPLES_DIR" -o "$work/bin/$name" "$src" \
        "${libs[@]}" \
        > "$work/$name.build.log" 2>&1; then
        echo "$key" > "$work/bin/$name.key"
        echo built > "$work/$name.status"
    else
        echo compile-failed > "$work/$name.status"
        cat "$work/$name.build.log" >&2
    fi
}

run_program() {
    local name=$1 rc=0
    [ "$(cat "$work/$name.status")" = built ] || return 0
    log "$name: running"
    timeout "$HEAT_GPU_SAMPLE_TIMEOUT" "$work/bin/$name" > "$work/$name.json" \
        2> "$work/$name.err" || rc=$?
    echo "$rc" > "$work/$name.rc"
    log "$name: exit status $rc"
}

mkdir -p "$work/bin"
rm -f "$work"/*.status "$work"/*.json "$work"/*.rc "$work"/*.err "$work"/*.build.log

if ! command -v "$PYTHON" >/dev/null; then
    echo '{"samples": [], "gpus": [], "passed": false, "error": "python3 not found; the sample runner needs python3 (standard library) to write its JSON"}'
    exit 2
fi
rm -f "$work/selected" "$work/inputs.json"
helper inputs "$work" || exit 2
read -r -a selected < "$work/selected"
log "samples: ${selected[*]}"

# device_query always runs: it names the GPUs for the other samples' results.
programs=(device_query)
for s in "${selected[@]}"; do
    [ "$s" = device_query ] || programs+=("$s")
done

if nvcc=$(find_nvcc); then
    archs=$(detect_archs)
    flags=$(arch_flags "$archs")
    nvcc_release=$("$nvcc" --version 2>/dev/null | sed -n 's/.*release \([0-9.]*\).*/\1/p' || true)
    log "nvcc $nvcc (release ${nvcc_release:-unknown}); architectures: ${archs:-native}"
    printf '{"nvcc": "%s", "release": "%s", "arch_flags": "%s"}\n' \
        "$nvcc" "$nvcc_release" "${flags% }" > "$work/toolkit.json"
    for p in "${programs[@]}"; do
        build "$p" "$nvcc" "$flags"
    done
    for p in "${programs[@]}"; do
        run_program "$p"
    done
else
    for p in "${programs[@]}"; do
        echo "nvcc not found (tried \$NVCC, PATH and $HEAT_GPU_ROOT/usr/local/cuda/bin);" \
            "install the CUDA toolkit or set NVCC" > "$work/$p.build.log"
        echo no-nvcc > "$work/$p.status"
    done
fi

helper combine "$work"
