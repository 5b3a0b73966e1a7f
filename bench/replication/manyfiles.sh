#!/usr/bin/env bash
# A replica that has run for a while: the sidecar at 2,000 commits/s for SECONDS, then the files
# per level. Restore it with `tradevault restore --replica file://DIR/replica --output X --json`
# (plan and fetch+apply durations) or `litestream restore -o X file://DIR/replica`.
# usage: manyfiles.sh TRADEVAULT_BIN SECONDS SCRATCH_DIR
set -u
B=$1; S=$2; D=$3; W=$(cd "$(dirname "$0")" && pwd)/workload.py
rm -rf $D; mkdir -p $D
python3 $W init $D/trading.db
$B replicate $D/trading.db file://$D/replica --poll-interval-ms 1 > $D/rep.log 2>&1 & RP=$!
sleep 2
python3 $W write $D/trading.db --rate 2000 --batch 1 --duration $S > $D/w.out 2>&1
sleep 1; kill $RP; wait $RP
find $D/replica -name '*.ltx' | awk -F/ '{print $(NF-1)}' | sort | uniq -c
