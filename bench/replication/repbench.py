#!/usr/bin/env python3
"""Side-by-side replication benchmark: `tradevault replicate` vs Litestream 0.5.

Adapted from the shared Litestream anchor harness (/work/shared/bench/litestream,
lsbench.py): same trading-like workload (workload.py), same kill procedure, same
measures; every experiment now runs each tool in turn on the same workload.

Subcommands (each writes results/<name>.json next to this script, or under
$REP_BENCH_RESULTS):
  lag     loss window after kill -9 of writer + replicator, at fixed commit rates
          and flat out; replicator CPU/RSS, WAL size, replica size
  rto     restore time of a bulk-loaded database (~1 GiB by default)
  pitr    point-in-time restores to many timestamps and txids: exact, refused,
          or silently older
  report  markdown tables from the result files

Tools (--tools): litestream (0.5 defaults: 1 s monitor and sync intervals),
litestream-10ms (both intervals 10 ms), tradevault (`tradevault replicate DB
file://REPLICA --poll-interval-ms 1`), none (no replicator: writer baseline).

Environment:
  TRADEVAULT_BIN     the tradevault binary (default: ../../target/release/tradevault)
  LITESTREAM         the litestream binary (default: install it with
                     install_litestream.sh into a temporary venv)
  REP_BENCH_WORK     scratch directory (default: $TMPDIR/rep-bench-work)
  REP_BENCH_RESULTS  results directory (default: ./results next to this file)
Only the Python standard library is used; sqlite3, cp, sync and sh are expected on PATH.
"""
import argparse
import atexit
import datetime as dt
import glob
import json
import os
import platform
import random
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
WORKLOAD = os.path.join(HERE, "workload.py")
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Every command is bounded: a restore or initial sync that takes longer is killed and recorded.
CMD_TIMEOUT_S = 600.0

# ----------------------------------------------------------------------------
# helpers

CHILDREN = []  # every process we start, killed on exit or SIGTERM (run_all.sh's timeout)


def _kill_children(*_):
    for p in CHILDREN:
        if p.poll() is None:
            try:
                p.kill()
            except OSError:
                pass
    if _:
        sys.exit(143)


atexit.register(_kill_children)
signal.signal(signal.SIGTERM, _kill_children)


def spawn(argv, **kw):
    p = subprocess.Popen(argv, **kw)
    CHILDREN.append(p)
    return p


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


def litestream_bin():
    path = os.environ.get("LITESTREAM")
    if path:
        return path
    out = subprocess.run(["bash", os.path.join(HERE, "install_litestream.sh")],
                         check=True, stdout=subprocess.PIPE, text=True).stdout
    path = out.strip().splitlines()[-1]
    os.environ["LITESTREAM"] = path
    return path


def tradevault_bin():
    path = os.environ.get("TRADEVAULT_BIN") or os.path.join(REPO, "target", "release", "tradevault")
    if not os.access(path, os.X_OK):
        sys.exit(f"{path}: not found; run `cargo build --release` or set TRADEVAULT_BIN")
    return path


def work_root():
    d = os.environ.get("REP_BENCH_WORK") or os.path.join(tempfile.gettempdir(), "rep-bench-work")
    os.makedirs(d, exist_ok=True)
    return d


def results_dir():
    d = os.environ.get("REP_BENCH_RESULTS") or os.path.join(HERE, "results")
    os.makedirs(d, exist_ok=True)
    return d


def save(name, obj):
    path = os.path.join(results_dir(), name + ".json")
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
    log("wrote", os.path.relpath(path, HERE))


def remove_run_dir(d):
    """Deletes a finished run's directory, or with REP_BENCH_DEFER_DELETE=1 moves it aside until
    the process exits. On a journal-less ext4, creating a file scans the inodes freed in the last
    minutes (recently_deleted), so deleting a run's thousands of files just before the next run
    charges CPU to whichever tool runs next; deferring keeps runs independent (needs disk space)."""
    if os.environ.get("REP_BENCH_DEFER_DELETE") != "1":
        shutil.rmtree(d, ignore_errors=True)
        return
    trash = os.path.join(work_root(), "trash")
    os.makedirs(trash, exist_ok=True)
    if not DEFERRED:
        atexit.register(lambda: shutil.rmtree(trash, ignore_errors=True))
    target = os.path.join(trash, f"{len(DEFERRED)}-{os.path.basename(d)}")
    os.rename(d, target)
    DEFERRED.append(target)


DEFERRED = []


def fresh_dir(name):
    d = os.path.join(work_root(), name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    return d


def tree_bytes(path):
    total = 0
    for root, _dirs, files in os.walk(path):
        for fn in files:
            try:
                total += os.path.getsize(os.path.join(root, fn))
            except OSError:
                pass
    return total


def ltx_files(replica):
    """(level, min_txid, max_txid, bytes, mtime_ns) of every LTX file, from the names."""
    out = []
    for f in glob.glob(os.path.join(replica, "ltx", "*", "*.ltx")):
        lvl = os.path.basename(os.path.dirname(f))
        name = os.path.basename(f)[:-4]
        try:
            lo, hi = (int(x, 16) for x in name.split("-"))
            st = os.stat(f)
        except (ValueError, OSError):
            continue
        out.append((int(lvl), lo, hi, st.st_size, st.st_mtime_ns))
    return sorted(out)


def ltx_counts(replica):
    counts = {}
    for lvl, *_ in ltx_files(replica):
        counts[str(lvl)] = counts.get(str(lvl), 0) + 1
    return counts


def file_size(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def stats(values):
    vals = sorted(v for v in values if v is not None)
    if not vals:
        return None
    s = {"median": statistics.median(vals), "min": vals[0], "max": vals[-1], "n": len(vals)}
    if len(vals) >= 10:
        s["p90"] = vals[int(round(0.9 * (len(vals) - 1)))]
    if len(vals) >= 20:  # a p99 of fewer samples would just be the max
        s["p99"] = vals[min(len(vals) - 1, int(round(0.99 * (len(vals) - 1))))]
    return s


def timed(argv, timeout=CMD_TIMEOUT_S, stderr_path=None, cwd=None):
    """Run argv (bounded by timeout); return rc, wall, cpu, maxrss and the tail of stderr."""
    err = open(stderr_path, "w+") if stderr_path else tempfile.TemporaryFile("w+")
    t0 = time.perf_counter()
    p = spawn(argv, stdout=subprocess.DEVNULL, stderr=err, cwd=cwd)
    timed_out = False
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        if not timed_out and time.perf_counter() - t0 > timeout:
            timed_out = True
            p.kill()
        time.sleep(0.001)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    err.seek(0)
    tail = err.read()[-2000:]
    err.close()
    return {"rc": p.returncode, "wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime,
            "maxrss_mib": ru.ru_maxrss / 1024.0, "timed_out": timed_out, "stderr": tail}


def rm_db(path):
    for suffix in ("", "-wal", "-shm", ".tmp", ".tradevault-restore"):
        try:
            os.remove(path + suffix)
        except FileNotFoundError:
            pass


def kill9(p):
    try:
        os.kill(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def iso_ms(ns):
    return dt.datetime.fromtimestamp(ns / 1e9, tz=dt.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# ----------------------------------------------------------------------------
# the replicators under test

class Litestream:
    """litestream replicate -config (file replica); restore -o."""

    INTERVALS = {"litestream": None, "litestream-10ms": "10ms", "litestream-l0ret10s": None}

    def __init__(self, name):
        self.name = name
        self.interval = self.INTERVALS[name]
        self.extra_global = ({"l0-retention": "10s", "l0-retention-check-interval": "2s"}
                             if name == "litestream-l0ret10s" else {})

    def write_config(self, d, db, replica):
        lines = [f"{k}: {v}" for k, v in self.extra_global.items()]
        lines += ["dbs:", f'  - path: "{db}"']
        if self.interval:
            lines.append(f"    monitor-interval: {self.interval}")
        lines += ["    replica:", "      type: file", f'      path: "{replica}"']
        if self.interval:
            lines.append(f"      sync-interval: {self.interval}")
        cfg = os.path.join(d, "litestream.yml")
        with open(cfg, "w") as f:
            f.write("\n".join(lines) + "\n")
        return cfg

    def start(self, d, db, replica):
        cfg = self.write_config(d, db, replica)
        logf = open(os.path.join(d, "replicator.log"), "w")
        return spawn([litestream_bin(), "replicate", "-config", cfg], stdout=logf,
                     stderr=subprocess.STDOUT, cwd=d)

    def once_argv(self, d, db, replica):
        return [litestream_bin(), "replicate", "-once", "-config", self.write_config(d, db, replica)]

    def points(self, replica, files, d):
        """The TXIDs a restore can reach: where the replica's files end."""
        return sorted({f[2] for f in files if f[0] < 9})

    def restore_argv(self, replica, out, timestamp_ns=None, txid=None, quick=False):
        argv = [litestream_bin(), "restore"]
        if timestamp_ns is not None:
            argv += ["-timestamp", iso_ms(timestamp_ns)]
        if txid is not None:
            argv += ["-txid", f"{txid:016x}"]
        if quick:
            argv += ["-integrity-check", "quick"]
        return argv + ["-o", out, "file://" + replica]

    def local_dir(self, db):
        return os.path.join(os.path.dirname(db), "." + os.path.basename(db) + "-litestream")


class TradeVault:
    """tradevault replicate DB file://REPLICA --poll-interval-ms 1; restore --replica --output.

    `tradevault-base` is the same with $TRADEVAULT_BASE_BIN (another build, to compare two)."""

    def __init__(self, name="tradevault"):
        self.name = name

    def bin(self):
        if self.name == "tradevault-base":
            path = os.environ.get("TRADEVAULT_BASE_BIN", "")
            if not os.access(path, os.X_OK):
                sys.exit("tradevault-base needs TRADEVAULT_BASE_BIN, an executable")
            return path
        return tradevault_bin()

    def start(self, d, db, replica):
        logf = open(os.path.join(d, "replicator.log"), "w")
        return spawn([self.bin(), "replicate", db, "file://" + replica,
                      "--poll-interval-ms", "1"], stdout=logf, stderr=subprocess.STDOUT, cwd=d)

    def once_argv(self, d, db, replica):
        return [self.bin(), "replicate", db, "file://" + replica, "--once"]

    def restore_argv(self, replica, out, timestamp_ns=None, txid=None, quick=False):
        argv = [self.bin(), "restore", "--replica", "file://" + replica, "--output", out]
        if timestamp_ns is not None:
            argv += ["--timestamp", iso_ms(timestamp_ns)]
        if txid is not None:
            argv += ["--txid", str(txid)]
        if quick:
            argv += ["--quick-check"]  # PRAGMA quick_check instead of the default integrity_check
        return argv

    def points(self, replica, files, d):
        """The TXIDs a restore can reach: every one up to the latest (each shipment is a point in
        the replica's journal or its segments for the fine window, an hour by default), and
        the files' ends in ltx/."""
        plan = subprocess.run([self.bin(), "restore", "--replica", "file://" + replica, "--output",
                               os.path.join(d, "dry-run.db"), "--dry-run", "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=d)
        latest = json.loads(plan.stdout)["txid"] if plan.returncode == 0 else 0
        return sorted(set(range(1, latest + 1)) | {f[2] for f in files if f[0] < 9})

    def local_dir(self, db):
        return os.path.join(os.path.dirname(db), "." + os.path.basename(db) + "-tradevault")


def make_tool(name):
    if name == "none":
        return None
    if name in ("tradevault", "tradevault-base"):
        return TradeVault(name)
    if name in Litestream.INTERVALS:
        return Litestream(name)
    sys.exit(f"unknown tool {name!r}")


def wait_first_ltx(p, replica, timeout=20.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if glob.glob(os.path.join(replica, "ltx", "*", "*.ltx")):
            return True
        if p.poll() is not None:
            return False
        time.sleep(0.02)
    return False


class Sampler(threading.Thread):
    """Samples CPU time (utime+stime) and RSS of pids from /proc, and the size of files."""

    def __init__(self, period=0.1):
        super().__init__(daemon=True)
        self.period = period
        self.pids = {}
        self.samples = {}
        self.files = {}
        self.file_max = {}
        self.stop_ev = threading.Event()

    def add(self, name, pid):
        self.pids[name] = pid
        self.samples[name] = []

    def watch(self, name, path):
        self.files[name] = path
        self.file_max[name] = 0

    @staticmethod
    def read(pid):
        with open(f"/proc/{pid}/stat") as f:
            parts = f.read().rsplit(")", 1)[1].split()
        cpu = (int(parts[11]) + int(parts[12])) / CLK_TCK
        rss = hwm = 0
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
        return cpu, rss, hwm

    def sample_once(self):
        now = time.monotonic()
        for name, pid in list(self.pids.items()):
            try:
                cpu, rss, hwm = self.read(pid)
            except (OSError, IndexError, ValueError):
                continue
            self.samples[name].append((now, cpu, rss, hwm))
        for name, path in self.files.items():
            self.file_max[name] = max(self.file_max[name], file_size(path))

    def run(self):
        while not self.stop_ev.is_set():
            self.sample_once()
            self.stop_ev.wait(self.period)

    def stop(self):
        self.sample_once()
        self.stop_ev.set()
        self.join()

    def summary(self, name, t_from=None):
        s = self.samples.get(name) or []
        if t_from is not None:
            s = [x for x in s if x[0] >= t_from]
        if len(s) < 2:
            return None
        return {"cpu_pct_avg": 100.0 * (s[-1][1] - s[0][1]) / (s[-1][0] - s[0][0]),
                "rss_mib_max": max(x[2] for x in s) / 1024.0,
                "hwm_mib": max(x[3] for x in s) / 1024.0,
                "window_s": s[-1][0] - s[0][0]}


def db_state(path):
    """Last commit present in a database plus consistency counts."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        seq, ts = conn.execute(
            "SELECT seq, ts_ns FROM commits ORDER BY seq DESC LIMIT 1").fetchone() or (0, 0)
        n_commits, first_ts = conn.execute("SELECT COUNT(*), MIN(ts_ns) FROM commits").fetchone()
        ticks_max_seq, n_ticks = conn.execute(
            "SELECT COALESCE(MAX(commit_seq),0), COUNT(*) FROM ticks").fetchone()
        n_trades = conn.execute("SELECT COUNT(*) FROM trades").fetchone()[0]
        return {"seq": seq, "ts_ns": ts, "n_commits": n_commits, "first_ts_ns": first_ts,
                "ticks": n_ticks, "ticks_max_seq": ticks_max_seq, "trades": n_trades}
    finally:
        conn.close()


def quick_check(path):
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute("PRAGMA quick_check").fetchone()[0]
    finally:
        conn.close()


def atomic_ok(state, batch):
    """Every commit present in full: `batch` ticks each, a trade every 10th, no partial one."""
    return (state["n_commits"] == state["seq"] and state["ticks"] == batch * state["seq"]
            and state["ticks_max_seq"] == state["seq"] and state["trades"] == state["seq"] // 10)


def log_summary(path):
    """WARN/ERROR lines of a sidecar's log, grouped by message (times and numbers removed)."""
    groups, n = {}, 0
    try:
        with open(path, errors="replace") as f:
            for line in f:
                n += 1
                if "WARN" not in line and "ERROR" not in line and "level=WARN" not in line:
                    continue
                msg = re.sub(r"^\S+\s+", "", line.strip())           # the timestamp
                msg = re.sub(r"(/\S+)", "PATH", msg)                   # paths
                msg = re.sub(r"\b[0-9a-f]{16}\b|\d+", "N", msg)[:160]  # txids, numbers
                groups[msg] = groups.get(msg, 0) + 1
    except OSError:
        return None
    return {"lines": n, "warn_error": sum(groups.values()),
            "by_message": dict(sorted(groups.items(), key=lambda x: -x[1])[:8])}


def keep_failure(tag, d, extra):
    """Copy the logs of a failed or suspicious run into results/failures/<tag>/."""
    dst = os.path.join(results_dir(), "failures", tag)
    os.makedirs(dst, exist_ok=True)
    for fn in ("replicator.log", "writer.out", "litestream.yml"):
        src = os.path.join(d, fn)
        if os.path.exists(src):
            with open(src, "rb") as f:
                data = f.read()
            with open(os.path.join(dst, fn), "wb") as f:
                f.write(data[-200_000:])
    rows = ltx_files(os.path.join(d, "replica"))
    with open(os.path.join(dst, "replica-listing.txt"), "w") as f:
        f.write(f"{len(rows)} LTX files; the first and last 50:\n")
        for row in rows[:50] + rows[max(50, len(rows) - 50):]:
            f.write("level %d %016x-%016x %d bytes mtime %d\n" % row)
    with open(os.path.join(dst, "what.json"), "w") as f:
        json.dump(extra, f, indent=1, sort_keys=True, default=str)
    log(f"  kept logs of {tag} in {os.path.relpath(dst, HERE)}")


# ----------------------------------------------------------------------------
# one writer run with a replicator, ended by kill -9 of both (replicator first)

def run_once(tag, tool_name, rate, batch, duration, jitter=1.0, restore=True,
             stop_mode="kill", keep=False):
    tool = make_tool(tool_name)
    d = fresh_dir(tag)
    db = os.path.join(d, "trading.db")
    replica = os.path.join(d, "replica")
    subprocess.run([sys.executable, WORKLOAD, "init", db], check=True)
    sampler = Sampler()
    sampler.watch("wal", db + "-wal")
    rep = None
    res = {"tag": tag, "tool": tool_name, "rate": rate, "batch": batch}
    if tool:
        rep = tool.start(d, db, replica)
        if not wait_first_ltx(rep, replica):
            res["error"] = f"{tool_name} wrote no LTX file within 20 s (exit {rep.poll()})"
            kill9(rep)
            rep.wait()
            keep_failure(tag, d, res)
            shutil.rmtree(d, ignore_errors=True)
            return res
        res["first_ltx_ns"] = time.time_ns()
        sampler.add("replicator", rep.pid)
    wout = open(os.path.join(d, "writer.out"), "w")
    writer = spawn([sys.executable, WORKLOAD, "write", db, "--rate", str(rate),
                    "--batch", str(batch), "--duration", "0"], stdout=wout)
    sampler.add("writer", writer.pid)
    sampler.start()
    t_start = time.monotonic()
    time.sleep(duration + random.uniform(0, jitter))
    if stop_mode == "kill":
        # kill -9 the replicator first, then the writer; T is taken before the first kill
        t_kill_ns = time.time_ns()
        if rep:
            kill9(rep)
        kill9(writer)
        t_after_ns = time.time_ns()
    else:
        # graceful: stop the writer, let the replicator catch up, then SIGTERM it
        kill9(writer)
        t_kill_ns = t_after_ns = time.time_ns()
        writer.wait()
        time.sleep(3.0)
        if rep:
            rep.send_signal(signal.SIGTERM)
    sampler.stop()
    writer.wait()
    if rep:
        try:
            rep.wait(timeout=30)
        except subprocess.TimeoutExpired:
            res["stop_timeout"] = True
            kill9(rep)
            rep.wait()
        res["replicator_exit"] = rep.returncode
        res["replicator_proc"] = sampler.summary("replicator", t_from=t_start + 1.0)
        res["replicator_log"] = log_summary(os.path.join(d, "replicator.log"))
    res["writer_proc"] = sampler.summary("writer", t_from=t_start + 1.0)
    res["kill_ns"] = t_kill_ns
    res["kill_spread_ms"] = (t_after_ns - t_kill_ns) / 1e6
    orig = db_state(db)
    res["orig"] = orig
    span = (orig["ts_ns"] - orig["first_ts_ns"]) / 1e9 if orig["n_commits"] > 1 else 0
    res["achieved_commits_per_s"] = (orig["n_commits"] - 1) / span if span > 0 else None
    res["db_bytes"] = file_size(db)
    res["wal_bytes_end"] = file_size(db + "-wal")
    res["wal_bytes_max"] = max(sampler.file_max["wal"], res["wal_bytes_end"])
    res["replica_bytes"] = tree_bytes(replica)
    res["ltx_files"] = ltx_counts(replica)
    # gaps between consecutive level-0 files' mtimes while the writer ran (shipping stalls), and the
    # newest file's age at T
    l0 = sorted(f[4] for f in ltx_files(replica) if f[0] == 0 and f[4] >= res.get("first_ltx_ns", 0))
    if len(l0) > 1:
        gaps = sorted((b - a) / 1e6 for a, b in zip(l0, l0[1:]))
        res["l0_gap_ms"] = {"max": gaps[-1], "p99": gaps[int(0.99 * (len(gaps) - 1))],
                            "median": statistics.median(gaps), "over_10ms": sum(g > 10 for g in gaps),
                            "over_25ms": sum(g > 25 for g in gaps), "n": len(gaps),
                            "last_age_at_kill_ms": (t_kill_ns - l0[-1]) / 1e6}
    if tool:
        res["local_bytes"] = tree_bytes(tool.local_dir(db))
    suspicious = False
    if tool and restore:
        out = os.path.join(d, "restored.db")
        argv = tool.restore_argv(replica, out)
        r = timed(argv, cwd=d)
        res["restore"] = r
        res["restore_cmd"] = " ".join(argv).replace(work_root() + os.sep, "$WORK/")
        if r["rc"] == 0:
            st = db_state(out)
            res["restored"] = st
            res["restored_quick_check"] = quick_check(out)
            res["atomic_ok"] = atomic_ok(st, batch)
            res["lag_ms"] = (t_kill_ns - st["ts_ns"]) / 1e6
            res["lost_commits"] = orig["seq"] - st["seq"]
            suspicious = res["restored_quick_check"] != "ok" or not res["atomic_ok"]
        else:
            suspicious = True
    if suspicious or res.get("stop_timeout"):
        keep_failure(tag, d, res)
    # logical size of the original database: checkpoint its WAL into the file
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    res["db_bytes_checkpointed"] = file_size(db)
    res["d"] = d
    if os.environ.get("REP_BENCH_KEEP_LOGS") and tool:
        # the sidecar's whole log, e.g. with RUST_LOG=tradevault=debug for its checkpoint events
        dst = os.path.join(results_dir(), os.environ["REP_BENCH_KEEP_LOGS"])
        os.makedirs(dst, exist_ok=True)
        shutil.copyfile(os.path.join(d, "replicator.log"), os.path.join(dst, tag + ".log"))
    if not keep:
        remove_run_dir(d)
    return res


# ----------------------------------------------------------------------------
# experiments

def exp_lag(args):
    rates = [float(x) for x in args.rates.split(",")]
    tools = args.tools.split(",")
    runs = []
    t0 = time.monotonic()
    for rep in range(args.reps):
        for rate in rates:
            names = tools + (["none"] if rate == 0 and args.baseline else [])
            # a different order each rep, so no tool always runs right after the same one
            names = names[rep % len(names):] + names[:rep % len(names)]
            for name in names:
                tag = f"lag-{name}-r{int(rate)}-b{args.batch}-{rep}"
                r = run_once(tag, name, rate, args.batch, args.duration, restore=name != "none")
                p = r.get("replicator_proc") or {}
                log(f"{tag}: lag {r.get('lag_ms', float('nan')):.1f} ms, lost {r.get('lost_commits')}, "
                    f"{r.get('achieved_commits_per_s') or 0:.0f} commits/s, "
                    f"cpu {p.get('cpu_pct_avg', 0):.1f}%, rss {p.get('hwm_mib', 0):.0f} MiB, "
                    f"wal max {r.get('wal_bytes_max', 0) / 2**20:.0f} MiB, "
                    f"replica {r.get('replica_bytes', 0) / 2**20:.1f} MiB, "
                    f"restore {(r.get('restore') or {}).get('wall_s', 0):.2f}s "
                    f"rc {(r.get('restore') or {}).get('rc')}, qc {r.get('restored_quick_check')}, "
                    f"atomic {r.get('atomic_ok')} {r.get('error', '')}")
                runs.append(r)
                save(args.name, {"duration_s": args.duration, "reps": args.reps, "runs": runs,
                                 "elapsed_s": time.monotonic() - t0})


def exp_rto(args):
    tools = args.tools.split(",")
    size_mb = args.size_mb
    d = fresh_dir(f"rto-{size_mb}")
    db = os.path.join(d, "trading.db")
    out = os.path.join(d, "out.db")
    res = {"target_mb": size_mb, "n": args.n, "tools": {}}
    t0 = time.perf_counter()
    bulk = subprocess.run([sys.executable, WORKLOAD, "bulk", db, "--target-mb", str(size_mb)],
                          check=True, stdout=subprocess.PIPE, text=True).stdout
    res["bulk_load_s"] = time.perf_counter() - t0
    res["bulk"] = json.loads(bulk)
    res["db_bytes"] = file_size(db)
    log(f"rto: bulk-loaded {res['db_bytes'] / 2**20:.0f} MiB in {res['bulk_load_s']:.0f}s")

    def bench(label, argv, n):
        runs = []
        for _ in range(n):
            rm_db(out)
            # Each run starts with nothing dirty: none pays for the writeback of what ran
            # before it (the bulk load, the initial sync, the previous restore's deletion).
            os.sync()
            runs.append(timed(argv, cwd=d))
        r = {"label": label, "cmd": " ".join(argv).replace(work_root() + os.sep, "$WORK/"),
             "runs": runs, "wall_s": stats([x["wall_s"] for x in runs if x["rc"] == 0]),
             "maxrss_mib": stats([x["maxrss_mib"] for x in runs]),
             "rc": sorted({x["rc"] for x in runs})}
        w = r["wall_s"] or {}
        log(f"  {label}: median {w.get('median', float('nan')):.2f}s "
            f"({w.get('min', float('nan')):.2f}-{w.get('max', float('nan')):.2f}) rc {r['rc']}")
        if r["rc"] != [0]:
            log("  stderr:", runs[-1]["stderr"][-500:])
        return r

    # references: plain copies and SQLite's own checks of the same file
    res["cp"] = bench("cp", ["cp", db, out], args.n)
    res["cp_fsync"] = bench("cp + sync", ["sh", "-c", 'cp "$0" "$1" && sync "$1"', db, out], args.n)
    res["integrity_check"] = bench("sqlite3 PRAGMA integrity_check",
                                   ["sqlite3", db, "PRAGMA integrity_check"], 1)
    res["quick_check"] = bench("sqlite3 PRAGMA quick_check", ["sqlite3", db, "PRAGMA quick_check"], 1)
    for name in tools:
        tool = make_tool(name)
        replica = os.path.join(d, "replica-" + name)
        tr = {}
        tr["initial_sync"] = timed(tool.once_argv(d, db, replica), cwd=d)
        tr["initial_sync_cmd"] = " ".join(tool.once_argv(d, db, replica)).replace(work_root() + os.sep, "$WORK/")
        tr["replica_bytes"] = tree_bytes(replica)
        tr["ltx_files"] = ltx_counts(replica)
        log(f"rto {name}: initial sync {tr['initial_sync']['wall_s']:.2f}s rc {tr['initial_sync']['rc']}, "
            f"replica {tr['replica_bytes'] / 2**20:.0f} MiB")
        if tr["initial_sync"]["rc"] != 0:
            log("  stderr:", tr["initial_sync"]["stderr"][-500:])
        tr["restore"] = bench(f"{name} restore", tool.restore_argv(replica, out), args.n)
        tr["restore_quick"] = bench(f"{name} restore, quick_check",
                                    tool.restore_argv(replica, out, quick=True), args.n)
        # the file of the last timed restore
        if os.path.exists(out):
            tr["restored_quick_check"] = quick_check(out)
            tr["restored_identical_bytes"] = subprocess.run(["cmp", "-s", db, out]).returncode == 0
            tr["restored_bytes"] = file_size(out)
        rm_db(out)
        shutil.rmtree(replica, ignore_errors=True)
        shutil.rmtree(tool.local_dir(db), ignore_errors=True)
        res["tools"][name] = tr
        save("rto", res)
    shutil.rmtree(d, ignore_errors=True)


def seq_table(db):
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT seq, ts_ns FROM commits ORDER BY seq").fetchall()
    finally:
        conn.close()


def exp_pitr(args):
    all_res = []
    for name in args.tools.split(","):
        tool = make_tool(name)
        tag = f"pitr-{name}"
        r = run_once(tag, name, args.rate, 1, args.duration, jitter=0.0, restore=False,
                     stop_mode="graceful", keep=True)
        d = r["d"]
        db = os.path.join(d, "trading.db")
        replica = os.path.join(d, "replica")
        files = ltx_files(replica)
        r["ltx_files_detail"] = [{"level": f[0], "min": f[1], "max": f[2], "bytes": f[3]} for f in files]
        commits = seq_table(db)  # [(seq, ts_ns)], seq = 1..N
        ts_of = {s: t for s, t in commits}
        t_first, t_last = commits[0][1], commits[-1][1]
        out = os.path.join(d, "pit.db")
        k = args.points
        targets = [t_first + int((t_last - t_first) * (i + 0.5) / k) for i in range(k)]
        # and two edges: between the first replicated file and the first commit (the initial,
        # empty state), and 1 s after the last commit (the final state: nothing came after it)
        targets = [(r["first_ltx_ns"] + t_first) // 2] + targets + [t_last + 1_000_000_000]
        res = []
        for ts in targets:
            ts -= ts % 1_000_000  # both tools take milliseconds
            rm_db(out)
            # exact: every commit with ts <= target, and none after the target's millisecond
            ideal = sum(1 for _s, t in commits if t <= ts)
            ideal_hi = sum(1 for _s, t in commits if t < ts + 1_000_000)
            x = timed(tool.restore_argv(replica, out, timestamp_ns=ts), cwd=d)
            ent = {"target_ns": ts, "target": iso_ms(ts), "rc": x["rc"], "wall_s": x["wall_s"],
                   "ideal_seq": ideal, "ideal_seq_hi": ideal_hi}
            if x["rc"] == 0:
                s = db_state(out)
                ent["seq"] = s["seq"]
                ent["quick_check"] = quick_check(out)
                ent["atomic_ok"] = atomic_ok(s, 1)
                ent["commits_behind_ideal"] = ideal - s["seq"]  # <0: holds commits after target
                # how much of the history before the target is missing: target - first missing commit
                first_missing = ts_of.get(s["seq"] + 1)
                ent["missing_ms"] = ((ts - first_missing) / 1e6
                                     if s["seq"] < ideal and first_missing else 0.0)
                # how far past the target it goes: last restored commit - target
                ent["extra_commits"] = max(0, s["seq"] - ideal_hi)
                ent["extra_ms"] = (s["ts_ns"] - ts) / 1e6 if s["seq"] > ideal_hi else 0.0
                ent["verdict"] = ("older" if s["seq"] < ideal
                                  else "newer" if s["seq"] > ideal_hi else "exact")
            else:
                ent["verdict"] = "refused"
                ent["stderr"] = x["stderr"][-400:]
            res.append(ent)
            log(f"{tag} timestamp {ent['target']}: {ent['verdict']} rc {x['rc']} seq {ent.get('seq')} "
                f"ideal {ideal} missing {ent.get('missing_ms')} ms, {x['wall_s']:.2f}s")
        r["timestamp_restores"] = res
        # txid restores: a sample of the points the tool offers (for Litestream, the TXIDs its
        # files end at, all levels below snapshots; for TradeVault, every TXID up to the latest,
        # the fine log's points, which the sample then puts to the test)
        txids = tool.points(replica, files, d)
        sample = txids[:: max(1, len(txids) // args.points)][: args.points]
        tx_res = []
        for tx in sample:
            rm_db(out)
            x = timed(tool.restore_argv(replica, out, txid=tx), cwd=d)
            ent = {"txid": tx, "rc": x["rc"], "wall_s": x["wall_s"]}
            if x["rc"] == 0:
                s = db_state(out)
                ent["seq"] = s["seq"]
                ent["quick_check"] = quick_check(out)
                ent["atomic_ok"] = atomic_ok(s, 1)
            else:
                ent["stderr"] = x["stderr"][-400:]
            tx_res.append(ent)
        seqs = [e["seq"] for e in tx_res if "seq" in e]
        r["txid_restores"] = tx_res
        r["txid_seq_monotonic"] = seqs == sorted(seqs)
        r["distinct_points"] = len(txids)
        r["commits"] = len(commits)
        r["window_s"] = (t_last - t_first) / 1e9
        bad = [e for e in res + tx_res if e["rc"] == 0 and (e["quick_check"] != "ok" or not e["atomic_ok"])]
        if bad or any(e["verdict"] == "newer" for e in res):
            keep_failure(tag, d, {"bad": bad})
        del r["d"]
        all_res.append(r)
        save("pitr", {"duration_s": args.duration, "rate": args.rate, "scenarios": all_res})
        shutil.rmtree(d, ignore_errors=True)


def exp_env(args):
    """Versions, machine and load, for RESULTS.md."""
    def out(argv):
        try:
            return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, timeout=30).stdout.strip()
        except OSError as e:
            return str(e)
    env = {"date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           "nproc": os.cpu_count(), "loadavg": os.getloadavg(),
           "kernel": platform.release(), "python": platform.python_version(),
           "sqlite_python": sqlite3.sqlite_version,
           "litestream": out([litestream_bin(), "version"]),
           "tradevault": out([tradevault_bin(), "--version"]),
           "tradevault_git": out(["git", "-C", REPO, "rev-parse", "HEAD"]),
           "mem": out(["sh", "-c", "grep MemTotal /proc/meminfo"])}
    save(args.name, env)


# ----------------------------------------------------------------------------
# report

def fmt(s, scale=1.0, digits=0):
    if not s:
        return "n/a"
    f = f"{{:.{digits}f}}"
    return f"{f.format(s['median'] * scale)} ({f.format(s['min'] * scale)}–{f.format(s['max'] * scale)})"


LABEL = {"litestream": "Litestream 0.5.17 (defaults: 1 s)", "litestream-10ms": "Litestream (10 ms intervals)",
         "litestream-l0ret10s": "Litestream (L0 retention 10 s)", "tradevault": "TradeVault",
         "none": "no replicator"}
RATE = {200: "200 commits/s", 2000: "2,000 commits/s", 0: "flat out"}


def report(args):
    rd = results_dir()

    def load(name):
        p = os.path.join(rd, name + ".json")
        return json.load(open(p)) if os.path.exists(p) else None

    out = []
    lag = load("lag")
    many = load("lag-2000-many")
    rto = load("rto")
    pitr = load("pitr")
    tools = [t for t in ("litestream", "litestream-10ms", "tradevault")
             if any(r["tool"] == t for x in (lag, many) if x for r in x["runs"])
             or (rto and t in rto["tools"])]
    groups = {}
    for r in (lag or {"runs": []})["runs"]:
        groups.setdefault((r["tool"], int(r["rate"])), []).append(r)

    def cell(tool, rate, fn, digits=0, scale=1.0):
        rs = groups.get((tool, rate), [])
        return fmt(stats([fn(r) for r in rs]), scale=scale, digits=digits) if rs else "–"

    def proc(key):
        return lambda r: (r.get("replicator_proc") or {}).get(key)

    out.append("## Side by side\n")
    out.append("Medians with (min–max) over the runs; n per cell in the detailed table below.\n")
    out.append("| measure | " + " | ".join(LABEL[t] for t in tools) + " |")
    out.append("|---|" + "---|" * len(tools))
    rows = []
    for rate in (200, 2000, 0):
        rows.append((f"loss window after kill -9, {RATE[rate]} (ms)",
                     lambda t, rate=rate: cell(t, rate, lambda r: r.get("lag_ms"))))
        rows.append((f"lost commits, {RATE[rate]}",
                     lambda t, rate=rate: cell(t, rate, lambda r: r.get("lost_commits"))))
    if many:
        mg = {}
        for r in many["runs"]:
            mg.setdefault(r["tool"], []).append(r)

        def many_cell(t):
            st = stats([r.get("lag_ms") for r in mg.get(t, [])])
            if not st:
                return "–"
            return (f"{st['median']:.0f} / {st.get('p90', float('nan')):.0f} / {st['max']:.0f} "
                    f"(n={st['n']}, CPU {fmt(stats([proc('cpu_pct_avg')(r) for r in mg[t]]), digits=0)} %)")
        rows.append((f"loss window, 2,000 commits/s, {many['reps']} runs of {many['duration_s']:.0f} s: "
                     "median / p90 / max (ms)", many_cell))
    for rate in (200, 2000, 0):
        rows.append((f"replicator CPU, % of one core, {RATE[rate]}",
                     lambda t, rate=rate: cell(t, rate, proc("cpu_pct_avg"), digits=1)))
    rows.append(("replicator RSS peak (MiB), all rates",
                 lambda t: fmt(stats([proc("hwm_mib")(r) for (tt, _), rs in groups.items() if tt == t
                                      for r in rs]))))
    rows.append(("writer commits/s achieved, flat out",
                 lambda t: cell(t, 0, lambda r: r.get("achieved_commits_per_s"))))
    rows.append(("WAL size max during flat out (MiB)",
                 lambda t: cell(t, 0, lambda r: r.get("wal_bytes_max"), scale=2**-20)))
    rows.append(("replica size after the run, 2,000 commits/s (MiB)",
                 lambda t: cell(t, 2000, lambda r: r.get("replica_bytes"), digits=1, scale=2**-20)))
    rows.append(("replica size after the run, flat out (MiB)",
                 lambda t: cell(t, 0, lambda r: r.get("replica_bytes"), digits=1, scale=2**-20)))
    rows.append(("local state beside the DB after the run, flat out (MiB)",
                 lambda t: cell(t, 0, lambda r: r.get("local_bytes"), digits=1, scale=2**-20)))
    rows.append(("restores after kill -9: ok, quick_check ok, no torn transaction",
                 lambda t: "{}/{}".format(
                     sum(1 for (tt, _), rs in groups.items() if tt == t for r in rs
                         if (r.get("restore") or {}).get("rc") == 0
                         and r.get("restored_quick_check") == "ok" and r.get("atomic_ok")),
                     sum(len(rs) for (tt, _), rs in groups.items() if tt == t))))
    if rto:
        mib = rto["db_bytes"] / 2**20

        def rto_cell(t):
            tr = rto["tools"].get(t)
            if not tr:
                return "–"
            s = fmt(tr["restore"]["wall_s"], digits=2)
            if tr["restore"]["rc"] != [0]:
                s += f" rc {tr['restore']['rc']}"
            if "restore_quick" in tr:
                s += f"; with quick_check {fmt(tr['restore_quick']['wall_s'], digits=2)}"
            return s
        rows.append((f"restore a {mib:,.0f} MiB database (s)", rto_cell))
        rows.append((f"initial sync of the {mib:,.0f} MiB database (s)",
                     lambda t: f"{rto['tools'][t]['initial_sync']['wall_s']:.2f}" if t in rto["tools"] else "–"))
    if pitr:
        sc = {s["tag"].removeprefix("pitr-"): s for s in pitr["scenarios"]}

        def pitr_cell(t):
            s = sc.get(t)
            if not s:
                return "–"
            ts = s["timestamp_restores"]
            v = {k: sum(1 for e in ts if e["verdict"] == k) for k in ("exact", "older", "refused", "newer")}
            older = [e["missing_ms"] for e in ts if e["verdict"] == "older"]
            txt = f"{v['exact']} exact, {v['older']} older, {v['refused']} refused, {v['newer']} newer"
            newer = [e["extra_ms"] for e in ts if e["verdict"] == "newer"]
            if older:
                txt += f"; older by up to {max(older):,.0f} ms"
            if newer:
                txt += f"; newer by up to {max(newer):,.1f} ms"
            return txt
        rows.append((f"point-in-time restore to {len(next(iter(sc.values()))['timestamp_restores'])} "
                     "timestamps: exact / silently older / refused / newer", pitr_cell))
        rows.append(("restorable points in the PITR run (distinct TXIDs a restore reaches)",
                     lambda t: (f"{sc[t]['distinct_points']:,} for {sc[t]['commits']:,} commits "
                                f"in {sc[t]['window_s']:.0f} s") if t in sc else "–"))
    for label, fn in rows:
        out.append(f"| {label} | " + " | ".join(fn(t) for t in tools) + " |")
    base = groups.get(("none", 0))
    if base:
        out.append("")
        out.append("Writer flat out with no replicator: {} commits/s, WAL max {} MiB.".format(
            fmt(stats([r["achieved_commits_per_s"] for r in base])),
            fmt(stats([r["wal_bytes_max"] for r in base]), scale=2**-20)))
    out.append("")

    if lag:
        out.append("## Loss window after kill -9, per configuration\n")
        out.append("| tool | rate | n | achieved commits/s | lag ms | lost commits | CPU % | RSS MiB peak | WAL max MiB | replica MiB | local MiB | snapshots (level-9 files) | sidecar WARN/ERROR lines | restore s | consistent |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for (t, rate), rs in sorted(groups.items(), key=lambda x: (-x[0][1] if x[0][1] else -1e9, x[0][0])):
            if t == "none":
                ok = "–"
            else:
                ok = "{}/{}".format(sum(1 for r in rs if r.get("restored_quick_check") == "ok"
                                        and r.get("atomic_ok")), len(rs))
            out.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
                t, RATE.get(rate, rate), len(rs), fmt(stats([r.get("achieved_commits_per_s") for r in rs])),
                fmt(stats([r.get("lag_ms") for r in rs]), digits=1),
                fmt(stats([r.get("lost_commits") for r in rs])),
                fmt(stats([proc("cpu_pct_avg")(r) for r in rs]), digits=1),
                fmt(stats([proc("hwm_mib")(r) for r in rs])),
                fmt(stats([r.get("wal_bytes_max") for r in rs]), scale=2**-20),
                fmt(stats([r.get("replica_bytes") for r in rs]), digits=1, scale=2**-20),
                fmt(stats([r.get("local_bytes") for r in rs]), digits=1, scale=2**-20),
                fmt(stats([(r.get("ltx_files") or {}).get("9", 0) for r in rs])) if t != "none" else "–",
                fmt(stats([(r.get("replicator_log") or {}).get("warn_error") for r in rs])),
                fmt(stats([(r.get("restore") or {}).get("wall_s") for r in rs]), digits=2), ok))
        out.append("")
        out.append("Per run (lag ms / lost commits): " + "; ".join(
            f"{t} {RATE.get(rate, rate)}: " + ", ".join(
                f"{r['lag_ms']:.0f}/{r['lost_commits']}" if "lag_ms" in r else
                f"ERR({(r.get('restore') or {}).get('rc', r.get('error'))})" for r in rs)
            for (t, rate), rs in sorted(groups.items()) if t != "none"))
        out.append("")
    warn = {}
    for r in (lag or {"runs": []})["runs"] + (many or {"runs": []})["runs"]:
        for msg, c in ((r.get("replicator_log") or {}).get("by_message") or {}).items():
            key = (r["tool"], msg)
            warn[key] = warn.get(key, 0) + c
    if warn:
        out.append("Sidecar WARN/ERROR messages over all loss-window runs (numbers and paths elided):\n")
        for (t, msg), c in sorted(warn.items(), key=lambda x: (x[0][0], -x[1])):
            out.append(f"- {t}, {c}x: `{msg}`")
        out.append("")
    if many:
        out.append(f"## Loss window at 2,000 commits/s, {many['reps']} short runs of "
                   f"{many['duration_s']:.0f} s (+0-1 s) per tool\n")
        out.append("| tool | n | lag ms median | p90 | max | lost commits | CPU % | snapshots | consistent |")
        out.append("|---|---|---|---|---|---|---|---|---|")
        for t, rs in sorted(mg.items()):
            st = stats([r.get("lag_ms") for r in rs]) or {}
            out.append("| {} | {} | {:.1f} | {:.1f} | {:.1f} | {} | {} | {} | {}/{} |".format(
                t, len(rs), st.get("median", float("nan")), st.get("p90", float("nan")),
                st.get("max", float("nan")), fmt(stats([r.get("lost_commits") for r in rs])),
                fmt(stats([proc("cpu_pct_avg")(r) for r in rs]), digits=1),
                fmt(stats([(r.get("ltx_files") or {}).get("9", 0) for r in rs])),
                sum(1 for r in rs if r.get("restored_quick_check") == "ok" and r.get("atomic_ok")), len(rs)))
        out.append("")
        out.append("Per run lag ms: " + "; ".join(
            f"{t}: " + ", ".join(f"{r['lag_ms']:.0f}" if "lag_ms" in r else "ERR" for r in rs)
            for t, rs in sorted(mg.items())))
        out.append("")
    if rto:
        out.append(f"## Restore of a {rto['db_bytes'] / 2**20:,.0f} MiB database (warm page cache)\n")
        out.append("| what | seconds | max RSS MiB |")
        out.append("|---|---|---|")
        for k in ("cp", "cp_fsync", "quick_check", "integrity_check"):
            out.append(f"| {rto[k]['label']} | {fmt(rto[k]['wall_s'], digits=2)} | {fmt(rto[k]['maxrss_mib'])} |")
        for t, tr in rto["tools"].items():
            for k in ("restore", "restore_quick"):
                if k in tr:
                    out.append(f"| `{tr[k]['cmd']}` | {fmt(tr[k]['wall_s'], digits=2)} rc {tr[k]['rc']} | "
                               f"{fmt(tr[k]['maxrss_mib'])} |")
            out.append(f"| `{tr['initial_sync_cmd']}` (replica {tr['replica_bytes'] / 2**20:,.0f} MiB, "
                       f"files {tr['ltx_files']}) | {tr['initial_sync']['wall_s']:.2f} rc {tr['initial_sync']['rc']} | "
                       f"{tr['initial_sync']['maxrss_mib']:.0f} |")
            out.append(f"| {t}: restored file quick_check / byte-identical to the source | "
                       f"{tr.get('restored_quick_check')} / {tr.get('restored_identical_bytes')} | |")
        out.append("")
    if pitr:
        out.append(f"## Point-in-time restores ({pitr['rate']:.0f} commits/s for {pitr['duration_s']:.0f} s, "
                   "graceful stop)\n")
        out.append("Targets: evenly spread over the run, plus one between the first replicated file and "
                   "the first commit and one 1 s after the last commit (the writer had stopped). *exact*: the restored state holds every commit with ts <= target and no "
                   "later one; *older*: commits before the target are missing (by how much: target − first "
                   "missing commit); *newer*: it holds commits made after the target (by how much: last restored commit − target).\n")
        out.append("| tool | files per level | timestamp restores | older by ms | newer by ms (commits) | restore s | txid restores ok | txid→seq monotonic | all restored DBs consistent |")
        out.append("|---|---|---|---|---|---|---|---|---|")
        for s in pitr["scenarios"]:
            ts = s["timestamp_restores"]
            v = {k: sum(1 for e in ts if e["verdict"] == k) for k in ("exact", "older", "refused", "newer")}
            allr = [e for e in ts + s["txid_restores"] if e["rc"] == 0]
            cons = sum(1 for e in allr if e["quick_check"] == "ok" and e["atomic_ok"])
            out.append(f"| {s['tag'].removeprefix('pitr-')} | {s['ltx_files']} | {v['exact']} exact, {v['older']} older, "
                       f"{v['refused']} refused, {v['newer']} newer | "
                       f"{fmt(stats([e['missing_ms'] for e in ts if e['verdict'] == 'older']), digits=1)} | "
                       f"{fmt(stats([e['extra_ms'] for e in ts if e['verdict'] == 'newer']), digits=1)} "
                       f"({fmt(stats([e['extra_commits'] for e in ts if e['verdict'] == 'newer']))}) | "
                       f"{fmt(stats([e['wall_s'] for e in ts if e['rc'] == 0]), digits=2)} | "
                       f"{sum(1 for e in s['txid_restores'] if e['rc'] == 0)}/{len(s['txid_restores'])} | "
                       f"{s['txid_seq_monotonic']} | {cons}/{len(allr)} |")
        out.append("")
        for s in pitr["scenarios"]:
            refused = [e for e in s["timestamp_restores"] if e["verdict"] == "refused"]
            for e in refused[:3]:
                msg = " ".join(e.get("stderr", "").split())[-300:]
                out.append(f"- {s['tag'].removeprefix('pitr-')} refused {e['target']} "
                           f"(ideal seq {e['ideal_seq']}): `{msg}`")
        out.append("")
    text = "\n".join(out)
    print(text)
    with open(os.path.join(rd, "tables.md"), "w") as f:
        f.write(text + "\n")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("lag")
    s.add_argument("--reps", type=int, default=3)
    s.add_argument("--duration", type=float, default=12.0, help="seconds of writing before the kill (+0-1 s)")
    s.add_argument("--rates", default="200,2000,0", help="commits/s, 0 = flat out")
    s.add_argument("--batch", type=int, default=1, help="ticks per commit")
    s.add_argument("--tools", default="litestream,litestream-10ms,tradevault")
    s.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                   help="also run the flat-out writer with no replicator")
    s.add_argument("--name", default="lag", help="results file name")
    s.set_defaults(fn=exp_lag)
    s = sub.add_parser("rto")
    s.add_argument("--size-mb", type=int, default=1024)
    s.add_argument("-n", type=int, default=3)
    s.add_argument("--tools", default="litestream,tradevault")
    s.set_defaults(fn=exp_rto)
    s = sub.add_parser("pitr")
    s.add_argument("--duration", type=float, default=45.0)
    s.add_argument("--rate", type=float, default=200.0)
    s.add_argument("--points", type=int, default=20)
    s.add_argument("--tools", default="litestream,litestream-l0ret10s,tradevault")
    s.set_defaults(fn=exp_pitr)
    s = sub.add_parser("env")
    s.add_argument("--name", default="env")
    s.set_defaults(fn=exp_env)
    s = sub.add_parser("report")
    s.set_defaults(fn=report)
    args = p.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
