"""The Python half of scripts/bench.sh and scripts/bench-incluster.sh: `python3 bench.py CMD
ARGS` with CMD one of
json-fields FILE (selected fields of a promigrate JSON report, compact, or "-"),
subset SRC DST MIB (hard links of the first blocks until MIB MiB),
report FACTS TSV (the Markdown report of a run's measurements),
incluster-log JSON_OUT LOG (a receiver-pod run's report and log, as one compact JSON) and
report-incluster FACTS TSV (the Markdown report of scripts/bench-incluster.sh)."""
import datetime, json, os, re, statistics, sys


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



LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)Z\s+(\w+)\s+(.*)$")


def cmd_incluster_log(out_path, log_path):
    """A receiver-pod run (apply or verify): its JSON report's ok and figures, and from its
    log (RUST_LOG=info, text) the epoch times of the pod's creation, the upload's end, the
    copy's end ("apply: done") and the last line, and the upload's own seconds."""
    r = {}
    try:
        with open(out_path) as f:
            d = json.load(f)
        r["ok"] = d.get("ok")
        t = (d.get("targets") or [{}])[0]
        a = t.get("apply")
        if isinstance(a, dict):
            r["copied_bytes"] = a.get("copied_bytes")
            r["copied_files"] = a.get("copied_files")
            r["copy_s"] = a.get("duration_seconds")
        for k in ("checked_files", "checked_bytes", "hashed_bytes"):
            if k in t:
                r[k] = t[k]
        if "duration_seconds" in t:
            r["verify_s"] = t["duration_seconds"]
        if isinstance(t.get("differences"), list):
            r["differences"] = len(t["differences"])
    except Exception as e:
        r["ok"] = None
        r["report_error"] = str(e)
    last = None
    for line in open(log_path, errors="replace"):
        m = LOG_LINE.match(line.strip())
        if not m:
            continue
        ts = datetime.datetime.fromisoformat(m.group(1)).replace(
            tzinfo=datetime.timezone.utc).timestamp()
        msg = m.group(3)
        last = ts
        r.setdefault("first_log_at", ts)
        if "receiver pod" in msg and " created " in msg:
            r["created_at"] = ts
        u = re.search(r"uploaded into \S+ in ([0-9.]+)s", msg)
        if u:
            r["uploaded_at"] = ts
            r["upload_s"] = float(u.group(1))
        if "apply: done" in msg:
            r["copied_at"] = ts
    if last is not None:
        r["last_log_at"] = last
    print(json.dumps(r, separators=(",", ":")))


def cmd_report_incluster(facts_path, tsv_path):
    import csv
    facts = {}
    for line in open(facts_path):
        k, _, v = line.rstrip("\n").partition("\t")
        facts[k] = v
    tck = float(facts.get("clk_tck", "100"))
    GiB, MiB = 2**30, 2**20
    data_bytes = int(facts["data_bytes"])
    gib = data_bytes / GiB
    med = statistics.median

    def counters(s):
        return {k: float(v) for k, v in (x.split("=", 1) for x in s.split())}

    rows = []
    with open(tsv_path) as f:
        for x in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            t0, t1, t2 = float(x["t0"]), float(x["t1"]), float(x["t2"])
            b, a = counters(x["before"]), counters(x["after"])
            d = {k: a[k] - b[k] for k in b}
            r = dict(kind=x["kind"], round=int(x["round"]), tool=x["tool"], pos=int(x["pos"]),
                     t0=t0, wall=t1 - t0, sync_after=t2 - t1, load=float(x["load1"]))
            cpu = {
                "here_user": float(x["user_s"]), "here_sys": float(x["sys_s"]),
                "pod_user": d["pod_user_ns"] / 1e9, "pod_sys": d["pod_sys_ns"] / 1e9,
                "kube-apiserver": d["kube-apiserver"] / tck, "kubelet": d["kubelet"] / tck,
                "containerd": d["containerd"] / tck, "etcd": d["etcd"] / tck,
                "kube-controller-manager": d["kube-controller-manager"] / tck,
                "shim": sum(float(p.split(":")[1]) for p in x["shims"].split(",")) / tck
                if x["shims"] != "-" else 0.0,
                "machine": d["machine"] / tck, "iowait": d["iowait"] / tck,
            }
            known = sum(v for k, v in cpu.items() if k not in ("machine", "iowait"))
            cpu["rest"] = cpu["machine"] - known
            r["cpu"] = cpu
            r["maxrss_kib"] = int(x["maxrss_kib"])
            r["steps"] = {}
            if x["steps"]:
                for s in x["steps"].split(","):
                    k, v = s.split(" ")
                    r["steps"][k] = float(v)
            r["json"] = json.loads(x["json"]) if x["json"] != "-" else {}
            rows.append(r)

    def sel(kind, tool):
        return sorted([r for r in rows if r["kind"] == kind and r["tool"] == tool],
                      key=lambda r: r["round"])

    pm, hand, ver = sel("apply", "promigrate"), sel("apply", "by-hand"), sel("verify", "promigrate")
    out = []
    p = out.append
    p("## In-cluster target: promigrate through a receiver pod vs tar through `kubectl exec`")
    p("")
    p("Made by `scripts/bench-incluster.sh` on %s: measurements, not assertions. %.2f GiB of real "
      "blocks (%s blocks, %s files, %d bytes) into a claim on a `local:` PV of the real test node "
      "(kube-apiserver, kubelet, containerd, runc on 127.0.0.1), `restricted` namespace, "
      "%s interleaved rounds, empty volume and page cache dropped before every run, each timed "
      "from start to exit." % (facts["date"], gib, facts["data_blocks"], facts["data_files"],
                               data_bytes, facts["rounds"]))
    p("")
    p("| | |")
    p("|---|---|")
    for k, label in [("date", "date"), ("nproc", "nproc"), ("cpu", "CPU"), ("kernel", "kernel"),
                     ("fs_mount", "volume's filesystem"), ("same_fs", "source on the same filesystem"),
                     ("uptime_start", "`uptime` before"), ("uptime_end", "`uptime` after"),
                     ("load15", "15-min load average before -> after"),
                     ("procs_start", "other busy processes before (ps %CPU >= 5)"),
                     ("procs_end", "other busy processes after"),
                     ("promigrate_version", "promigrate"), ("promigrate_bytes", "static binary, bytes (uploaded each run)"),
                     ("git_head", "git HEAD"), ("git_dirty", "work tree"),
                     ("kube", "Kubernetes"), ("containerd", "containerd"), ("runc", "runc"),
                     ("tar", "tar here (the pod: busybox tar)"), ("image", "image (both pods)"),
                     ("data_dir", "data"), ("parallelism", "promigrate transfer.parallelism")]:
        p("| %s | %s |" % (label, facts.get(k, "?").replace("|", "\\|")))
    p("")
    p("### Time until durable, pod start and deletion included")
    p("")
    p("promigrate: `apply --yes` from start to exit (access check, receiver pod created and "
      "Running, static binary uploaded, copy with an fsync per file, pod deleted and gone). "
      "By hand: pod created, `kubectl wait` Ready, `tar -cf - | kubectl exec -i POD -- tar -xf -`, "
      "`kubectl exec POD -- sync`, `kubectl delete pod` (waits until gone). `sync -f` after = a "
      "`sync -f` of the volume on the host after the run, timed apart (both are durable by then).")
    p("")
    p("| round | order | promigrate s | by hand s | throughput promigrate / by hand | `sync -f` after (pm, hand) | load1 at start (pm, hand) |")
    p("|---|---|---|---|---|---|---|")
    ratios = []
    for a, b in zip(pm, hand):
        ratio = b["wall"] / a["wall"]
        ratios.append(ratio)
        order = "promigrate, by hand" if a["pos"] < b["pos"] else "by hand, promigrate"
        p("| %d | %s | %.2f | %.2f | %.2f | %.2f, %.2f | %.2f, %.2f |" % (
            a["round"], order, a["wall"], b["wall"], ratio, a["sync_after"], b["sync_after"],
            a["load"], b["load"]))
    p("")
    p("| tool | runs | median s | min s | max s | MiB/s (median) |")
    p("|---|---|---|---|---|---|")
    for label, rs in (("promigrate apply (receiver pod)", pm), ("by hand (tar through kubectl exec)", hand)):
        w = [r["wall"] for r in rs]
        p("| %s | %d | %.2f | %.2f | %.2f | %.1f |" % (
            label, len(w), med(w), min(w), max(w), data_bytes / MiB / med(w)))
    mr = med(ratios)
    rom = med([r["wall"] for r in hand]) / med([r["wall"] for r in pm])
    p("")
    p("Throughput ratio promigrate / by hand: **%.2f** (median of the per-round ratios; %s); "
      "ratio of the medians %.2f. Goal of issue 17: >= 0.9: **%s**." % (
          mr, ", ".join("%.2f" % x for x in ratios), rom, "met" if mr >= 0.9 else "not met"))
    p("")
    p("### Where the time goes (medians, s)")
    p("")
    ph = {"to pod created": [], "pod start until upload began": [], "upload": [], "copy": [],
          "after the copy": []}
    for r in pm:
        j = r["json"]
        if not all(k in j for k in ("created_at", "uploaded_at", "upload_s", "copied_at", "copy_s")):
            continue
        ph["to pod created"].append(j["created_at"] - r["t0"])
        ph["pod start until upload began"].append(j["uploaded_at"] - j["upload_s"] - j["created_at"])
        ph["upload"].append(j["upload_s"])
        ph["copy"].append(j["copy_s"])
        ph["after the copy"].append(r["t0"] + r["wall"] - j["copied_at"])
    if ph["upload"]:
        p("promigrate (from its log's timestamps, `RUST_LOG=info`; copy = its report's "
          "`duration_seconds`; after the copy = from its log's `apply: done` to its exit: the "
          "final phase, the run record, the pod deleted and gone):")
        p("")
        p("| step | median s | per round |")
        p("|---|---|---|")
        for k, v in ph.items():
            p("| %s | %.2f | %s |" % (k, med(v), ", ".join("%.2f" % x for x in v)))
        cb = [r["json"].get("copy_s") for r in pm]
        p("")
        p("The copy alone ran at %.0f MiB/s (median), against %.0f MiB/s for the tar pipe alone "
          "by hand (below)." % (data_bytes / MiB / med(cb),
                                 data_bytes / MiB / med([r["steps"]["copied"] - r["steps"]["ready"] for r in hand])))
        p("")
    steps = [("pod created", "created", None), ("Ready", "ready", "created"),
             ("tar through `kubectl exec`", "copied", "ready"), ("`kubectl exec sync`", "synced", "copied"),
             ("pod deleted and gone", "deleted", "synced")]
    p("By hand (each step's end, from the script's clock):")
    p("")
    p("| step | median s | per round |")
    p("|---|---|---|")
    for label, k, prev in steps:
        v = [r["steps"][k] - (r["steps"][prev] if prev else r["t0"]) for r in hand]
        p("| %s | %.2f | %s |" % (label, med(v), ", ".join("%.2f" % x for x in v)))
    p("")
    p("### CPU per GiB (user + system seconds per GiB of data, median over the runs)")
    p("")
    p("Here = the process tree run here (/usr/bin/time: promigrate; or bash, every `kubectl` and "
      "`tar`). Pod = cpuacct of the kubelet's cgroup root (the containers and everything exec'd "
      "into them). The relays: the node's daemons (/proc/PID/stat) and the pod's containerd-shim "
      "(sampled every 0.2 s while it lived). Machine = all CPU time of the machine during the run "
      "(/proc/stat), rest = machine minus all of the above (kernel writeback and threads, "
      "other processes of this machine).")
    p("")
    cols = [("here", lambda c: c["here_user"] + c["here_sys"]),
            ("here user/sys", None),
            ("pod", lambda c: c["pod_user"] + c["pod_sys"]),
            ("pod user/sys", None),
            ("kube-apiserver", lambda c: c["kube-apiserver"]),
            ("kubelet", lambda c: c["kubelet"]),
            ("containerd", lambda c: c["containerd"]),
            ("shim", lambda c: c["shim"]),
            ("etcd + kcm", lambda c: c["etcd"] + c["kube-controller-manager"]),
            ("machine", lambda c: c["machine"]),
            ("rest", lambda c: c["rest"]),
            ("iowait", lambda c: c["iowait"])]
    p("| run | " + " | ".join(c[0] for c in cols) + " |")
    p("|---|" + "---|" * len(cols))
    for label, rs in (("promigrate apply", pm), ("by hand", hand), ("promigrate verify", ver)):
        if not rs:
            continue
        cells = []
        for name, f in cols:
            if f is None:
                side = "here" if name.startswith("here") else "pod"
                cells.append("%.2f / %.2f" % (med([r["cpu"][side + "_user"] for r in rs]) / gib,
                                               med([r["cpu"][side + "_sys"] for r in rs]) / gib))
            else:
                cells.append("%.2f" % (med([f(r["cpu"]) for r in rs]) / gib))
        p("| %s | %s |" % (label, " | ".join(cells)))
    p("")
    p("Peak RSS here: promigrate apply %.1f MiB (max over runs); by hand (largest process of "
      "the tree: kubectl or tar) %.1f MiB." % (
          max(r["maxrss_kib"] for r in pm) / 1024, max(r["maxrss_kib"] for r in hand) / 1024))
    p("")
    if ver:
        p("### `promigrate verify` (checksum level) of the copy, through its own receiver pod")
        p("")
        p("Cache dropped before it; pod start, upload and deletion included; not in the throughput.")
        p("")
        p("| round | wall s | its own duration s | upload s | checked bytes | differences |")
        p("|---|---|---|---|---|---|")
        for r in ver:
            j = r["json"]
            p("| %d | %.2f | %.2f | %.2f | %s | %s |" % (
                r["round"], r["wall"], j.get("verify_s", float("nan")), j.get("upload_s", float("nan")),
                j.get("checked_bytes", "?"), j.get("differences", "?")))
        w = [r["wall"] for r in ver]
        p("| **median** | %.2f | %.2f | %.2f | | |" % (
            med(w), med([r["json"].get("verify_s", float("nan")) for r in ver]),
            med([r["json"].get("upload_s", float("nan")) for r in ver])))
        p("")
    allr = rows
    p("Load average (1 min) at the start of the runs: min %.2f, median %.2f, max %.2f (%s CPUs)." % (
        min(r["load"] for r in allr), med([r["load"] for r in allr]), max(r["load"] for r in allr),
        facts["nproc"]))
    print("\n".join(out))


if __name__ == "__main__":
    globals()["cmd_" + sys.argv[1].replace("-", "_")](*sys.argv[2:])
