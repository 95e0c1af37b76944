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

"""``make bench``: stack create time and nova API requests at scale, plugin path vs plain HOT.

For every N of ``--sizes`` one stack holds an ``OS::Heat::ResourceGroup`` of N GPU instances,
created as the tenant ``demo`` on the benchmark's own local cloud, twice: through the plugin
(``OS::GPU::CudaInstance``, "ours") and through the plain HOT provider
``environments/providers/cuda_instance.yaml`` (``OS::Nova::Server`` + ``OS::Heat::WaitCondition``,
"plain"), back to back and in alternating order. Measured per run: wall time from the stack create
call to ``CREATE_COMPLETE`` (heat's stack status polled, never nova) and the requests nova-api
logged meanwhile. The last line of the output is ``ratio ours/plain at N=50: X.XX``.
"""

import argparse
import collections
import dataclasses
import math
import os
import re
import statistics
import sys
import time
from typing import Iterable, Optional, Sequence
import uuid

from heatclient import client as heat_client
from heatclient.common import template_utils
from heatclient.common import utils as heat_utils
from heatclient import exc as heat_exc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: The benchmark's own local cloud, unless the environment names another one.
CLOUD_DEFAULTS = {
    'HEAT_GPU_CLOUD_DIR': os.path.join(REPO, '.localcloud-bench'),
    'HEAT_GPU_CLOUD_LAYOUT': 'bench',
    'HEAT_GPU_CLOUD_PORT_OFFSET': '100',
}

PATHS = (OURS, PLAIN) = ('ours', 'plain')
PLAIN_TYPE = 'Portable::GPU::CudaInstance'
PROVIDER = 'providers/cuda_instance.yaml'
IMAGES = {
    'ubuntu-22.04-gpu': 'full install (driver, reboot, CUDA, verify) simulated in every guest',
    'ubuntu-22.04-cuda-prebaked': 'pre-baked image: the guests only verify the GPU',
}
DEFAULT_IMAGE = 'ubuntu-22.04-gpu'
DEFAULT_SIZES = (1, 10, 50)
HEADLINE_N = 50
FLAVOR_NAME_PREFIX = 'heat-gpu-bench-p100x1-'
STACK_PREFIX = 'heat-gpu-bench-'

# Goals from the issue: ours no slower than 1.05 x plain, at most plain + 2 nova requests per
# instance, and time growing linearly in N.
GOAL_TIME_RATIO = 1.05
GOAL_EXTRA_REQUESTS = 2.0

_UUID = r'[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}'
_REQUEST_RE = re.compile(
    r'nova\.api\.openstack\.requestlog \[(?P<context>[^\]]*)\] \S+ '
    r'"(?P<method>[A-Z]+) (?P<path>[^" ]*)[^"]*" status: (?P<status>\d+)')
_HEAT_REQUEST_RE = re.compile(
    r'heat\.common\.wsgi \[[^\]]*\] Processing request: (?P<method>[A-Z]+) (?P<path>\S+)')
_ID_SEGMENT_RE = re.compile(r'^(%s|\d+)$' % _UUID)
#: Nova's version documents need no token; their log lines may carry the context of an earlier
#: request served by the same thread, so they are not attributed to a user.
VERSION_PATHS = ('/', '/v2', '/v2/', '/v2.1', '/v2.1/')
VERSIONS_USER = '(versions)'


# Counting nova-api's requests

@dataclasses.dataclass(frozen=True)
class Request:
    """One request nova-api served, as its request log line tells it."""

    method: str
    path: str
    status: int
    user_id: str


def parse_request_log(lines: Iterable[str]) -> list[Request]:
    """The requests in nova-api's log lines (``nova.api.openstack.requestlog``); others skipped.

    A line looks like ``... INFO nova.api.openstack.requestlog [None req-ID USER PROJECT - -
    default default] 127.0.0.1 "GET /v2.1/servers/ID" status: 200 len: 1234 microversion: 2.79
    time: 0.05``; a request without a user (the version document) has ``-`` there.
    """
    requests = []
    for line in lines:
        match = _REQUEST_RE.search(line)
        if not match:
            continue
        context = match.group('context').split()
        user = context[2] if len(context) > 2 and context[1].startswith('req-') else '-'
        if match.group('path').partition('?')[0] in VERSION_PATHS:
            user = VERSIONS_USER
        requests.append(Request(method=match.group('method'), path=match.group('path'),
                                status=int(match.group('status')), user_id=user))
    return requests


def url_pattern(method: str, path: str) -> str:
    """``method path`` with ids as ``{id}`` and query values as ``*``: one key per kind of call.

    ``GET /v2.1/servers/6f1c...?foo=1`` -> ``GET /v2.1/servers/{id}?foo=*``.
    """
    path, _, query = path.partition('?')
    segments = ['{id}' if _ID_SEGMENT_RE.match(s) else s for s in path.split('/')]
    pattern = '/'.join(segments)
    if query:
        keys = sorted(part.partition('=')[0] for part in query.split('&') if part)
        pattern += '?' + '&'.join('%s=*' % k for k in keys)
    return '%s %s' % (method, pattern)


def count_patterns(requests: Iterable[Request]) -> collections.Counter:
    return collections.Counter(url_pattern(r.method, r.path) for r in requests)


def heat_url_pattern(method: str, path: str) -> str:
    """Like url_pattern, with stack names as ``{name}`` and resource names as ``{resource}``.

    ``POST /v1/PROJECT/stacks/NAME/ID/resources/3/signal`` ->
    ``POST /v1/{id}/stacks/{name}/{id}/resources/{resource}/signal``.
    """
    path, sep, query = path.partition('?')
    segments = path.split('/')
    for i in range(1, len(segments)):
        if segments[i - 1] == 'resources' and segments[i]:
            segments[i] = '{resource}'
        elif (segments[i - 1] == 'stacks' and segments[i]
              and not _ID_SEGMENT_RE.match(segments[i])):
            segments[i] = '{name}'
    return url_pattern(method, '/'.join(segments) + sep + query)


def count_heat_requests(lines: Iterable[str]) -> collections.Counter:
    """Requests in heat-api's log lines (``Processing request: METHOD PATH``), by pattern."""
    counts: collections.Counter = collections.Counter()
    for line in lines:
        match = _HEAT_REQUEST_RE.search(line)
        if match:
            counts[heat_url_pattern(match.group('method'), match.group('path'))] += 1
    return counts


class LogWindow:
    """The lines appended to a log file between ``open`` (construction) and ``read``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset = os.path.getsize(path) if os.path.exists(path) else 0

    def read(self) -> list[str]:
        if not os.path.exists(self.path):
            return []
        # A file shorter than the offset was replaced (rotated): all of it is new.
        offset = self.offset if os.path.getsize(self.path) >= self.offset else 0
        with open(self.path, 'rb') as f:
            f.seek(offset)
            data = f.read()
        # Only whole lines: a line still being written belongs to the next window.
        end = data.rfind(b'\n') + 1
        return data[:end].decode('utf-8', 'replace').splitlines()


# Figures

@dataclasses.dataclass
class Run:
    """One stack create: N instances on one path."""

    n: int
    path: str
    seconds: float
    requests: collections.Counter  # url_pattern -> count
    by_user: collections.Counter  # user name (or id) -> count
    heat_requests: collections.Counter = dataclasses.field(
        default_factory=collections.Counter)  # heat_url_pattern -> count

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())


@dataclasses.dataclass
class Row:
    """The median over repeats of one (N, path)."""

    n: int
    path: str
    seconds: float
    requests: float
    repeats: int

    @property
    def seconds_per_instance(self) -> float:
        return self.seconds / self.n

    @property
    def requests_per_instance(self) -> float:
        return self.requests / self.n


def summarize(runs: Sequence[Run]) -> list[Row]:
    """One row per (N, path), medians over the repeats, ordered by N then ours before plain."""
    groups: dict = collections.defaultdict(list)
    for run in runs:
        groups[(run.n, run.path)].append(run)
    rows = [Row(n=n, path=path, seconds=statistics.median(r.seconds for r in group),
                requests=statistics.median(r.total_requests for r in group),
                repeats=len(group))
            for (n, path), group in groups.items()]
    return sorted(rows, key=lambda r: (r.n, PATHS.index(r.path)))


def comparisons(rows: Sequence[Row]) -> dict:
    """Per N with both paths: time ratio ours/plain, requests per instance ours - plain."""
    by_key = {(r.n, r.path): r for r in rows}
    result = {}
    for n in sorted({r.n for r in rows}):
        ours, plain = by_key.get((n, OURS)), by_key.get((n, PLAIN))
        if ours is None or plain is None:
            continue
        result[n] = {
            'time_ratio': ours.seconds / plain.seconds if plain.seconds > 0 else math.inf,
            'extra_requests_per_instance': (ours.requests_per_instance
                                            - plain.requests_per_instance),
        }
    return result


@dataclasses.dataclass
class Linearity:
    """Least-squares line seconds = intercept + slope * N over the sizes of one path."""

    intercept: float
    slope: float
    worst_deviation: float  # largest |measured - fitted| / measured
    marginal_ratio: Optional[float]  # last segment's seconds per added instance / first segment's


def linearity(points: Sequence[tuple[int, float]]) -> Optional[Linearity]:
    """Fit seconds against N; ``None`` with fewer than two distinct N.

    ``marginal_ratio`` compares the cost of one more instance between the two largest N with
    that between the two smallest (needs three N): near 1 is linear, well above 1 grows faster
    than linear, below 1 slower (fixed costs shared).
    """
    points = sorted(points)
    xs = [float(n) for n, _ in points]
    if len(set(xs)) < 2:
        return None
    ys = [s for _, s in points]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sxx
    intercept = mean_y - slope * mean_x
    worst = max(abs(y - (intercept + slope * x)) / y for x, y in zip(xs, ys) if y > 0)
    marginal = None
    if len(points) >= 3:
        first = (ys[1] - ys[0]) / (xs[1] - xs[0])
        last = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
        if first > 0:
            marginal = last / first
    return Linearity(intercept=intercept, slope=slope, worst_deviation=worst,
                     marginal_ratio=marginal)


def format_table(rows: Sequence[Row]) -> str:
    """The figures, one line per (N, path), the ratio columns on the plain line of each N."""
    compare = comparisons(rows)
    header = ('%5s  %-5s  %8s  %8s  %9s  %8s  %10s  %12s  %s' % (
        'N', 'path', 'seconds', 's/inst', 'nova req', 'req/inst', 'time o/p', 'req/inst o-p',
        'runs'))
    lines = [header, '-' * len(header)]
    for row in rows:
        ratio = diff = ''
        if row.path == PLAIN and row.n in compare:
            ratio = '%.2f' % compare[row.n]['time_ratio']
            diff = '%+.2f' % compare[row.n]['extra_requests_per_instance']
        lines.append('%5d  %-5s  %8.1f  %8.2f  %9g  %8.2f  %10s  %12s  %d' % (
            row.n, row.path, row.seconds, row.seconds_per_instance, row.requests,
            row.requests_per_instance, ratio, diff, row.repeats))
    return '\n'.join(lines)


def format_linearity(rows: Sequence[Row]) -> list[str]:
    lines = []
    for path in PATHS:
        fit = linearity([(r.n, r.seconds) for r in rows if r.path == path])
        if fit is None:
            continue
        line = ('linearity %-5s: seconds = %.1f + %.2f * N, worst deviation from the line %.0f%%'
                % (path, fit.intercept, fit.slope, fit.worst_deviation * 100))
        if fit.marginal_ratio is not None:
            line += ('; s per added instance, largest N step / smallest N step: %.2f'
                     % fit.marginal_ratio)
        lines.append(line)
    return lines


def goal_lines(rows: Sequence[Row]) -> list[str]:
    lines = []
    for n, c in sorted(comparisons(rows).items()):
        time_ok = c['time_ratio'] <= GOAL_TIME_RATIO
        req_ok = c['extra_requests_per_instance'] <= GOAL_EXTRA_REQUESTS
        lines.append('goal at N=%d: time ratio %.2f %s %.2f; requests per instance %+.2f %s +%g'
                     % (n, c['time_ratio'], '<=' if time_ok else '>', GOAL_TIME_RATIO,
                        c['extra_requests_per_instance'], '<=' if req_ok else '>',
                        GOAL_EXTRA_REQUESTS))
    return lines


def headline(rows: Sequence[Row]) -> str:
    """The last line: the create-time ratio ours/plain at N=50, or at the largest N run."""
    compare = comparisons(rows)
    if not compare:
        return 'ratio ours/plain: n/a (no N with both paths)'
    if HEADLINE_N in compare:
        return 'ratio ours/plain at N=%d: %.2f' % (HEADLINE_N, compare[HEADLINE_N]['time_ratio'])
    n = max(compare)
    return 'ratio ours/plain at N=%d: %.2f (largest N run; N=%d not in --sizes)' % (
        n, compare[n]['time_ratio'], HEADLINE_N)


def format_requests(runs: Sequence[Run]) -> str:
    """Requests per instance by URL pattern, per (N, path) (averaged over the repeats)."""
    groups: dict = collections.defaultdict(list)
    for run in runs:
        groups[(run.n, run.path)].append(run)
    lines = []
    for (n, path) in sorted(groups, key=lambda k: (k[0], PATHS.index(k[1]))):
        group = groups[(n, path)]
        total = collections.Counter()
        users = collections.Counter()
        for run in group:
            total.update(run.requests)
            users.update(run.by_user)
        per = len(group) * n
        lines.append('N=%d %s (per instance; by user: %s)' % (
            n, path, ', '.join('%s %.2f' % (u, c / per) for u, c in users.most_common())))
        for pattern, count in sorted(total.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append('  %6.2f  %s' % (count / per, pattern))
        heat = collections.Counter()
        for run in group:
            heat.update(run.heat_requests)
        if heat:
            lines.append('  heat-api, per instance (the benchmark\'s own status polls '
                         'included):')
            for pattern, count in sorted(heat.items(), key=lambda kv: (-kv[1], kv[0])):
                lines.append('  %6.2f  %s' % (count / per, pattern))
    return '\n'.join(lines)


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(',') if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            'invalid --sizes %r: comma-separated whole numbers, e.g. 1,10,50' % text) from None
    if not sizes or any(n < 1 for n in sizes):
        raise argparse.ArgumentTypeError(
            'invalid --sizes %r: at least one number, each 1 or more' % text)
    return sorted(set(sizes))


def parse_paths(text: str) -> tuple[str, ...]:
    paths = tuple(p for p in PATHS if p in {part.strip() for part in text.split(',')})
    unknown = {part.strip() for part in text.split(',')} - set(PATHS)
    if unknown or not paths:
        raise argparse.ArgumentTypeError('invalid --paths %r: one or both of %s' % (
            text, ','.join(PATHS)))
    return paths


def run_order(sizes: Sequence[int], repeat: int,
              paths: Sequence[str] = PATHS) -> list[tuple[int, str]]:
    """(N, path) in the order they run: per N and repeat both paths, alternating which first."""
    order = []
    for i, (n, _) in enumerate((n, r) for n in sizes for r in range(repeat)):
        pair = (OURS, PLAIN) if i % 2 == 0 else (PLAIN, OURS)
        order.extend((n, path) for path in pair if path in paths)
    return order


# Talking to the cloud

class BenchFailed(Exception):
    """A stack did not reach the state the benchmark waits for."""


class Bench:
    """The cloud side: flavor, quotas, templates, one timed stack create, cleanup."""

    def __init__(self, cloud, localcloud, *, image: str, bootstrap_timeout: int,
                 poll: float, stack_timeout: float) -> None:
        self.cloud = cloud
        self.image = image
        self.bootstrap_timeout = bootstrap_timeout
        self.poll = poll
        self.stack_timeout = stack_timeout
        self.admin = cloud.connection(admin=True)
        self.demo = cloud.connection(admin=False)
        self.heat = heat_client.Client('1', session=self.demo.session,
                                       region_name=localcloud.REGION, interface='public')
        self.nova_log = cloud.path('log', 'nova-api.log')
        self.heat_log = cloud.path('log', 'heat-api.log')
        self.flavor = None
        self.stacks: list[str] = []
        self._user_names: dict = {}

    # Setup outside the timed part

    def prepare(self, *, max_n: int) -> None:
        suffix = uuid.uuid4().hex[:6]
        self.flavor = self.admin.compute.create_flavor(
            name=FLAVOR_NAME_PREFIX + suffix, vcpus=1, ram=1024, disk=10, is_public=False)
        self.admin.compute.create_flavor_extra_specs(
            self.flavor, {'pci_passthrough:alias': 'p100:1'})
        self.admin.compute.flavor_add_tenant_access(self.flavor, self.demo.current_project_id)
        quota = self.admin.compute.get_quota_set(self.demo.current_project_id)
        wanted = {'instances': max_n, 'cores': max_n * self.flavor.vcpus,
                  'ram': max_n * self.flavor.ram}
        raise_to = {k: v for k, v in wanted.items()
                    if getattr(quota, k) != -1 and getattr(quota, k) < v}
        if raise_to:
            self.admin.compute.update_quota_set(quota, **raise_to)
        self._user_names = {u.id: u.name for u in self.admin.identity.users()}

    def fields(self, path: str, n: int) -> dict:
        """``template``, ``files``, ``environment`` for a group of ``n`` on ``path``."""
        member = {
            'type': 'OS::GPU::CudaInstance' if path == OURS else PLAIN_TYPE,
            'properties': {
                'flavor': self.flavor.id,
                'image': self.image,
                'networks': [{'allocate_network': 'none'}],
                'bootstrap_timeout': self.bootstrap_timeout,
            },
        }
        template = {
            'heat_template_version': '2016-10-14',
            'description': 'heat-gpu scale benchmark: %d GPU instances (%s)' % (n, path),
            'resources': {'group': {'type': 'OS::Heat::ResourceGroup',
                                    'properties': {'count': n, 'resource_def': member}}},
        }
        files: dict = {}
        environment: dict = {}
        if path == PLAIN:
            # The plugin takes the cloud's mirror and its key from [heat_gpu]; the provider
            # template has no such options and gets the same two as properties.
            member['properties'].update(self.cloud.guest_mirror())
            # This heat has the plugin: a provider mapped over OS::GPU::CudaInstance would be
            # taken as a facade of the plugin's class, so the plain path uses its own type name.
            registry = {PLAIN_TYPE: PROVIDER}
            base = heat_utils.base_url_for_url(
                heat_utils.normalise_file_path_to_url(
                    os.path.join(REPO, 'environments', 'portable.yaml')))
            template_utils.resolve_environment_urls(registry, files, base)
            environment = {'resource_registry': registry}
        return {'template': template, 'files': files, 'environment': environment}

    # One timed create

    def create(self, path: str, n: int) -> Run:
        fields = self.fields(path, n)
        name = '%s%s-%d-%s' % (STACK_PREFIX, path, n, uuid.uuid4().hex[:6])
        window = LogWindow(self.nova_log)
        heat_window = LogWindow(self.heat_log)
        t0 = time.monotonic()
        resp = self.heat.stacks.create(stack_name=name, timeout_mins=int(self.stack_timeout / 60)
                                       + 1, **fields)
        stack_id = resp['stack']['id']
        self.stacks.append(stack_id)
        status, reason = self._wait(stack_id, t0)
        seconds = time.monotonic() - t0
        requests = parse_request_log(window.read())
        heat_requests = count_heat_requests(heat_window.read())
        if status != 'CREATE_COMPLETE':
            raise BenchFailed('stack %s (%s, N=%d) is %s after %.0f s: %s%s' % (
                name, path, n, status, seconds, reason, self.failed_resources(stack_id)))
        users = collections.Counter(self._user_names.get(r.user_id, r.user_id)
                                    for r in requests)
        return Run(n=n, path=path, seconds=seconds, requests=count_patterns(requests),
                   by_user=users, heat_requests=heat_requests)

    def _wait(self, stack_id: str, t0: float) -> tuple[str, str]:
        while True:
            stack = self.heat.stacks.get(stack_id, resolve_outputs=False)
            if not stack.stack_status.endswith('IN_PROGRESS'):
                return stack.stack_status, stack.stack_status_reason
            if time.monotonic() - t0 > self.stack_timeout:
                return stack.stack_status + ' (gave up waiting)', stack.stack_status_reason
            time.sleep(self.poll)

    def failed_resources(self, stack_id: str) -> str:
        try:
            resources = self.heat.resources.list(stack_id, nested_depth=3)
        except heat_exc.HTTPException as ex:
            return '\n  (resources not readable: %s)' % ex
        failed = [r for r in resources if r.resource_status.endswith('_FAILED')]
        waiting = [r for r in resources if r.resource_status.endswith('_IN_PROGRESS')]
        text = ''.join('\n  %s (%s): %s %s' % (r.resource_name, r.resource_type,
                                               r.resource_status, r.resource_status_reason)
                       for r in failed)
        if waiting:
            text += '\n  %d resources still in progress: %s' % (
                len(waiting), ', '.join(sorted(r.resource_name for r in waiting)))
        return text

    # Cleanup between runs and at the end

    def delete_stacks(self, *, timeout: float = 900.0) -> None:
        """Delete every stack this benchmark made; wait for them and for free PCI devices."""
        pending = list(self.stacks)
        for stack_id in pending:
            try:
                self.heat.stacks.delete(stack_id)
            except heat_exc.HTTPNotFound:
                pass
        deadline = time.monotonic() + timeout
        while pending:
            still = []
            for stack_id in pending:
                try:
                    stack = self.heat.stacks.get(stack_id, resolve_outputs=False)
                except heat_exc.HTTPNotFound:
                    continue
                if stack.stack_status == 'DELETE_COMPLETE':
                    continue
                if stack.stack_status == 'DELETE_FAILED':
                    # Heat may fail a delete on a transient error; asking again usually works.
                    self.heat.stacks.delete(stack_id)
                still.append(stack_id)
            pending = still
            if pending and time.monotonic() > deadline:
                raise BenchFailed('stacks %s not deleted after %d s' % (pending, timeout))
            if pending:
                time.sleep(2)
        self.stacks = []
        self.wait_pci_free(deadline=deadline)

    def wait_pci_free(self, *, deadline: float) -> None:
        while True:
            used = [d for d in self.cloud.nova_pci_devices() if d['status'] != 'available']
            if not used:
                return
            if time.monotonic() > deadline:
                raise BenchFailed('nova still holds %d PCI devices: %s' % (
                    len(used), ', '.join('%s@%s' % (d['address'], d['host']) for d in used[:5])))
            time.sleep(2)

    def cleanup(self) -> None:
        try:
            self.delete_stacks()
        finally:
            if self.flavor is not None:
                self.admin.compute.delete_flavor(self.flavor, ignore_missing=True)
                self.flavor = None


# Each guest boots its own systemd, which takes inotify instances of the (shared) root user;
# Linux's default of 128 per user lets about 18 guests boot, and the rest fail with "Too many open
# files" (systemd-nspawn exits, the server's wait never ends).
INOTIFY_LIMIT = '/proc/sys/fs/inotify/max_user_instances'
INOTIFY_PER_GUEST = 10


def ensure_inotify_instances(guests: int, *, path: str = INOTIFY_LIMIT) -> Optional[str]:
    """Raise the per-user inotify instance limit for ``guests`` booting guests if it is lower.

    Returns None when the limit suffices or was raised, else what to do (the limit is the
    machine's: it needs root).
    """
    needed = 128 + INOTIFY_PER_GUEST * guests
    try:
        with open(path, encoding='ascii') as f:
            current = int(f.read().strip())
    except (OSError, ValueError):
        return None
    if current >= needed:
        return None
    try:
        with open(path, 'w', encoding='ascii') as f:
            f.write('%d\n' % needed)
        return None
    except OSError as ex:
        return ('fs.inotify.max_user_instances is %d; %d guests need about %d (%s): run '
                '"sysctl -w fs.inotify.max_user_instances=%d" as root' % (
                    current, guests, needed, ex.strerror, needed))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--sizes', type=parse_sizes, default=list(DEFAULT_SIZES),
                        help='comma-separated group sizes N (default: %s)'
                             % ','.join(map(str, DEFAULT_SIZES)))
    parser.add_argument('--image', default=DEFAULT_IMAGE, choices=sorted(IMAGES),
                        help='glance image of every instance (default: %s)' % DEFAULT_IMAGE)
    parser.add_argument('--repeat', type=int, default=1,
                        help='runs per N and path; the table shows medians (default: 1)')
    parser.add_argument('--paths', type=parse_paths, default=PATHS,
                        help='which paths to run, for a closer look at one (default: ours,plain)')
    parser.add_argument('--poll', type=float, default=1.0,
                        help='seconds between two stack status requests (default: 1)')
    parser.add_argument('--stack-timeout', type=float, default=1800.0,
                        help='seconds one stack may take to create (default: 1800)')
    parser.add_argument('--keep-cloud', action='store_true',
                        help='leave the benchmark cloud running at the end')
    parser.add_argument('--details', action='store_true',
                        help='also print nova requests per instance by URL pattern and user, '
                             'and heat-api requests by URL pattern')
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error('--repeat must be 1 or more')

    problem = ensure_inotify_instances(max(args.sizes))
    if problem:
        print('stack_scale: %s' % problem, file=sys.stderr)
        return 2
    for key, value in CLOUD_DEFAULTS.items():
        os.environ.setdefault(key, value)
    sys.path.insert(0, REPO)  # tools/ is a package of the repository, not installed
    from tools.localcloud import cloud as localcloud
    was_up = localcloud.Cloud().is_up()
    cloud = localcloud.ensure_running()
    layout = cloud.heat_layout
    print('cloud: %s (layout %s, port offset %d; heat %s: %d engine(s) of %d worker(s))%s' % (
        cloud.state, cloud.settings['layout'], cloud.settings['port_offset'],
        cloud.heat_layout_name, layout['engines'], layout['engine_workers'],
        '' if was_up else ', started by this benchmark'), flush=True)
    gpus = sum(len(d) for d in cloud.host_devices.values())
    if max(args.sizes) > gpus:
        print('stack_scale: N=%d needs more GPUs than this cloud has (%d)'
              % (max(args.sizes), gpus), file=sys.stderr)
        return 2
    print('image: %s (%s)' % (args.image, IMAGES[args.image]), flush=True)

    # The provider template accepts 300 to 14400 s; the stack timeout bounds the wait anyway.
    bootstrap_timeout = int(min(max(args.stack_timeout, 300), 14400))
    bench = Bench(cloud, localcloud, image=args.image, bootstrap_timeout=bootstrap_timeout,
                  poll=args.poll, stack_timeout=args.stack_timeout)
    runs: list[Run] = []
    code = 0
    try:
        bench.prepare(max_n=max(args.sizes))
        bench.delete_stacks()
        for n, path in run_order(args.sizes, args.repeat, args.paths):
            run = bench.create(path, n)
            runs.append(run)
            creates = run.requests.get('POST /v2.1/servers', 0)
            print('N=%-3d %-5s %7.1f s  %5d nova requests (%s)%s' % (
                n, path, run.seconds, run.total_requests, ', '.join(
                    '%s %d' % kv for kv in run.by_user.most_common()),
                # More server creates than instances: heat replaced servers that failed.
                '; %d servers created for %d instances' % (creates, n) if creates != n else ''),
                flush=True)
            bench.delete_stacks()
    except BenchFailed as ex:
        print('stack_scale: %s' % ex, file=sys.stderr)
        code = 1
    finally:
        try:
            bench.cleanup()
        finally:
            if not was_up and not args.keep_cloud:
                cloud.stop()
                print('cloud: stopped', flush=True)
    if code:
        return code

    rows = summarize(runs)
    print()
    print(format_table(rows))
    print()
    for line in format_linearity(rows) + goal_lines(rows):
        print(line)
    if args.details:
        print()
        print(format_requests(runs))
    print(headline(rows))
    return 0


if __name__ == '__main__':
    sys.exit(main())
