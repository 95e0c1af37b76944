#!/bin/bash
# heat-gpu bootstrap: install the NVIDIA driver and CUDA on a GPU instance at first boot, prove
# every GPU works, and report to Heat.
#
# Settings: /etc/heat-gpu/bootstrap.json (written by the instance's user data; see
# doc/architecture.md, "Guest <-> Heat protocol"). Phases, in order: detect, prepare-kernel,
# install-driver, reboot, install-cuda, verify (the runfile route reboots before install-driver,
# because the runfile refuses to install while nouveau is loaded). Every step leaves a marker in
# /var/lib/heat-gpu/, so a rerun - or the resume after the reboot this script asks for, through
# the heat-gpu-bootstrap.service unit it installs - never repeats finished work.
#
# Environment (for tests and debugging; a real guest needs none of it):
#   HEAT_GPU_TRACE=1        trace every command (set -x)
#   HEAT_GPU_ROOT           prefix of every absolute path the script reads or writes
#   HEAT_GPU_SETTINGS, HEAT_GPU_STATE_DIR, HEAT_GPU_LOG   override single paths
set -eu -o pipefail
[ -n "${HEAT_GPU_TRACE:-}" ] && set -x

: "${HEAT_GPU_ROOT:=}"
: "${HEAT_GPU_SETTINGS:=${HEAT_GPU_ROOT}/etc/heat-gpu/bootstrap.json}"
: "${HEAT_GPU_STATE_DIR:=${HEAT_GPU_ROOT}/var/lib/heat-gpu}"
: "${HEAT_GPU_LOG:=${HEAT_GPU_ROOT}/var/log/heat-gpu-bootstrap.log}"
: "${HEAT_GPU_NVIDIA_URL:=https://developer.download.nvidia.com}"
: "${HEAT_GPU_CURL_TIMEOUT:=600}"

R=$HEAT_GPU_ROOT
STATE=$HEAT_GPU_STATE_DIR
LIBDIR=/usr/local/lib/heat-gpu
UNIT=heat-gpu-bootstrap.service
AGENT_UNIT=heat-gpu-agent.service
PHASE=init
FINAL_SENT=
TOKEN=
HEAT_URL=
WORK=

# Distros with an NVIDIA repository, and the CUDA lines each one offers: "repo lowest highest".
distro_repo() {
    case "$1" in
        ubuntu-20.04) echo "ubuntu2004 11.0 12.9" ;;
        ubuntu-22.04) echo "ubuntu2204 11.7 99.9" ;;
        ubuntu-24.04) echo "ubuntu2404 12.5 99.9" ;;
        debian-12) echo "debian12 12.2 99.9" ;;
        rhel-7) echo "rhel7 10.0 12.4" ;;
        rhel-8) echo "rhel8 10.0 99.9" ;;
        rhel-9) echo "rhel9 11.7 99.9" ;;
        *) return 1 ;;
    esac
}
SUPPORTED_DISTROS="Ubuntu 20.04/22.04/24.04, Debian 12, RHEL/CentOS 7/8/9, Rocky/AlmaLinux 8/9"

mkdir -p "$STATE" "$(dirname "$HEAT_GPU_LOG")"
chmod 700 "$STATE"
exec 3>&1
exec >>"$HEAT_GPU_LOG" 2>&1

log() {
    local line
    printf -v line '%(%Y-%m-%dT%H:%M:%S%z)T heat-gpu: %s' -1 "$*"
    printf '%s\n' "$line"
    printf '%s\n' "$line" >&3 || true
    if command -v logger >/dev/null 2>&1; then
        logger -t heat-gpu -- "$*" || true
    fi
}

# now_ms: milliseconds since the epoch (bash 5's clock without a fork; date on older bash).
now_ms() {
    local us=${EPOCHREALTIME:-}
    if [ -n "$us" ]; then
        us=${us/[.,]/}
        echo $((us / 1000))
    else
        us=$(date +%s%N)
        echo $((us / 1000000))
    fi
}

# value FILE: the first line of a state file.
value() {
    local v=
    read -r v < "$1" || true
    printf '%s\n' "$v"
}

# --- settings -------------------------------------------------------------------------------

# Prints shell assignments (S_*) for the settings; credentials stay in the file.
read_settings() {
    python3 - "$HEAT_GPU_SETTINGS" <<'PY'
import json, shlex, sys
with open(sys.argv[1], encoding='utf-8') as f:
    s = json.load(f)
sig = s.get('signal') or {}
out = {
    'S_TRANSPORT': sig.get('transport', 'NONE'),
    'S_AUTH_URL': sig.get('auth_url', ''),
    'S_STACK_ID': sig.get('stack_id', ''),
    'S_RESOURCE': sig.get('resource_name', ''),
    'S_REGION': sig.get('region_name') or '',
    'S_ENDPOINT': sig.get('endpoint', ''),
    'S_METHOD': s.get('install_method', 'auto'),
    'S_MODULES': s.get('kernel_modules', 'proprietary'),
    'S_MODULES_AUTO': 'yes' if s.get('kernel_modules_auto', False) else '',
    'S_CUDA_AUTO': 'yes' if s.get('cuda_auto', True) else '',
    'S_MIRROR': (s.get('mirror_url') or '').rstrip('/'),
    'S_EXPECTED': str(int(s.get('expected_gpu_count') or 0)),
    'S_RETRIES': str(int(s.get('download_retries', 5))),
    'S_RETRY_DELAY': str(int(s.get('retry_delay', 5))),
    'S_GPU_MODEL': s.get('gpu_model') or '',
}
for k, v in out.items():
    print('%s=%s' % (k, shlex.quote(str(v))))
cands = ['%s:%s:%s' % (c['cuda'], c['branch'], c.get('runfile', ''))
         for c in s.get('cuda_candidates', [])]
print('S_CANDIDATES=(%s)' % ' '.join(shlex.quote(c) for c in cands))
sums = ['%s=%s' % (k, v) for k, v in sorted((s.get('checksums') or {}).items())]
print('S_CHECKSUMS=(%s)' % ' '.join(shlex.quote(c) for c in sums))
fprs = [str(f).replace(' ', '').upper() for f in s.get('keyring_fingerprints') or ()]
print('S_KEYRING_FPRS=(%s)' % ' '.join(shlex.quote(f) for f in fprs))
PY
}

# --- signals to Heat ------------------------------------------------------------------------

# The signal body: status, reason, and the report (JSON-encoded in "data").
signal_body() {
    local status=$1 reason=$2
    python3 - "$status" "$reason" "$PHASE" "$STATE" "$HEAT_GPU_LOG" <<'PY'
import json, os, sys
status, reason, phase, state, logf = sys.argv[1:6]

def read(name, default=''):
    try:
        with open(os.path.join(state, name), encoding='utf-8') as f:
            return f.read().strip()
    except OSError:
        return default

phases = {}
for name in ('detect', 'prepare-kernel', 'install-driver', 'reboot', 'install-cuda', 'verify'):
    ms = read('phase-%s.ms' % name)
    if ms:
        phases[name] = round(int(ms) / 1000.0, 3)
pci = {}
for line in read('pci.txt').splitlines():
    addr, pci_id = line.split()[:2]
    pci[addr] = pci_id
gpus = []
for line in read('gpus.csv').splitlines():
    f = [x.strip() for x in line.split(',')]
    if len(f) < 6:
        continue
    bus = f[2].lower()
    addr = bus[-12:] if len(bus) >= 12 else bus
    gpus.append({'index': int(f[0]), 'name': f[1], 'pci_address': addr,
                 'memory_mib': int(float(f[3])), 'uuid': f[4], 'pci_id': pci.get(addr, '')})
try:
    with open(logf, encoding='utf-8', errors='replace') as f:
        tail = [x.rstrip('\n') for x in f.readlines()[-20:]]
except OSError:
    tail = []
# Signals are numbered across reboots, so Heat can tell a late or repeated one from a newer one.
try:
    seq = int(read('signal-seq', '0')) + 1
except ValueError:
    seq = 1
with open(os.path.join(state, 'signal-seq'), 'w', encoding='utf-8') as f:
    f.write('%d\n' % seq)
report = {'seq': seq, 'phase': phase, 'phases': phases, 'gpus': gpus,
          'driver_version': read('driver_version') or None,
          'cuda_version': read('cuda_version') or None,
          'method': read('method') or None, 'distro': read('distro') or None,
          'log_tail': tail}
print(json.dumps({'status': status, 'id': 'heat-gpu', 'reason': reason,
                  'data': json.dumps(report)}))
PY
}

# Keystone password request for the stack user; read straight from the settings file.
keystone_body() {
    python3 - "$HEAT_GPU_SETTINGS" <<'PY'
import json, sys
with open(sys.argv[1], encoding='utf-8') as f:
    sig = json.load(f)['signal']
print(json.dumps({'auth': {
    'identity': {'methods': ['password'],
                 'password': {'user': {'id': sig['user_id'], 'password': sig['password']}}},
    'scope': {'project': {'id': sig['project_id']}}}}))
PY
}

# Reads "curl -D -" output on stdin; prints the token and the orchestration endpoint.
parse_token_response() {
    python3 -c '
import json, sys
raw = sys.stdin.read()
blocks = raw.replace("\r\n", "\n").split("\n\n")
headers, i = [], 0
while i < len(blocks) and blocks[i].startswith("HTTP/"):
    headers = blocks[i].split("\n")
    i += 1
body = "\n\n".join(blocks[i:])
status = headers[0].split()[1] if headers else "000"
if status != "201":
    sys.exit("Keystone answered HTTP %s: %s" % (status, body[:200]))
token = ""
for h in headers[1:]:
    k, _, v = h.partition(":")
    if k.strip().lower() == "x-subject-token":
        token = v.strip()
url = ""
for svc in json.loads(body)["token"].get("catalog", []):
    if svc.get("type") != "orchestration":
        continue
    for ep in svc.get("endpoints", []):
        if ep.get("interface") == "public" and (not sys.argv[1] or
                                                ep.get("region_id") == sys.argv[1]):
            url = ep["url"]
if not token or not url:
    sys.exit("Keystone token has no X-Subject-Token or no public orchestration endpoint")
print(token)
print(url.rstrip("/"))
' "$S_REGION"
}

get_token() {
    local resp parsed
    resp=$(keystone_body | curl -sS -m 30 -D - -H 'Content-Type: application/json' \
        --data-binary @- "${S_AUTH_URL%/}/auth/tokens") || return 1
    parsed=$(printf '%s' "$resp" | parse_token_response) || return 1
    TOKEN=${parsed%%$'\n'*}
    HEAT_URL=${parsed#*$'\n'}
}

post_signal() {
    local body=$1 url code
    case "$S_TRANSPORT" in
        HEAT_SIGNAL)
            if [ -z "$TOKEN" ]; then
                get_token || return 1
            fi
            url="$HEAT_URL/stacks/$S_STACK_ID/resources/$S_RESOURCE/signal"
            code=$(printf '%s' "$body" | curl -sS -m 30 -o /dev/null -w '%{http_code}' \
                -X POST -H 'Content-Type: application/json' \
                -H @<(printf 'X-Auth-Token: %s\n' "$TOKEN") --data-binary @- "$url") || return 1
            ;;
        TOKEN_SIGNAL)
            code=$(printf '%s' "$body" | curl -sS -m 30 -o /dev/null -w '%{http_code}' \
                -X POST -H 'Content-Type: application/json' \
                -H @<(token_header) --data-binary @- "$S_ENDPOINT") || return 1
            ;;
        *)
            return 0
            ;;
    esac
    case "$code" in
        2*) return 0 ;;
        401)
            TOKEN=
            log "signal: HTTP 401 from $url"
            return 1
            ;;
        *)
            log "signal: HTTP $code"
            return 1
            ;;
    esac
}

token_header() {
    python3 - "$HEAT_GPU_SETTINGS" <<'PY'
import json, sys
with open(sys.argv[1], encoding='utf-8') as f:
    print('X-Auth-Token: %s' % json.load(f)['signal']['token'])
PY
}

# signal STATUS REASON: IN_PROGRESS only on HEAT_SIGNAL; the final one is retried for about ten
# minutes (waits growing to a minute), so a busy or restarting Heat API does not cost the result.
signal() {
    local status=$1 reason=$2 body n tries=1 delay
    if [ "$S_TRANSPORT" = NONE ]; then
        log "signal $status (no signal target in the settings): $reason"
        return 0
    fi
    if [ "$status" = IN_PROGRESS ] && [ "$S_TRANSPORT" != HEAT_SIGNAL ]; then
        return 0
    fi
    [ "$status" = IN_PROGRESS ] || tries=12
    log "signal $status: $reason"
    body=$(signal_body "$status" "$reason")
    for ((n = 1; n <= tries; n++)); do
        if post_signal "$body"; then
            return 0
        fi
        delay=$((S_RETRY_DELAY * n))
        [ "$delay" -gt 60 ] && delay=60
        [ "$n" -lt "$tries" ] && sleep "$delay"
    done
    log "signal $status could not be delivered to Heat"
    return 0
}

# --- failure, cleanup -----------------------------------------------------------------------

fail() {
    local reason=$1
    log "FAILED in phase $PHASE: $reason"
    printf '%s\n' "$reason" > "$STATE/failure_reason"
    finish FAILURE "$reason"
    exit 1
}

finish() {
    local status=$1 reason=$2
    FINAL_SENT=yes
    signal "$status" "$reason"
    printf '%s\n' "$status" > "$STATE/final_status"
    rm -f "$R/etc/systemd/system/multi-user.target.wants/$UNIT"
}

on_exit() {
    local rc=$?
    if [ -n "$WORK" ] && [ -d "$WORK" ]; then
        rm -rf "$WORK"
    fi
    if [ "$rc" -ne 0 ] && [ -z "$FINAL_SENT" ]; then
        FINAL_SENT=yes
        log "unexpected error (exit $rc) in phase $PHASE at: ${ERR_CMD:-unknown command}"
        signal FAILURE "unexpected error in phase $PHASE (exit $rc) running: ${ERR_CMD:-?}; see log_tail" || true
    fi
}
trap on_exit EXIT
trap 'ERR_CMD=$BASH_COMMAND' ERR

# --- steps and phases -----------------------------------------------------------------------

step() {
    local name=$1
    shift
    if [ -e "$STATE/$name.done" ]; then
        log "step $name: already done"
        return 0
    fi
    log "step $name"
    "$@"
    : > "$STATE/$name.done"
}

add_phase_time() {
    local name=$1 start=$2 prev=0
    [ -e "$STATE/phase-$name.ms" ] && read -r prev < "$STATE/phase-$name.ms"
    echo $((prev + $(now_ms) - start)) > "$STATE/phase-$name.ms"
}

phase() {
    local name=$1 start
    shift
    if [ -e "$STATE/phase-$name.done" ]; then
        return 0
    fi
    PHASE=$name
    if [ ! -e "$STATE/phase-$name.started" ]; then
        : > "$STATE/phase-$name.started"
        signal IN_PROGRESS "phase $name started"
    fi
    start=$(now_ms)
    PHASE_START=$start
    "$@"
    add_phase_time "$name" "$start"
    : > "$STATE/phase-$name.done"
}

run_quiet() {
    log "run: $*"
    "$@"
}

# --- downloads ------------------------------------------------------------------------------

base_url() {
    if [ -n "$S_MIRROR" ]; then
        echo "$S_MIRROR"
    else
        echo "$HEAT_GPU_NVIDIA_URL"
    fi
}

checksum_for() {
    local file=$1 kv
    for kv in "${S_CHECKSUMS[@]}"; do
        if [ "${kv%%=*}" = "$file" ]; then
            echo "${kv#*=}"
            return 0
        fi
    done
    return 0
}

# download URL DEST: HTTPS only, bounded retries with backoff, sha256 check when known.
download() {
    local url=$1 dest=$2 file want got n delay
    file=${url##*/}
    case "$url" in
        https://*) ;;
        *) fail "refusing to download $url: only https:// URLs are accepted (mirror_url must be an https:// base URL)" ;;
    esac
    for ((n = 1; n <= S_RETRIES; n++)); do
        log "download $url (attempt $n/$S_RETRIES)"
        if curl -fsSL --proto '=https' -m "$HEAT_GPU_CURL_TIMEOUT" -o "$dest.part" "$url"; then
            break
        fi
        rm -f "$dest.part"
        if [ "$n" -eq "$S_RETRIES" ]; then
            fail "download of $url failed $S_RETRIES times; check that the instance reaches $(base_url) (or set mirror_url to a reachable https mirror)"
        fi
        delay=$((S_RETRY_DELAY * (1 << (n - 1))))
        sleep "$delay"
    done
    want=$(checksum_for "$file")
    if [ -n "$want" ]; then
        got=$(sha256sum "$dest.part" | cut -d' ' -f1)
        if [ "$got" != "$want" ]; then
            rm -f "$dest.part"
            fail "checksum mismatch for $file: expected sha256 $want, got $got; the mirror or a proxy serves a different file, or the checksums property is stale"
        fi
        log "sha256 of $file verified"
    else
        log "no sha256 known for $file (checksums property): relying on HTTPS"
    fi
    mv "$dest.part" "$dest"
}

# --- detect ---------------------------------------------------------------------------------

detect_distro() {
    local id ver major key
    [ -r "$R/etc/os-release" ] || fail "cannot read /etc/os-release: unknown distribution; supported: $SUPPORTED_DISTROS"
    # shellcheck source=/dev/null
    id=$(. "$R/etc/os-release" && echo "${ID:-}")
    # shellcheck source=/dev/null
    ver=$(. "$R/etc/os-release" && echo "${VERSION_ID:-}")
    major=${ver%%.*}
    case "$id" in
        ubuntu) key="ubuntu-$ver"; FAMILY=debian ;;
        debian) key="debian-$major"; FAMILY=debian ;;
        rhel | centos | rocky | almalinux | ol) key="rhel-$major"; FAMILY=rhel ;;
        *) key="$id-$ver"; FAMILY=unknown ;;
    esac
    DISTRO="$id-$ver"
    if ! REPO_LINE=$(distro_repo "$key"); then
        fail "unsupported distribution $DISTRO (from /etc/os-release); supported: $SUPPORTED_DISTROS"
    fi
    DISTRO_KEY=$key
    RHEL_MAJOR=$major
    echo "$DISTRO" > "$STATE/distro"
}

detect_gpus() {
    local line addr cls ids dev
    : > "$STATE/pci.txt.new"
    if command -v lspci >/dev/null 2>&1; then
        while read -r addr cls ids _; do
            case "$cls" in 03*) ;; *) continue ;; esac
            echo "$addr $ids" >> "$STATE/pci.txt.new"
        done < <(lspci -D -n -d 10de:)
    else
        for dev in "$R"/sys/bus/pci/devices/*; do
            [ -e "$dev/vendor" ] || continue
            [ "$(cat "$dev/vendor")" = 0x10de ] || continue
            case "$(cat "$dev/class")" in 0x03*) ;; *) continue ;; esac
            line="${dev##*/} 10de:$(sed 's/^0x//' "$dev/device")"
            echo "$line" >> "$STATE/pci.txt.new"
        done
    fi
    mv "$STATE/pci.txt.new" "$STATE/pci.txt"
    GPU_COUNT=$(wc -l < "$STATE/pci.txt")
    if [ "$GPU_COUNT" -eq 0 ]; then
        fail "no NVIDIA GPU on the PCI bus (lspci -d 10de: lists none): the server did not get a GPU. Check the flavor's pci_passthrough:alias extra spec (OS::GPU::Flavor pci_alias) and that nova's [pci] alias (on nova-api and the computes) and [pci] device_spec (on the computes) name vendor_id 10de and the GPU's product_id"
    fi
    log "found $GPU_COUNT NVIDIA GPU(s): $(tr '\n' ' ' < "$STATE/pci.txt")"
    if [ "$S_EXPECTED" -gt 0 ] && [ "$GPU_COUNT" -lt "$S_EXPECTED" ]; then
        fail "found $GPU_COUNT NVIDIA GPU(s) on the PCI bus but the flavor asks for $S_EXPECTED; check nova's [pci] alias count and the hypervisor's free devices"
    fi
}

driver_works() {
    command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1
}

choose() {
    local repo lo hi cand cuda ok=() accepted=""
    read -r repo lo hi <<< "$REPO_LINE"
    for cand in "${S_CANDIDATES[@]}"; do
        cuda=${cand%%:*}
        accepted="$accepted $cuda"
        if ver_le "$lo" "$cuda" && ver_le "$cuda" "$hi"; then
            ok+=("$cand")
        fi
    done
    if [ "${#S_CANDIDATES[@]}" -eq 0 ]; then
        fail "the settings name no CUDA version (cuda_candidates is empty)"
    fi
    if [ "${#ok[@]}" -eq 0 ]; then
        fail "CUDA$accepted is not offered for $DISTRO by NVIDIA's $repo repository (it has CUDA $lo to $hi); choose cuda_version in that range, or another image"
    fi
    IFS=: read -r CUDA BRANCH RUNFILE <<< "${ok[0]}"
    MODULES=$S_MODULES
    if [ "$DISTRO_KEY" = rhel-7 ] && [ "$MODULES" = open ]; then
        if [ -n "$S_MODULES_AUTO" ]; then
            MODULES=proprietary
        else
            fail "kernel_modules open is not offered for RHEL 7 by heat-gpu; accepted there: proprietary (or auto)"
        fi
    fi
    METHOD=$S_METHOD
    [ "$METHOD" = auto ] && METHOD=packages
    [ "$METHOD" = runfile ] && require_runfile_checksum
    printf '%s\n' "$CUDA" "$BRANCH" "$RUNFILE" "$MODULES" "$METHOD" "$repo" > "$STATE/selection"
    log "selected CUDA $CUDA, driver branch $BRANCH, $MODULES kernel modules, method $METHOD ($repo)"
}

load_selection() {
    local sel=()
    mapfile -t sel < "$STATE/selection"
    CUDA=${sel[0]} BRANCH=${sel[1]} RUNFILE=${sel[2]} MODULES=${sel[3]} METHOD=${sel[4]}
    REPO=${sel[5]}
}

# ver_le A B: true when version A (MAJOR.MINOR) <= B.
ver_le() {
    local a_major=${1%%.*} a_minor=${1#*.} b_major=${2%%.*} b_minor=${2#*.}
    [ "$a_major" -lt "$b_major" ] || { [ "$a_major" -eq "$b_major" ] && [ "$a_minor" -le "$b_minor" ]; }
}

do_detect() {
    detect_distro
    detect_gpus
    if driver_works; then
        echo preinstalled > "$STATE/method"
        log "the NVIDIA driver already works (pre-baked image): skipping the installation"
        return 0
    fi
    if [ "$S_METHOD" = preinstalled ]; then
        fail "install_method is preinstalled but the image has no working NVIDIA driver (nvidia-smi fails); accepted: an image with the driver baked in, or install_method auto, packages or runfile"
    fi
    choose
    echo "$METHOD" > "$STATE/method"
}

# --- prepare-kernel -------------------------------------------------------------------------

pkg_install() {
    local rc=0
    case "$FAMILY" in
        debian) DEBIAN_FRONTEND=noninteractive run_quiet apt-get install -y -q "$@" || rc=$? ;;
        rhel)
            if command -v dnf >/dev/null 2>&1; then
                run_quiet dnf install -y -q "$@" || rc=$?
            else
                run_quiet yum install -y -q "$@" || rc=$?
            fi
            ;;
    esac
    if [ "$rc" -ne 0 ]; then
        fail "installing packages $* failed (exit $rc); see log_tail for the package manager's message (repository reachable? mirror_url complete?)"
    fi
}

blacklist_nouveau() {
    mkdir -p "$R/etc/modprobe.d"
    printf 'blacklist nouveau\noptions nouveau modeset=0\n' > "$R/etc/modprobe.d/blacklist-nouveau.conf"
}

kernel_packages() {
    local kernel
    kernel=$(uname -r)
    case "$FAMILY" in
        debian)
            DEBIAN_FRONTEND=noninteractive run_quiet apt-get update -q \
                || fail "apt-get update failed; see log_tail"
            pkg_install "linux-headers-$kernel" gcc make dkms
            ;;
        rhel)
            case "$DISTRO" in
                rhel-*) pkg_install "https://dl.fedoraproject.org/pub/epel/epel-release-latest-$RHEL_MAJOR.noarch.rpm" ;;
                *) pkg_install epel-release ;;
            esac
            if [ "$RHEL_MAJOR" -ge 8 ]; then
                pkg_install "kernel-devel-$kernel" "kernel-headers-$kernel" gcc make dkms dnf-plugins-core
            else
                pkg_install "kernel-devel-$kernel" "kernel-headers-$kernel" gcc make dkms yum-utils
            fi
            ;;
    esac
}

rebuild_initramfs() {
    case "$FAMILY" in
        debian) run_quiet update-initramfs -u || fail "update-initramfs -u failed; see log_tail" ;;
        rhel) run_quiet dracut -f || fail "dracut -f failed; see log_tail" ;;
    esac
}

do_prepare_kernel() {
    step blacklist-nouveau blacklist_nouveau
    step kernel-packages kernel_packages
    step initramfs rebuild_initramfs
}

# --- install-driver -------------------------------------------------------------------------

rewrite_to_mirror() {
    local f
    [ -n "$S_MIRROR" ] || return 0
    for f in "$R"/etc/apt/sources.list.d/cuda*.list "$R"/etc/yum.repos.d/cuda*.repo; do
        [ -e "$f" ] || continue
        sed -i "s#https://developer.download.nvidia.com#$S_MIRROR#g" "$f"
        log "pointed $f at $S_MIRROR"
    done
}

# gpg, from the distribution's own (signed) repositories when the image lacks it.
ensure_gpg() {
    command -v gpg >/dev/null 2>&1 && return 0
    log "gpg is missing: installing the distribution's gnupg package to read the cuda-keyring"
    pkg_install gnupg
    command -v gpg >/dev/null 2>&1 || fail "gpg is still missing after installing gnupg; see log_tail"
}

# primary_fingerprints KEYRING: the fingerprint of every primary key in KEYRING, one a line.
primary_fingerprints() {
    local home="$WORK/gnupg"
    [ -d "$home" ] || mkdir -m 700 "$home"
    gpg --batch --no-tty --homedir "$home" --show-keys --with-colons "$1" \
        | awk -F: '$1 == "pub" || $1 == "sec" { want = 1; next }
                   $1 == "fpr" && want { print toupper($10); want = 0 }'
}

# verify_keyring_deb DEB: before dpkg runs anything of it, unpack the cuda-keyring package and
# refuse it unless every key of every keyring inside is one of the trusted fingerprints
# (settings keyring_fingerprints): the keyring decides which repository signatures apt accepts.
verify_keyring_deb() {
    local deb=$1 name dir f fpr fprs found=() untrusted=() files=() expected
    name=${deb##*/}
    expected=$(printf '%s ' "${S_KEYRING_FPRS[@]}")
    expected=${expected% }
    [ -n "$expected" ] || fail "the settings name no trusted repository key (keyring_fingerprints), so $name cannot be verified; accepted: settings written by heat-gpu (the [heat_gpu] trusted_keyring_fingerprints option of heat.conf) or by the provider template"
    ensure_gpg
    dir="$WORK/keyring-deb"
    rm -rf "$dir"
    mkdir -p "$dir"
    run_quiet dpkg-deb -x "$deb" "$dir" || fail "dpkg-deb -x cannot unpack $name: the mirror or a proxy serves something that is not NVIDIA's cuda-keyring package; use a mirror that serves it unchanged"
    [ -f "$dir/usr/share/keyrings/cuda-archive-keyring.gpg" ] || fail "$name has no /usr/share/keyrings/cuda-archive-keyring.gpg: it is not NVIDIA's cuda-keyring package; use a mirror that serves it unchanged"
    mapfile -t files < <(find "$dir" -type f \( -name '*.gpg' -o -name '*.asc' -o -path '*/trusted.gpg.d/*' \) | sort)
    for f in "${files[@]}"; do
        fprs=$(primary_fingerprints "$f") || fail "gpg cannot read the keyring ${f#"$dir"} in $name; see log_tail. Use a mirror that serves NVIDIA's cuda-keyring unchanged"
        [ -n "$fprs" ] || fail "the keyring ${f#"$dir"} in $name holds no key; use a mirror that serves NVIDIA's cuda-keyring unchanged"
        while read -r fpr; do
            found+=("$fpr")
            case " $expected " in
                *" $fpr "*) ;;
                *) untrusted+=("$fpr (${f#"$dir"})") ;;
            esac
        done <<< "$fprs"
    done
    if [ "${#untrusted[@]}" -gt 0 ]; then
        fail "untrusted repository key in $name: expected only $expected (keyring_fingerprints), found ${untrusted[*]}; refusing to install it. The mirror or a proxy serves a keyring NVIDIA did not publish: use a mirror that serves NVIDIA's cuda-keyring unchanged, or, if NVIDIA rotated its repository key, add the new fingerprint to the [heat_gpu] trusted_keyring_fingerprints option"
    fi
    log "keyring of $name verified: key(s) ${found[*]} trusted"
}

# verify_repo_file FILE: refuse a yum/dnf repository file that lets unsigned packages in.
verify_repo_file() {
    local file=$1 problem
    problem=$(python3 - "$file" <<'PY'
import configparser, sys
parser = configparser.RawConfigParser(strict=False)
try:
    parser.read(sys.argv[1], encoding='utf-8')
except (configparser.Error, UnicodeDecodeError) as ex:
    print('it is not a repository file (%s)' % str(ex).splitlines()[0])
    sys.exit(0)
if not parser.sections():
    print('it has no repository section')
    sys.exit(0)
bad = []
for name in parser.sections():
    why = []
    check = parser.get(name, 'gpgcheck', fallback='').strip()
    if check.lower() not in ('1', 'yes', 'true', 'on'):
        why.append('gpgcheck=%s' % check if check else 'no gpgcheck=')
    keys = parser.get(name, 'gpgkey', fallback='').replace(',', ' ').split()
    if not keys:
        why.append('no gpgkey=')
    why += ['gpgkey=%s is not https://' % k for k in keys if not k.startswith('https://')]
    if why:
        bad.append('[%s] %s' % (name, ', '.join(why)))
print('; '.join(bad))
PY
) || fail "python3 could not read the repository file ${file##*/}; see log_tail"
    if [ -n "$problem" ]; then
        fail "refusing the repository file ${file##*/}: every section must have gpgcheck=1 and a gpgkey= on https://, so that dnf/yum check NVIDIA's package signatures; found: $problem. Use a mirror that serves NVIDIA's repository file unchanged"
    fi
    log "repository file ${file##*/} verified: gpgcheck=1 and an https gpgkey in every section"
}

# apt_update_nvidia: apt-get update with NVIDIA's repository added. apt checks the repository's
# signature against the cuda-keyring just installed; a signature by any other key (a mirror that
# re-signs, a tampered InRelease) is refused by apt, and the failure names that key.
apt_update_nvidia() {
    local out="$WORK/apt-update.log" rc=0 key
    DEBIAN_FRONTEND=noninteractive run_quiet apt-get update -q >"$out" 2>&1 || rc=$?
    cat "$out"
    key=$(grep -o 'NO_PUBKEY [0-9A-Fa-f]*\|EXPKEYSIG [0-9A-Fa-f]*\|BADSIG [0-9A-Fa-f]*' "$out" \
        | head -n 1) || true
    if [ -n "$key" ]; then
        fail "apt refused the signature of NVIDIA's repository $REPO at $(base_url) ($key): its InRelease is not signed by a key of the cuda-keyring (trusted: ${S_KEYRING_FPRS[*]}). Use a mirror that serves NVIDIA's signed repository unchanged, or one whose cuda-keyring holds the key it signs with (add that key to keyring_fingerprints)"
    fi
    [ "$rc" -eq 0 ] || fail "apt-get update failed after adding NVIDIA's repository $REPO; see log_tail"
}

add_repo() {
    local url
    case "$FAMILY" in
        debian)
            url="$(base_url)/compute/cuda/repos/$REPO/x86_64/cuda-keyring_1.1-1_all.deb"
            download "$url" "$WORK/cuda-keyring_1.1-1_all.deb"
            verify_keyring_deb "$WORK/cuda-keyring_1.1-1_all.deb"
            run_quiet dpkg -i "$WORK/cuda-keyring_1.1-1_all.deb" || fail "dpkg -i cuda-keyring failed; see log_tail"
            rewrite_to_mirror
            apt_update_nvidia
            ;;
        rhel)
            url="$(base_url)/compute/cuda/repos/$REPO/x86_64/cuda-$REPO.repo"
            download "$url" "$WORK/cuda-$REPO.repo"
            verify_repo_file "$WORK/cuda-$REPO.repo"
            if command -v dnf >/dev/null 2>&1; then
                run_quiet dnf config-manager --add-repo "$WORK/cuda-$REPO.repo" || fail "dnf config-manager --add-repo failed; see log_tail"
            else
                run_quiet yum-config-manager --add-repo "$WORK/cuda-$REPO.repo" || fail "yum-config-manager --add-repo failed; see log_tail"
            fi
            rewrite_to_mirror
            ;;
    esac
}

# A branch of "auto" (or none) means the newest driver of NVIDIA's repository: the unversioned
# packages and module streams.
driver_packages() {
    local rc=0 suffix=-$BRANCH stream
    case "$BRANCH" in "" | auto) suffix= ;; esac
    case "$FAMILY" in
        debian)
            if [ "$MODULES" = open ]; then
                pkg_install "nvidia-open$suffix"
            else
                pkg_install "cuda-drivers$suffix"
            fi
            ;;
        rhel)
            if [ "$RHEL_MAJOR" -ge 8 ]; then
                if [ -z "$suffix" ]; then
                    stream=nvidia-driver:latest-dkms
                    [ "$MODULES" = open ] && stream=nvidia-driver:open-dkms
                else
                    stream="nvidia-driver:$BRANCH-dkms"
                    [ "$MODULES" = open ] && stream="nvidia-driver:$BRANCH-open"
                fi
                run_quiet dnf module install -y "$stream" || rc=$?
                if [ "$rc" -ne 0 ]; then
                    fail "dnf module install $stream failed (exit $rc); see log_tail (is driver_branch $BRANCH offered for $DISTRO?)"
                fi
            else
                pkg_install "cuda-drivers$suffix"
            fi
            ;;
    esac
}

# The runfile runs as root: only with the sha256 the instance's checksums property gives.
require_runfile_checksum() {
    case "$RUNFILE" in
        cuda_*_linux.run) ;;
        *) fail "install_method runfile needs the runfile name of CUDA $CUDA (cuda_candidates[].runfile, e.g. cuda_12.8.1_570.124.06_linux.run); accepted: a candidate with a runfile, or install_method packages" ;;
    esac
    if [ -z "$(checksum_for "$RUNFILE")" ]; then
        fail "refusing to run the CUDA runfile $RUNFILE as root without a known sha256: add checksums: {$RUNFILE: <sha256>} (NVIDIA lists checksums on the runfile's download page), or use install_method packages"
    fi
}

runfile_install() {
    local full url args=(--silent --driver --toolkit)
    require_runfile_checksum
    full=${RUNFILE#cuda_}
    full=${full%%_*}
    url="$(base_url)/compute/cuda/$full/local_installers/$RUNFILE"
    download "$url" "$WORK/$RUNFILE"
    [ "$MODULES" = open ] && args+=(-m=kernel-open)
    run_quiet sh "$WORK/$RUNFILE" "${args[@]}" || fail "the CUDA runfile $RUNFILE failed; see log_tail (and /var/log/nvidia-installer.log)"
}

load_driver() {
    if driver_works; then
        return 0
    fi
    run_quiet modprobe nvidia || fail "modprobe nvidia failed after installing the $MODULES kernel modules of driver branch $BRANCH; see log_tail (the open modules need a Turing or newer GPU: set kernel_modules proprietary for Pascal and Volta)"
    driver_works || fail "nvidia-smi does not work after loading the driver; see log_tail"
}

do_install_driver() {
    if [ "$METHOD" = runfile ]; then
        step driver-runfile runfile_install
        step load-driver load_driver
    else
        step nvidia-repo add_repo
        step driver-packages driver_packages
    fi
}

# --- reboot ---------------------------------------------------------------------------------

install_resume_unit() {
    mkdir -p "$R$LIBDIR" "$R/etc/systemd/system/multi-user.target.wants"
    if [ "$(readlink -f "${BASH_SOURCE[0]}")" != "$(readlink -f "$R$LIBDIR/bootstrap.sh")" ]; then
        cp "${BASH_SOURCE[0]}" "$R$LIBDIR/bootstrap.sh"
    fi
    chmod 700 "$R$LIBDIR/bootstrap.sh"
    cat > "$R/etc/systemd/system/$UNIT" <<EOF
[Unit]
Description=heat-gpu: resume the NVIDIA driver and CUDA installation after a reboot
Wants=network-online.target
After=network-online.target cloud-init.service

[Service]
Type=oneshot
ExecStart=/bin/bash $LIBDIR/bootstrap.sh
TimeoutStartSec=0
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
EOF
    if command -v systemctl >/dev/null 2>&1; then
        run_quiet systemctl daemon-reload || true
        run_quiet systemctl enable "$UNIT" || fail "systemctl enable $UNIT failed; see log_tail"
    else
        ln -sf "/etc/systemd/system/$UNIT" "$R/etc/systemd/system/multi-user.target.wants/$UNIT"
    fi
}

nouveau_loaded() {
    lsmod | grep -q '^nouveau '
}

request_reboot() {
    if [ -e "$STATE/reboot.requested" ]; then
        log "resumed after the reboot"
        return 0
    fi
    if ! nouveau_loaded && { [ "$METHOD" = runfile ] || modprobe nvidia; }; then
        log "no reboot needed (nouveau is not loaded)"
        return 0
    fi
    install_resume_unit
    : > "$STATE/reboot.requested"
    add_phase_time reboot "$PHASE_START"
    log "rebooting to leave nouveau behind; $UNIT resumes the installation"
    run_quiet reboot || fail "reboot failed; see log_tail"
    exit 0
}

do_reboot() {
    step reboot request_reboot
    if [ "$METHOD" != runfile ]; then
        step load-driver load_driver
    fi
}

# --- install-cuda ---------------------------------------------------------------------------

cuda_packages() {
    pkg_install "cuda-toolkit-${CUDA/./-}"
}

# cuda_home VERSION: the guest path of the toolkit (/usr/local/cuda-VERSION, else where the
# /usr/local/cuda link - through /etc/alternatives on Debian - points).
cuda_home() {
    local p=/usr/local/cuda-$1 target n
    if [ -d "$R$p" ]; then
        echo "$p"
        return 0
    fi
    p=/usr/local/cuda
    for ((n = 0; n < 8; n++)); do
        [ -L "$R$p" ] || break
        target=$(readlink "$R$p")
        case "$target" in
            /*) p=$target ;;
            *) p=$(dirname "$p")/$target ;;
        esac
    done
    if [ -d "$R$p" ] && [ "$p" != /usr/local/cuda ]; then
        echo "$p"
        return 0
    fi
    return 1
}

write_profile() {
    local home
    home=$(cuda_home "$CUDA") || fail "CUDA $CUDA is not installed under /usr/local after install-cuda; see log_tail"
    mkdir -p "$R/etc/profile.d"
    cat > "$R/etc/profile.d/heat-gpu-cuda.sh" <<EOF
# Written by heat-gpu: the CUDA toolkit installed at first boot.
export CUDA_HOME=$home
export PATH=$home/bin\${PATH:+:\$PATH}
export LD_LIBRARY_PATH=$home/lib64\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}
EOF
    echo "$home" > "$STATE/cuda_home"
    log "CUDA $CUDA at $home (PATH set in /etc/profile.d/heat-gpu-cuda.sh)"
}

do_install_cuda() {
    if [ "$METHOD" != runfile ]; then
        step cuda-packages cuda_packages
    fi
    step cuda-profile write_profile
}

# --- verify ---------------------------------------------------------------------------------

write_check_program() {
    cat > "$1" <<'EOF'
// heat-gpu: run a kernel on every GPU and check its result.
#include <cstdio>
#include <cuda_runtime.h>

__global__ void fill(int *out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = i * 3 + 1;
}

int main() {
    int count = 0, failed = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
        printf("CUDA error: no CUDA-capable device is detected\n");
        return 1;
    }
    for (int d = 0; d < count; d++) {
        const int n = 1 << 20;
        int *dev = 0, *host = new int[n];
        char bus[32] = "";
        cudaDeviceProp p;
        cudaSetDevice(d);
        cudaGetDeviceProperties(&p, d);
        cudaDeviceGetPCIBusId(bus, sizeof(bus), d);
        cudaError_t e = cudaMalloc(&dev, n * sizeof(int));
        if (e == cudaSuccess) {
            fill<<<(n + 255) / 256, 256>>>(dev, n);
            e = cudaMemcpy(host, dev, n * sizeof(int), cudaMemcpyDeviceToHost);
        }
        int bad = 0;
        for (int i = 0; e == cudaSuccess && i < n; i++) bad += host[i] != i * 3 + 1;
        if (e != cudaSuccess || bad) {
            printf("CUDA error on device %d: %s\n", d, e != cudaSuccess ? cudaGetErrorString(e) : "wrong results");
            failed = 1;
        } else {
            printf("heat-gpu-check %d %s %d.%d %s OK\n", d, bus, p.major, p.minor, p.name);
        }
        cudaFree(dev);
        delete[] host;
    }
    return failed;
}
EOF
}

verify() {
    local home nvcc smi_count cc gencode=() out ok addr
    nvidia-smi --query-gpu=index,name,pci.bus_id,memory.total,uuid,driver_version,compute_cap \
        --format=csv,noheader,nounits > "$STATE/gpus.csv" \
        || fail "nvidia-smi --query-gpu failed; see log_tail"
    smi_count=$(grep -c . "$STATE/gpus.csv" || true)
    head -n1 "$STATE/gpus.csv" | cut -d, -f6 | tr -d ' ' > "$STATE/driver_version"
    while read -r addr _; do
        if ! grep -qi "${addr}," "$STATE/gpus.csv"; then
            fail "GPU $addr is on the PCI bus but nvidia-smi does not list it (it lists $smi_count of $GPU_COUNT); see log_tail"
        fi
    done < "$STATE/pci.txt"
    if [ "$S_EXPECTED" -gt 0 ] && [ "$smi_count" -lt "$S_EXPECTED" ]; then
        fail "nvidia-smi lists $smi_count GPU(s), the flavor asks for $S_EXPECTED"
    fi
    if [ -e "$STATE/cuda_home" ]; then
        home=$(value "$STATE/cuda_home")
    else
        home=$(cuda_home "${CUDA:-0.0}") || fail "no CUDA toolkit under /usr/local on this pre-baked image; accepted: an image with the toolkit in /usr/local/cuda, or install_method auto"
    fi
    nvcc="$R$home/bin/nvcc"
    [ -x "$nvcc" ] || fail "nvcc not found at $home/bin/nvcc; see log_tail"
    "$nvcc" --version | sed -n 's/.*release \([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p' > "$STATE/cuda_version"
    for cc in $(cut -d, -f7 "$STATE/gpus.csv" | tr -d ' .' | sort -u); do
        gencode+=(-gencode "arch=compute_$cc,code=sm_$cc")
    done
    WORK_CHECK="$WORK/check"
    mkdir -p "$WORK_CHECK"
    write_check_program "$WORK_CHECK/check.cu"
    run_quiet "$nvcc" "${gencode[@]}" -o "$WORK_CHECK/check" "$WORK_CHECK/check.cu" \
        || fail "nvcc could not compile the GPU check program for compute capability $(cut -d, -f7 "$STATE/gpus.csv" | tr -d ' ' | sort -u | paste -sd' ') with CUDA $(value "$STATE/cuda_version"); see log_tail"
    out=$("$WORK_CHECK/check" 2>&1) || fail "the GPU check program failed: $(printf '%s' "$out" | grep -m1 -i error || echo "$out" | tail -n1)"
    printf '%s\n' "$out"
    ok=$(printf '%s\n' "$out" | grep -c '^heat-gpu-check .* OK$' || true)
    if [ "$ok" -ne "$smi_count" ]; then
        fail "the GPU check program passed on $ok of $smi_count GPU(s); see log_tail"
    fi
}

start_agent() {
    local agent=$LIBDIR/heat-gpu-agent
    [ -e "$R$agent" ] || return 0
    chmod 700 "$R$agent"
    if [ ! -e "$R/etc/systemd/system/$AGENT_UNIT" ]; then
        mkdir -p "$R/etc/systemd/system"
        cat > "$R/etc/systemd/system/$AGENT_UNIT" <<EOF
[Unit]
Description=heat-gpu agent: runs GPU sample jobs (Heat software deployments)
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=/usr/bin/python3 $agent
Restart=on-failure
RestartSec=10

[Install]
WantedBy=multi-user.target
EOF
    fi
    if command -v systemctl >/dev/null 2>&1; then
        run_quiet systemctl daemon-reload || true
        run_quiet systemctl enable --now "$AGENT_UNIT" || log "could not start $AGENT_UNIT"
    fi
}

# --- main -----------------------------------------------------------------------------------

main() {
    local summary
    [ -r "$HEAT_GPU_SETTINGS" ] || { S_TRANSPORT=NONE; fail "settings file $HEAT_GPU_SETTINGS is missing"; }
    chmod 600 "$HEAT_GPU_SETTINGS"
    # heat's part handler (SOFTWARE_CONFIG user data) writes the server's metadata, with this
    # stack user's password, world-readable into cloud-init's data directory: root only.
    for f in "$R/var/lib/cloud/data/cfn-init-data" "$R/var/lib/heat-cfntools/cfn-init-data"; do
        if [ -e "$f" ]; then chmod 600 "$f"; fi
    done
    eval "$(read_settings)"
    case "$S_MIRROR" in
        "" | https://*) ;;
        *) fail "mirror_url $S_MIRROR is not an https:// URL; accepted: an https:// base URL of a mirror of $HEAT_GPU_NVIDIA_URL" ;;
    esac
    if command -v flock >/dev/null 2>&1; then
        exec 9>"$STATE/lock"
        flock -n 9 || { log "another bootstrap is running"; FINAL_SENT=yes; exit 0; }
    fi
    if [ "$(value "$STATE/final_status" 2>/dev/null)" = SUCCESS ]; then
        log "bootstrap already finished: SUCCESS"
        start_agent
        FINAL_SENT=yes
        return 0
    fi
    if [ -e "$STATE/final_status" ]; then
        log "the previous attempt failed ($(value "$STATE/failure_reason" 2>/dev/null)); retrying the unfinished steps"
        rm -f "$STATE/final_status" "$STATE/failure_reason"
    fi
    WORK=$(mktemp -d "$STATE/work.XXXXXX")
    log "bootstrap starting (boot resume: $([ -e "$STATE/reboot.requested" ] && echo yes || echo no))"

    phase detect do_detect
    detect_distro
    GPU_COUNT=$(wc -l < "$STATE/pci.txt")
    if [ "$(value "$STATE/method")" != preinstalled ]; then
        load_selection
        phase prepare-kernel do_prepare_kernel
        if [ "$METHOD" = runfile ]; then
            phase reboot do_reboot
            phase install-driver do_install_driver
        else
            phase install-driver do_install_driver
            phase reboot do_reboot
        fi
        phase install-cuda do_install_cuda
    fi
    phase verify verify
    summary="$GPU_COUNT GPU(s) ready: $(cut -d, -f2 "$STATE/gpus.csv" | sed 's/^ *//' | sort | uniq -c | sed 's/^ *//' | paste -sd, -), driver $(value "$STATE/driver_version"), CUDA $(value "$STATE/cuda_version") ($(value "$STATE/method"))"
    PHASE=verify
    finish SUCCESS "$summary"
    start_agent
    log "done: $summary"
}

main "$@"
