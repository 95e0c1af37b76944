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

"""The user data of an OS::GPU::CudaInstance: boot script, its settings and the guest files.

Plain Python, no Heat import. The result is a MIME multipart (doc/architecture.md, "The user data
of a CudaInstance"):

1. ``text/x-shellscript``: the boot script;
2. the tenant's own user data, unchanged (a multipart of the tenant's keeps its parts);
3. ``text/cloud-config``: ``write_files`` for ``/etc/heat-gpu/bootstrap.json`` (mode 0600: it
   holds the stack user's credentials), the boot script, the guest agent and the sample runner.

cloud-init merges the cloud-config parts in order, each into what the parts before it gave, by
the ``merge_how`` of the part being merged; its default replaces a list the earlier parts set, so
a tenant's ``write_files`` after ours would drop our files. Our part comes last and says
``MERGE_HOW``: its lists are appended to the tenant's and the tenant's other values stay, whatever
``merge_how`` the tenant's own parts use. (A MIME ``Merge-Type`` header would not do: heat's
``SOFTWARE_CONFIG`` format rebuilds every part from its payload and drops the headers.)

Nova refuses user data above 65535 bytes once base64-encoded, and heat's ``SOFTWARE_CONFIG``
format adds its own parts (about 5 KiB). The boot script alone is over 30 KiB, so by default the
files go gzip-compressed in ``write_files`` and the shell part is the boot script's small
launcher (``compact=True``); ``compact=False`` puts the whole boot script in the shell part.
Parts carry no transfer encoding, because heat re-reads each part's raw payload when it merges
them with its own.
"""

import base64
import email
from email import charset as email_charset
from email.mime import multipart
from email.mime import text
import gzip
import json
import os
from typing import Any, Iterable, Optional

import yaml

from heat_gpu import config
from heat_gpu import cuda

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))

SETTINGS_PATH = '/etc/heat-gpu/bootstrap.json'
LIB_DIR = '/usr/local/lib/heat-gpu'
BOOTSTRAP = 'guest/bootstrap.sh'

#: Files of the package written into the guest: (path in the package, path in the guest, mode).
EMBEDDED_FILES = (
    (BOOTSTRAP, LIB_DIR + '/bootstrap.sh', '0700'),
    ('guest/heat-gpu-agent', LIB_DIR + '/heat-gpu-agent', '0700'),
    ('samples/run-samples.sh', LIB_DIR + '/samples/run-samples.sh', '0755'),
)

#: How cloud-init merges our cloud-config part into the tenant's parts before it: lists appended,
#: the tenant's values kept where both set one.
MERGE_HOW = 'dict(no_replace,recurse_list)+list(append)'

#: The boot script's file name among the instance's scripts. cloud-init's ``scripts-user`` runs
#: every shell-script part and ``runcmd`` once per instance, in the order of their file names,
#: and the boot script reboots: a tenant's script named after it would never run. So it sorts
#: after the names tenants use (``runcmd``, ``part-001``, ``setup.sh``...).
SCRIPT_NAME = 'zz-heat-gpu-bootstrap.sh'

#: Nova's limit on user data, base64-encoded.
NOVA_USER_DATA_LIMIT = 65535

LAUNCHER = ('#!/bin/bash\n'
            '# heat-gpu: run the boot script that cloud-config wrote (%s).\n'
            'exec /bin/bash "${HEAT_GPU_ROOT:-}%s/bootstrap.sh"\n' % (BOOTSTRAP, LIB_DIR))

_UTF8_8BIT = email_charset.Charset('utf-8')
_UTF8_8BIT.body_encoding = None


def read_package_file(name: str) -> Optional[str]:
    """The text of ``heat_gpu/<name>``, or None when the file is not there."""
    try:
        with open(os.path.join(PACKAGE_DIR, name), encoding='utf-8') as f:
            return f.read()
    except FileNotFoundError:
        return None


def guest_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The boot script's settings: *settings* (as the resource builds them) plus the choice.

    ``cuda_version``, ``driver_branch``, ``kernel_modules`` and ``install_method`` may be
    ``auto``; the choice (``heat_gpu.cuda.select``) adds ``cuda_candidates`` (newest first),
    ``kernel_modules_auto`` and ``cuda_auto``. ``gpu_count`` becomes ``expected_gpu_count``.
    ``keyring_fingerprints`` (the keys the boot script accepts in NVIDIA's cuda-keyring package)
    defaults to the ``[heat_gpu] trusted_keyring_fingerprints`` option.
    """
    out = {k: v for k, v in settings.items() if v is not None}
    if not out.get('keyring_fingerprints'):
        out['keyring_fingerprints'] = config.trusted_keyring_fingerprints()
    choice = cuda.select(gpu_model=settings.get('gpu_model'),
                         cuda_version=settings.get('cuda_version') or cuda.AUTO,
                         driver_branch=settings.get('driver_branch') or cuda.AUTO,
                         kernel_modules=settings.get('kernel_modules') or cuda.AUTO,
                         install_method=settings.get('install_method') or cuda.AUTO)
    out.update(choice.guest_settings())
    if settings.get('gpu_count'):
        out['expected_gpu_count'] = int(settings['gpu_count'])
    return out


def _file_entry(path: str, content: str, mode: str, *, compress: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {'path': path, 'permissions': mode, 'owner': 'root:root'}
    if compress:
        entry['encoding'] = 'gz+b64'
        entry['content'] = base64.b64encode(
            gzip.compress(content.encode('utf-8'), 9, mtime=0)).decode('ascii')
    else:
        entry['encoding'] = 'b64'
        entry['content'] = base64.b64encode(content.encode('utf-8')).decode('ascii')
    return entry


def cloud_config(*, settings: dict[str, Any], files: Iterable[tuple[str, str, str]],
                 compress: bool = True) -> str:
    """The ``#cloud-config`` part: ``write_files`` for the settings and the guest files.

    It says ``merge_how: MERGE_HOW``, so it must come after the tenant's parts (module docstring).
    """
    entries = [{'path': SETTINGS_PATH, 'permissions': '0600', 'owner': 'root:root',
                'content': json.dumps(settings, indent=1, sort_keys=True) + '\n'}]
    for source, dest, mode in files:
        content = read_package_file(source)
        if content is not None:
            entries.append(_file_entry(dest, content, mode, compress=compress))
    body = yaml.safe_dump({'merge_how': MERGE_HOW, 'write_files': entries},
                          default_flow_style=False, sort_keys=False, width=1 << 20)
    return '#cloud-config\n' + body


def _part(content: str, subtype: str, filename: str) -> text.MIMEText:
    try:
        content.encode('us-ascii')
        part = text.MIMEText(content, subtype, 'us-ascii')
    except UnicodeEncodeError:
        part = text.MIMEText('', subtype)
        part.replace_header('Content-Type', 'text/%s; charset="utf-8"' % subtype)
        del part['Content-Transfer-Encoding']
        part['Content-Transfer-Encoding'] = '8bit'
        part.set_payload(content)
    part.add_header('Content-Disposition', 'attachment', filename=filename)
    return part


def _tenant_subtype(data: str) -> str:
    first = data.lstrip().split('\n', 1)[0]
    for prefix, subtype in (('#cloud-config', 'cloud-config'), ('#!', 'x-shellscript'),
                            ('#include', 'x-include-url'), ('#cloud-boothook', 'cloud-boothook'),
                            ('#part-handler', 'part-handler'), ('#upstart-job', 'upstart-job')):
        if first.startswith(prefix):
            return subtype
    return 'plain'


def build_user_data(*, settings: dict[str, Any], tenant_user_data: Optional[str] = None,
                    files: Iterable[tuple[str, str, str]] = EMBEDDED_FILES,
                    compact: bool = True) -> str:
    """The MIME multipart user data of a CudaInstance (see the module docstring)."""
    script = read_package_file(BOOTSTRAP)
    if script is None:
        raise FileNotFoundError('heat_gpu/%s is missing from the installed package' % BOOTSTRAP)
    files = list(files)
    if not compact:
        files = [f for f in files if f[0] != BOOTSTRAP]
    msg = multipart.MIMEMultipart()
    msg.attach(_part(LAUNCHER if compact else script, 'x-shellscript', SCRIPT_NAME))
    if tenant_user_data:
        for part in _tenant_parts(tenant_user_data):
            msg.attach(part)
    msg.attach(_part(cloud_config(settings=guest_settings(settings), files=files,
                                  compress=compact), 'cloud-config', 'heat-gpu-config'))
    return msg.as_string()


def _tenant_parts(data: str) -> list[Any]:
    """The tenant's user data as MIME parts; a multipart of its own keeps its parts.

    Each part of a tenant's multipart is decoded and carried without a transfer encoding, as
    ours are: heat's ``SOFTWARE_CONFIG`` format re-reads the raw payload of every part, so a
    base64 part (what Python's email package makes of UTF-8 text) would reach cloud-init as
    base64 text.
    """
    if data.lstrip().lower().startswith('content-type: multipart'):
        parsed = email.message_from_string(data)
        if parsed.is_multipart():
            out = []
            for index, part in enumerate(p for p in parsed.walk() if not p.is_multipart()):
                raw = part.get_payload(decode=True) or b''
                content = raw.decode(part.get_content_charset() or 'utf-8', 'replace')
                filename = part.get_filename() or 'tenant-part-%03d' % (index + 1)
                out.append(_part(content, part.get_content_subtype(), filename))
            return out
    return [_part(data, _tenant_subtype(data), 'tenant-user-data')]


def parts(user_data: str) -> list[tuple[str, Optional[str], str]]:
    """Split MIME user data into ``(content type, filename, decoded payload)`` tuples."""
    msg = email.message_from_string(user_data)
    out = []
    for part in msg.walk():
        if part.is_multipart():
            continue
        cte = (part.get('Content-Transfer-Encoding') or '7bit').lower()
        if cte in ('7bit', '8bit', 'binary'):
            body = part.get_payload()
        else:
            raw = part.get_payload(decode=True) or b''
            body = raw.decode(part.get_content_charset() or 'utf-8')
        out.append((part.get_content_type(), part.get_filename(), body))
    return out
