"""The Python half of scripts/gen-tsdb3.sh (its commands: cmd_*; `python3 gen_tsdb3.py CMD ARGS`)."""
import json, os, re, socket, struct, sys, time

ULID_RE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
ENC = {1: "XOR", 2: "histogram", 3: "floathistogram", 4: "XOR2", 5: "histogramST",
       6: "floathistogramST"}


def blocks(d):
    return sorted(e for e in os.listdir(d)
                  if ULID_RE.match(e) and os.path.isfile(os.path.join(d, e, "meta.json")))


def meta(d, b):
    with open(os.path.join(d, b, "meta.json")) as f:
        return json.load(f)


def uvarint(b, i):
    x = s = 0
    while True:
        c = b[i]
        i += 1
        x |= (c & 0x7F) << s
        s += 7
        if c < 0x80:
            return x, i


def block_chunks(path):
    """(length, encoding) of every chunk of a block chunk segment."""
    b = open(path, "rb").read()
    i, out = 8, []
    while i < len(b):
        n, j = uvarint(b, i)
        out.append((n, ENC.get(b[j], str(b[j]))))
        i = j + 1 + n + 4
    return out


def head_chunks(path):
    """(length, encoding) of every chunk of a chunks_head/ file (up to the zero tail)."""
    b = open(path, "rb").read()
    i, out = 8, []
    while i + 25 <= len(b):
        ref, mint, maxt = struct.unpack(">QQQ", b[i:i + 24])
        if ref == 0 and mint == 0 and maxt == 0:
            break
        e = b[i + 24]
        n, j = uvarint(b, i + 25)
        out.append((n, ("ooo-" if e & 0x80 else "") + ENC.get(e & 0x7F, str(e & 0x7F))))
        i = j + n + 4
    return out


def wal_fragments(path):
    """Count of fragment compressions of a WAL/WBL segment: none, snappy, zstd."""
    b = open(path, "rb").read()
    page, i, c = 32 * 1024, 0, {"none": 0, "snappy": 0, "zstd": 0}
    while i + 7 <= len(b):
        t = b[i]
        if t == 0:  # padding to the end of the page
            i = (i // page + 1) * page
            continue
        n = struct.unpack(">H", b[i + 1:i + 3])[0]
        c["zstd" if t & 0x10 else "snappy" if t & 0x08 else "none"] += 1
        i += 7 + n
    return c


def cmd_free_ports(n):
    socks = []
    for _ in range(int(n)):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    print(" ".join(str(s.getsockname()[1]) for s in socks))
    for s in socks:
        s.close()


def cmd_backfill(path, hours, end_offset):
    """OpenMetrics for promtool: 6 gauges, one sample every 30 s."""
    hours, end_offset = int(hours), int(end_offset)
    step = 30
    end = (int(time.time()) // step) * step - end_offset
    start = end - hours * 3600
    with open(path, "w") as f:
        f.write("# HELP backfill_value A gauge written by promtool.\n# TYPE backfill_value gauge\n")
        for s in range(6):
            lbl = 'backfill_value{job="backfill",instance="node-%d"} ' % s
            f.write("".join("%s%d %d\n" % (lbl, (t // step * (s + 3)) % 1000, t)
                            for t in range(start, end, step)))
        f.write("# EOF\n")
    print(start, end)


def cmd_state(d, min_ms, max_ms):
    """What the run has produced so far: 'max_block_chunk ooo_blocks checkpoint max_level
    compacting_now compacting_then next_cut_ms newest_wbl_bytes busy' (see pending, newest_wbl_bytes
    and busy)."""
    big, ooo, lvl, ms = 0, 0, 0, []
    for b in blocks(d):
        m = meta(d, b)
        ms.append(m)
        lvl = max(lvl, m.get("compaction", {}).get("level", 1))
        if "from-out-of-order" in m.get("compaction", {}).get("hints", []):
            ooo += 1
        cd = os.path.join(d, b, "chunks")
        for f in sorted(os.listdir(cd)) if os.path.isdir(cd) else []:
            try:
                cs = block_chunks(os.path.join(cd, f))
            except (OSError, IndexError):
                continue
            big = max([big] + [n for n, _ in cs])
    wal = os.path.join(d, "wal")
    ckpt = int(any(e.startswith("checkpoint.") and not e.endswith(".tmp")
                   for e in (os.listdir(wal) if os.path.isdir(wal) else [])))
    now, then = pending(ms, min_ms, max_ms)
    print(big, ooo, ckpt, lvl, len(now), len(then), next_cut_ms(ms, min_ms), newest_wbl_bytes(d),
          busy(d))


def newest_wbl_bytes(d):
    """Size of the newest wbl/ segment. After each head compaction Prometheus compacts the
    out-of-order head: it starts a new WBL segment and, once the out-of-order blocks are
    written, deletes the older segments (tsdb/db.go compactOOOHead, truncateOOO). Data in
    older segments only is therefore about to go."""
    wbl = os.path.join(d, "wbl")
    segs = sorted(f for f in os.listdir(wbl) if re.fullmatch(r"\d{8}", f)) if os.path.isdir(wbl) else []
    return os.path.getsize(os.path.join(wbl, segs[-1])) if segs else 0


def busy(d):
    """Signs of a compaction or checkpoint under way: blocks being written
    (<ulid>.tmp-for-creation) or a WAL checkpoint being written (wal/checkpoint.N.tmp)."""
    wal = os.path.join(d, "wal")
    return (sum(e.endswith(".tmp-for-creation") for e in os.listdir(d)) +
            sum(e.startswith("checkpoint.") and e.endswith(".tmp")
                for e in (os.listdir(wal) if os.path.isdir(wal) else [])))


def block_ranges(min_ms, max_ms):
    """Prometheus's compaction ranges for --storage.tsdb.min/max-block-duration (ms):
    min times powers of 3 (10 of them), those not above max."""
    return [r for r in (int(min_ms) * 3 ** i for i in range(10)) if r <= int(max_ms)]


def compaction_plan(ms, ranges):
    """The blocks (metas) Prometheus 3.16's LeveledCompactor.plan picks next from these
    (tsdb/compact.go: planClass, selectOverlappingDirs, selectDirs, splitByRange), or []. Only
    blocks without the stale-series/selected-series hints (Prometheus plans those apart; this
    fixture has none). Its last rule, rewriting a block with many tombstones, is left out: the
    fixture gets its tombstones after the last look here, and the test does not rely on it."""
    ds = sorted((m for m in ms if not {"from-stale-series", "from-selected-series"}
                 & set(m.get("compaction", {}).get("hints", []))), key=lambda m: m["minTime"])
    if not ds:
        return []
    # Overlapping blocks are merged first, the newest included.
    hi, over = ds[0]["maxTime"], []
    for prev, m in zip(ds, ds[1:]):
        if m["minTime"] < hi:
            over += ([] if over else [prev]) + [m]
        elif over:
            break
        hi = max(hi, m["maxTime"])
    if over:
        return over
    # The newest block (the one just cut from the head) is left out.
    ds = ds[:-1]
    if ds:
        high = ds[-1]["minTime"]
        for tr in ranges[1:]:
            i = 0
            while i < len(ds):
                t0 = tr * (ds[i]["minTime"] // tr)
                if ds[i]["maxTime"] > t0 + tr:
                    i += 1
                    continue
                group = []
                while i < len(ds) and ds[i]["maxTime"] <= t0 + tr:
                    group.append(ds[i])
                    i += 1
                if any(m.get("compaction", {}).get("failed") for m in group):
                    continue
                lo, up = group[0]["minTime"], group[-1]["maxTime"]
                if len(group) > 1 and (up - lo == tr or up <= high):
                    return group
    return []


def pending(ms, min_ms, max_ms):
    """Of these blocks (their metas), those a Prometheus with these block durations compacts
    first: now (on these blocks alone), and once it has cut two newer blocks from its head.

    The live phases test (tests/phases.rs) starts a server on a copy of these blocks without
    their head and waits for it to compact some of them (the blocks it presynced must
    disappear). The server's own blocks soon move the planner's "most recent block" past all
    of them, so with the 20s/60s durations that happens when one of their 60 s ranges holds
    two blocks or more. A running server compacts a full range as soon as it cuts the next block, so
    that holds only while its newest range holds two or three blocks: two thirds of the time.
    The script waits for it."""
    ranges = block_ranges(min_ms, max_ms)
    if not ms:
        return [], []
    # The server's own blocks are far newer (the test starts it later): a range of their own.
    t = (max(m["maxTime"] for m in ms) // ranges[-1] + 2) * ranges[-1]
    cut = [{"ulid": "cut%d" % i, "minTime": t + i * ranges[0], "maxTime": t + (i + 1) * ranges[0]}
           for i in range(2)]
    return compaction_plan(ms, ranges), [m for m in compaction_plan(ms + cut, ranges) if m not in cut]


def next_cut_ms(ms, min_ms):
    """In how many ms the running server cuts its next block from the head: when the head
    spans 1.5 block durations past the newest block it cut (tsdb/head.go, compactable).
    Out-of-order blocks are left out: they can reach past that block."""
    ms = [m for m in ms if "from-out-of-order" not in m.get("compaction", {}).get("hints", [])]
    if not ms:
        return 0
    return max(m["maxTime"] for m in ms) + int(min_ms) * 3 // 2 - int(time.time() * 1000)


def cmd_pickdel(d):
    """'start end ulid' (seconds) inside the first promtool block (level 1, no hints)."""
    for b in blocks(d):
        m = meta(d, b)
        c = m.get("compaction", {})
        if c.get("level", 1) == 1 and not c.get("hints") and m["maxTime"] - m["minTime"] >= 3600_000:
            span = m["maxTime"] - m["minTime"]
            print("%.3f %.3f %s" % ((m["minTime"] + span // 4) / 1000,
                                    (m["minTime"] + span // 2) / 1000, b))
            return
    raise SystemExit("no promtool block in " + d)


def human(n):
    for u in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or u == "GiB":
            return ("%d %s" % (n, u)) if u == "B" else ("%.1f %s" % (n, u))
        n /= 1024


def tree_size(p):
    if os.path.isfile(p):
        return os.path.getsize(p)
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(p) for f in fs)


def cmd_check(d, min_ms, max_ms):
    """Fails unless d has everything the fixture promises."""
    errs = []
    if not pending([meta(d, b) for b in blocks(d)], min_ms, max_ms)[1]:
        errs.append("a Prometheus started on these blocks would compact none of them once it "
                    "has cut blocks of its own (tests/phases.rs needs it to)")
    wal = os.path.join(d, "wal")
    segs = [f for f in os.listdir(wal) if re.fullmatch(r"\d{8}", f)]
    z = sum(wal_fragments(os.path.join(wal, f))["zstd"] for f in segs)
    if not z:
        errs.append("wal/ has no zstd fragment")
    if not os.path.exists(os.path.join(wal, "series_state.json")):
        errs.append("wal/series_state.json is missing")
    wbl = os.path.join(d, "wbl")
    if not os.path.isdir(wbl) or not any(os.path.getsize(os.path.join(wbl, f)) for f in os.listdir(wbl)):
        errs.append("wbl/ has no data")
    ch = os.path.join(d, "chunks_head")
    hc = [c for f in sorted(os.listdir(ch)) for c in head_chunks(os.path.join(ch, f))]
    if not hc:
        errs.append("chunks_head/ has no chunk")
    if not any(e.startswith("ooo-") for _, e in hc):
        errs.append("chunks_head/ has no out-of-order chunk")
    if not [e for e in os.listdir(d) if e.startswith("chunk_snapshot.")]:
        errs.append("no chunk_snapshot.*")
    big, ooo, ckpt, lvl = 0, 0, 0, 0
    encs = set()
    for b in blocks(d):
        c = meta(d, b).get("compaction", {})
        ooo += "from-out-of-order" in c.get("hints", [])
        lvl = max(lvl, c.get("level", 1))
        for f in os.listdir(os.path.join(d, b, "chunks")):
            for n, e in block_chunks(os.path.join(d, b, "chunks", f)):
                big = max(big, n)
                encs.add(e)
    if big < 1 << 20:
        errs.append("no block chunk of 1 MiB or more (largest: %d bytes)" % big)
    if not ooo:
        errs.append("no out-of-order block")
    for e in ("XOR2", "histogramST", "floathistogramST", "floathistogram"):
        if e not in encs:
            errs.append("no %s chunk in any block" % e)
    if not any(os.path.getsize(os.path.join(d, b, "tombstones")) > 9 for b in blocks(d)):
        errs.append("no block has a non-empty tombstones file")
    if errs:
        raise SystemExit("; ".join(errs))


def cmd_summary(d):
    print("files and sizes (total %s):" % human(tree_size(d)))
    for e in sorted(os.listdir(d)):
        p = os.path.join(d, e)
        if os.path.isdir(p):
            print("  %-38s %10s  %d files" % (e + "/", human(tree_size(p)), sum(len(fs) for _, _, fs in os.walk(p))))
        else:
            print("  %-38s %10s" % (e, human(os.path.getsize(p))))
    print("block chunk segments (chunks by encoding: count, largest bytes):")
    for b in blocks(d):
        c = meta(d, b).get("compaction", {})
        for f in sorted(os.listdir(os.path.join(d, b, "chunks"))):
            cs = block_chunks(os.path.join(d, b, "chunks", f))
            by = {}
            for n, e in cs:
                by.setdefault(e, []).append(n)
            big = sum(1 for n, _ in cs if n >= 1 << 20)
            print("  %s/chunks/%s level %d%s: %d chunks, %d of >= 1 MiB; %s" % (
                b, f, c.get("level", 1), " ooo" if "from-out-of-order" in c.get("hints", []) else "",
                len(cs), big, ", ".join("%s %d (max %d)" % (e, len(v), max(v)) for e, v in sorted(by.items()))))
    print("chunks_head/:")
    ch = os.path.join(d, "chunks_head")
    for f in sorted(os.listdir(ch)):
        by = {}
        for n, e in head_chunks(os.path.join(ch, f)):
            by.setdefault(e, []).append(n)
        print("  %s (%s): %s" % (f, human(os.path.getsize(os.path.join(ch, f))),
                                 ", ".join("%s %d (max %d)" % (e, len(v), max(v)) for e, v in sorted(by.items())) or "no chunks"))
    for w in ("wal", "wbl"):
        p = os.path.join(d, w)
        for f in sorted(os.listdir(p)) if os.path.isdir(p) else []:
            fp = os.path.join(p, f)
            if re.fullmatch(r"\d{8}", f):
                print("  %s/%s (%s): fragments %s" % (w, f, human(os.path.getsize(fp)), wal_fragments(fp)))
            else:
                print("  %s/%s (%s)" % (w, f, human(tree_size(fp))))


if __name__ == "__main__":
    globals()["cmd_" + sys.argv[1].replace("-", "_")](*sys.argv[2:])
