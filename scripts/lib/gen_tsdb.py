"""The Python half of scripts/gen-tsdb.sh (its commands: cmd_*; `python3 gen_tsdb.py CMD ARGS`)."""
import json, math, os, re, shutil, socket, subprocess, sys, time
from concurrent.futures import ProcessPoolExecutor

ULID_RE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_last = [0, 0]


def new_ulid():
    """26-char Crockford base32 ULID: 48-bit ms timestamp + 80 random bits.
    Monotonic within one millisecond so that one process never repeats."""
    ms = int(time.time() * 1000)
    if ms <= _last[0]:
        ms, rnd = _last[0], _last[1] + 1
        if rnd >= 1 << 80:
            ms, rnd = ms + 1, int.from_bytes(os.urandom(10), "big")
    else:
        rnd = int.from_bytes(os.urandom(10), "big")
    _last[0], _last[1] = ms, rnd
    v = (ms << 80) | rnd
    return "".join(CROCKFORD[(v >> (5 * i)) & 31] for i in range(25, -1, -1))


def blocks(d):
    return sorted(e for e in os.listdir(d)
                  if ULID_RE.match(e) and os.path.isfile(os.path.join(d, e, "meta.json")))


def cmd_free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1])
    s.close()


def cmd_demo(path, hours, series, end_offset):
    """Deterministic OpenMetrics: per instance i one gauge and three counters."""
    hours, series, end_offset = int(hours), int(series), int(end_offset)
    step = 60
    end = (int(time.time()) // step) * step - end_offset
    n = hours * 3600 // step
    start = end - (n - 1) * step
    spec = []
    i = 0
    while len(spec) < series:
        spec.append(("temp", i, None))
        for code in ("200", "404", "500"):
            spec.append(("req", i, code))
        i += 1
    spec = spec[:series]
    inst = lambda i: "node-%02d:9100" % i
    with open(path, "w") as f:
        w = f.write
        w("# HELP demo_requests Demo HTTP requests handled.\n# TYPE demo_requests counter\n")
        for kind, i, code in spec:
            if kind != "req":
                continue
            rate = {"200": 120 + 7 * i, "404": 15 + i, "500": 11 + i % 3}[code]
            lbl = 'demo_requests_total{job="demo",instance="%s",code="%s"} ' % (inst(i), code)
            # rate >= 11 > max jitter (10): strictly increasing, no resets.
            w("".join("%s%d %d\n" % (lbl, k * rate + (k * 7919 + i * 104729 + int(code)) % 11,
                                      start + k * step) for k in range(n)))
        w("# HELP demo_temperature_celsius Demo temperature.\n"
          "# TYPE demo_temperature_celsius gauge\n# UNIT demo_temperature_celsius celsius\n")
        for kind, i, code in spec:
            if kind != "temp":
                continue
            lbl = 'demo_temperature_celsius{job="demo",instance="%s"} ' % inst(i)
            for k in range(n):
                t = start + k * step
                v = (20 + 0.5 * i + 4 * math.sin(2 * math.pi * t / 86400)
                     + 0.5 * math.sin(2 * math.pi * t / 900 + i))
                w("%s%.2f %d\n" % (lbl, v, t))
        w("# EOF\n")
    print(start, end)


def _big_window(args):
    """One 2h-aligned window -> one promtool block (run in a worker process)."""
    promtool, outdir, tmpdir, wstart, wlen, series, step = args
    path = os.path.join(tmpdir, "big-%d.om" % wstart)
    n = wlen // step
    with open(path, "w") as f:
        w = f.write
        w("# HELP bench_value Benchmark gauge.\n# TYPE bench_value gauge\n")
        for s in range(0, series, 2):
            lbl = 'bench_value{job="bench",instance="node-%03d:9100",shard="%02d"} ' % (s // 20, s % 20)
            x = (s * 2654435761 + wstart) & 0x7FFFFFFF
            buf = []
            for k in range(n):
                x = (x * 1103515245 + 12345) & 0x7FFFFFFF
                buf.append("%s%d.%03d %d\n" % (lbl, x % 100000, x % 1000, wstart + k * step))
            w("".join(buf))
        w("# HELP bench_events Benchmark counter.\n# TYPE bench_events counter\n")
        for s in range(1, series, 2):
            lbl = 'bench_events_total{job="bench",instance="node-%03d:9100",shard="%02d"} ' % (s // 20, s % 20)
            buf = []
            for k in range(n):
                a = (wstart + k * step) // step  # absolute step index: continuous across windows
                buf.append("%s%d %d\n" % (lbl, a * 1000 + (a * 2654435761 + s * 40503) % 997, wstart + k * step))
            w("".join(buf))
        w("# EOF\n")
    r = subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", "-q", path, outdir],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    os.unlink(path)
    if r.returncode != 0:
        raise RuntimeError("promtool failed for window %d: %s" % (wstart, r.stdout))
    return wstart


def cmd_big(promtool, outdir, tmpdir, series, hours, step, jobs):
    series, hours, step, jobs = int(series), int(hours), int(step), int(jobs)
    wlen = 7200
    end = (int(time.time()) // wlen) * wlen - 2 * wlen
    starts = [end - hours * 3600 + j * wlen for j in range(hours * 3600 // wlen)]
    os.makedirs(outdir, exist_ok=True)
    with ProcessPoolExecutor(max_workers=jobs) as ex:
        list(ex.map(_big_window, [(promtool, outdir, tmpdir, s, wlen, series, step) for s in starts]))
    print(len(blocks(outdir)), sum(_tree_size(os.path.join(outdir, b)) for b in blocks(outdir)))


def _tree_size(d):
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(d) for f in fs)


def cmd_replicate(dst, target_bytes, *srcs):
    """Copy the blocks of srcs round-robin into dst, each under a fresh ULID,
    until at least target_bytes have been written."""
    target = int(target_bytes)
    pool = [(os.path.join(s, b), b) for s in srcs for b in blocks(s)]
    if not pool:
        raise SystemExit("no blocks to replicate")
    sizes = {p: _tree_size(p) for p, _ in pool}
    seen = {b for _, b in pool}
    os.makedirs(dst, exist_ok=True)
    seen.update(os.listdir(dst))
    total = copies = 0
    while total < target:
        for path, old in pool:
            if total >= target:
                break
            u = new_ulid()
            if u in seen:
                raise SystemExit("ULID collision: " + u)
            seen.add(u)
            tmp = os.path.join(dst, u + ".tmp-copy")
            shutil.copytree(path, tmp)
            meta = os.path.join(tmp, "meta.json")
            with open(meta) as f:
                text = f.read()
            text, nsub = re.subn(r'("ulid"\s*:\s*")' + old + '"', lambda m: m.group(1) + u + '"', text, count=1)
            if nsub != 1:
                raise SystemExit("meta.json of %s has no ulid field %s" % (path, old))
            with open(meta, "w") as f:
                f.write(text)
            os.rename(tmp, os.path.join(dst, u))
            total += sizes[path]
            copies += 1
    print(copies, total)


def cmd_pickdel(d):
    """Print 'start end ulid level' (seconds): a range inside the longest block."""
    best = None
    for b in blocks(d):
        with open(os.path.join(d, b, "meta.json")) as f:
            m = json.load(f)
        span = m["maxTime"] - m["minTime"]
        if best is None or span > best[0]:
            best = (span, m["minTime"], b, m.get("compaction", {}).get("level", 1))
    if best is None:
        raise SystemExit("no blocks in " + d)
    span, mint, b, lvl = best
    print("%.3f %.3f %s %d" % ((mint + span // 4) / 1000, (mint + span // 2) / 1000, b, lvl))


def cmd_summary(d):
    """Print one line per block: ulid level mint maxt tombstones_bytes."""
    for b in blocks(d):
        with open(os.path.join(d, b, "meta.json")) as f:
            m = json.load(f)
        ts = os.path.join(d, b, "tombstones")
        print(b, m.get("compaction", {}).get("level", 1), m["minTime"], m["maxTime"],
              os.path.getsize(ts) if os.path.exists(ts) else -1)


def cmd_http(method, url, *form):
    import urllib.error, urllib.parse, urllib.request
    data = urllib.parse.urlencode([kv.split("=", 1) for kv in form]).encode() if form else None
    req = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            print(r.status)
    except urllib.error.HTTPError as e:
        print(e.code)
    except Exception:
        print(0)


if __name__ == "__main__":
    globals()["cmd_" + sys.argv[1].replace("-", "_")](*sys.argv[2:])
