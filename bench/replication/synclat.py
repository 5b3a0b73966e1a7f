#!/usr/bin/env python3
"""Sequential keep-alive client: per-write latency of `tradevault serve` with a file replica,
mode async vs sync, interleaved, plus the latency of one 4 KiB write + fsync on the same file
system for reference. usage: synclat.py BIN [N] [ROUNDS]; env SYNCLAT_DIR (scratch, default
$TMPDIR/synclat), MODES (default async,sync), SYNCLAT_JSON (write the figures there).
(Copied from the perf helper's scratch script; only the scratch directory, the fsync reference
and the JSON output were added.)"""
import http.client, json, os, shutil, socket, statistics, subprocess, sys, tempfile, time
BIN = sys.argv[1]; N = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
ROUNDS = int(sys.argv[3]) if len(sys.argv) > 3 else 3
ROOT = os.environ.get("SYNCLAT_DIR") or os.path.join(tempfile.gettempdir(), "synclat")
def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p
def run(mode, extra_env=None):
    # a new directory per run, all removed at the end: deleting a run's files right before the
    # next run slows the next run's file creations on this journal-less ext4
    d = os.path.join(ROOT, f"{mode}-{time.time_ns()}"); os.makedirs(d)
    port = free_port()
    env = dict(os.environ, TRADEVAULT_REPLICATION_MODE=mode)
    argv = [BIN, "serve", "--data-dir", d + "/data", "--listen", f"127.0.0.1:{port}"]
    env.pop("TRADEVAULT_REPLICATION_MODE")
    with open(d + "/tv.toml", "w") as f:
        f.write(f'[replication]\nmode = "{mode}"\n[[replication.replica]]\nurl = "file://{d}/replica"\n')
    argv += ["--config", d + "/tv.toml"]
    subprocess.run([BIN, "init", "--data-dir", d + "/data"], env=env, capture_output=True)
    p = subprocess.Popen(argv, env=env, stdout=open(d + "/log", "w"), stderr=subprocess.STDOUT)
    try:
        for _ in range(200):
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=10); c.request("GET", "/health/ready")
                r = c.getresponse(); r.read()
                if r.status == 200: break
            except OSError: time.sleep(0.05)
        else:
            raise SystemExit(f"{mode}: server not ready: " + open(d + "/log").read()[-2000:])
        time.sleep(0.5)
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        lat = []
        for n in range(N + 100):
            body = json.dumps({"trade_id": f"{mode}-{n}", "symbol": f"SYM{n%50}", "side": "buy", "qty": "0.5", "price": "101.25", "fee": "0.01", "strategy": "bench"})
            t = time.perf_counter()
            c.request("POST", "/v1/trades", body, {"content-type": "application/json"})
            r = c.getresponse(); txt = r.read()
            dt = time.perf_counter() - t
            if r.status != 201:
                print(f"{mode} write {n}: {r.status} after {dt*1000:.0f} ms: {txt[:300]!r}", flush=True)
                continue
            if n >= 100: lat.append(dt * 1e6)
        return lat
    finally:
        p.terminate(); p.wait()
def fsync_lat(n=1000):
    os.makedirs(ROOT, exist_ok=True)
    path = os.path.join(ROOT, "fsync-probe"); fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    buf = os.urandom(4096); lat = []
    try:
        for i in range(n):
            os.pwrite(fd, buf, (i % 256) * 4096)
            t = time.perf_counter(); os.fsync(fd); lat.append((time.perf_counter() - t) * 1e6)
    finally:
        os.close(fd); os.remove(path)
    lat.sort(); return statistics.median(lat), lat[int(len(lat) * 0.99)]
res = {}
raw = {"n": N, "rounds": ROUNDS, "loadavg_start": os.getloadavg(), "fsync_4k_us": [], "runs": []}
for rnd in range(ROUNDS):
    fm, fp = fsync_lat(); raw["fsync_4k_us"].append({"median": fm, "p99": fp})
    print(f"round {rnd} fsync 4 KiB: median {fm:.0f} us, p99 {fp:.0f} us, load {os.getloadavg()[0]:.2f}", flush=True)
    for mode in os.environ.get("MODES", "async,sync").split(","):
        lat = sorted(run(mode))
        raw["runs"].append({"round": rnd, "mode": mode, "loadavg": os.getloadavg(), "n_ok": len(lat),
                            "median_us": statistics.median(lat), "p90_us": lat[int(len(lat)*0.9)],
                            "p99_us": lat[int(len(lat)*0.99)], "max_us": lat[-1], "mean_us": statistics.mean(lat)})
        res.setdefault(mode, []).append((statistics.median(lat), lat[int(len(lat)*0.99)]))
        print(f"round {rnd} {mode}: median {statistics.median(lat):.0f} us, p99 {lat[int(len(lat)*0.99)]:.0f} us", flush=True)
for mode, v in res.items():
    meds = sorted(m for m, _ in v); p99 = sorted(p for _, p in v)
    print(f"{mode}: median {statistics.median(meds):.0f} us ({meds[0]:.0f}-{meds[-1]:.0f}), p99 {statistics.median(p99):.0f} us ({p99[0]:.0f}-{p99[-1]:.0f})")
if len(res) == 2:
  a = statistics.median(m for m, _ in res["async"]); s = statistics.median(m for m, _ in res["sync"])
  print(f"added by sync mode (median of medians): {s-a:.0f} us")

raw["loadavg_end"] = os.getloadavg()
shutil.rmtree(ROOT, ignore_errors=True)
if os.environ.get("SYNCLAT_JSON"):
    with open(os.environ["SYNCLAT_JSON"], "w") as f:
        json.dump(raw, f, indent=1)
