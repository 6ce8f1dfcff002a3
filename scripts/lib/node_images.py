#!/usr/bin/env python3
"""The test node's images (scripts/test-node.sh), built here as OCI archives for
`ctr -n k8s.io images import`; nothing is pulled from a registry.

  python3 node_images.py build OUT_DIR BUSYBOX_DEB KUBE_SRC
  python3 node_images.py prometheus OUT_DIR BUSYBOX_DEB PROM_BIN_DIR

- pause: Kubernetes' own pause.c (KUBE_SRC/build/pause/linux/pause.c, KUBE_SRC being the
  k8s.io/kubernetes module the kube binaries are built from) compiled with `gcc -static`; the
  CRI sandbox image, localhost/promigrate/pause:<pause version>.
- prometheus-standin: busybox from Debian's busybox-static package (BUSYBOX_DEB, fetched with
  `apt-get download`, read here, never installed), every applet a symlink in /bin, so it has
  sh, cat, tar; it stands in for the Prometheus image: localhost/promigrate/prometheus-standin:busybox-<version>.
- shellless: the same static pause binary alone (no shell, no tar, nothing else):
  localhost/promigrate/shellless:<pause version>.

Each archive holds one uncompressed layer built in memory (root-owned, mtime 0, sorted), so the
same inputs give the same bytes. OUT_DIR/inputs.sha256 records a hash of the inputs (the .deb,
pause.c and its Makefile, the gcc version, this file); when it matches, nothing is rebuilt.
OUT_DIR/images.env names the images (PAUSE_IMAGE=, STANDIN_IMAGE=, SHELLLESS_IMAGE=); its path is
the last line on stdout.

`prometheus` builds the one image that needs a Prometheus (scripts/prometheus3.sh's static
binaries in PROM_BIN_DIR), apart, so that `build` needs no Go:
- prometheus: the stand-in's busybox plus /bin/prometheus, laid out like the official image
  (prom/prometheus): /etc/prometheus/prometheus.yml scraping itself every 15 s, user nobody,
  working directory /prometheus, entrypoint /bin/prometheus with the official arguments;
  localhost/promigrate/prometheus:v<version>-busybox-<busybox version>. No promtool, no web UI
  (scripts/prometheus3.sh builds without the assets; the HTTP API is all there).
Its inputs' hash is OUT_DIR/prometheus.sha256; OUT_DIR/prometheus.env holds PROMETHEUS_IMAGE=
and its path is the last line on stdout.
"""

import hashlib
import io
import json
import os
import platform
import re
import subprocess
import sys
import tarfile
import tempfile

PREFIX = "localhost/promigrate"
ARCHIVES = ("pause", "prometheus-standin", "shellless")


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def oci_arch():
    m = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(m, m)


def layer(entries):
    """An uncompressed tar of entries (path, kind, mode, data): kind 'dir', 'file' or
    'symlink' (data = target), root-owned, mtime 0, in path order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, kind, mode, data in sorted(entries):
            ti = tarfile.TarInfo(path)
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = ""
            ti.mtime = 0
            ti.mode = mode
            if kind == "dir":
                ti.type = tarfile.DIRTYPE
                tar.addfile(ti)
            elif kind == "symlink":
                ti.type = tarfile.SYMTYPE
                ti.linkname = data
                tar.addfile(ti)
            else:
                ti.size = len(data)
                tar.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def archive(out_path, ref, entries, config):
    """Writes an OCI image layout tar holding one image named ref (one layer, config)."""
    blobs = {}

    def blob(data):
        d = sha256(data)
        blobs[d] = data
        return {"digest": "sha256:" + d, "size": len(data)}

    lay = layer(entries)
    image_config = {
        "architecture": oci_arch(),
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + sha256(lay)]},
        "history": [{"created_by": "scripts/lib/node_images.py"}],
    }
    cfg = dict(blob(json.dumps(image_config, sort_keys=True).encode()),
               mediaType="application/vnd.oci.image.config.v1+json")
    lay_desc = dict(blob(lay), mediaType="application/vnd.oci.image.layer.v1.tar")
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": cfg, "layers": [lay_desc]}
    man = dict(blob(json.dumps(manifest, sort_keys=True).encode()),
               mediaType="application/vnd.oci.image.manifest.v1+json")
    man["platform"] = {"architecture": oci_arch(), "os": "linux"}
    man["annotations"] = {"io.containerd.image.name": ref,
                          "org.opencontainers.image.ref.name": ref.rsplit(":", 1)[1]}
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [man]}
    files = [("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode()),
             ("index.json", json.dumps(index, sort_keys=True).encode())]
    files += [("blobs/sha256/" + d, data) for d, data in sorted(blobs.items())]
    entries = [("blobs", "dir", 0o755, None), ("blobs/sha256", "dir", 0o755, None)]
    entries += [(name, "file", 0o644, data) for name, data in files]
    tmp = out_path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(layer(entries))
    os.replace(tmp, out_path)
    print(f"node_images: {out_path}: {ref} (manifest {man['digest']})", file=sys.stderr)


def busybox_from_deb(deb):
    """The busybox binary and the package version from a busybox-static .deb."""
    version = subprocess.run(["dpkg-deb", "-f", deb, "Version"], check=True,
                             capture_output=True, text=True).stdout.strip()
    fs = subprocess.run(["dpkg-deb", "--fsys-tarfile", deb], check=True,
                        capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(fs)) as tar:
        for m in tar.getmembers():
            if m.name in ("./bin/busybox", "bin/busybox") and m.isfile():
                return tar.extractfile(m).read(), version
    raise SystemExit(f"node_images: no bin/busybox in {deb}")


def need_applets(busybox, deb, needs):
    """The applets of the busybox binary (bytes, from deb); fails unless every one in needs
    is there."""
    with tempfile.TemporaryDirectory() as d:
        bb = os.path.join(d, "busybox")
        with open(bb, "wb") as f:
            f.write(busybox)
        os.chmod(bb, 0o755)
        applets = subprocess.run([bb, "--list"], check=True, capture_output=True,
                                 text=True).stdout.split()
    for need in needs:
        if need not in applets:
            raise SystemExit(f"node_images: busybox from {deb} has no {need} applet")
    return applets


def pause_version(kube_src):
    mk = open(os.path.join(kube_src, "build/pause/Makefile")).read()
    m = re.search(r"^TAG \?= (\S+)$", mk, re.M)
    if not m:
        raise SystemExit(f"node_images: no TAG in {kube_src}/build/pause/Makefile")
    return m.group(1)


def build_pause(src, version):
    """pause.c compiled with gcc -static and stripped (pause's own Makefile uses the same flags)."""
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "pause")
        subprocess.run(["gcc", "-Os", "-Wall", "-Werror", "-static",
                        f"-DVERSION=v{version}-promigrate", "-o", out, src], check=True)
        subprocess.run(["strip", out], check=True)
        return open(out, "rb").read()


def build(out, deb, kube_src):
    pause_src = os.path.join(kube_src, "build/pause/linux/pause.c")
    gcc = subprocess.run(["gcc", "--version"], check=True, capture_output=True,
                         text=True).stdout.splitlines()[0]
    h = hashlib.sha256()
    for part in (open(deb, "rb").read(), open(pause_src, "rb").read(),
                 open(os.path.join(kube_src, "build/pause/Makefile"), "rb").read(),
                 gcc.encode(), open(__file__, "rb").read(), oci_arch().encode()):
        h.update(sha256(part).encode())
    key = h.hexdigest()
    stamp = os.path.join(out, "inputs.sha256")
    env = os.path.join(out, "images.env")
    have = all(os.path.isfile(os.path.join(out, a + ".oci.tar")) for a in ARCHIVES)
    if have and os.path.isfile(env) and os.path.isfile(stamp) and open(stamp).read().strip() == key:
        print(f"node_images: up to date ({out})", file=sys.stderr)
        print(env)
        return
    os.makedirs(out, exist_ok=True)
    if os.path.exists(stamp):
        os.remove(stamp)

    pv = pause_version(kube_src)
    pause = build_pause(pause_src, pv)
    busybox, bb_version = busybox_from_deb(deb)
    # "1:1.35.0-4+deb12u1+b1" -> "1.35.0" (a tag allows [A-Za-z0-9_.-])
    bb_tag = re.sub(r"[^A-Za-z0-9_.-]", "_", bb_version.split(":")[-1].split("-")[0])
    refs = {
        "pause": f"{PREFIX}/pause:{pv}",
        "prometheus-standin": f"{PREFIX}/prometheus-standin:busybox-{bb_tag}",
        "shellless": f"{PREFIX}/shellless:{pv}",
    }

    pause_only = [("pause", "file", 0o755, pause)]
    archive(os.path.join(out, "pause.oci.tar"), refs["pause"], pause_only,
            {"Entrypoint": ["/pause"], "User": "65535:65535", "WorkingDir": "/"})
    archive(os.path.join(out, "shellless.oci.tar"), refs["shellless"], pause_only,
            {"Entrypoint": ["/pause"], "User": "65535:65535", "WorkingDir": "/"})

    applets = need_applets(busybox, deb, ("sh", "cat", "tar"))
    standin = [("bin", "dir", 0o755, None), ("bin/busybox", "file", 0o755, busybox),
               ("etc", "dir", 0o755, None), ("tmp", "dir", 0o1777, None),
               ("prometheus", "dir", 0o755, None),
               ("etc/passwd", "file", 0o644,
                b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"),
               ("etc/group", "file", 0o644, b"root:x:0:\nnogroup:x:65534:\n")]
    standin += [("bin/" + a, "symlink", 0o777, "busybox") for a in applets if a != "busybox"]
    # Like the Prometheus image: user nobody, working directory /prometheus.
    archive(os.path.join(out, "prometheus-standin.oci.tar"), refs["prometheus-standin"], standin,
            {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
             "Cmd": ["sh"], "User": "65534:65534", "WorkingDir": "/prometheus"})

    with open(env + ".tmp", "w") as f:
        f.write(f"PAUSE_IMAGE={refs['pause']}\n")
        f.write(f"STANDIN_IMAGE={refs['prometheus-standin']}\n")
        f.write(f"SHELLLESS_IMAGE={refs['shellless']}\n")
    os.replace(env + ".tmp", env)
    with open(stamp, "w") as f:
        f.write(key + "\n")
    print(env)


# The official image's prometheus.yml (prom/prometheus: documentation/examples/prometheus.yml,
# without its comments and empty alerting and rule sections).
PROMETHEUS_YML = b"""global:
  scrape_interval: 15s
  evaluation_interval: 15s
scrape_configs:
  - job_name: "prometheus"
    static_configs:
      - targets: ["localhost:9090"]
        labels:
          app: "prometheus"
"""


def is_static_elf(data):
    """True when an ELF file has no program interpreter (PT_INTERP): it runs without a libc."""
    import struct
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise SystemExit("node_images: not a 64-bit ELF file")
    end = "<" if data[5] == 1 else ">"
    phoff, = struct.unpack_from(end + "Q", data, 0x20)
    phentsize, phnum = struct.unpack_from(end + "HH", data, 0x36)
    return all(struct.unpack_from(end + "I", data, phoff + i * phentsize)[0] != 3
               for i in range(phnum))


def build_prometheus(out, deb, bin_dir):
    prom_path = os.path.join(bin_dir, "prometheus")
    prom = open(prom_path, "rb").read()
    if not is_static_elf(prom):
        raise SystemExit(f"node_images: {prom_path} is linked dynamically; busybox has no libc "
                         "(scripts/prometheus3.sh builds with CGO_ENABLED=0)")
    h = hashlib.sha256()
    for part in (open(deb, "rb").read(), prom, open(__file__, "rb").read(), oci_arch().encode()):
        h.update(sha256(part).encode())
    key = h.hexdigest()
    stamp = os.path.join(out, "prometheus.sha256")
    env = os.path.join(out, "prometheus.env")
    tar = os.path.join(out, "prometheus.oci.tar")
    if (os.path.isfile(tar) and os.path.isfile(env) and os.path.isfile(stamp)
            and open(stamp).read().strip() == key):
        print(f"node_images: prometheus image up to date ({out})", file=sys.stderr)
        print(env)
        return
    os.makedirs(out, exist_ok=True)
    if os.path.exists(stamp):
        os.remove(stamp)
    first = subprocess.run([prom_path, "--version"], check=True, capture_output=True,
                           text=True).stdout.splitlines()[0]
    m = re.match(r"prometheus, version (\S+)", first)
    if not m:
        raise SystemExit(f"node_images: cannot read the version of {prom_path}: {first!r}")
    busybox, bb_version = busybox_from_deb(deb)
    bb_tag = re.sub(r"[^A-Za-z0-9_.-]", "_", bb_version.split(":")[-1].split("-")[0])
    ref = f"{PREFIX}/prometheus:v{re.sub(r'[^A-Za-z0-9_.-]', '_', m.group(1))}-busybox-{bb_tag}"
    applets = need_applets(busybox, deb, ("sh", "cat", "wget"))
    entries = [("bin", "dir", 0o755, None), ("bin/busybox", "file", 0o755, busybox),
               ("bin/prometheus", "file", 0o755, prom),
               ("etc", "dir", 0o755, None), ("etc/prometheus", "dir", 0o755, None),
               ("etc/prometheus/prometheus.yml", "file", 0o644, PROMETHEUS_YML),
               ("tmp", "dir", 0o1777, None), ("prometheus", "dir", 0o755, None),
               ("etc/passwd", "file", 0o644,
                b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"),
               ("etc/group", "file", 0o644, b"root:x:0:\nnogroup:x:65534:\n")]
    entries += [("bin/" + a, "symlink", 0o777, "busybox") for a in applets
                if a not in ("busybox", "prometheus")]
    archive(tar, ref, entries,
            {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
             "Entrypoint": ["/bin/prometheus"],
             "Cmd": ["--config.file=/etc/prometheus/prometheus.yml",
                     "--storage.tsdb.path=/prometheus"],
             "ExposedPorts": {"9090/tcp": {}}, "Volumes": {"/prometheus": {}},
             "User": "65534:65534", "WorkingDir": "/prometheus"})
    with open(env + ".tmp", "w") as f:
        f.write(f"PROMETHEUS_IMAGE={ref}\n")
    os.replace(env + ".tmp", env)
    with open(stamp, "w") as f:
        f.write(key + "\n")
    print(env)


def main(argv):
    if len(argv) == 5 and argv[1] == "build":
        build(*argv[2:])
    elif len(argv) == 5 and argv[1] == "prometheus":
        build_prometheus(*argv[2:])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
