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

"""The failed tests of a subunit v2 stream, a few lines each, for the end of a long log.

``stestr last --subunit | python -m tools.failure_summary`` prints, for every test that failed,
its id and the last lines of its traceback (where the assertion or the error is), so the reason
of a failure is in the closing lines of ``make test`` even when only those lines are kept.
"""

import argparse
import os
import re
import sys
from typing import Optional

import subunit
import testtools

FAILED = ('fail', 'uxsuccess')


def failures(stream) -> list[tuple[str, str]]:
    """(test id, traceback text) of every failed test in a subunit v2 byte stream."""
    found = []

    def on_test(test: dict) -> None:
        if test['status'] not in FAILED:
            return
        details = test['details']
        text = ''
        for name in ('traceback', 'reason'):
            if name in details:
                text = details[name].as_text()
                break
        found.append((test['id'], text))

    result = testtools.StreamToDict(on_test)
    result.startTestRun()
    try:
        subunit.ByteStreamToStreamResult(stream, non_subunit_name='stdout').run(result)
    finally:
        result.stopTestRun()
    return found


def condense(text: str, *, lines: int) -> list[str]:
    """Where the test failed (its deepest frame in this project) and the error's own lines."""
    rows = text.rstrip().splitlines()
    frames = [i for i, row in enumerate(rows) if row.lstrip().startswith('File "')]
    if not frames:
        return [row for row in rows if row.strip()][-lines:]
    ours = [i for i in frames if not re.search(r'site-packages|/lib/python3', rows[i])]
    where = []
    if ours:
        i = ours[-1]
        where = [rows[i].strip()]
        if i + 1 < len(rows) and not rows[i + 1].lstrip().startswith('File "'):
            where.append('  ' + rows[i + 1].strip())
    # The error itself starts after the last frame (a frame is its File line and its code line).
    last = frames[-1]
    start = last + 1
    if start < len(rows) and rows[start].startswith('    '):
        start += 1
    error = [row for row in rows[start:] if row.strip()]
    return where + error[:max(lines - len(where), 1)]


def summary(found: list[tuple[str, str]], *, lines: int, width: int) -> list[str]:
    out = []
    for test_id, text in found:
        out.append('FAILED %s' % test_id)
        for line in condense(text, lines=lines):
            line = line.rstrip().replace(os.getcwd() + os.sep, '')
            if len(line) > width:
                line = line[:width - 3] + '...'
            out.append('    ' + line)
    return out


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--lines', type=int, default=8,
                        help='lines kept per failed test (default 8)')
    parser.add_argument('--width', type=int, default=400,
                        help='longest line printed (default 400 characters)')
    args = parser.parse_args(argv)
    for line in summary(failures(sys.stdin.buffer), lines=args.lines, width=args.width):
        print(line)
    return 0


if __name__ == '__main__':
    sys.exit(main())
