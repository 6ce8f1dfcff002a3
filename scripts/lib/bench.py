"""The Python half of scripts/bench.sh: `python3 bench.py CMD ARGS` with CMD one of
json-fields FILE (selected fields of a promigrate JSON report, compact, or "-"),
subset SRC DST MIB (hard links of the first blocks until MIB MiB) and
report FACTS TSV (the Markdown report of a run's measurements)."""
import json, os, statistics, sys


def cmd_json_fields(path):
    try:
        with open(path) as f:
            d = json.load(f)
    except Exception:
        print("-")
        return
    r = {"ok": d.get("ok")}
    # plan, apply and verify report each target under "targets" (one here).
    t = (d.get("targets") or [{}])[0]
    a = t.get("apply")
    if isinstance(a, dict):
        for k in ("copied_bytes", "copied_files", "resumed_files", "ownership_fixed", "duration_seconds"):
            r[k] = a.get(k)
    for k in ("level", "checked_files", "checked_bytes", "hashed_bytes", "duration_seconds"):
        if k in t:
            r[k] = t[k]
    if isinstance(t.get("differences"), list):
        r["differences"] = len(t["differences"])
    print(json.dumps(r, separators=(",", ":")))


def cmd_subset(src, dst, mib):
    mib = int(mib)
    total = 0
    for b in sorted(os.listdir(src)):
        p = os.path.join(src, b)
        if total >= mib * 2**20 or not os.path.isdir(p):
            continue
        for root, dirs, files in os.walk(p):
            rel = os.path.relpath(root, src)
            os.makedirs(os.path.join(dst, rel), exist_ok=True)
            for f in files:
                os.link(os.path.join(root, f), os.path.join(dst, rel, f))
                total += os.path.getsize(os.path.join(root, f))


def cmd_report(facts_path, tsv_path):

    facts = {}
    for line in open(facts_path):
        k, _, v = line.rstrip("\n").partition("\t")
        facts[k] = v
    rows = []
    for line in open(tsv_path):
        f = line.rstrip("\n").split("\t")
        r = dict(kind=f[0], round=int(f[1]), tool=f[2], pos=int(f[3]))
        t0, t1, t2 = map(float, f[4:7])
        r.update(tool_s=t1 - t0, total_s=t2 - t0, sync_s=t2 - t1, load=float(f[7]))
        tck = float(facts.get("clk_tck", "100"))
        r["busy_s"] = (int(f[9]) - int(f[8])) / tck
        r["iowait_s"] = (int(f[11]) - int(f[10])) / tck
        r.update(user=float(f[12]), sys=float(f[13]), rss_kib=int(f[14]))
        r["cpu_s"] = r["user"] + r["sys"]
        r["other_cpu_s"] = max(0.0, r["busy_s"] - r["cpu_s"])
        r["json"] = json.loads(f[15]) if f[15] != "-" else {}
        rows.append(r)

    GiB, MiB = 2**30, 2**20
    data_bytes = int(facts["data_bytes"])
    rounds = int(facts["rounds"])
    med = statistics.median
    out = []
    p = out.append


    def sel(kind, tool=None, rnd=None):
        return [r for r in rows if r["kind"] == kind and (tool is None or r["tool"] == tool)
                and (rnd is None or r["round"] == rnd)]


    def one(kind, tool, rnd):
        s = sel(kind, tool, rnd)
        return s[0] if s else None


    def fmt_t(x):
        return "%.2f s" % x if x >= 0.095 else "%.3f s" % x


    def verdict(ok):
        return "met" if ok else "**not met**"


    p("## promigrate benchmark results")
    p("")
    p("Made by `scripts/bench.sh` on %s. These are measurements, not assertions: the "
      "targets from the issue are shown for reference, and the script does not fail "
      "when one is missed. Disk times on this machine swing by up to 4x between runs, "
      "so compare ratios from the same run, not absolute times across runs." % facts["date"])
    p("")
    p("### Machine and data")
    p("")
    p("| | |")
    p("|---|---|")
    for k, label in [
        ("date", "date"), ("nproc", "nproc"), ("cpu", "CPU"), ("mem", "memory"),
        ("kernel", "kernel"), ("fs_type", "filesystem of the targets (`stat -f -c %T`)"),
        ("fs_mount", "device, mount point (options)"), ("same_fs", "source on the same filesystem"),
        ("drop_caches", "page cache dropped"),
        ("uptime_start", "`uptime` before"), ("uptime_end", "`uptime` after"),
        ("load15", "15-min load average before -> after"),
        ("procs_start", "other busy processes before (ps %CPU >= 5)"),
        ("procs_end", "other busy processes after (ps %CPU >= 5)"),
        ("promigrate_version", "promigrate"), ("git_head", "git HEAD"), ("git_dirty", "work tree"),
        ("promigrate_sha256", "binary sha256 (prefix)"),
        ("cp_version", "cp"), ("rsync_version", "rsync"),
    ]:
        p("| %s | %s |" % (label, facts.get(k, "?").replace("|", "\\|")))
    p("| data | `%s`: %d blocks, %d files, %d bytes (%.2f GiB; %s GiB requested) |" % (
        facts["data_dir"], int(facts["data_blocks"]), int(facts["data_files"]), data_bytes,
        data_bytes / GiB, facts["data_gib_requested"]))
    p("| cached data left on disk | %s |" % facts["fixtures_size"])
    p("| files promigrate adds at the top of its target (not counted in the copy checks) | %s |"
      % (facts.get("promigrate_extra") or "none"))
    p("| promigrate plan | `transfer.parallelism: %s`, `subPath: prometheus-db`, "
      "`runAsUser: 1000`, `fsGroup: 2000` (so promigrate also chowns; cp -a and rsync -a keep root) |"
      % facts["parallelism"])
    p("")

    # ---- 1. full copies
    p("### 1. Full copy, cold cache, timed until durable (tool + `sync -f`)")
    p("")
    p("Each cell: total s (tool s + sync s). Order within a round rotates. "
      "Ratios use the totals.")
    p("")
    p("| round | order | cp -a | rsync -a | promigrate apply | promigrate / cp | promigrate / rsync |")
    p("|---|---|---|---|---|---|---|")
    r_cp, r_rs = [], []
    for rnd in range(1, rounds + 1):
        c, s, m = one("full", "cp", rnd), one("full", "rsync", rnd), one("full", "promigrate", rnd)
        order = ", ".join(x["tool"] for x in sorted(sel("full", rnd=rnd), key=lambda x: x["pos"]))
        cell = lambda x: "%.2f (%.2f + %.2f)" % (x["total_s"], x["tool_s"], x["sync_s"])
        a, b = m["total_s"] / c["total_s"], m["total_s"] / s["total_s"]
        r_cp.append(a)
        r_rs.append(b)
        p("| %d | %s | %s | %s | %s | %.2f | %.2f |" % (rnd, order, cell(c), cell(s), cell(m), a, b))
    mt = {t: med([x["total_s"] for x in sel("full", t)]) for t in ("cp", "rsync", "promigrate")}
    p("| **median** | | %.2f | %.2f | %.2f | **%.2f** (median of ratios); %.2f (ratio of medians) "
      "| **%.2f** (median of ratios); %.2f (ratio of medians) |" % (
          mt["cp"], mt["rsync"], mt["promigrate"], med(r_cp), mt["promigrate"] / mt["cp"],
          med(r_rs), mt["promigrate"] / mt["rsync"]))
    p("")
    p("| target | observed (median of per-round ratios) | per-round ratios | within target? |")
    p("|---|---|---|---|")
    p("| promigrate <= 1.2 x cp -a | %.2f x | %s | %s |" % (
        med(r_cp), ", ".join("%.2f" % x for x in r_cp), verdict(med(r_cp) <= 1.2)))
    p("| promigrate <= 0.5 x rsync -a | %.2f x | %s | %s |" % (
        med(r_rs), ", ".join("%.2f" % x for x in r_rs), verdict(med(r_rs) <= 0.5)))
    p("")
    p("Details per run (MiB/s = data bytes / total; other CPU = CPU time used on the whole "
      "machine during the run minus the tool's own, so it includes kernel writeback and any "
      "other process; iowait is summed over both CPUs):")
    p("")
    p("| round | pos | tool | total s | tool s | sync s | MiB/s | user s | sys s | max RSS MiB "
      "| other CPU s | iowait s | load1 at start |")
    p("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for x in sorted(sel("full"), key=lambda x: (x["round"], x["pos"])):
        p("| %d | %d | %s | %.2f | %.2f | %.2f | %.0f | %.2f | %.2f | %.1f | %.1f | %.1f | %.2f |" % (
            x["round"], x["pos"], x["tool"], x["total_s"], x["tool_s"], x["sync_s"],
            data_bytes / MiB / x["total_s"], x["user"], x["sys"], x["rss_kib"] / 1024,
            x["other_cpu_s"], x["iowait_s"], x["load"]))
    p("")

    # ---- 2. no-op reruns
    p("### 2. No-op rerun (target already complete)")
    p("")
    p("`rsync -a` and `promigrate apply` again onto their own complete copies from the last "
      "round. Cold = page cache dropped first; warm = straight after the cold run. "
      "Times: tool alone, and tool + `sync -f`.")
    p("")
    p("| round | cache | rsync -a | promigrate apply | promigrate / rsync (tool) | promigrate copied bytes |")
    p("|---|---|---|---|---|---|")
    for rnd in range(1, rounds + 1):
        for cache in ("cold", "warm"):
            s, m = one("noop-" + cache, "rsync", rnd), one("noop-" + cache, "promigrate", rnd)
            p("| %d | %s | %s (%s) | %s (%s) | %.2f | %s |" % (
                rnd, cache, fmt_t(s["tool_s"]), fmt_t(s["total_s"]), fmt_t(m["tool_s"]),
                fmt_t(m["total_s"]), m["tool_s"] / s["tool_s"], m["json"].get("copied_bytes", "?")))
    for cache in ("cold", "warm"):
        s = med([x["tool_s"] for x in sel("noop-" + cache, "rsync")])
        m = med([x["tool_s"] for x in sel("noop-" + cache, "promigrate")])
        p("| **median** | %s | %s | %s | **%.2f** | |" % (cache, fmt_t(s), fmt_t(m), m / s))
    p("")
    p("Target: a no-op promigrate rerun about as cheap as a no-op rsync rerun (no threshold "
      "given; see the ratios above). Max RSS of the no-op apply: %.1f MiB." % (
          max(x["rss_kib"] for x in sel("noop-cold", "promigrate") + sel("noop-warm", "promigrate")) / 1024))
    p("")

    # ---- 3. RSS
    p("### 3. Peak RSS (`/usr/bin/time -v`, Maximum resident set size)")
    p("")
    p("| command | max RSS MiB (max over runs) | runs | target | within target? |")
    p("|---|---|---|---|---|")
    fa = sel("full", "promigrate")
    rss_apply = max(x["rss_kib"] for x in fa) / 1024
    p("| promigrate apply, full copy | %.1f (per round: %s) | %d | <= 64 MiB | %s |" % (
        rss_apply, ", ".join("%.1f" % (x["rss_kib"] / 1024) for x in sorted(fa, key=lambda x: x["round"])),
        len(fa), verdict(rss_apply <= 64)))
    ver = sel("verify-cold") + sel("verify-warm")
    p("| promigrate verify (checksum) | %.1f | %d | (none given) | |" % (
        max(x["rss_kib"] for x in ver) / 1024, len(ver)))
    bw = sel("bwlimit", "promigrate")
    p("| promigrate apply --bwlimit %s | %.1f | %d | | |" % (
        facts["bwlimit"], max(x["rss_kib"] for x in bw) / 1024, len(bw)))
    for t, label in (("cp", "cp -a"), ("rsync", "rsync -a (largest of its processes)")):
        p("| %s, full copy (reference) | %.1f | %d | | |" % (
            label, max(x["rss_kib"] for x in sel("full", t)) / 1024, len(sel("full", t))))
    p("")

    # ---- 4. bwlimit
    lim = int(facts["bwlimit_bps"])
    sub_bytes = int(facts["subset_bytes"])
    p("### 4. Rate-limit accuracy (`--bwlimit %s` = %d B/s = %.1f MiB/s)" % (facts["bwlimit"], lim, lim / MiB))
    p("")
    p("Subset: %d blocks, %d files, %d bytes (%.1f MiB; ~%s MiB requested), hard links to the "
      "data set, copied into a fresh directory each time, cold cache. Rate = bytes / time; "
      "error = rate / limit - 1. For promigrate `duration` is its own `apply.duration_seconds`, "
      "`wall` is the wall time of the process (tool alone, no `sync`)." % (
          int(facts["subset_blocks"]), int(facts["subset_files"]), sub_bytes, sub_bytes / MiB,
          facts["subset_mib_requested"]))
    p("")
    p("| round | tool | bytes | wall s | rate over wall MiB/s (error) | own duration s | rate over own duration MiB/s (error) | wall incl. sync s |")
    p("|---|---|---|---|---|---|---|---|")
    acc = {"promigrate": [], "rsync": [], "promigrate-own": []}
    for x in sorted(sel("bwlimit"), key=lambda x: (x["round"], x["pos"])):
        if x["tool"] == "promigrate":
            b = x["json"].get("copied_bytes", 0)
            d = x["json"].get("duration_seconds") or float("nan")
            own = "%.2f | %.2f (%+.1f%%)" % (d, b / d / MiB, (b / d / lim - 1) * 100)
            acc["promigrate-own"].append(b / d)
        else:
            b = sub_bytes
            own = "- | -"
        acc[x["tool"]].append(b / x["tool_s"])
        p("| %d | %s | %d | %.2f | %.2f (%+.1f%%) | %s | %.2f |" % (
            x["round"], x["tool"], b, x["tool_s"], b / x["tool_s"] / MiB,
            (b / x["tool_s"] / lim - 1) * 100, own, x["total_s"]))
    p("")
    p("| | mean rate MiB/s | mean error vs limit |")
    p("|---|---|---|")
    for k, label in (("promigrate-own", "promigrate (copied_bytes / duration_seconds)"),
                     ("promigrate", "promigrate (copied_bytes / wall time)"),
                     ("rsync", "rsync -a --bwlimit (bytes / wall time)")):
        v = statistics.mean(acc[k])
        p("| %s | %.2f | %+.2f%% |" % (label, v / MiB, (v / lim - 1) * 100))
    p("")

    # ---- 5. verify
    p("### 5. `promigrate verify` (checksum level) on the full promigrate copy")
    p("")
    p("GiB/s = source bytes / wall time; verify reads and hashes both sides, so it reads twice "
      "that from disk.")
    p("")
    p("| cache | wall s | GiB/s (source bytes) | hashed bytes | hashed GiB/s | own duration_seconds | max RSS MiB | differences |")
    p("|---|---|---|---|---|---|---|---|")
    for cache in ("cold", "warm"):
        for x in sel("verify-" + cache):
            j = x["json"]
            cb, hb = j.get("checked_bytes", data_bytes), j.get("hashed_bytes", 0)
            p("| %s | %.2f | %.2f | %d | %.2f | %.2f | %.1f | %s |" % (
                cache, x["tool_s"], cb / GiB / x["tool_s"], hb, hb / GiB / x["tool_s"],
                j.get("duration_seconds", float("nan")), x["rss_kib"] / 1024, j.get("differences", "?")))
    p("")

    # ---- noise
    allr = rows
    p("### Noise indicators")
    p("")
    p("Load average (1 min) at the start of the timed runs: min %.2f, median %.2f, max %.2f. "
      "CPU time used by other processes and the kernel during the full copies: %s s "
      "(per run, in the order run). The machine has %s CPUs; a load well above 0 before a run "
      "or a large \"other CPU\" share means something else was running at the same time." % (
          min(x["load"] for x in allr), med([x["load"] for x in allr]), max(x["load"] for x in allr),
          ", ".join("%.1f" % x["other_cpu_s"] for x in sorted(sel("full"), key=lambda x: (x["round"], x["pos"]))),
          facts["nproc"]))
    print("\n".join(out))


if __name__ == "__main__":
    globals()["cmd_" + sys.argv[1].replace("-", "_")](*sys.argv[2:])
