#!/usr/bin/env bash
# The WAL's size, every 10 ms, beside `tradevault replicate` while workload.py writes flat out,
# with the sidecar's debug log: shows when and why checkpoints stop (session 11, RESULTS.md).
#   usage: walgrowth.sh BIN [DURATION_S (12)] [DIR (a new temporary directory)]
set -euo pipefail
bin="$(realpath "$1")"; duration="${2:-12}"; dir="${3:-$(mktemp -d)}"
here="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$dir" && cd "$dir"
rm -rf t.db t.db-wal t.db-shm .t.db-tradevault replica
python3 "$here/workload.py" init t.db >/dev/null
RUST_LOG=tradevault=debug "$bin" replicate t.db "file://$PWD/replica" > side.log 2>&1 & side=$!
sleep 1
python3 "$here/workload.py" write t.db --rate 0 --duration "$duration" > writer.json & writer=$!
python3 - "$duration" > walsize.txt <<'EOF' &
import os, sys, time
t0 = time.time()
while time.time() - t0 < float(sys.argv[1]) + 1:
    try:
        size = os.path.getsize("t.db-wal")
    except OSError:
        size = -1
    print(f"{time.time() - t0:.3f} {size}")
    time.sleep(0.01)
EOF
sampler=$!
wait "$writer" "$sampler"
kill "$side"; wait "$side" || true
tail -1 writer.json
echo "WAL max MiB: $(sort -k2 -n walsize.txt | tail -1 | awk '{print $2 / 1048576}')"
echo "checkpoints: $(grep -c 'checkpointed' side.log || true), held back: $(grep -c 'holds back' side.log || true)"
echo "samples in $dir/walsize.txt, log in $dir/side.log"
