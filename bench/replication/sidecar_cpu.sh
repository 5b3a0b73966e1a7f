#!/usr/bin/env bash
# The sidecar's CPU at 2,000 commits/s (goal P1: at most 10% of a core), with a file replica:
# usage: sidecar_cpu.sh TRADEVAULT_BIN [SECONDS]. workload.py writes one row per commit; the
# sidecar's user and system time is read from /proc over SECONDS (default 15) once both run.
# The scratch directory is removed at the end, and the script then waits SETTLE seconds (120):
# on this journal-less ext4 every new inode skips those freed in the last 1-2 minutes
# (`recently_deleted`), which doubled the next run's system time (23-25% against 14-15%).
set -euo pipefail
B=$1; S=${2:-15}; HERE=$(cd "$(dirname "$0")" && pwd); W=$HERE/workload.py
D=$(mktemp -d "${TMPDIR:-/tmp}/sidecar-cpu.XXXX")
python3 "$W" init "$D/trading.db"
"$B" replicate "$D/trading.db" "file://$D/replica" --poll-interval-ms 1 > "$D/rep.log" 2>&1 & RP=$!
sleep 2
python3 "$W" write "$D/trading.db" --rate 2000 --batch 1 --duration 0 > "$D/w.out" 2>&1 & WP=$!
sleep 2
read -r U0 S0 < <(awk '{print $14, $15}' "/proc/$RP/stat"); W0=$(date +%s.%N)
sleep "$S"
read -r U1 S1 < <(awk '{print $14, $15}' "/proc/$RP/stat"); W1=$(date +%s.%N)
kill "$WP"; kill "$RP"; wait "$RP" 2>/dev/null || true
T=$(getconf CLK_TCK)
python3 -c "w=$W1-$W0; u=($U1-$U0)/$T/w*100; s=($S1-$S0)/$T/w*100; print(f'cpu {u+s:.1f}% of a core (user {u:.1f}, system {s:.1f}); replica files: $(find "$D/replica" -name '*.ltx' | wc -l)')"
rm -rf "$D"
sleep "${SETTLE:-120}"
