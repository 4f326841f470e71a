#!/usr/bin/env bash
# Throwaway single-node Ceph RGW (S3 + STS + IAM) on 127.0.0.1, for tests, the demo and benchmarks.
#
#   scripts/rgw.sh install                  install the Debian packages if missing (idempotent)
#   scripts/rgw.sh start DIR                fresh cluster (mon + memstore OSD + radosgw), state in DIR;
#                                           prints the S3 endpoint; writes DIR/env (sourceable)
#   scripts/rgw.sh stop DIR                 kill the daemons recorded in DIR, remove DIR (idempotent)
#   scripts/rgw.sh mb DIR BUCKET            create a bucket
#   scripts/rgw.sh put DIR BUCKET KEY FILE  upload FILE as BUCKET/KEY
#
# Environment: RGW_PORT (S3 port, default 7480), RGW_MON_PORT (monitor port, default 16789),
# RGW_MEMSTORE_BYTES (OSD capacity, default 8 GiB; memory is only used for data actually stored),
# RGW_START_TIMEOUT (seconds to wait for S3 to answer, default 90), RGW_BEAST_OPTS (extra options of the
# beast frontend, default tcp_nodelay=1: without it every small response on a reused connection stalls
# ~40 ms (Nagle + delayed ACK), which real S3 does not do; set it empty for beast's defaults).
#
# Everything (conf, mon store, OSD, logs, admin sockets, pids) lives under DIR, and every daemon binds
# 127.0.0.1 only, so two clusters in two DIRs can run side by side given different RGW_PORT/RGW_MON_PORT.
# Progress goes to stderr; stdout of `start` is only the endpoint, so `ep=$(scripts/rgw.sh start DIR)` works.
set -euo pipefail

# Throwaway credentials of the local test server (not secrets: the server only exists on 127.0.0.1).
readonly ACCESS_KEY=S3OIDCTESTACCESSKEY
readonly SECRET_KEY=s3oidcTestSecretKeyForLocalRgwOnly000000
readonly ADMIN_UID=testadmin
readonly REGION=us-east-1
# 16 characters: RGW uses it as the AES-128 key that encrypts the STS session tokens it issues.
readonly STS_KEY=s3oidcStsKey0016
# The daemons we start, in the order we stop them.
readonly DAEMONS=(rgw osd mon)

log() { printf 'rgw.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# Absolute path (the daemons' command lines contain it; `stop` uses that to recognise them).
abspath() { realpath -m -- "$1"; }

cmd_install() {
    local pkgs=(radosgw ceph-mon ceph-osd uuid-runtime fuse3 curl python3 util-linux coreutils)
    local missing=() p
    for p in "${pkgs[@]}"; do
        if ! dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
            missing+=("$p")
        fi
    done
    ((${#missing[@]} == 0)) && return 0
    [[ $(id -u) -eq 0 ]] || die "missing packages (${missing[*]}); run 'scripts/rgw.sh install' as root"
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Lock timeout: wait for a concurrent apt/dpkg run instead of failing on its lock.
    local apt=(apt-get -qq -o DPkg::Lock::Timeout=600)
    "${apt[@]}" update >&2
    "${apt[@]}" install -y --no-install-recommends "${missing[@]}" >&2
}

# True if something accepts TCP connections on 127.0.0.1:$1.
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Is pid $1 alive (not a zombie) and one of ours for $dir (its command line names our conf file)?
is_ours() {
    local pid=$1 dir=$2 state
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    # Field 3 of /proc/PID/stat; a zombie has exited (init reaps it, sometimes a little later).
    state=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1) || return 1
    [[ -n $state && $state != Z && $state != X ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$dir/ceph.conf"
}

# Wait up to $3 tenths of a second for pid $1 (of $2) to exit; false if it is still alive.
wait_gone() {
    local pid=$1 dir=$2 i
    for ((i = 0; i < $3; i++)); do
        is_ours "$pid" "$dir" || return 0
        sleep 0.1
    done
    ! is_ours "$pid" "$dir"
}

# Stop the daemons recorded in $1 (absolute), leaving the directory in place.
kill_daemons() {
    local dir=$1 name pid
    # One at a time, radosgw first: killed together, radosgw's clean shutdown waits for the vanished
    # OSD/monitor and needs SIGKILL; in order, each one exits in well under a second.
    for name in "${DAEMONS[@]}"; do
        pid=$(cat "$dir/run/$name.pid" 2>/dev/null || true)
        is_ours "$pid" "$dir" || continue
        kill -TERM "$pid" 2>/dev/null || true
        # The daemons are not our children (another invocation started them): poll instead of `wait`.
        wait_gone "$pid" "$dir" 50 && continue
        log "$name (pid $pid) ignored SIGTERM for 5 s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        wait_gone "$pid" "$dir" 50 || die "$name (pid $pid) of $dir does not exit"
    done
    # Exited daemons were re-parented to PID 1, which reaps them a moment later (~1.5 s in the sandbox
    # here); wait up to 5 s for that, so that "no ceph process left" holds when `stop` returns.
    local i
    for name in "${DAEMONS[@]}"; do
        pid=$(cat "$dir/run/$name.pid" 2>/dev/null || true)
        [[ $pid =~ ^[0-9]+$ ]] || continue
        for ((i = 0; i < 50; i++)); do
            grep -qE '^[0-9]+ \((ceph-mon|ceph-osd|radosgw)\) Z' "/proc/$pid/stat" 2>/dev/null || break
            sleep 0.1
        done
    done
}

cmd_stop() {
    local dir
    dir=$(abspath "$1")
    [[ -e $dir ]] || return 0
    kill_daemons "$dir"
    # Refuse to wipe a directory that this script did not create (guards against `stop ~` typos).
    if [[ -f $dir/.rgw-sh ]] || [[ -z $(ls -A "$dir" 2>/dev/null) ]]; then
        rm -rf -- "$dir"
    else
        die "$dir was not created by rgw.sh (no .rgw-sh marker); not removing it"
    fi
}

write_conf() {
    local dir=$1 fsid=$2 mon_port=$3 rgw_port=$4 memstore_bytes=$5 beast_opts=${6:+ $6}
    cat >"$dir/ceph.conf" <<EOF
# Generated by scripts/rgw.sh: throwaway one-node cluster, everything under $dir.
[global]
fsid = $fsid
mon host = v2:127.0.0.1:$mon_port
public addr = 127.0.0.1
cluster addr = 127.0.0.1
public network = 127.0.0.0/8

# No cephx: nothing to provision, nothing to keep secret; the cluster is reachable only on 127.0.0.1.
auth cluster required = none
auth service required = none
auth client required = none
keyring = $dir/keyring
# With auth off, msgr2's default "secure" mode cannot be negotiated (radosgw then fails with
# "get_initial_auth_request returned -13"), so every connection mode is plain crc.
ms cluster mode = crc
ms service mode = crc
ms client mode = crc
ms mon cluster mode = crc
ms mon service mode = crc
ms mon client mode = crc

# All state, logs, sockets and pid files in DIR (nothing in /var/lib/ceph, /var/log/ceph, /var/run/ceph).
run dir = $dir/run
admin socket = $dir/run/\$name.asok
pid file = $dir/run/\$name.ceph-pid
log file = $dir/log/\$name.log
mon cluster log file = $dir/log/cluster.log
crash dir = $dir/crash
log to stderr = false
err to stderr = true

# One OSD: pools of size 1, allowed without health warnings; few PGs (RGW creates ~7 pools), no autoscaler
# (there is no mgr, and none is needed for I/O).
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
mon warn on pool no redundancy = false
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon max pg per osd = 1000
osd crush chooseleaf type = 0
# Commit monitor map changes every 0.1 s instead of every 1 s: startup is a chain of ~12 OSD map epochs
# (OSD boot, one per RGW pool), so this is most of the startup time.
paxos propose interval = 0.1
# The monitor shuts itself down below 5% free disk by default; its store here is tiny, so only stop at 1%.
mon data avail warn = 2
mon data avail crit = 1

[mon]
mon data = $dir/mon
# Small caches: this is a test server on a small machine. The monitor's rocksdb cache must stay below its
# memory target (else "_set_cache_ratios Cache kv ratio (2) must be in range" on every map epoch).
mon memory target = 268435456
rocksdb cache size = 67108864
# Without cephx the "insecure global_id reclaim" health warnings are meaningless.
mon warn on insecure global id reclaim = false
mon warn on insecure global id reclaim allowed = false

[osd]
osd data = $dir/osd
# Objects live in RAM (no disk, no block device); capacity is a ceiling, RAM is used only for stored data.
osd objectstore = memstore
memstore device bytes = $memstore_bytes
osd memory target = 536870912
# 2 cores: fewer op shards/threads than the defaults (5 shards x 2 threads for SSDs).
osd op num shards = 2
osd op num threads per shard = 2
# SIGTERM = immediate exit (the default, stated because memstore would otherwise serialise all data to disk).
osd fast shutdown = true

[client.rgw]
rgw data = $dir/rgw
rgw frontends = beast endpoint=127.0.0.1:$rgw_port$beast_opts
# S3 plus the admin API, STS (AssumeRoleWithWebIdentity) and IAM (roles, OIDC providers).
rgw enable apis = s3, admin, sts, iam
rgw sts key = $STS_KEY
# Accept the session credentials issued by STS on S3 requests.
rgw s3 auth use sts = true
# Beast is asynchronous; a few dozen threads serve a benchmark's handful of connections (default 512).
rgw thread pool size = 32
EOF
}

# Start "$@" as a daemon named $name: own session (no SIGINT/SIGHUP from the caller's terminal),
# stdin/stdout/stderr detached from the caller (so `$(rgw.sh start DIR)` does not hang), pid recorded.
launch() {
    local dir=$1 name=$2
    shift 2
    setsid "$@" </dev/null >>"$dir/log/$name.out" 2>&1 &
    # We are not a process-group leader, so setsid exec()s in place: $! is the daemon itself.
    echo $! >"$dir/run/$name.pid"
}

# Print $2 and the tails of the named logs ($3...: files under DIR/log), stop the daemons, keep DIR/log
# for a look (the next start or stop of DIR removes it), exit 1.
fail_with_logs() {
    local dir=$1 msg=$2 f
    shift 2
    log "error: $msg"
    for f in "$@"; do
        [[ -s $dir/log/$f ]] || continue
        printf -- '----- tail of %s\n' "$dir/log/$f" >&2
        grep -v '^$' "$dir/log/$f" | tail -n 12 >&2
    done
    log "all logs: $dir/log/ (removed by 'scripts/rgw.sh stop $dir')"
    kill_daemons "$dir" >/dev/null 2>&1 || true
    exit 1
}

# Ceph's own log file of daemon rgw/osd/mon.
log_of() {
    case $1 in
        rgw) echo client.rgw.log ;;
        osd) echo osd.0.log ;;
        mon) echo mon.a.log ;;
    esac
}

cmd_start() {
    local dir rgw_port=${RGW_PORT:-7480} mon_port=${RGW_MON_PORT:-16789}
    local memstore_bytes=${RGW_MEMSTORE_BYTES:-8589934592} timeout=${RGW_START_TIMEOUT:-90}
    dir=$(abspath "$1")
    cmd_install
    local t0=$SECONDS

    # Fresh cluster every time.
    cmd_stop "$dir"
    local p
    for p in "$rgw_port" "$mon_port"; do
        if ! [[ $p =~ ^[0-9]+$ ]] || ((p < 1 || p > 65535)); then
            die "invalid port '$p' (RGW_PORT / RGW_MON_PORT)"
        fi
        port_in_use "$p" && die "127.0.0.1:$p is already in use (set RGW_PORT / RGW_MON_PORT)"
    done
    mkdir -p "$dir"/{mon,osd,rgw,run,log,crash}
    touch "$dir/.rgw-sh" "$dir/keyring"
    local conf=$dir/ceph.conf fsid
    fsid=$(uuidgen)
    write_conf "$dir" "$fsid" "$mon_port" "$rgw_port" "$memstore_bytes" "${RGW_BEAST_OPTS-tcp_nodelay=1}"
    # Every ceph command names the conf explicitly: never fall back to /etc/ceph/ceph.conf.
    local ceph=(timeout 30 ceph -c "$conf" --connect-timeout 20)

    log "starting monitor on 127.0.0.1:$mon_port"
    monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$mon_port]" "$dir/monmap" >/dev/null
    ceph-mon -c "$conf" --mkfs -i a --monmap "$dir/monmap" >>"$dir/log/mon.out" 2>&1 ||
        fail_with_logs "$dir" "ceph-mon --mkfs failed" mon.out
    launch "$dir" mon ceph-mon -c "$conf" -f -i a

    log "starting memstore OSD"
    local osd_uuid osd_id
    osd_uuid=$(uuidgen)
    osd_id=$("${ceph[@]}" osd new "$osd_uuid" 2>>"$dir/log/mon.out") ||
        fail_with_logs "$dir" "monitor does not answer ('ceph osd new' failed)" mon.out mon.a.log
    [[ $osd_id == 0 ]] || fail_with_logs "$dir" "unexpected OSD id '$osd_id'" mon.out
    ceph-osd -c "$conf" -i 0 --mkfs --osd-uuid "$osd_uuid" >>"$dir/log/osd.out" 2>&1 ||
        fail_with_logs "$dir" "ceph-osd --mkfs failed" osd.out
    launch "$dir" osd ceph-osd -c "$conf" -f -i 0

    log "starting radosgw on 127.0.0.1:$rgw_port"
    launch "$dir" rgw radosgw -c "$conf" -f -n client.rgw

    # Wait until S3 answers (any HTTP status; curl prints 000 while the port is closed).
    local endpoint=http://127.0.0.1:$rgw_port code name pid
    while :; do
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$endpoint/" || true)
        [[ $code != 000 ]] && break
        for name in "${DAEMONS[@]}"; do
            pid=$(cat "$dir/run/$name.pid")
            is_ours "$pid" "$dir" || fail_with_logs "$dir" "$name daemon exited during startup" "$name.out" "$(log_of "$name")"
        done
        ((SECONDS - t0 < timeout)) || fail_with_logs "$dir" "S3 did not answer on $endpoint within ${timeout}s" rgw.out client.rgw.log osd.out
        sleep 0.2
    done

    # Admin user with fixed keys; caps let it manage IAM roles and OIDC providers (web-identity tests).
    timeout 60 radosgw-admin -c "$conf" user create --uid "$ADMIN_UID" --display-name "test admin" \
        --access-key "$ACCESS_KEY" --secret-key "$SECRET_KEY" >/dev/null 2>>"$dir/log/radosgw-admin.out" ||
        fail_with_logs "$dir" "radosgw-admin user create failed" radosgw-admin.out
    timeout 60 radosgw-admin -c "$conf" caps add --uid "$ADMIN_UID" \
        --caps "roles=*;oidc-provider=*;users=*;buckets=*;metadata=*" >/dev/null 2>>"$dir/log/radosgw-admin.out" ||
        fail_with_logs "$dir" "radosgw-admin caps add failed" radosgw-admin.out

    printf 'export S3_ENDPOINT=%q AWS_ACCESS_KEY_ID=%q AWS_SECRET_ACCESS_KEY=%q AWS_REGION=%q RGW_DIR=%q\n' \
        "$endpoint" "$ACCESS_KEY" "$SECRET_KEY" "$REGION" "$dir" >"$dir/env"
    log "up in $((SECONDS - t0)) s; credentials in $dir/env"
    echo "$endpoint"
}

# Path-style URL for BUCKET[/KEY]: each path segment percent-encoded (UTF-8), '/' kept as is.
s3_url() {
    local endpoint=$1 path=$2
    printf '%s/%s' "$endpoint" "$(python3 -c 'import sys, urllib.parse as u; print(u.quote(sys.argv[1], safe="/"))' "$path")"
}

# curl signed with SigV4 as the admin user. --path-as-is: keep '..' and '//' in keys (curl would squash them).
# x-amz-content-sha256: curl 7.88 signs the SHA-256 of the body but does not send this header, and RGW then
# assumes UNSIGNED-PAYLOAD, so every signature mismatches (403 AccessDenied); sending the header explicitly
# makes curl sign with UNSIGNED-PAYLOAD too (and spares hashing large uploads). (Also curl 7.88: for signed
# requests with a query string, write the parameters sorted and encoded, e.g. `?delimiter=%2F&list-type=2`.)
s3_curl() {
    local dir=$1
    shift
    [[ -f $dir/env ]] || die "no $dir/env: is the cluster started?"
    # shellcheck source=/dev/null
    source "$dir/env"
    curl -sS --fail-with-body --path-as-is --aws-sigv4 "aws:amz:$AWS_REGION:s3" \
        -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" "$@"
}

cmd_mb() {
    local dir bucket=$2
    dir=$(abspath "$1")
    s3_curl "$dir" -X PUT "$(s3_url "$(endpoint_of "$dir")" "$bucket")" >&2
}

cmd_put() {
    local dir bucket=$2 key=$3 file=$4 url
    dir=$(abspath "$1")
    [[ -r $file ]] || die "cannot read $file"
    url=$(s3_url "$(endpoint_of "$dir")" "$bucket/$key")
    if [[ $url == */ ]]; then
        # curl -T appends the file name to a URL ending in '/'; such keys (directory markers) are small.
        s3_curl "$dir" -X PUT -H 'Content-Type: application/octet-stream' --data-binary "@$file" "$url" >&2
    else
        s3_curl "$dir" -T "$file" "$url" >&2
    fi
}

endpoint_of() {
    [[ -f $1/env ]] || die "no $1/env: is the cluster started?"
    (
        # shellcheck source=/dev/null
        source "$1/env"
        echo "$S3_ENDPOINT"
    )
}

main() {
    (($# >= 1)) || usage
    local cmd=$1
    shift
    case $cmd in
        install) (($# == 0)) || usage; cmd_install ;;
        start) (($# == 1)) || usage; cmd_start "$1" ;;
        stop) (($# == 1)) || usage; cmd_stop "$1" ;;
        mb) (($# == 2)) || usage; cmd_mb "$@" ;;
        put) (($# == 4)) || usage; cmd_put "$@" ;;
        *) usage ;;
    esac
}

main "$@"
