#!/usr/bin/env bash
# The sidecar's CPU every 10 s at 2,000 commits/s with `fine_minutes = 0`, so that from the first
# minute on the replica deletes a minute of level-0 files at a time, as one an hour old does
# (session 11, RESULTS.md). The first minute pays for whatever was deleted on the filesystem just
# before (ext4 without a journal steps over recently freed inodes).
#   usage: steadycpu.sh BIN DIR SECONDS
set -euo pipefail
bin="$(realpath "$1")"; dir="$2"; seconds="$3"
workload="$(cd "$(dirname "$0")" && pwd)/workload.py"
rm -rf "$dir"; mkdir -p "$dir"
python3 "$workload" init "$dir/trading.db" >/dev/null
cat > "$dir/tv.toml" <<EOC
[[database]]
name = "trading"
path = "$dir/trading.db"
poll_interval_ms = 1
[[database.replica]]
url = "file://$dir/replica"
fine_minutes = 0
EOC
"$bin" replicate --config "$dir/tv.toml" > "$dir/replicate.log" 2>&1 & side=$!
sleep 1
python3 "$workload" write "$dir/trading.db" --rate 2000 --batch 1 --duration "$seconds" > "$dir/writer.json" 2>&1 & writer=$!
ticks() { awk '{print $14 + $15}' "/proc/$side/stat"; }
hz=$(getconf CLK_TCK); prev=$(ticks)
for t in $(seq 10 10 "$seconds"); do
  sleep 10; now=$(ticks)
  echo "t=${t}s cpu=$(( (now - prev) * 100 / hz / 10 ))% ltx_files=$(find "$dir/replica" -name '*.ltx' | wc -l)"
  prev=$now
done
wait "$writer"; kill "$side"; wait "$side" || true
