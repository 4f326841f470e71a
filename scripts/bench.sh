#!/usr/bin/env bash
# Benchmarks s3-oidc-mount against the raw S3 client (examples/s3bench.rs), s3fs and rclone on a
# local Ceph RGW, and prints one markdown table on stdout (progress on stderr).
#
#   scripts/bench.sh
#
# As root on Debian/Ubuntu with /dev/fuse: installs fio, s3fs, rclone and nftables (apt) and Ceph
# RGW (scripts/rgw.sh install) if missing, starts its own RGW on 127.0.0.1, builds the release binaries,
# uploads the data set (about 2.1 GiB; only when a read workload runs), runs every workload for every
# client on a fresh mount (read workloads with dropped page caches), and stops everything it started.
# Method and latest table: docs/performance.md.
#
# Environment:
#   BENCH_RUNS=3                  runs of each measurement; the table shows medians
#   BENCH_CACHE_SIZE=256MiB       s3-oidc-mount --cache-size
#   BENCH_QUICK=1                 smoke run: 1 run, 3 s random reads, 1 time-to-first-byte sample
#   BENCH_CLIENTS="s3-oidc-mount raw s3fs rclone"   the clients to measure
#   BENCH_WORKLOADS="seq1 seq4 rand1m rand4k ttfb ls find stat wseq wsmall"   the workloads to run;
#                                 reads: seq1..stat (they need the data set), writes: wseq wsmall
#   BENCH_RAND_SECONDS=15         time limit of a random-read run (it also stops after one pass)
#   BENCH_TTFB_SAMPLES=3          time-to-first-byte samples (fresh mounts) per run
#   BENCH_DIR=/tmp/s3om-bench     state: RGW, mountpoint, logs (removed at the end)
#   BENCH_RGW_PORT=18480 BENCH_RGW_MON_PORT=18789   ports of the RGW it starts
#   BENCH_METRICS_PORT=18481      s3-oidc-mount --http-addr 127.0.0.1:PORT during the write workloads
#   BENCH_INSTALL=0               do not apt-get install missing fio/s3fs/rclone/nftables
#   BENCH_KEEP_LOGS=1             keep BENCH_DIR/logs (daemon logs, fio output) after the run
set -euo pipefail
cd "$(dirname "$0")/.."
export LC_ALL=C

log() { printf 'bench.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

RUNS=${BENCH_RUNS:-3}
CACHE_SIZE=${BENCH_CACHE_SIZE:-256MiB}
RAND_SECONDS=${BENCH_RAND_SECONDS:-15}
TTFB_SAMPLES=${BENCH_TTFB_SAMPLES:-3}
if [[ ${BENCH_QUICK:-0} == 1 ]]; then
    RUNS=1 RAND_SECONDS=3 TTFB_SAMPLES=1
fi
read -r -a CLIENTS <<<"${BENCH_CLIENTS:-s3-oidc-mount raw s3fs rclone}"
readonly READ_WORKLOADS="seq1 seq4 rand1m rand4k ttfb ls find stat" WRITE_WORKLOADS="wseq wsmall"
read -r -a WORKLOADS <<<"${BENCH_WORKLOADS:-$READ_WORKLOADS $WRITE_WORKLOADS}"
DIR=$(realpath -m -- "${BENCH_DIR:-/tmp/s3om-bench}")
RGW_PORT=${BENCH_RGW_PORT:-18480}
RGW_MON_PORT=${BENCH_RGW_MON_PORT:-18789}
METRICS_PORT=${BENCH_METRICS_PORT:-18481}
readonly BUCKET=bench GIB=1073741824 MIB=1048576

for v in RUNS RAND_SECONDS TTFB_SAMPLES METRICS_PORT; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, not '${!v}'"
done
for c in "${CLIENTS[@]}"; do
    case $c in
        s3-oidc-mount | raw | s3fs | rclone) ;;
        *) die "unknown client '$c' in BENCH_CLIENTS (s3-oidc-mount raw s3fs rclone)" ;;
    esac
done
# SELECTED[w] is set for each workload to run; READS is 1 when any read workload is among them.
declare -A SELECTED=()
READS=0
for w in "${WORKLOADS[@]}"; do
    [[ " $READ_WORKLOADS $WRITE_WORKLOADS " == *" $w "* ]] ||
        die "unknown workload '$w' in BENCH_WORKLOADS ($READ_WORKLOADS $WRITE_WORKLOADS)"
    SELECTED[$w]=1
    if [[ " $READ_WORKLOADS " == *" $w "* ]]; then READS=1; fi
done
((${#SELECTED[@]} > 0)) || die "BENCH_WORKLOADS is empty"
# Row 11 (mount ready) is measured by the read workloads' mounts.
((READS == 0)) || SELECTED[mount]=1
[[ $(id -u) -eq 0 ]] || die "run as root (FUSE mounts, apt-get, /proc/sys/vm/drop_caches)"
[[ -e /dev/fuse ]] || die "/dev/fuse is missing (modprobe fuse, or --device /dev/fuse)"
command -v cargo >/dev/null || die "cargo not found; install Rust (https://rustup.rs)"
command -v python3 >/dev/null || die "python3 not found (it parses fio's JSON)"

# One benchmark at a time per state directory.
mkdir -p "$(dirname "$DIR")"
exec {lock_fd}>"$DIR.lock"
flock -n "$lock_fd" || die "another bench.sh is using $DIR"

# ------------------------------------------------------------------------------------------------
# Setup and teardown

MNT=$DIR/mnt LOGS=$DIR/logs PRIV=$DIR/private RGW=$DIR/rgw
MPID=""    # the mount daemon now running
MCLIENT="" # which client it is

# Is $1 a mountpoint (field 5 of /proc/self/mountinfo)?
is_mounted() { awk -v m="$1" '$5 == m { found = 1 } END { exit !found }' /proc/self/mountinfo; }

# Alive and not a zombie.
alive() {
    local s
    s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    s=${s##*) }
    [[ ${s:0:1} != Z && ${s:0:1} != X ]]
}

force_unmount() {
    is_mounted "$MNT" || return 0
    fusermount3 -u "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null || true
    is_mounted "$MNT" && log "warning: could not unmount $MNT"
    return 0
}

# Stop the mount daemon: SIGTERM (each client unmounts on it), SIGKILL after 15 s, then make sure
# nothing is left mounted. Warns if s3-oidc-mount does not exit 0 (its documented behaviour).
unmount_client() {
    [[ -n $MPID ]] || { force_unmount; return 0; }
    local pid=$MPID i rc=0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do
        alive "$pid" || break
        sleep 0.1
    done
    if alive "$pid"; then
        log "warning: $MCLIENT (pid $pid) still running 15 s after SIGTERM: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || rc=$?
    if [[ $MCLIENT == s3-oidc-mount && $rc -ne 0 ]]; then
        log "warning: s3-oidc-mount exited with status $rc after SIGTERM (expected 0); see $LOGS/s3-oidc-mount.log"
    fi
    MPID="" MCLIENT=""
    force_unmount
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    unmount_client || true
    [[ -z $NFT_TABLE ]] || nft delete table inet "$NFT_TABLE" 2>/dev/null || true
    if [[ -f $DIR/.s3om-bench ]]; then
        scripts/rgw.sh stop "$RGW" >/dev/null 2>&1 || log "warning: 'scripts/rgw.sh stop $RGW' failed"
        rm -rf -- "$PRIV" "${DIR:?}/bin" "${DIR:?}/tmp"
        rmdir -- "$MNT" 2>/dev/null || true
        if [[ $rc -ne 0 || ${BENCH_KEEP_LOGS:-0} == 1 ]]; then
            log "logs kept in $LOGS"
        else
            rm -rf -- "$DIR"
        fi
    fi
    exit "$rc"
}

# Leftovers of an interrupted run in $DIR: a daemon, a mount, an RGW.
clean_stale() {
    [[ -e $DIR ]] || return 0
    [[ -f $DIR/.s3om-bench ]] || die "$DIR exists and was not made by bench.sh; set BENCH_DIR"
    local pid
    pid=$(cat "$DIR/daemon.pid" 2>/dev/null || true)
    if [[ $pid =~ ^[0-9]+$ ]] && alive "$pid" && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$MNT"; then
        log "stopping a mount daemon left by an earlier run (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        sleep 2
        alive "$pid" && kill -KILL "$pid" 2>/dev/null
    fi
    force_unmount
    scripts/rgw.sh stop "$RGW" >/dev/null
    rm -rf -- "$DIR"
}

install_tools() {
    scripts/rgw.sh install
    # command:package
    local want=(fio:fio nft:nftables) missing=() p c
    for c in "${CLIENTS[@]}"; do
        [[ $c == s3fs || $c == rclone ]] && want+=("$c:$c")
    done
    for p in "${want[@]}"; do
        command -v "${p%%:*}" >/dev/null || missing+=("${p#*:}")
    done
    ((${#missing[@]} == 0)) && return 0
    if [[ ${BENCH_INSTALL:-1} == 0 ]]; then
        log "not installing ${missing[*]} (BENCH_INSTALL=0)"
        return 0
    fi
    log "installing ${missing[*]}"
    local apt=(apt-get -qq -o DPkg::Lock::Timeout=600)
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" update >&2 || true
    for p in "${missing[@]}"; do
        DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y --no-install-recommends "$p" >&2 ||
            log "warning: could not install $p"
    done
}

# ------------------------------------------------------------------------------------------------
# Measurements: R[client,metric] holds the samples, space separated; FAILS[client,workload] counts
# the runs of a workload that failed (the table shows the median of the others).

declare -A R=() FAILS=()
# The workload that measures each metric.
declare -A WORKLOAD_OF=([seq1_mibs]=seq1 [seq1c_mibs]=seq1 [seq4c_mibs]=seq1 [cpu_per_gib]=seq1
    [rss1_mib]=seq1 [seq4j_mibs]=seq4 [rss4_mib]=seq4 [rand1m_mibs]=rand1m [rand4k_iops]=rand4k
    [fetched_ratio]=rand4k [fetched_seq1]=seq1 [fetched_seq4]=seq4 [ttfb_ms]=ttfb [ls_s]=ls [find_s]=find [stat_s]=stat [ready_s]=mount
    [wseq_mibs]=wseq [wseq4_mibs]=wseq [wseq16_mibs]=wseq [wcpu_per_gib]=wseq [wrss_mib]=wseq [wsmall_fps]=wsmall)
add() { R[$1,$2]="${R[$1,$2]:-} $3"; }
fail() {
    FAILS[$1,$2]=$((${FAILS[$1,$2]:-0} + 1))
    log "  $1 $2: FAILED (logs in $LOGS)"
}

# Value of key $1 in a line of key=value pairs ($2).
kv() {
    local w
    for w in $2; do
        [[ $w == "$1="* ]] && { echo "${w#*=}"; return 0; }
    done
    return 1
}

calc() { awk "BEGIN { printf \"%.6f\", $1 }"; }

median() {
    printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END {
        if (NR == 0) exit 1
        if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

drop_caches() {
    sync
    echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || log "warning: cannot drop the page cache"
}

# utime + stime of a process, in clock ticks (fields 14 and 15 of /proc/PID/stat).
cpu_ticks() {
    local s f
    s=$(<"/proc/$1/stat")
    read -r -a f <<<"${s##*) }"
    echo $((f[11] + f[12]))
}

# Peak RSS (VmHWM) of a process, MiB; hwm_rss PID FIELD: another field of /proc/PID/status.
hwm_mib() { hwm_rss "$1" VmHWM; }
hwm_rss() { awk -v f="$2:" '$1 == f { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }

# RGW's own perf counters: "GET+HEAD requests, GET body bytes" so far. get_b counts the whole range
# RGW processed, even when the client hung up after a few bytes, so it is only a cross-check.
rgw_perf() {
    timeout 30 ceph --admin-daemon "$RGW/run/client.rgw.asok" perf dump |
        python3 -c 'import json, sys; r = json.load(sys.stdin)["rgw"]; print(r["get"], r["get_b"])'
}

# Bytes fetched from S3 = TCP payload (HTTP headers + bodies) that RGW sent, counted by an nftables
# counter on the RGW port: IPv4 packet bytes minus 52 bytes of IPv4 + TCP (with timestamps) headers per
# packet. Falls back to RGW's get_b counter where nftables is not available.
NFT_TABLE=""
counter_setup() {
    command -v nft >/dev/null || return 1
    NFT_TABLE=s3om_bench_$RGW_PORT
    nft delete table inet "$NFT_TABLE" 2>/dev/null || true
    nft -f - <<EOF || { NFT_TABLE=""; return 1; }
table inet $NFT_TABLE {
    counter rgw_tx { }
    chain out {
        type filter hook output priority 0; policy accept;
        ip saddr 127.0.0.1 tcp sport $RGW_PORT counter name rgw_tx
    }
}
EOF
}

fetched_bytes() {
    if [[ -n $NFT_TABLE ]]; then
        nft list counter inet "$NFT_TABLE" rgw_tx | awk '$1 == "packets" { printf "%.0f\n", $4 - 52 * $2 }'
    else
        local p
        p=$(rgw_perf) || return 1
        echo "${p#* }"
    fi
}

# fio with the output in $1 (JSON); prints "error io_bytes bw_bytes iops" summed over jobs.
run_fio() {
    local out=$1
    shift
    fio --output-format=json --output="$out" --readonly --ioengine=sync "$@" >/dev/null 2>>"$LOGS/fio.err" ||
        { log "  fio failed: $(tail -n 3 "$LOGS/fio.err" | tr '\n' ' ')"; return 1; }
    python3 - "$out" <<'EOF'
import json, sys
jobs = json.load(open(sys.argv[1]))["jobs"]
r = [j["read"] for j in jobs]
print(max(j["error"] for j in jobs), sum(x["io_bytes"] for x in r), sum(x["bw_bytes"] for x in r),
      sum(x["iops"] for x in r))
EOF
}

# Start client $1 on $MNT, wait until the mount appears, record the time that took. $2 = rw: in
# the client's write mode (the write workloads), not counted in row 11.
mount_client() {
    local c=$1 mode=${2:-ro} t0 out opts=()
    force_unmount
    mkdir -p "$MNT"
    t0=$EPOCHREALTIME
    case $c in
        s3-oidc-mount)
            [[ $mode == rw ]] && opts=(--allow-write --http-addr "127.0.0.1:$METRICS_PORT")
            AWS_EC2_METADATA_DISABLED=true NO_COLOR=1 "$S3OM" mount "s3://$BUCKET" "$MNT" \
                --endpoint-url "$S3_ENDPOINT" --force-path-style --credentials aws \
                --cache-size "$CACHE_SIZE" "${opts[@]}" >>"$LOGS/$c.log" 2>&1 &
            ;;
        s3fs)
            # Writable, s3fs stages each open file in an unlinked temporary file (in /tmp) and
            # uploads it at flush (multipart: 10 MiB parts, 5 in parallel).
            opts=(-o "passwd_file=$PRIV/s3fs.passwd,url=$S3_ENDPOINT,use_path_request_style")
            [[ $mode == rw ]] || opts[1]+=",ro"
            s3fs "$BUCKET" "$MNT" -f "${opts[@]}" >>"$LOGS/$c.log" 2>&1 &
            ;;
        rclone)
            # Writable: the VFS cache in "writes" mode (a written file goes to the cache dir, and
            # is uploaded after close; --vfs-write-back 0s starts that upload at once instead of
            # 5 s later).
            opts=(--read-only)
            [[ $mode == rw ]] && opts=(--vfs-cache-mode writes --vfs-write-back 0s --cache-dir "$DIR/rclone-cache")
            # AWS_CA_BUNDLE (set on some machines) makes rclone's S3 backend fail at start with
            # "LoadCustomCABundleError ... unsupported transport"; the endpoint is plain HTTP anyway.
            env -u AWS_CA_BUNDLE RCLONE_CONFIG="$PRIV/rclone.conf" RCLONE_CONFIG_BENCH_TYPE=s3 \
                RCLONE_CONFIG_BENCH_PROVIDER=Ceph RCLONE_CONFIG_BENCH_ENDPOINT="$S3_ENDPOINT" \
                RCLONE_CONFIG_BENCH_ACCESS_KEY_ID="$AWS_ACCESS_KEY_ID" \
                RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY="$AWS_SECRET_ACCESS_KEY" \
                rclone mount "bench:$BUCKET" "$MNT" "${opts[@]}" >>"$LOGS/$c.log" 2>&1 &
            ;;
    esac
    MPID=$! MCLIENT=$c
    echo "$MPID" >"$DIR/daemon.pid"
    if ! out=$("$S3BENCH" wait-mount "$MNT" --since "$t0" --pid "$MPID" --timeout 60 2>>"$LOGS/s3bench.err"); then
        log "  $c did not mount: $(tail -n 2 "$LOGS/s3bench.err" | tr '\n' ' '); log: $LOGS/$c.log"
        unmount_client
        return 1
    fi
    [[ $mode == rw ]] || add "$c" ready_s "$(kv seconds "$out")"
}

fmt_mib() { printf '%.0f' "$1"; }

# Workload 1, 3, 12: sequential read of the 1 GiB object.
w_seq1() {
    local c=$1 out cpu0 cpu1 rss err io bw iops b0 b1
    if [[ $c == raw ]]; then
        b0=$(fetched_bytes) || return 1
        out=$("$S3BENCH" get --bucket "$BUCKET" -c 1 --part-size 0 seq/1GiB.bin) || return 1
        b1=$(fetched_bytes) || return 1
        add raw seq1c_mibs "$(kv mib_per_s "$out")"
        add raw cpu_per_gib "$(kv cpu_seconds_per_gib "$out")"
        add raw rss1_mib "$(kv max_rss_mib "$out")"
        add raw fetched_seq1 "$(calc "($b1 - $b0) / $GIB")"
        log "  raw, 1 connection: $(kv mib_per_s "$out") MiB/s, $(kv cpu_seconds_per_gib "$out") CPU s/GiB"
        out=$("$S3BENCH" get --bucket "$BUCKET" -c 4 --part-size 8MiB seq/1GiB.bin) || return 1
        add raw seq4c_mibs "$(kv mib_per_s "$out")"
        log "  raw, 4 connections x 8 MiB: $(kv mib_per_s "$out") MiB/s"
        return 0
    fi
    mount_client "$c" || return 1
    drop_caches
    if ! b0=$(fetched_bytes) || ! cpu0=$(cpu_ticks "$MPID"); then
        unmount_client
        return 1
    fi
    out=$(run_fio "$LOGS/fio-seq1-$c.json" --name=seq1 --rw=read --bs=256k --filename="$MNT/seq/1GiB.bin") ||
        { unmount_client; return 1; }
    if ! cpu1=$(cpu_ticks "$MPID") || ! rss=$(hwm_mib "$MPID"); then
        unmount_client
        return 1
    fi
    unmount_client
    b1=$(fetched_bytes) || return 1
    read -r err io bw iops <<<"$out"
    [[ $err == 0 && $io == "$GIB" ]] || { log "  fio error $err, read $io of $GIB bytes"; return 1; }
    add "$c" seq1_mibs "$(calc "$bw / $MIB")"
    add "$c" cpu_per_gib "$(calc "($cpu1 - $cpu0) / $CLK_TCK / ($io / $GIB)")"
    add "$c" rss1_mib "$rss"
    add "$c" fetched_seq1 "$(calc "($b1 - $b0) / $io")"
    log "  $c: $(fmt_mib "$(calc "$bw / $MIB")") MiB/s, $(calc "($cpu1 - $cpu0) / $CLK_TCK") CPU s," \
        "peak RSS $rss MiB, fetched $(calc "($b1 - $b0) / $io")x"
}

# Workload 2, 12: 4 jobs, each reading its own 256 MiB object.
w_seq4() {
    local c=$1 out rss err io bw iops i b0 b1 jobs=()
    if [[ $c == raw ]]; then
        b0=$(fetched_bytes) || return 1
        out=$("$S3BENCH" get --bucket "$BUCKET" -c 4 --part-size 8MiB par/{0,1,2,3}.bin) || return 1
        b1=$(fetched_bytes) || return 1
        add raw seq4j_mibs "$(kv mib_per_s "$out")"
        add raw rss4_mib "$(kv max_rss_mib "$out")"
        add raw fetched_seq4 "$(calc "($b1 - $b0) / $GIB")"
        log "  raw, 4 connections x 8 MiB: $(kv mib_per_s "$out") MiB/s"
        return 0
    fi
    for i in 0 1 2 3; do
        jobs+=(--name="seq4-$i" --filename="$MNT/par/$i.bin")
    done
    mount_client "$c" || return 1
    drop_caches
    b0=$(fetched_bytes) || { unmount_client; return 1; }
    out=$(run_fio "$LOGS/fio-seq4-$c.json" --rw=read --bs=256k --group_reporting "${jobs[@]}") ||
        { unmount_client; return 1; }
    rss=$(hwm_mib "$MPID") || { unmount_client; return 1; }
    unmount_client
    b1=$(fetched_bytes) || return 1
    read -r err io bw iops <<<"$out"
    [[ $err == 0 && $io == "$GIB" ]] || { log "  fio error $err, read $io of $GIB bytes"; return 1; }
    add "$c" seq4j_mibs "$(calc "$bw / $MIB")"
    add "$c" rss4_mib "$rss"
    add "$c" fetched_seq4 "$(calc "($b1 - $b0) / $io")"
    log "  $c: $(fmt_mib "$(calc "$bw / $MIB")") MiB/s, peak RSS $rss MiB, fetched $(calc "($b1 - $b0) / $io")x"
}

# Workload 4: random 1 MiB reads; at most RAND_SECONDS, and at most one pass over the file (fio's
# random map reads every block once), so the page cache never serves a block twice.
w_rand1m() {
    local c=$1 out err io bw iops
    if [[ $c == raw ]]; then
        out=$("$S3BENCH" randget --bucket "$BUCKET" --block 1MiB --seconds "$RAND_SECONDS" --max-bytes 1GiB seq/1GiB.bin) ||
            return 1
        add raw rand1m_mibs "$(kv mib_per_s "$out")"
        log "  raw: $(kv mib_per_s "$out") MiB/s"
        return 0
    fi
    mount_client "$c" || return 1
    drop_caches
    out=$(run_fio "$LOGS/fio-rand1m-$c.json" --name=rand1m --rw=randread --bs=1M --runtime="$RAND_SECONDS" \
        --filename="$MNT/seq/1GiB.bin") || { unmount_client; return 1; }
    unmount_client
    read -r err io bw iops <<<"$out"
    [[ $err == 0 && $io -gt 0 ]] || { log "  fio error $err, read $io bytes"; return 1; }
    add "$c" rand1m_mibs "$(calc "$bw / $MIB")"
    log "  $c: $(fmt_mib "$(calc "$bw / $MIB")") MiB/s"
}

# Workloads 5 and 6: random 4 KiB reads; bytes fetched from S3 counted around the run.
w_rand4k() {
    local c=$1 out err io bw iops b0 b1 p0 p1
    if [[ $c != raw ]]; then
        mount_client "$c" || return 1
        drop_caches
    fi
    if ! b0=$(fetched_bytes) || ! p0=$(rgw_perf); then
        unmount_client
        return 1
    fi
    if [[ $c == raw ]]; then
        out=$("$S3BENCH" randget --bucket "$BUCKET" --block 4KiB --seconds "$RAND_SECONDS" --max-bytes 1GiB seq/1GiB.bin) ||
            return 1
        io=$(kv bytes "$out") iops=$(kv iops "$out")
    else
        out=$(run_fio "$LOGS/fio-rand4k-$c.json" --name=rand4k --rw=randread --bs=4k --runtime="$RAND_SECONDS" \
            --filename="$MNT/seq/1GiB.bin") || { unmount_client; return 1; }
        # Counted after the unmount, so that prefetches still in flight when fio stopped count too.
        unmount_client
        read -r err io bw iops <<<"$out"
        [[ $err == 0 && $io -gt 0 ]] || { log "  fio error $err, read $io bytes"; return 1; }
    fi
    b1=$(fetched_bytes) && p1=$(rgw_perf) || return 1
    add "$c" rand4k_iops "$iops"
    add "$c" fetched_ratio "$(calc "($b1 - $b0) / $io")"
    log "  $c: $(printf '%.0f' "$iops") IOPS; $(calc "($b1 - $b0) / $MIB") MiB fetched for $(calc "$io / $MIB") MiB read" \
        "in $((${p1% *} - ${p0% *})) GET/HEAD requests (RGW's get_b: $(calc "(${p1#* } - ${p0#* }) / $MIB") MiB)"
}

# Workload 7: open + read 4 KiB of the 100 MiB object, cold (fresh mount, empty page cache).
w_ttfb() {
    local c=$1 out i ms
    if [[ $c == raw ]]; then
        out=$("$S3BENCH" ttfb --bucket "$BUCKET" --samples "$TTFB_SAMPLES" --bytes 4KiB ttfb/100MiB.bin) || return 1
        local list=${out##*samples_ms=}
        for ms in ${list//,/ }; do
            add raw ttfb_ms "$ms"
        done
        log "  raw: median $(kv median_ms "$out") ms"
        return 0
    fi
    for ((i = 0; i < TTFB_SAMPLES; i++)); do
        mount_client "$c" || return 1
        drop_caches
        out=$("$S3BENCH" open-read "$MNT/ttfb/100MiB.bin" --bytes 4KiB 2>>"$LOGS/s3bench.err") ||
            { unmount_client; return 1; }
        unmount_client
        add "$c" ttfb_ms "$(kv ms "$out")"
        log "  $c: $(kv ms "$out") ms"
    done
}

# Workloads 8-10: metadata. Each returns the elapsed seconds of the timed part on a fresh mount.
w_ls() {
    local c=$1 t0 t1 n out
    if [[ $c == raw ]]; then
        # The S3 work `ls -l` needs at least: one delimited listing of the prefix, every page.
        out=$("$S3BENCH" list --bucket "$BUCKET" --prefix flat/ --delimiter /) || return 1
        [[ $(kv objects "$out") == 10000 ]] || { log "  listed $(kv objects "$out") objects instead of 10000"; return 1; }
        add raw ls_s "$(kv seconds "$out")"
        log "  raw: $(kv seconds "$out") s ($(kv requests "$out") LIST requests)"
        return 0
    fi
    mount_client "$c" || return 1
    drop_caches
    t0=$EPOCHREALTIME
    ls -l "$MNT/flat" >"$DIR/tmp/ls.out" || { unmount_client; return 1; }
    t1=$EPOCHREALTIME
    unmount_client
    n=$(grep -c '^-' "$DIR/tmp/ls.out" || true)
    [[ $n == 10000 ]] || { log "  ls -l listed $n files instead of 10000"; return 1; }
    add "$c" ls_s "$(calc "$t1 - $t0")"
    log "  $c: $(calc "$t1 - $t0") s"
}

w_find() {
    local c=$1 t0 t1 n out
    if [[ $c == raw ]]; then
        # The least S3 work that finds every object: one listing of the prefix without a delimiter.
        out=$("$S3BENCH" list --bucket "$BUCKET" --prefix tree/) || return 1
        [[ $(kv objects "$out") == 10000 ]] || { log "  listed $(kv objects "$out") objects instead of 10000"; return 1; }
        add raw find_s "$(kv seconds "$out")"
        log "  raw: $(kv seconds "$out") s ($(kv requests "$out") LIST requests)"
        return 0
    fi
    mount_client "$c" || return 1
    drop_caches
    t0=$EPOCHREALTIME
    find "$MNT/tree" >"$DIR/tmp/find.out" || { unmount_client; return 1; }
    t1=$EPOCHREALTIME
    unmount_client
    n=$(wc -l <"$DIR/tmp/find.out")
    [[ $n == 10101 ]] || { log "  find printed $n paths instead of 10101"; return 1; }
    add "$c" find_s "$(calc "$t1 - $t0")"
    log "  $c: $(calc "$t1 - $t0") s"
}

w_stat() {
    local c=$1 t0 t1 d f files=()
    for d in 000 001 002 003 004 005 006 007 008 009; do
        for ((f = 0; f < 100; f++)); do
            files+=("$MNT/tree/d$d/$(printf 'f%03d.txt' "$f")")
        done
    done
    mount_client "$c" || return 1
    drop_caches
    # List the ten directories first (not timed), then stat their 1,000 files.
    ls "$MNT"/tree/d00{0..9} >/dev/null || { unmount_client; return 1; }
    t0=$EPOCHREALTIME
    stat -- "${files[@]}" >/dev/null || { unmount_client; return 1; }
    t1=$EPOCHREALTIME
    unmount_client
    add "$c" stat_s "$(calc "$t1 - $t0")"
    log "  $c: $(calc "$t1 - $t0") s"
}

# ------------------------------------------------------------------------------------------------
# Write workloads. Each FUSE run: a fresh mount in the client's write mode, the source warm in the
# page cache, the copy timed from its start until S3 lists the whole result (for s3-oidc-mount and
# s3fs that is the close; rclone uploads after the close, so it is later), then the result is
# checked and deleted with the raw client. Nothing of it is under W_PREFIX between runs.

readonly W_PREFIX=w/
W_SEQ_SRC="" W_SMALL_SRC="" # set by write_sources

# The sources, made once: a 1 GiB file of random bytes and a directory of 1,000 files of 4 KiB,
# in $DIR/tmp (on the disk unless /tmp is a tmpfs; read from the page cache in every run).
write_sources() {
    W_SEQ_SRC=$DIR/tmp/w1GiB.bin W_SMALL_SRC=$DIR/tmp/small
    if [[ -n ${SELECTED[wseq]:-} && ! -f $W_SEQ_SRC ]]; then
        head -c "$GIB" /dev/urandom >"$W_SEQ_SRC.part" && mv "$W_SEQ_SRC.part" "$W_SEQ_SRC"
    fi
    if [[ -n ${SELECTED[wsmall]:-} && ! -d $W_SMALL_SRC ]]; then
        mkdir -p "$W_SMALL_SRC.part"
        head -c $((1000 * 4096)) /dev/urandom | split -b 4096 -a 3 -d - "$W_SMALL_SRC.part/f"
        mv "$W_SMALL_SRC.part" "$W_SMALL_SRC"
    fi
    log "write sources in $DIR/tmp ($(df --output=fstype "$DIR/tmp" | tail -n 1)), read from the page cache"
}

# Delete everything under W_PREFIX (and unfinished multipart uploads) with the raw client.
w_clean() {
    local out
    out=$("$S3BENCH" delete --bucket "$BUCKET" --prefix "$W_PREFIX" 2>>"$LOGS/s3bench.err") ||
        { log "  cleaning $W_PREFIX failed: $(tail -n 2 "$LOGS/s3bench.err" | tr '\n' ' ')"; return 1; }
    [[ $(kv aborted "$out") == 0 ]] || log "  aborted $(kv aborted "$out") unfinished multipart uploads under $W_PREFIX"
    rm -rf -- "${DIR:?}/rclone-cache"
    # RGW frees the data of deleted objects only in its garbage collection, by default 2 h
    # later; the memstore OSD holds it in RAM (about 1.5 GiB per GiB written) meanwhile, and
    # a few runs of 1 GiB writes would exhaust the machine's memory. Collect it now.
    timeout 120 radosgw-admin -c "$RGW/ceph.conf" gc process --include-all >>"$LOGS/rgw-gc.log" 2>&1 ||
        log "  warning: RGW garbage collection failed (see $LOGS/rgw-gc.log)"
}

# Resident MiB of the memstore OSD (where RGW keeps the objects).
osd_rss_mib() {
    local pid
    pid=$(cat "$RGW/run/osd.0.ceph-pid" 2>/dev/null) && hwm_rss "$pid" VmRSS || echo "?"
}

# Flush what earlier runs left dirty, and read file(s) $@ into the page cache.
w_prepare() {
    sync
    cat -- "$@" >/dev/null
}

# s3-oidc-mount's write counters after a run, on one line (its /metrics; the mount is fresh, so
# they count this run only). The whole scrape goes to $LOGS/metrics-$1.txt.
s3om_write_metrics() {
    curl -fsS --max-time 5 "http://127.0.0.1:$METRICS_PORT/metrics" >"$LOGS/metrics-$1.txt" 2>/dev/null ||
        { echo "metrics unavailable"; return 0; }
    awk '
        function lbl(s, k,   i, r) { i = index(s, k "=\""); if (!i) return ""; r = substr(s, i + length(k) + 2); return substr(r, 1, index(r, "\"") - 1) }
        /^s3om_uploads_total/ { up[lbl($1, "outcome")] = $2 }
        /^s3om_upload_bytes_total / { bytes = $2 }
        /^s3om_s3_request_duration_seconds_(count|sum)\{/ { split($1, a, "{"); s3[lbl($1, "op"), a[1] ~ /_sum$/] = $2 }
        /^s3om_fuse_request_duration_seconds_(count|sum)\{/ { split($1, a, "{"); fu[lbl($1, "op"), a[1] ~ /_sum$/] = $2 }
        /^s3om_retries_total/ { retries += $2 }
        function mean(t, op) { return t[op, 0] > 0 ? sprintf("%d, mean %.1f ms", t[op, 0], 1000 * t[op, 1] / t[op, 0]) : "0" }
        END {
            printf "uploads completed %d failed %d, %.1f MiB; FUSE write %s, create %s, flush %s; S3 PutObject %s, UploadPart %s, CompleteMultipartUpload %s, HeadObject %s; retries %d\n",
                up["completed"], up["failed"], bytes / 1048576, mean(fu, "write"), mean(fu, "create"), mean(fu, "flush"),
                mean(s3, "PutObject"), mean(s3, "UploadPart"), mean(s3, "CompleteMultipartUpload"), mean(s3, "HeadObject"), retries
        }' "$LOGS/metrics-$1.txt"
}

# Workload 13-15: sequential write of 1 GiB with dd (1 MiB writes), timed until S3 has the object.
w_wseq() {
    local c=$1 out key=${W_PREFIX}1GiB.bin t0 t1 secs cpu0 cpu1 rss m="" load n
    load=$(cut -d' ' -f1 /proc/loadavg)
    w_clean || return 1
    if [[ $c == raw ]]; then
        for n in 4 16; do
            out=$("$S3BENCH" put --bucket "$BUCKET" -c "$n" --part-size 8MiB --size 1GiB "$key") || return 1
            add raw "wseq${n}_mibs" "$(kv mib_per_s "$out")"
            [[ $n == 4 ]] && add raw wcpu_per_gib "$(kv cpu_seconds_per_gib "$out")"
            log "  raw, 8 MiB parts x $n in flight: $(kv mib_per_s "$out") MiB/s, $(kv cpu_seconds_per_gib "$out") CPU s/GiB, load $load"
            w_clean || return 1
        done
        # For the CPU analysis only (not in the table): the same upload without hashing the
        # body (no Content-MD5, UNSIGNED-PAYLOAD instead of the SDK's SHA-256).
        out=$("$S3BENCH" put --bucket "$BUCKET" -c 4 --part-size 8MiB --size 1GiB --no-md5 --unsigned-payload "$key") ||
            return 1
        log "  raw, 8 MiB x 4, no MD5, unsigned payload: $(kv mib_per_s "$out") MiB/s, $(kv cpu_seconds_per_gib "$out") CPU s/GiB"
        w_clean || return 1
        return 0
    fi
    mount_client "$c" rw || return 1
    if ! mkdir -p "$MNT/${W_PREFIX%/}" || ! w_prepare "$W_SEQ_SRC" || ! cpu0=$(cpu_ticks "$MPID"); then
        unmount_client
        return 1
    fi
    t0=$EPOCHREALTIME
    dd if="$W_SEQ_SRC" of="$MNT/$key" bs=1M status=none 2>>"$LOGS/dd.err" ||
        { log "  dd failed: $(tail -n 2 "$LOGS/dd.err" | tr '\n' ' ')"; unmount_client; return 1; }
    t1=$EPOCHREALTIME
    if ! out=$("$S3BENCH" wait-objects --bucket "$BUCKET" --prefix "$key" --count 1 --size 1GiB --since "$t0" \
        --timeout 300 2>>"$LOGS/s3bench.err") || ! cpu1=$(cpu_ticks "$MPID") || ! rss=$(hwm_mib "$MPID"); then
        log "  $key did not appear: $(tail -n 2 "$LOGS/s3bench.err" | tr '\n' ' ')"
        unmount_client
        return 1
    fi
    [[ $c == s3-oidc-mount ]] && m=$(s3om_write_metrics "wseq-$c-$(date +%s)")
    unmount_client
    secs=$(kv seconds "$out")
    out=$("$S3BENCH" verify --bucket "$BUCKET" --file "$W_SEQ_SRC" "$key" 2>>"$LOGS/s3bench.err") ||
        { log "  $key is not a copy of the source: $(tail -n 2 "$LOGS/s3bench.err" | tr '\n' ' ')"; return 1; }
    w_clean || return 1
    add "$c" wseq_mibs "$(calc "1024 / $secs")"
    add "$c" wcpu_per_gib "$(calc "($cpu1 - $cpu0) / $CLK_TCK")"
    add "$c" wrss_mib "$rss"
    log "  $c: $(fmt_mib "$(calc "1024 / $secs")") MiB/s ($(calc "$t1 - $t0") s to close, $secs s until listed)," \
        "$(calc "($cpu1 - $cpu0) / $CLK_TCK") CPU s, peak RSS $rss MiB, $(kv parts "$out") parts of $(kv part_size_mib "$out") MiB" \
        "(checked: $(kv checked "$out")), load $load"
    [[ -z $m ]] || log "    $m"
}

# Workload 16: `cp -r` of 1,000 files of 4 KiB into a new directory, timed until S3 lists all.
w_wsmall() {
    local c=$1 out t0 t1 secs cpu0 cpu1 m="" load
    load=$(cut -d' ' -f1 /proc/loadavg)
    w_clean || return 1
    if [[ $c == raw ]]; then
        out=$("$S3BENCH" put-many --bucket "$BUCKET" --prefix "${W_PREFIX}small/" -c 1 --count 1000 --size 4KiB) ||
            return 1
        add raw wsmall_fps "$(kv files_per_s "$out")"
        log "  raw, 1,000 PutObjects one at a time: $(kv files_per_s "$out") files/s, load $load"
        w_clean
        return
    fi
    mount_client "$c" rw || return 1
    if ! mkdir -p "$MNT/${W_PREFIX%/}" || ! w_prepare "$W_SMALL_SRC"/* || ! cpu0=$(cpu_ticks "$MPID"); then
        unmount_client
        return 1
    fi
    t0=$EPOCHREALTIME
    cp -r "$W_SMALL_SRC" "$MNT/${W_PREFIX}small" 2>>"$LOGS/cp.err" ||
        { log "  cp -r failed: $(tail -n 2 "$LOGS/cp.err" | tr '\n' ' ')"; unmount_client; return 1; }
    t1=$EPOCHREALTIME
    if ! out=$("$S3BENCH" wait-objects --bucket "$BUCKET" --prefix "${W_PREFIX}small/" --count 1000 --size 4KiB \
        --since "$t0" --timeout 300 2>>"$LOGS/s3bench.err") || ! cpu1=$(cpu_ticks "$MPID"); then
        log "  the 1,000 files did not appear: $(tail -n 2 "$LOGS/s3bench.err" | tr '\n' ' ')"
        unmount_client
        return 1
    fi
    [[ $c == s3-oidc-mount ]] && m=$(s3om_write_metrics "wsmall-$c-$(date +%s)")
    unmount_client
    w_clean || return 1
    secs=$(kv seconds "$out")
    add "$c" wsmall_fps "$(calc "1000 / $secs")"
    log "  $c: $(printf '%.0f' "$(calc "1000 / $secs")") files/s ($(calc "$t1 - $t0") s to the end of cp, $secs s until listed)," \
        "$(calc "($cpu1 - $cpu0) / $CLK_TCK") CPU s, load $load"
    [[ -z $m ]] || log "    $m"
}

# ------------------------------------------------------------------------------------------------
# The table

# Median of R[$1,$2] formatted with printf format $3; "error" if every run failed, "n/a" if the
# client was not measured.
val() {
    local s=${R[$1,$2]:-} failed=${FAILS[$1,${WORKLOAD_OF[$2]}]:-0}
    if [[ -z $s ]]; then
        ((failed > 0)) && echo "error" || echo "n/a"
    else
        # shellcheck disable=SC2086,SC2059 # samples are space separated; $3 is one of ours
        printf "$3" "$(median $s)"
    fi
}

# "; N runs failed" for a cell whose workload failed in some runs.
failed_note() {
    local failed=${FAILS[$1,${WORKLOAD_OF[$2]}]:-0}
    [[ -z ${R[$1,$2]:-} ]] || ((failed == 0)) || printf ' (%d failed runs)' "$failed"
}

# A client's cell: its median and, if the raw client has metric $4, the ratio to it.
cell() {
    local c=$1 m=$2 f=$3 rawm=${4:-} v r
    v=$(val "$c" "$m" "$f")
    if [[ -n $rawm && -n ${R[$c,$m]:-} && -n ${R[raw,$rawm]:-} ]]; then
        # shellcheck disable=SC2086
        r=$(awk -v a="$(median ${R[$c,$m]})" -v b="$(median ${R[raw,$rawm]})" 'BEGIN { if (b > 0) printf "%.2f", a / b }')
        [[ -n $r ]] && v="$v (${r}×)"
    fi
    echo "$v$(failed_note "$c" "$m")"
}

# A row of the table, if its workload ran.
row() {
    local label=$1 m=$2 f=$3 rawm=$4 ratio=${5:-1} raw c cells=()
    [[ -n ${SELECTED[${WORKLOAD_OF[$m]}]:-} ]] || return 0
    if [[ -n $rawm ]]; then raw=$(val raw "$rawm" "$f")$(failed_note raw "$rawm"); else raw="—"; fi
    [[ $ratio == 1 ]] || rawm=""
    for c in s3-oidc-mount s3fs rclone; do
        cells+=("$(cell "$c" "$m" "$f" "$rawm")")
    done
    printf '| %s | %s | %s | %s | %s |\n' "$label" "${cells[0]}" "$raw" "${cells[1]}" "${cells[2]}"
}

print_table() {
    local rawname="raw S3 client"
    ((READS == 1)) || rawname="raw PUT client"
    [[ -n ${SELECTED[wseq]:-}${SELECTED[wsmall]:-} ]] || rawname="raw GET client"
    echo "| workload | s3-oidc-mount (--cache-size $CACHE_SIZE) | $rawname | s3fs | rclone |"
    echo "|---|---|---|---|---|"
    row "1a. sequential read, 1 GiB, 1 job (MiB/s); raw: 1 connection" seq1_mibs %.0f seq1c_mibs
    row "1b. same runs; raw: 4 connections × 8 MiB parts" seq1_mibs %.0f seq4c_mibs
    row "2. sequential read, 4 jobs × 256 MiB, 4 files (MiB/s)" seq4j_mibs %.0f seq4j_mibs
    row "3. client CPU per GiB read sequentially (CPU s/GiB)" cpu_per_gib %.2f cpu_per_gib
    row "4. random 1 MiB reads, 1 job (MiB/s)" rand1m_mibs %.0f rand1m_mibs
    row "5. random 4 KiB reads, 1 job (IOPS)" rand4k_iops %.0f rand4k_iops
    row "6. bytes fetched from S3 per byte read, random 4 KiB ($FETCHED_HOW)" fetched_ratio %.2f fetched_ratio
    row "6b. bytes fetched from S3 per byte read, sequential 1 job" fetched_seq1 %.2f fetched_seq1
    row "6c. bytes fetched from S3 per byte read, sequential 4 jobs" fetched_seq4 %.2f fetched_seq4
    row "7. time to first byte, 4 KiB of a 100 MiB file, cold (ms)" ttfb_ms %.1f ttfb_ms
    row "8. \`ls -l\` of 10,000 objects in one directory (s); raw: one delimited listing" ls_s %.2f ls_s
    row "9. \`find\` over 10,000 objects in 100 directories (s); raw: one flat listing" find_s %.2f find_s
    row "10. \`stat\` of 1,000 files right after listing them (s)" stat_s %.3f ""
    row "11. process start to mount ready (s)" ready_s %.3f ""
    row "12a. peak RSS, sequential 1 job (MiB)" rss1_mib %.0f rss1_mib 0
    row "12b. peak RSS, sequential 4 jobs (MiB)" rss4_mib %.0f rss4_mib 0
    row "13a. sequential write, 1 GiB, \`dd bs=1M\` until S3 has it (MiB/s); raw: multipart, 8 MiB parts × 4 in flight" \
        wseq_mibs %.0f wseq4_mibs
    row "13b. same runs; raw: 8 MiB parts × 16 in flight" wseq_mibs %.0f wseq16_mibs
    row "14. client CPU per GiB written (CPU s/GiB); raw: 8 MiB × 4" wcpu_per_gib %.2f wcpu_per_gib
    row "15. peak RSS, sequential write (MiB)" wrss_mib %.0f ""
    row "16. \`cp -r\` of 1,000 files of 4 KiB until S3 lists them (files/s); raw: 1,000 PutObjects one at a time" \
        wsmall_fps %.0f wsmall_fps
}

# ------------------------------------------------------------------------------------------------

main() {
    local t_start=$SECONDS
    clean_stale
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    mkdir -p "$DIR" "$LOGS" "$DIR/bin" "$DIR/tmp"
    touch "$DIR/.s3om-bench"
    (umask 077 && mkdir -p "$PRIV")

    install_tools
    command -v fio >/dev/null || die "fio is not installed"
    local c have=()
    for c in "${CLIENTS[@]}"; do
        if [[ $c == s3fs || $c == rclone ]] && ! command -v "$c" >/dev/null; then
            log "warning: $c is not installed; its column will say n/a"
            continue
        fi
        have+=("$c")
    done
    CLIENTS=("${have[@]}")
    CLK_TCK=$(getconf CLK_TCK)

    log "building release binaries"
    cargo build --release --locked --bin s3-oidc-mount --example s3bench >&2
    local target
    target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
    # Copies: a rebuild in the work tree during the run must not change what is measured.
    cp "$target/release/s3-oidc-mount" "$target/release/examples/s3bench" "$DIR/bin/"
    S3OM=$DIR/bin/s3-oidc-mount S3BENCH=$DIR/bin/s3bench
    export RUST_LIB_BACKTRACE=0

    # tcp_nodelay: without it RGW's beast frontend sends a small response's body after its headers
    # only once the client's delayed ACK arrives, so every small GET on a reused connection takes
    # ~40 ms (an RGW artefact that real S3 does not have; see docs/performance.md).
    log "starting RGW on 127.0.0.1:$RGW_PORT"
    RGW_PORT=$RGW_PORT RGW_MON_PORT=$RGW_MON_PORT RGW_BEAST_OPTS=tcp_nodelay=1 scripts/rgw.sh start "$RGW" >/dev/null
    # shellcheck disable=SC1091
    source "$RGW/env"
    export S3_ENDPOINT AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_REGION
    printf '%s:%s\n' "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" >"$PRIV/s3fs.passwd"
    chmod 600 "$PRIV/s3fs.passwd"
    : >"$PRIV/rclone.conf"

    if counter_setup; then
        FETCHED_HOW="TCP payload sent by RGW"
    else
        FETCHED_HOW="RGW get_b counter"
        log "warning: nftables unavailable; bytes fetched come from RGW's get_b counter (overcounts aborted GETs)"
    fi

    if ((READS == 1)); then
        log "uploading the data set"
        "$S3BENCH" put-data --bucket "$BUCKET"
    else
        "$S3BENCH" put-data --bucket "$BUCKET" --bucket-only
    fi
    [[ -z ${SELECTED[wseq]:-}${SELECTED[wsmall]:-} ]] || write_sources

    log "machine: $(nproc) cores, kernel $(uname -r), $(radosgw --version | awk '{print "ceph", $3}'), fio $(fio --version)"
    log "s3-oidc-mount $(git describe --always --dirty 2>/dev/null || echo '?'), --cache-size $CACHE_SIZE; clients: ${CLIENTS[*]}"
    log "runs: $RUNS, workloads: ${WORKLOADS[*]}, random reads: ${RAND_SECONDS}s, TTFB samples per run: $TTFB_SAMPLES, load: $(cut -d' ' -f1-3 /proc/loadavg)"

    local run w
    local -A raw_has=([seq1]=1 [seq4]=1 [rand1m]=1 [rand4k]=1 [ttfb]=1 [ls]=1 [find]=1 [wseq]=1 [wsmall]=1)
    for ((run = 1; run <= RUNS; run++)); do
        for w in $READ_WORKLOADS $WRITE_WORKLOADS; do
            [[ -n ${SELECTED[$w]:-} ]] || continue
            log "run $run/$RUNS: $w (load $(cut -d' ' -f1 /proc/loadavg), RGW's OSD $(osd_rss_mib) MiB)"
            for c in "${CLIENTS[@]}"; do
                [[ $c == raw && -z ${raw_has[$w]:-} ]] && continue
                "w_$w" "$c" || fail "$c" "$w"
            done
        done
    done

    print_table
    log "load at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
    log "done in $(((SECONDS - t_start) / 60)) min $(((SECONDS - t_start) % 60)) s"
}

main "$@"
