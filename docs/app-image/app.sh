#!/bin/sh
# A stand-in "legacy app": it reads every file under the mount as plain files, prints their
# SHA-256, then serves until SIGTERM and exits 0 (as a well-behaved Cloud Run app does).
set -eu
dir=${DATA_DIR:-/mnt/s3}
echo "app: running as uid $(id -u), reading $dir"
first=$(find "$dir" -type f | sort | head -n 1)
if [ -n "$first" ]; then
    head -c 4096 "$first" >/dev/null
    echo "app: first read done at $(date +%s.%N)"
fi
find "$dir" -type f | sort | while IFS= read -r f; do sha256sum "$f"; done
echo "app: serving"
trap 'echo "app: SIGTERM, exiting"; exit 0' TERM
while :; do
    sleep 1 &
    wait $! || true
done
