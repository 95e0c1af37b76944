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

"""The init of a local-cloud instance: process 1 of its guest, run by the guest's own python3.

A VM's systemd would start cloud-init's four stages and the units enabled in
``multi-user.target``; this init does exactly that, and no more, in the guest's own pid, mount and
UTS namespaces (``guest.py`` starts it under bubblewrap on the instance's root):

1. every boot: ``/run`` and ``/tmp`` are emptied, then ``cloud-init init --local``, ``cloud-init
   init``, ``cloud-init modules --mode=config`` and ``cloud-init modules --mode=final`` run in
   order, as ``cloud-init-local``, ``cloud-init``, ``cloud-config`` and ``cloud-final`` do. The
   real cloud-init decides everything about the user data: which datasource, how parts are
   split and merged, boothooks, part handlers, script order, what runs once per instance;
2. then the units enabled in ``/etc/systemd/system/multi-user.target.wants`` are started (through
   ``systemctl start``: the GPU simulator's service manager, since the guest has no systemd);
3. a reboot the guest asks for (``reboot``: the simulator's, as the kernel is simulated) lets
   the caller run for a moment, then stops every process of the guest, resets the simulated
   kernel state and boots again from 1;
4. SIGTERM (nova stops or deletes the instance): every process of the guest is stopped.

Only the standard library; everything printed goes to the instance's console.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

LIB = '/usr/lib/heat-gpu-localcloud'
BOOT_JSON = LIB + '/boot.json'
ENV_JSON = LIB + '/env.json'
GPUSIM_DIR = '/usr/lib/gpusim'
WANTS = '/etc/systemd/system/multi-user.target.wants'
STAGES = (
    ('cloud-init-local', ['cloud-init', 'init', '--local']),
    ('cloud-init', ['cloud-init', 'init']),
    ('cloud-config', ['cloud-init', 'modules', '--mode=config']),
    ('cloud-final', ['cloud-init', 'modules', '--mode=final']),
)
#: A reboot lets the program that asked for it run on for this long, as shutdown takes a moment.
REBOOT_GRACE = 3.0
MAX_BOOTS = 8

_STOP = {'requested': False}

sys.path.insert(0, GPUSIM_DIR)
import gpusim  # noqa: E402  (the simulator installed into the guest by guest.py)


def say(message: str) -> None:
    stamp = time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())
    print('[%s] init: %s' % (stamp, message), flush=True)


def reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def kill_all(*, grace: float = 5.0) -> None:
    """Stop every process of the guest but this one (kill -1 from process 1)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(-1, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            reap()
            if not others_alive():
                return
            time.sleep(0.1)


def others_alive() -> bool:
    for name in os.listdir('/proc'):
        if name.isdigit() and int(name) != os.getpid():
            try:
                with open('/proc/%s/stat' % name, encoding='utf-8') as f:
                    if f.read().rsplit(')', 1)[-1].split()[0] != 'Z':
                        return True
            except OSError:
                continue
    return False


def empty_dir(path: str) -> None:
    os.makedirs(path, exist_ok=True)
    for name in os.listdir(path):
        full = os.path.join(path, name)
        if os.path.isdir(full) and not os.path.islink(full):
            shutil.rmtree(full, ignore_errors=True)
        else:
            try:
                os.unlink(full)
            except OSError:
                pass


def guest_env() -> dict:
    """The environment of the guest's programs: the simulator's, made at the first boot."""
    if not os.path.exists(ENV_JSON):
        # First boot: what building the image would have done with the CA it was given.
        subprocess.run(['update-ca-certificates'], stdout=subprocess.DEVNULL, check=False)
        with open(BOOT_JSON, encoding='utf-8') as f:
            boot = json.load(f)
        env = gpusim.make_guest('/', distro=boot['distro'], version=boot['version'],
                                devices=boot['devices'], prebaked=boot['prebaked'],
                                faults=boot['faults'], real_userland=True)
        with open(ENV_JSON, 'w', encoding='utf-8') as f:
            json.dump(env, f, indent=1, sort_keys=True)
    with open(ENV_JSON, encoding='utf-8') as f:
        env = json.load(f)
    return {'HOME': '/root', 'USER': 'root', 'LOGNAME': 'root', 'LANG': 'C.UTF-8',
            'TERM': 'linux', 'SHELL': '/bin/bash', **env}


def run(argv: list, *, label: str, env: dict) -> str:
    """Run one program to its end: 'done', 'reboot' (the guest asked for one) or 'stop'."""
    proc = subprocess.Popen(argv, env=env, cwd='/', stdin=subprocess.DEVNULL)
    cut_at = None
    while True:
        try:
            proc.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            pass
        reap()
        if proc.poll() is not None and cut_at is None:
            if proc.returncode:
                say('%s exited with status %d' % (label, proc.returncode))
            return 'reboot' if gpusim.reboot_pending('/') else 'done'
        if _STOP['requested']:
            return 'stop'
        now = time.monotonic()
        if cut_at is None and gpusim.reboot_pending('/'):
            cut_at = now + REBOOT_GRACE
        if cut_at is not None and (now > cut_at or proc.poll() is not None):
            return 'reboot'


def idle() -> str:
    while not _STOP['requested']:
        reap()
        if gpusim.reboot_pending('/'):
            time.sleep(REBOOT_GRACE)
            return 'reboot'
        time.sleep(0.5)
    return 'stop'


def boot(env: dict, number: int) -> str:
    empty_dir('/run')
    empty_dir('/tmp')
    os.chmod('/tmp', 0o1777)
    say('boot %d: starting cloud-init' % number)
    for label, argv in STAGES:
        outcome = run(argv, label=label, env=env)
        if outcome != 'done':
            return outcome
    units = sorted(os.listdir(WANTS)) if os.path.isdir(WANTS) else []
    for unit in units:
        say('starting %s' % unit)
        outcome = run(['systemctl', 'start', unit], label='systemctl start %s' % unit, env=env)
        if outcome != 'done':
            return outcome
    say('boot %d: reached multi-user' % number)
    return idle()


def main() -> int:
    def on_term(signum, frame):
        _STOP['requested'] = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    env = guest_env()
    number = 0
    while True:
        number += 1
        outcome = boot(env, number)
        if outcome == 'stop':
            break
        say('rebooting: stopping every process of the guest')
        kill_all()
        if number >= MAX_BOOTS:
            say('the guest asked for more than %d boots; staying down' % MAX_BOOTS)
            idle_until_stopped()
            break
        gpusim.reboot('/')
    say('stopping every process of the guest')
    kill_all()
    say('powered off')
    return 0


def idle_until_stopped() -> None:
    while not _STOP['requested']:
        reap()
        time.sleep(0.5)


if __name__ == '__main__':
    sys.exit(main())
