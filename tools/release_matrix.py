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

"""The release matrix of ``make test``: the plugin on every supported line but the development one.

For each line of ``heat_gpu.releases.SUPPORTED`` other than the development line (``.venv`` and
the unit phase test that one), in a virtualenv ``.venv-<series>`` of the line's Python:

1. install that line's heat and nova (nova for the tests that read nova's own option names) with
   OpenStack's upper-constraints of the line, ``requirements.txt``, ``unit-requirements.txt`` and
   the plugin (``pip install -e``: its requirements must resolve under those constraints);
2. load the plugin through heat's plugin manager and check its descriptions
   (``tools/check_descriptions.py``);
3. run the unit suite (stestr; its repository is ``.venv-<series>/stestr``) but for the modules
   that test only what no heat release or Python of a line changes (``SAME_ON_EVERY_LINE``: nvcc
   compiling the CUDA samples, the GPU simulator of the development tools); the unit phase runs
   them. The local cloud's own tests skip themselves there (they need the 2026.1 services).

A venv is reinstalled only when its inputs change (the line's pins and constraints, the
requirements files, ``setup.cfg``, the interpreter): their hash is kept in
``.venv-<series>/.heat-gpu-stamp``, as ``tools/bootstrap.sh`` does for ``.venv``. The lines run side
by side. Beside them, vermin checks statically that ``heat_gpu/`` needs no Python newer than the
oldest one supported (3.9), annotations included (they are evaluated when heat loads the plugin).

Every check counts as a test: an install, a plugin load and the language check count one each,
the unit suites their own tests. ``--counts FILE`` writes "passed failed skipped"; ``--failures
FILE`` appends the failed tests (a few lines each, as ``tools/failure_summary.py`` prints them).
The exit status is 0 when everything passed. Run it from the checkout with the development venv's
Python: ``python -m tools.release_matrix [--line 2024.1]``.
"""

import argparse
import dataclasses
import glob
import hashlib
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Optional, Sequence

from heat_gpu import releases
from tools import failure_summary

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Bump to rebuild every matrix venv when the way they are installed changes.
RECIPE = '2'
#: setuptools 81 removed pkg_resources, which yaql 3.0.0 (2025.1's constraints) still imports, and
#: upper-constraints never pin setuptools: a Python 3.12 venv (no setuptools of its own) would get
#: the newest and heat 24 would not import.
SETUPTOOLS = 'setuptools<81'
INPUT_FILES = ('requirements.txt', 'unit-requirements.txt', 'setup.cfg')
STAMP = '.heat-gpu-stamp'
#: The oldest Python any supported line runs on: the language level heat_gpu/ must keep.
OLDEST_PYTHON = min((tuple(int(p) for p in v.split('.'))
                     for line in releases.SUPPORTED for v in line.pythons))
#: Unit test modules run by the unit phase only: what they test is the same on every line (nvcc
#: and the CUDA toolkit wheels, 1.1 GB, not installed per line; tools/gpusim, development tooling).
SAME_ON_EVERY_LINE = ('tests.unit.test_samples_compile', 'tests.unit.test_gpusim')
INSTALL_TIMEOUT = 1200
CHECK_TIMEOUT = 300
UNIT_TIMEOUT = 1500
LOG_TAIL = 15

PRINT_LOCK = threading.Lock()


def say(prefix: str, text: str) -> None:
    with PRINT_LOCK:
        for line in text.splitlines() or ['']:
            print('[%s] %s' % (prefix, line), flush=True)


@dataclasses.dataclass
class Outcome:
    """What one line (or the language check) contributes to the counts."""

    name: str
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    failures: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    def check(self, ok: bool, what: str, detail: str = '') -> bool:
        if ok:
            self.passed += 1
        else:
            self.failed += 1
            self.failures.append('FAILED [%s] %s' % (self.name, what))
            self.failures.extend('    ' + line for line in detail.splitlines()[-LOG_TAIL:])
        return ok


# --- interpreters ------------------------------------------------------------------------------

def _version_of(python: str) -> Optional[str]:
    """The "X.Y" of *python* if it runs and can make a venv, else None."""
    try:
        proc = subprocess.run(
            [python, '-c', 'import sys, venv, ensurepip; print("%d.%d" % sys.version_info[:2])'],
            capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def _pyenv_pythons(version: str) -> list[str]:
    """Interpreters of *version* that pyenv installed, if pyenv is there (newest first)."""
    pyenv = shutil.which('pyenv')
    if not pyenv:
        return []
    proc = subprocess.run([pyenv, 'root'], capture_output=True, text=True, timeout=60,
                          check=False)
    root = proc.stdout.strip()
    if proc.returncode != 0 or not root:
        return []
    found = glob.glob(os.path.join(root, 'versions', version + '.*', 'bin', 'python' + version))
    return sorted(found, key=lambda p: [int(x) for x in p.split(os.sep)[-3].split('.')
                                        if x.isdigit()], reverse=True)


def find_python(version: str) -> Optional[str]:
    """An interpreter of Python *version* ("3.9"), or None.

    ``$HEAT_GPU_PYTHON39`` first, then ``python3.9`` on PATH, then one that pyenv installed.
    """
    candidates = [os.environ.get('HEAT_GPU_PYTHON' + version.replace('.', '')),
                  shutil.which('python' + version)] + _pyenv_pythons(version)
    for candidate in candidates:
        if candidate and _version_of(candidate) == version:
            return candidate
    return None


def pick_python(line: releases.SupportedLine) -> tuple[Optional[str], Optional[str]]:
    """(interpreter, version) for *line*: its matrix Python, else another Python it supports."""
    for version in (line.python,) + tuple(v for v in line.pythons if v != line.python):
        python = find_python(version)
        if python:
            return python, version
    return None, None


# --- one line ----------------------------------------------------------------------------------

def run_logged(argv: Sequence[str], *, log: str, timeout: float, env: dict,
               cwd: str = TOP) -> tuple[int, str]:
    """Run *argv* in its own process group, output to *log*; kill the group on timeout."""
    with open(log, 'w', encoding='utf-8') as out:
        out.write('$ %s\n' % ' '.join(argv))
        out.flush()
        proc = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            with open(log, 'a', encoding='utf-8') as tail:
                tail.write('\nkilled after %d s (time limit)\n' % timeout)
            rc = -signal.SIGKILL
    with open(log, encoding='utf-8', errors='replace') as stream:
        return rc, stream.read()


def line_env(venv: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ('VIRTUAL_ENV', 'PYTHONPATH', 'PYTHONHOME')}
    env['PATH'] = os.path.join(venv, 'bin') + os.pathsep + env.get('PATH', '')
    env['PIP_DISABLE_PIP_VERSION_CHECK'] = '1'
    return env


def inputs_hash(line: releases.SupportedLine, *, python_version: str) -> str:
    digest = hashlib.sha256()
    digest.update(('%s %s %s %s %s\n' % (RECIPE, line.name, line.heat, line.nova,
                                         python_version)).encode())
    for name in (line.constraints,) + INPUT_FILES:
        with open(os.path.join(TOP, name), 'rb') as stream:
            digest.update(stream.read())
    return digest.hexdigest()


def install(line: releases.SupportedLine, *, venv: str, python: str, python_version: str,
            outcome: Outcome) -> bool:
    """Make *venv* hold the line's heat, nova and the plugin; True when it does."""
    logs = os.path.join(venv, 'log')
    stamp = os.path.join(venv, STAMP)
    want = inputs_hash(line, python_version=python_version)
    if os.path.isfile(stamp) and os.path.isfile(os.path.join(venv, 'bin', 'python')):
        with open(stamp, encoding='utf-8') as stream:
            if stream.read().strip() == want:
                outcome.notes.append('venv up to date')
                return outcome.check(True, 'install')
    t0 = time.monotonic()
    if os.path.exists(venv):
        shutil.rmtree(venv)
    made = subprocess.run([python, '-m', 'venv', venv], capture_output=True, text=True,
                          timeout=300, check=False)
    if made.returncode != 0:
        return outcome.check(False, 'venv %s with %s' % (venv, python), made.stdout + made.stderr)
    os.makedirs(logs, exist_ok=True)
    # --no-compile: the tests compile what they import; compiling all of nova and heat at install
    # time would cost more CPU than the tests themselves.
    argv = [os.path.join(venv, 'bin', 'python'), '-m', 'pip', 'install', '-q', '--no-compile',
            '-c', os.path.join(TOP, line.constraints),
            'openstack-heat==%s' % line.heat, 'nova==%s' % line.nova, SETUPTOOLS,
            '-r', os.path.join(TOP, 'requirements.txt'),
            '-r', os.path.join(TOP, 'unit-requirements.txt'),
            '-e', TOP]
    rc, text = run_logged(argv, log=os.path.join(logs, 'install.log'), timeout=INSTALL_TIMEOUT,
                          env=line_env(venv))
    if not outcome.check(rc == 0, 'pip install with %s (log %s)'
                         % (line.constraints, os.path.relpath(os.path.join(logs, 'install.log'),
                                                              TOP)), text):
        return False
    with open(stamp, 'w', encoding='utf-8') as stream:
        stream.write(want + '\n')
    outcome.notes.append('installed in %d s' % (time.monotonic() - t0))
    return True


def check_plugin(line: releases.SupportedLine, *, venv: str, outcome: Outcome) -> None:
    """heat's plugin manager loads the plugin, and its descriptions pass."""
    argv = [os.path.join(venv, 'bin', 'python'),
            os.path.join(TOP, 'tools', 'check_descriptions.py')]
    rc, text = run_logged(argv, log=os.path.join(venv, 'log', 'check_descriptions.log'),
                          timeout=CHECK_TIMEOUT, env=line_env(venv))
    if outcome.check(rc == 0, 'heat %s loads the plugin (tools/check_descriptions.py)'
                     % line.heat, text):
        outcome.notes.append(text.strip().splitlines()[-1])


def count_stream(stream: bytes) -> tuple[int, int, int]:
    """(passed, failed, skipped) of a subunit v2 stream, as ``stestr last`` counts them."""
    import subunit
    import testtools

    counts = {'success': 0, 'fail': 0, 'uxsuccess': 0, 'skip': 0}

    def on_test(test: dict) -> None:
        if test['status'] in counts:
            counts[test['status']] += 1

    result = testtools.StreamToDict(on_test)
    result.startTestRun()
    try:
        subunit.ByteStreamToStreamResult(io.BytesIO(stream), non_subunit_name='stdout').run(result)
    finally:
        result.stopTestRun()
    return counts['success'], counts['fail'] + counts['uxsuccess'], counts['skip']


def run_unit(line: releases.SupportedLine, *, venv: str, concurrency: int,
             outcome: Outcome) -> None:
    repo = os.path.join(venv, 'stestr')
    # A fresh repository: "stestr last" must never report an earlier run when this one fails.
    shutil.rmtree(repo, ignore_errors=True)
    os.makedirs(repo)
    env = line_env(venv)
    stestr = [os.path.join(venv, 'bin', 'stestr'), '--repo-url', repo, '--test-path',
              'tests/unit', '--top-dir', TOP]
    log = os.path.join(venv, 'log', 'unit.log')
    exclude = '^(%s)\\.' % '|'.join(re.escape(name) for name in SAME_ON_EVERY_LINE)
    t0 = time.monotonic()
    rc, text = run_logged(stestr + ['run', '--concurrency', str(concurrency),
                                    '--exclude-regex', exclude],
                          log=log, timeout=UNIT_TIMEOUT, env=env)
    last = subprocess.run(stestr + ['last', '--subunit'], capture_output=True, env=env,
                          cwd=TOP, timeout=300, check=False)
    passed, failed, skipped = count_stream(last.stdout) if last.returncode == 0 else (0, 0, 0)
    outcome.passed += passed
    outcome.failed += failed
    outcome.skipped += skipped
    outcome.notes.append('unit: %d passed, %d failed, %d skipped in %d s (not run here: %s)'
                         % (passed, failed, skipped, time.monotonic() - t0,
                            ', '.join(name.rsplit('.', 1)[-1] for name in SAME_ON_EVERY_LINE)))
    if failed:
        found = failure_summary.failures(io.BytesIO(last.stdout))
        for row in failure_summary.summary(found, lines=8, width=400):
            outcome.failures.append(row.replace('FAILED ', 'FAILED [%s] ' % line.name, 1))
    elif rc != 0:
        # No test failed, yet stestr did (discovery, a crash, the time limit): one failure.
        outcome.check(False, 'unit suite did not run through (log %s)'
                      % os.path.relpath(log, TOP), text)


def run_line(line: releases.SupportedLine, *, base: str, concurrency: int) -> Outcome:
    outcome = Outcome(line.name)
    venv = os.path.join(base, '.venv-%s' % line.name)
    python, version = pick_python(line)
    if python is None:
        outcome.check(False, 'no Python %s found (set HEAT_GPU_PYTHON%s to one)'
                      % (' or '.join(line.pythons), line.python.replace('.', '')))
        return outcome
    if version != line.python:
        outcome.notes.append('Python %s, not %s (none found)' % (version, line.python))
    say(line.name, 'heat %s, nova %s, Python %s (%s)' % (line.heat, line.nova, version, python))
    if install(line, venv=venv, python=python, python_version=version, outcome=outcome):
        check_plugin(line, venv=venv, outcome=outcome)
        run_unit(line, venv=venv, concurrency=concurrency, outcome=outcome)
    return outcome


# --- the language level ------------------------------------------------------------------------

def language_check() -> Outcome:
    """vermin: heat_gpu/ runs on the oldest supported Python, evaluated annotations included."""
    target = '.'.join(str(n) for n in OLDEST_PYTHON)
    outcome = Outcome('python %s' % target)
    vermin = shutil.which('vermin')
    if vermin is None:
        outcome.check(False, 'vermin is not installed (test-requirements.txt)')
        return outcome
    argv = [vermin, '--target=%s-' % target, '--violations', '--eval-annotations',
            '--feature', 'union-types', '--no-tips', 'heat_gpu']
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=TOP, timeout=300,
                          check=False)
    if outcome.check(proc.returncode == 0, 'vermin: heat_gpu/ needs a Python newer than %s'
                     % target, proc.stdout + proc.stderr):
        outcome.notes.append('vermin: heat_gpu/ runs on Python %s' % target)
    return outcome


# --- the command line --------------------------------------------------------------------------

def matrix_lines() -> list[releases.SupportedLine]:
    return [line for line in releases.SUPPORTED if line is not releases.DEVELOPMENT]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--line', action='append', default=[], metavar='SERIES',
                        help='only this line (repeatable; default: %s)'
                             % ', '.join(line.name for line in matrix_lines()))
    parser.add_argument('--concurrency', type=int, default=1,
                        help='test workers per line (default 1: the lines run side by side)')
    parser.add_argument('--dir', default=os.environ.get('HEAT_GPU_MATRIX_DIR', TOP),
                        help='where the .venv-<series> directories are (default: the checkout)')
    parser.add_argument('--counts', metavar='FILE', help='write "passed failed skipped" here')
    parser.add_argument('--failures', metavar='FILE', help='append the failed tests here')
    args = parser.parse_args(argv)
    try:
        lines = ([releases.supported_line(name) for name in args.line] if args.line
                 else matrix_lines())
    except ValueError as exc:
        parser.error(str(exc))

    t0 = time.monotonic()
    outcomes: dict[str, Outcome] = {}

    def work(line: releases.SupportedLine) -> None:
        try:
            outcomes[line.name] = run_line(line, base=args.dir, concurrency=args.concurrency)
        except Exception as exc:  # a broken line must not hide the others' results
            outcome = Outcome(line.name)
            outcome.check(False, 'matrix run crashed: %s: %s' % (type(exc).__name__, exc))
            outcomes[line.name] = outcome

    threads = [threading.Thread(target=work, args=(line,), name=line.name) for line in lines]
    for thread in threads:
        thread.start()
    language = language_check()
    for thread in threads:
        thread.join()

    results = [outcomes[line.name] for line in lines] + [language]
    for outcome in results:
        say(outcome.name, '%s: %d passed, %d failed, %d skipped (%s)'
            % ('ok' if not outcome.failed else 'FAILED', outcome.passed, outcome.failed,
               outcome.skipped, '; '.join(outcome.notes) or 'no notes'))
    totals = [sum(getattr(o, field) for o in results) for field in ('passed', 'failed', 'skipped')]
    failures = [row for outcome in results for row in outcome.failures]
    if failures:
        print('\n'.join(failures))
    print('release matrix totals: %d passed, %d failed, %d skipped in %d s'
          % (*totals, time.monotonic() - t0))
    if args.counts:
        with open(args.counts, 'w', encoding='utf-8') as stream:
            stream.write('%d %d %d\n' % tuple(totals))
    if args.failures and failures:
        with open(args.failures, 'a', encoding='utf-8') as stream:
            stream.write('\n'.join(failures) + '\n')
    return 0 if totals[1] == 0 else 1


if __name__ == '__main__':
    sys.exit(main())
