#!/usr/bin/env bash
# The loss window at a chosen moment, to see what a maintenance pass holds up.
# usage: lossat.sh TRADEVAULT_BIN SCRATCH_DIR KILL_AFTER_SECONDS
# The sidecar runs with fine_minutes = 0, so that every minute's pass (at +5 s, +65 s, ...) merges
# the last minute's points into level 1, as it does every minute once a replica is an hour old; a
# writer commits 2,000 times a second; both are SIGKILLed KILL_AFTER_SECONDS after the sidecar
# started, the replica is restored, and the commits missing from it are printed.
set -u
B=$1; D=$2; K=$3; W=$(cd "$(dirname "$0")" && pwd)/workload.py
rm -rf $D; mkdir -p $D
python3 $W init $D/trading.db
cat > $D/tv.toml <<EOC
[[database]]
name = "trading"
path = "$D/trading.db"
poll_interval_ms = 1
[[database.replica]]
url = "file://$D/replica"
fine_minutes = 0
EOC
$B replicate --config $D/tv.toml > $D/rep.log 2>&1 & RP=$!
sleep 1
python3 $W write $D/trading.db --rate 2000 --batch 1 --duration 0 > $D/w.out 2>&1 & WP=$!
sleep $(python3 -c "print($K - 1)")
kill -9 $RP $WP; wait $RP $WP 2>/dev/null
$B restore --replica file://$D/replica --output $D/out.db --quick-check > /dev/null 2>&1
python3 - $D <<'EOP'
import sqlite3, sys
d = sys.argv[1]
src = sqlite3.connect(d + "/trading.db").execute("select max(seq), max(ts_ns) from commits").fetchone()
got = sqlite3.connect(d + "/out.db").execute("select max(seq) from commits").fetchone()[0]
ts = dict(sqlite3.connect(d + "/trading.db").execute("select seq, ts_ns from commits where seq > ?", (got,)).fetchall())
first_lost = min(ts) if ts else None
print(f"lost {src[0]-got} commits, window {((src[1]-ts[first_lost])/1e6 if ts else 0):.0f} ms")
EOP
