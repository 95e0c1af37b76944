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

"""Copy the shell scripts of hot/scripts into the tenant templates that run them.

Horizon's Launch Stack sends no file a template names with a relative ``get_file`` (heat-dashboard
fetches only absolute http(s) references, and fails on a fetched non-YAML file), so a tenant
template carries its script as a literal block, written here from the one source file:

    # hot/scripts/jupyter.sh, copied in by tools/inline_scripts.py ...
    config: |
      #!/bin/bash
      ...

``python tools/inline_scripts.py`` rewrites every such block; ``--check`` only reports stale copies
(tests/unit/test_templates.py fails while one is stale).
"""

import argparse
import os
import re
import sys
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKER = re.compile(r'^\s*# (?P<source>hot/scripts/\S+), copied in by tools/inline_scripts\.py')
BLOCK = re.compile(r'^(?P<indent>\s*)(?P<key>[a-z_]+): \|\s*$')
TEMPLATES = ('hot/gpu_jupyter.yaml',)


def inline(text: str, *, root: str = ROOT) -> str:
    """*text* (a template) with every marked literal block replaced by its source file."""
    lines = text.splitlines(keepends=True)
    out = []
    i = 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        i += 1
        marker = MARKER.match(line)
        if not marker:
            continue
        while i < len(lines) and lines[i].lstrip().startswith('#'):
            out.append(lines[i])
            i += 1
        block = BLOCK.match(lines[i]) if i < len(lines) else None
        if block is None:
            raise ValueError('the line after "%s" is not a literal block (KEY: |)' % line.strip())
        out.append(lines[i])
        i += 1
        indent = len(block.group('indent'))
        while i < len(lines) and (not lines[i].strip()
                                  or len(lines[i]) - len(lines[i].lstrip()) > indent):
            i += 1
        with open(os.path.join(root, marker.group('source')), encoding='utf-8') as f:
            script = f.read()
        pad = ' ' * (indent + 2)
        out.extend(pad + s + '\n' if s else '\n' for s in script.splitlines())
    return ''.join(out)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--check', action='store_true', help='report stale copies, change nothing')
    args = parser.parse_args(argv)
    stale = []
    for name in TEMPLATES:
        path = os.path.join(ROOT, name)
        with open(path, encoding='utf-8') as f:
            text = f.read()
        new = inline(text)
        if new != text:
            stale.append(name)
            if not args.check:
                with open(path, 'w', encoding='utf-8') as f:
                    f.write(new)
    if stale:
        print('%s: %s' % ('stale' if args.check else 'rewrote', ', '.join(stale)))
    return 1 if stale and args.check else 0


if __name__ == '__main__':
    sys.exit(main())
