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

"""Tenant user data of every kind a tenant passes, and what each leaves in the guest.

Shared by the guest tests (tests/unit/test_localcloud_guest.py) and the end-to-end test
(tests/functional/test_gpu_stacks.py): the boot script must survive each of them.
"""

from email.mime import multipart
from email.mime import text
import textwrap

WRITE_FILES = textwrap.dedent('''\
    #cloud-config
    write_files:
      - path: /etc/tenant/app.conf
        content: "tenant=1\\n"
    runcmd:
      - [sh, -c, 'echo tenant-runcmd > /tenant-runcmd.txt']
    packages:
      - curl
    ''')
SCRIPT = '#!/bin/bash\necho "tenant script" > /tenant-script.txt\n'
MERGE_HOW = textwrap.dedent('''\
    #cloud-config
    merge_how:
      - name: list
        settings: [replace]
      - name: dict
        settings: [replace]
    write_files:
      - path: /etc/tenant/app.conf
        content: "tenant=1\\n"
    ''')


def mime(parts: list) -> str:
    """A multipart of (subtype, filename, text) parts; UTF-8 parts come base64-encoded."""
    message = multipart.MIMEMultipart()
    for subtype, filename, body in parts:
        part = text.MIMEText(body, subtype, 'utf-8')
        part.add_header('Content-Disposition', 'attachment', filename=filename)
        message.attach(part)
    return message.as_string()


#: kind -> (the tenant's user data, {guest path: content it leaves there})
KINDS = {
    'write_files': (WRITE_FILES, {'/etc/tenant/app.conf': 'tenant=1\n',
                                  '/tenant-runcmd.txt': 'tenant-runcmd\n'}),
    'script': (SCRIPT, {'/tenant-script.txt': 'tenant script\n'}),
    'multipart': (mime([('cloud-config', 'app.yaml', WRITE_FILES),
                        ('x-shellscript', 'setup.sh', SCRIPT)]),
                  {'/etc/tenant/app.conf': 'tenant=1\n',
                   '/tenant-runcmd.txt': 'tenant-runcmd\n',
                   '/tenant-script.txt': 'tenant script\n'}),
    'merge_how': (MERGE_HOW, {'/etc/tenant/app.conf': 'tenant=1\n'}),
}
