#!/usr/bin/env python3
"""Point-in-time restores checked against what a writer recorded, on a replica written by
`tradevault replicate` or by `litestream replicate`.

usage: pitrcheck.py TRADEVAULT_BIN {tradevault|litestream} [RATE] [TIMES]
env LITESTREAM (the litestream binary, for the second), PITRCHECK_DIR (scratch, default a new
temporary directory). A Python writer inserts 300 rows at about RATE per second (default 20,
random gaps), recording when each insert began and ended; the replicator is then stopped and
`tradevault restore --timestamp T` is run at TIMES random times (default 40). Each restore is
"exact" (every row that ended by T, none that began after it), "refused", or "wrong"."""
import os, random, sqlite3, subprocess, sys, tempfile, time

BIN, TOOL = sys.argv[1], sys.argv[2]
RATE = float(sys.argv[3]) if len(sys.argv) > 3 else 20.0
TIMES = int(sys.argv[4]) if len(sys.argv) > 4 else 40
d = os.environ.get("PITRCHECK_DIR") or tempfile.mkdtemp(prefix="pitrcheck-")
os.makedirs(d, exist_ok=True)
db, rep = f"{d}/bot.db", f"file://{d}/replica"
c = sqlite3.connect(db, isolation_level=None)
c.execute("PRAGMA journal_mode=WAL")
c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
replicator = [BIN, "replicate", db, rep] if TOOL == "tradevault" else \
    [os.environ.get("LITESTREAM", "litestream"), "replicate", db, rep]
p = subprocess.Popen(replicator, stdout=open(f"{d}/log", "w"), stderr=subprocess.STDOUT)
time.sleep(1.5)
rec = []  # (begin_ns, end_ns, id)
for i in range(1, 301):
    b = time.time_ns(); c.execute("INSERT INTO t VALUES (?, 'x')", (i,)); e = time.time_ns()
    rec.append((b, e, i))
    time.sleep(random.random() * 2 / RATE)
time.sleep(1.5)
p.terminate(); p.wait()
exact = refused = wrong = 0
for k in range(TIMES):
    T = random.randrange(rec[5][0], rec[-5][0])
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(T // 10**9)) + ".%06dZ" % ((T // 1000) % 10**6)
    out = f"{d}/o{k}.db"
    r = subprocess.run([BIN, "restore", "--replica", rep, "--output", out, "--timestamp", ts],
                       capture_output=True, text=True)
    if r.returncode != 0:
        refused += 1
        continue
    got = {row[0] for row in sqlite3.connect(out).execute("SELECT id FROM t")}
    must = {j for (bb, ee, j) in rec if ee <= T}
    must_not = {j for (bb, ee, j) in rec if bb >= T}
    if must <= got and not (got & must_not):
        exact += 1
    else:
        wrong += 1
        print("WRONG", ts, len(got), len(must))
print(f"{TOOL} replica, {RATE}/s, {TIMES} times: exact {exact}, refused {refused}, wrong {wrong} ({d})")
sys.exit(1 if wrong else 0)
