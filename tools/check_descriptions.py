#!/usr/bin/env python3
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

"""Check the user-facing descriptions of every OS::GPU::* resource type.

The classes are loaded the way heat-engine loads them: heat's plugin manager imports the modules of
the plugin directory (``heat_gpu/resources`` of the installed package, or ``--plugin-dir``) as
``heat.engine.plugins.*`` and collects their ``resource_mapping()``. The rules follow heat's own
custom guidelines for in-tree resources:

* the class docstring is a one-line summary that starts with an upper-case letter and ends with a
  period, then a blank line, then a description whose last sentence ends with a period;
* every property, attribute and nested schema (map keys, the parts of list items) has a description
  that starts with an upper-case letter and ends with a period; a list's item schema itself may go
  without one (heat's rule: the list's description covers it);
* no description holds runs of blanks; method docstrings have a one-line summary ending in a period.

Exit status 0 when every class passes, 1 with the list of offenders otherwise.
"""

import argparse
import os
import re
import sys
from typing import Any, Iterable, Mapping, Optional

TYPE_PREFIX = 'OS::GPU::'
ANY_ITEM = '*'
PLUGIN_PACKAGE = 'heat.engine.plugins'


def default_plugin_dir() -> str:
    """The ``heat_gpu/resources`` directory of the installed package."""
    import heat_gpu.resources
    return os.path.dirname(os.path.abspath(heat_gpu.resources.__file__))


def load_resource_classes(*, plugin_dir: str,
                          prefix: str = TYPE_PREFIX) -> dict[str, type]:
    """Load the resource types named *prefix*... from *plugin_dir* through heat's plugin manager."""
    from heat.engine import plugin_manager
    from oslo_config import cfg

    cfg.CONF.import_opt('plugin_dirs', 'heat.common.config')
    cfg.CONF.set_override('plugin_dirs', [plugin_dir])
    try:
        manager = plugin_manager.PluginManager()
        mapping = plugin_manager.PluginMapping(['available_resource', 'resource'])
        pairs = list(mapping.load_all(manager))
    finally:
        cfg.CONF.clear_override('plugin_dirs')
    # A mapping to a template URL (heat_gpu/templates) is a template resource: its texts are the
    # template's, which tests/unit/test_templates.py checks like every other template.
    return {name: cls for name, cls in pairs if name.startswith(prefix) and isinstance(cls, type)}


def _text_problems(text: str) -> list[str]:
    problems = []
    if re.match(r'^[a-z]', text):
        problems.append('should start with an upper-case letter')
    if not text.rstrip().endswith('.'):
        problems.append('should end with a period')
    if re.search(r'\S\s{2,}\S', text):
        problems.append('holds a run of blanks')
    return problems


def check_docstring(doc: Optional[str]) -> list[str]:
    """Problems of a resource class docstring (the user's documentation)."""
    if not doc or not doc.strip():
        return ['class docstring missing: add a one-line summary and a description']
    lines = [line.strip() for line in doc.strip('\n').split('\n')]
    problems = ['summary %s' % p for p in _text_problems(lines[0])]
    if len(lines) < 3:
        problems.append('description missing: add a blank line and what the resource does and '
                        'needs after the summary')
        return problems
    if lines[1]:
        problems.append('summary should be one line followed by a blank line')
    body = lines[2:]
    while body and not body[-1]:
        body.pop()
    if body and re.match(r'^[a-z]', body[0]):
        problems.append('description should start with an upper-case letter')
    if body and not body[-1].endswith(('.', '::', ':')):
        problems.append('description should end with a period')
    for line in body:
        if re.search(r'\S\s{2,}\S', line):
            problems.append('description holds a run of blanks: %r' % line[:60])
    return problems


def _nested(schema: Any) -> Iterable[tuple[str, Any]]:
    """The nested schemas of *schema*: map keys, or ``*`` for the items of a list."""
    from heat.engine import constraints

    sub = getattr(schema, 'schema', None)
    if isinstance(sub, constraints.AnyIndexDict):
        return [(ANY_ITEM, sub.value)]
    if isinstance(sub, Mapping):
        return list(sub.items())
    return []


def check_schema(kind: str, schema: Mapping[str, Any], *,
                 path: tuple[str, ...] = ()) -> list[str]:
    """Problems of a properties or attributes schema, nested schemas included.

    As in heat's guidelines, the item schema of a list (``*``) may go without a description (the
    list's own description covers it); when it has one, or it is a map, its parts are checked.
    """
    problems = []
    for key, value in schema.items():
        where = '.'.join(path + (str(key),))
        description = getattr(value, 'description', None)
        if not description or not str(description).strip():
            if key != ANY_ITEM:
                problems.append('%s %s: description missing' % (kind, where))
        else:
            problems.extend('%s %s: description %s' % (kind, where, p)
                            for p in _text_problems(str(description)))
        nested = dict(_nested(value))
        if nested:
            problems.extend(check_schema(kind, nested, path=path + (str(key),)))
    return problems


def check_methods(cls: type) -> list[str]:
    problems = []
    for name, member in sorted(vars(cls).items()):
        if name.startswith('__') or not callable(member) or not member.__doc__:
            continue
        first = member.__doc__.strip().split('\n')[0].strip()
        problems.extend('method %s: docstring summary %s' % (name, p)
                        for p in _text_problems(first))
    return problems


def check_class(cls: type) -> list[str]:
    """Every problem of one resource class."""
    problems = ['docstring: %s' % p for p in check_docstring(cls.__doc__)]
    problems.extend(check_schema('property', getattr(cls, 'properties_schema', {})))
    problems.extend(check_schema('attribute', getattr(cls, 'attributes_schema', {})))
    problems.extend(check_methods(cls))
    return problems


def check_classes(classes: Mapping[str, type]) -> dict[str, list[str]]:
    """Map each resource type with problems to its problems."""
    report = {}
    for type_name, cls in sorted(classes.items()):
        problems = check_class(cls)
        if problems:
            report[type_name] = problems
    return report


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--plugin-dir', default=None,
                        help='Directory heat loads the plugin from (default: heat_gpu/resources '
                             'of the installed package).')
    args = parser.parse_args(argv)
    plugin_dir = args.plugin_dir or default_plugin_dir()
    try:
        classes = load_resource_classes(plugin_dir=plugin_dir)
    except Exception as exc:  # any import error of a plugin module fails the check
        print('check_descriptions: heat could not load the plugins in %s: %s: %s'
              % (plugin_dir, type(exc).__name__, exc))
        return 1
    if not classes:
        print('check_descriptions: no %s* resource type found in %s' % (TYPE_PREFIX, plugin_dir))
        return 1
    report = check_classes(classes)
    for type_name, problems in report.items():
        cls = classes[type_name]
        for problem in problems:
            print('%s (%s.%s): %s' % (type_name, cls.__module__, cls.__name__, problem))
    if report:
        print('check_descriptions: %d of %d resource types have description problems'
              % (len(report), len(classes)))
        return 1
    print('check_descriptions: %d resource types OK: %s'
          % (len(classes), ', '.join(sorted(classes))))
    return 0


if __name__ == '__main__':
    sys.exit(main())
