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

"""The guest stand-in: "boots" a fake hypervisor's instance by running its real user data.

Started by the fake GPU virt driver, detached, one process per instance:
``python guest.py --guest-dir <state>/guests/<uuid>``. It reads ``instance.json`` (written by
the driver: user data, image properties, the PCI devices nova assigned), prepares a sandbox root
with the GPU simulator (``tools/gpusim``: stub ``lspci``, ``nvidia-smi``, package managers... over
exactly those devices) and then does what cloud-init does with the user data:

- ``text/cloud-config`` parts are merged (lists appended); ``write_files`` are written under the
  root, ``runcmd`` runs after the shell scripts (cloud-init's ``scripts-user`` order);
- ``text/x-shellscript`` parts run in order, in the sandbox environment (``HEAT_GPU_ROOT`` and the
  simulator's stubs first on ``PATH``);
- ``text/x-cfninitdata`` parts are written to ``<root>/var/lib/heat-cfntools/<filename>``;
- ``text/cloud-boothook``, ``text/part-handler`` and anything else are logged and skipped.

When a script calls ``reboot`` the stand-in reboots the guest: the running script is stopped, the
simulator resets the kernel state, and the ``ExecStart`` of every unit enabled under
``<root>/etc/systemd/system/multi-user.target.wants/`` runs. Output goes to stdout, which the driver
connects to ``console.log`` (nova's console output). The process then idles until the instance is
destroyed (SIGTERM), and stops the services the guest started.
"""

import argparse
import base64
import binascii
import contextlib
import email
import gzip
import json
import os
import signal
import subprocess
import sys
import time

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
GPUSIM_DIR = os.path.join(os.path.dirname(HERE), 'gpusim')
SCRIPT_TIMEOUT = 1800.0
MAX_REBOOTS = 5
FAULTS_METADATA_KEY = 'heat_gpu_sim_faults'

_STOP = {'requested': False}


def say(message: str) -> None:
    stamp = time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())
    print('[%s] guest: %s' % (stamp, message), flush=True)


def _load_gpusim():
    if GPUSIM_DIR not in sys.path:
        sys.path.insert(0, GPUSIM_DIR)
    try:
        import gpusim
    except ImportError as exc:
        say('GPU simulator not available (%s): the guest sees no GPU stubs' % exc)
        return None
    return gpusim


def decode_user_data(encoded: str | None) -> bytes:
    """Nova keeps user data base64-encoded; cloud-init also accepts it gzip-compressed."""
    if not encoded:
        return b''
    try:
        data = base64.b64decode(encoded, validate=False)
    except (binascii.Error, ValueError):
        data = encoded.encode('utf-8')
    if data[:2] == b'\x1f\x8b':
        data = gzip.decompress(data)
    return data


_STARTS = (
    (b'#cloud-config', 'text/cloud-config'),
    (b'#cloud-boothook', 'text/cloud-boothook'),
    (b'#part-handler', 'text/part-handler'),
    (b'#include', 'text/x-include-url'),
    (b'#!', 'text/x-shellscript'),
)


def _type_by_start(payload: bytes) -> str:
    for start, ctype in _STARTS:
        if payload.lstrip().startswith(start):
            return ctype
    return 'text/plain'


def split_parts(data: bytes) -> list[dict]:
    """The user data as a list of ``{'type', 'filename', 'payload'}``, in order."""
    if not data.strip():
        return []
    head = data.lstrip()[:200].lower()
    if not (head.startswith(b'content-type:') or head.startswith(b'mime-version:')):
        return [{'type': _type_by_start(data), 'filename': 'part-001', 'payload': data}]
    message = email.message_from_bytes(data)
    parts = []
    for part in message.walk():
        if part.is_multipart():
            continue
        payload = part.get_payload(decode=True) or b''
        ctype = part.get_content_type()
        if ctype in ('text/plain', 'text/x-not-multipart'):
            ctype = _type_by_start(payload)
        parts.append({'type': ctype,
                      'filename': part.get_filename() or 'part-%03d' % (len(parts) + 1),
                      'payload': payload})
    return parts


def merge_cloud_configs(parts: list[dict]) -> dict:
    """Merge cloud-config parts: mappings recursively, lists appended (heat's merge_how)."""
    merged: dict = {}

    def merge(into: dict, new: dict) -> None:
        for key, value in new.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value)
            elif isinstance(value, list) and isinstance(into.get(key), list):
                into[key].extend(value)
            else:
                into[key] = value

    for part in parts:
        doc = yaml.safe_load(part['payload'].decode('utf-8', 'replace')) or {}
        if not isinstance(doc, dict):
            say('cloud-config part %s is not a mapping; skipped' % part['filename'])
            continue
        doc.pop('merge_how', None)
        doc.pop('merge_type', None)
        merge(merged, doc)
    return merged


def in_root(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip('/'))


def _file_content(entry: dict) -> bytes:
    content = entry.get('content', '')
    raw = content.encode('utf-8') if isinstance(content, str) else bytes(content)
    encoding = str(entry.get('encoding', '')).lower()
    if encoding in ('b64', 'base64', 'gz+b64', 'gz+base64', 'gzip+b64', 'gzip+base64'):
        raw = base64.b64decode(raw)
    if encoding.startswith('gz'):
        raw = gzip.decompress(raw)
    return raw


def write_files(root: str, entries: list) -> None:
    for entry in entries:
        if not isinstance(entry, dict) or not entry.get('path'):
            say('write_files entry without a path skipped: %r' % (entry,))
            continue
        target = in_root(root, entry['path'])
        os.makedirs(os.path.dirname(target), exist_ok=True)
        mode = 'ab' if entry.get('append') else 'wb'
        with open(target, mode) as f:
            f.write(_file_content(entry))
        perms = entry.get('permissions')
        if perms is not None:
            os.chmod(target, int(str(perms), 8) if isinstance(perms, str) else int(perms))
        say('write_files: %s' % entry['path'])


class Guest:
    """One instance's sandbox and the programs it runs."""

    def __init__(self, *, guest_dir: str) -> None:
        self.dir = os.path.abspath(guest_dir)
        with open(os.path.join(self.dir, 'instance.json'), encoding='utf-8') as f:
            self.info = json.load(f)
        self.root = os.path.join(self.dir, 'root')
        self.gpusim = _load_gpusim()
        self.env: dict = {}

    def prepare(self) -> None:
        image = self.info.get('image') or {}
        distro = image.get('os_distro') or 'ubuntu'
        version = image.get('os_version') or '22.04'
        prebaked = str(image.get('heat_gpu_prebaked') or '').lower() in ('true', '1', 'yes')
        faults = [f.strip() for f in
                  (self.info.get('metadata') or {}).get(FAULTS_METADATA_KEY, '').split(',')
                  if f.strip()]
        devices = [{'pci_address': d['pci_address'], 'vendor_id': d['vendor_id'],
                    'product_id': d['product_id'], 'numa_node': d.get('numa_node')}
                   for d in self.info.get('pci_devices') or []]
        os.makedirs(self.root, exist_ok=True)
        say('booting instance %s (%s) on %s: image %s %s%s, %d PCI device(s): %s' % (
            self.info['uuid'], self.info.get('display_name'), self.info.get('host'), distro,
            version, ' (pre-baked)' if prebaked else '', len(devices),
            ', '.join('%s %s:%s' % (d['pci_address'], d['vendor_id'], d['product_id'])
                      for d in devices) or 'none'))
        host_path = '/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin'
        if self.gpusim is not None:
            try:
                sim_env = self.gpusim.make_guest(self.root, distro=distro, version=version,
                                                 devices=devices, prebaked=prebaked,
                                                 faults=faults, host_path=host_path)
            except ValueError as exc:
                say('%s; booting as ubuntu 22.04 instead' % exc)
                sim_env = self.gpusim.make_guest(self.root, distro='ubuntu', version='22.04',
                                                 devices=devices, prebaked=prebaked,
                                                 faults=faults, host_path=host_path)
        else:
            os.makedirs(in_root(self.root, '/etc'), exist_ok=True)
            with open(in_root(self.root, '/etc/os-release'), 'w', encoding='utf-8') as f:
                f.write('ID=%s\nVERSION_ID="%s"\n' % (distro, version))
            sim_env = {'PATH': host_path, 'HEAT_GPU_ROOT': self.root}
        with open(in_root(self.root, '/etc/hostname'), 'w', encoding='utf-8') as f:
            f.write('%s\n' % (self.info.get('hostname') or self.info['uuid']))
        with open(os.path.join(self.dir, 'devices.json'), 'w', encoding='utf-8') as f:
            json.dump(devices, f, indent=2)
        self.env = {
            'HOME': in_root(self.root, '/root'), 'USER': 'root', 'LOGNAME': 'root',
            'LANG': 'C.UTF-8', 'TERM': 'dumb', 'SHELL': '/bin/bash',
        }
        os.makedirs(self.env['HOME'], exist_ok=True)
        self.env.update(sim_env)

    def reboot_pending(self) -> bool:
        return self.gpusim is not None and self.gpusim.reboot_pending(self.root)

    def run(self, argv: list[str], *, label: str) -> int | None:
        """Run one program of the guest; None when a reboot (or destroy) cut it short."""
        say('running %s' % label)
        proc = subprocess.Popen(argv, env=self.env, cwd=self.root, stdin=subprocess.DEVNULL,
                                stdout=sys.stdout, stderr=subprocess.STDOUT,
                                start_new_session=True)
        deadline = time.monotonic() + SCRIPT_TIMEOUT
        cut_at = None
        while proc.poll() is None:
            now = time.monotonic()
            if _STOP['requested'] or now > deadline:
                break
            if cut_at is None and self.reboot_pending():
                # A real reboot lets the caller run for a moment, then stops every process.
                cut_at = now + 3.0
            if cut_at is not None and now > cut_at:
                break
            time.sleep(0.2)
        if proc.poll() is None:
            reason = ('a reboot' if cut_at is not None else
                      'shutdown' if _STOP['requested'] else 'its %d s timeout' % SCRIPT_TIMEOUT)
            say('%s stopped by %s' % (label, reason))
            _kill_group(proc.pid)
            with contextlib.suppress(ChildProcessError, subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            return None
        say('%s exited with status %d' % (label, proc.returncode))
        return proc.returncode

    def _script_file(self, name: str, payload: bytes) -> str:
        scripts = in_root(self.root, '/var/lib/cloud/instance/scripts')
        os.makedirs(scripts, exist_ok=True)
        path = os.path.join(scripts, name)
        with open(path, 'wb') as f:
            f.write(payload)
        os.chmod(path, 0o700)
        return path

    def run_user_data(self) -> None:
        parts = split_parts(decode_user_data(self.info.get('user_data')))
        say('user data: %d part(s): %s' % (
            len(parts), ', '.join('%s (%s)' % (p['filename'], p['type']) for p in parts)))
        configs = [p for p in parts if p['type'] == 'text/cloud-config']
        config = merge_cloud_configs(configs)
        for part in parts:
            if part['type'] == 'text/x-cfninitdata':
                target = in_root(self.root, '/var/lib/heat-cfntools/' + part['filename'])
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with open(target, 'wb') as f:
                    f.write(part['payload'])
                say('cfn-init data: %s' % part['filename'])
            elif part['type'] not in ('text/cloud-config', 'text/x-shellscript'):
                say('skipping %s part %s (not run by the stand-in)' % (
                    part['type'], part['filename']))
        write_files(self.root, config.get('write_files') or [])
        programs = []
        for index, part in enumerate(p for p in parts if p['type'] == 'text/x-shellscript'):
            name = 'part-%03d' % (index + 1)
            programs.append(([self._script_file(name, part['payload'])],
                             'user script %s (%s)' % (name, part['filename'])))
        runcmd = config.get('runcmd') or []
        if runcmd:
            lines = ['#!/bin/sh']
            for cmd in runcmd:
                if isinstance(cmd, list):
                    lines.append(' '.join("'%s'" % str(a).replace("'", "'\\''") for a in cmd))
                else:
                    lines.append(str(cmd))
            programs.append(([self._script_file('runcmd', ('\n'.join(lines) + '\n').encode())],
                             'runcmd'))
        for argv, label in programs:
            self.run(argv, label=label)
            if self.reboot_pending() or _STOP['requested']:
                return

    def boot_loop(self) -> None:
        reboots = 0
        while self.reboot_pending() and not _STOP['requested']:
            if reboots >= MAX_REBOOTS:
                say('the guest asked for more than %d reboots; staying up' % MAX_REBOOTS)
                return
            reboots += 1
            self.gpusim.reboot(self.root)
            say('rebooted (%d)' % reboots)
            for argv in self.gpusim.boot_commands(self.root):
                self.run(argv, label='boot unit %s' % ' '.join(argv))
                if self.reboot_pending() or _STOP['requested']:
                    break

    def shutdown(self) -> None:
        if self.gpusim is not None:
            self.gpusim.stop_services(self.root)
        say('powered off')


def _kill_group(pgid: int) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            # Reap the group leader if it is our child, or its zombie keeps the group alive.
            try:
                os.waitpid(pgid, os.WNOHANG)
            except ChildProcessError:
                pass
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description='Boot a local-cloud instance in a sandbox.')
    parser.add_argument('--guest-dir', required=True)
    args = parser.parse_args(argv)

    def on_term(signum, frame):
        _STOP['requested'] = True

    signal.signal(signal.SIGTERM, on_term)
    guest = Guest(guest_dir=args.guest_dir)
    guest.prepare()
    guest.run_user_data()
    guest.boot_loop()
    if not _STOP['requested']:
        say('boot finished')
    while not _STOP['requested']:
        time.sleep(1)
    guest.shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
