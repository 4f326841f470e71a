#!/usr/bin/env bash
# The demo, on a fresh Debian/Ubuntu machine as root, with no AWS account: installs what it
# needs, starts a local S3 server (Ceph RGW on 127.0.0.1) holding sample files, builds the
# daemon, mounts the bucket at ./mnt, shows it, and stays mounted until Ctrl-C; then it
# unmounts and stops the server.
#
# Environment: DEMO_RGW_PORT / DEMO_RGW_MON_PORT (default 7480 / 16789).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

log() { printf '\033[1mdemo:\033[0m %s\n' "$*" >&2; }

command -v cargo >/dev/null || { log "error: cargo not found; install Rust (https://rustup.rs)"; exit 1; }
[[ -e /dev/fuse ]] || { log "error: /dev/fuse is missing (modprobe fuse, or run the container with --device /dev/fuse)"; exit 1; }

scripts/rgw.sh install

state=$(mktemp -u /tmp/s3om-demo-rgw.XXXXXX)
samples=$(mktemp -d /tmp/s3om-demo-data.XXXXXX)
mnt=$root/mnt
daemon=
cleanup() {
    trap - EXIT INT TERM
    if [[ -n $daemon ]] && kill -0 "$daemon" 2>/dev/null; then
        kill -TERM "$daemon" 2>/dev/null || true
        wait "$daemon" 2>/dev/null || true
    fi
    mountpoint -q "$mnt" 2>/dev/null && umount -l "$mnt"
    rmdir "$mnt" 2>/dev/null || true
    scripts/rgw.sh stop "$state" || true
    rm -rf "$samples"
    log "cleaned up"
}
trap cleanup EXIT

log "building (release; the first build takes a few minutes)"
cargo build --release --locked
bin=$root/target/release/s3-oidc-mount

log "starting a local S3 server"
RGW_PORT=${DEMO_RGW_PORT:-7480} RGW_MON_PORT=${DEMO_RGW_MON_PORT:-16789} scripts/rgw.sh start "$state" >/dev/null
# shellcheck disable=SC1091
source "$state/env"

log "uploading sample files to s3://demo"
mkdir -p "$samples/docs" "$samples/data/2026/11" "$samples/media"
cat >"$samples/README.txt" <<'TXT'
This directory is the S3 bucket s3://demo, mounted read-only by s3-oidc-mount.
Try: ls -lR, cat, cp, tar, sqlite3, python -- they all just work.
TXT
seq 1 100000 | awk '{print $1","$1*$1","($1%7==0?"seven":"other")}' >"$samples/data/2026/11/numbers.csv"
python3 - "$samples/data/inventory.db" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.execute("create table items(id integer primary key, name text, qty integer)")
db.executemany("insert into items(name, qty) values (?, ?)", [(f"item-{i}", i % 13) for i in range(5000)])
db.commit()
PY
head -c $((24 << 20)) /dev/urandom >"$samples/media/random-24MiB.bin"
echo "nested file" >"$samples/docs/guide.md"
scripts/rgw.sh mb "$state" demo
(cd "$samples" && find . -type f | sed 's|^\./||') | while read -r key; do
    scripts/rgw.sh put "$state" demo "$key" "$samples/$key"
done

mkdir -p "$mnt"
log "mounting s3://demo at ./mnt"
"$bin" mount s3://demo "$mnt" --endpoint-url "$S3_ENDPOINT" --force-path-style &
daemon=$!
for _ in $(seq 1 300); do
    mountpoint -q "$mnt" && break
    kill -0 "$daemon" 2>/dev/null || { log "error: the daemon exited"; exit 1; }
    sleep 0.1
done
mountpoint -q "$mnt" || { log "error: not mounted after 30 s"; exit 1; }

log "ls -lR ./mnt"
ls -lR "$mnt"
log "head -3 ./mnt/data/2026/11/numbers.csv"
head -3 "$mnt/data/2026/11/numbers.csv"
log "SQLite reads its database straight from the mount:"
python3 -c "import sqlite3,sys; db=sqlite3.connect('file:' + sys.argv[1] + '?mode=ro', uri=True); print(db.execute('select count(*), sum(qty) from items').fetchone())" "$mnt/data/inventory.db"
log "sha256 of the 24 MiB file, local copy vs mount:"
sha256sum "$samples/media/random-24MiB.bin" "$mnt/media/random-24MiB.bin"

log "mounted at ./mnt -- explore it from another terminal; press Ctrl-C to unmount and stop"
trap 'kill -TERM "$daemon" 2>/dev/null || true' INT TERM
wait "$daemon" || true
