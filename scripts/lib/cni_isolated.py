#!/usr/bin/env python3
"""promigrate-isolated: the CNI plugin of the test node (scripts/test-node.sh), which installs
it as CNI_PATH/promigrate-isolated. CNI spec 1.0.0 (and 0.3.x/0.4.0 results).

ADD gives the pod an interface CNI_IFNAME (eth0) that exists only in the pod's network
namespace: one end of a veth pair whose other end (<ifname>p) stays in that namespace too.
Its address comes from the IPAM plugin the config names (Debian's host-local). Nothing is
created in the host's network namespace: no bridge, no route, no iptables rule, no sysctl; a pod
cannot be reached from the host, and `kubectl exec` and `port-forward` still work (the runtime
enters the namespace). DEL releases the address and removes the pair (idempotent); CHECK, GC and
STATUS succeed. Needs python3, ip (iproute2) and nsenter (util-linux).
"""

import json
import os
import subprocess
import sys

SUPPORTED = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"]


def fail(version, code, msg):
    print(json.dumps({"cniVersion": version, "code": code, "msg": msg}))
    sys.exit(1)


def ipam(conf, raw, command):
    """Runs the IPAM plugin conf names with the same config, env and CNI_COMMAND=command."""
    kind = conf.get("ipam", {}).get("type")
    if not kind:
        fail(conf.get("cniVersion", "1.0.0"), 7, "ipam.type missing")
    for d in os.environ.get("CNI_PATH", "/usr/lib/cni").split(":"):
        exe = os.path.join(d, kind)
        if os.access(exe, os.X_OK):
            env = dict(os.environ, CNI_COMMAND=command)
            return subprocess.run([exe], input=raw, env=env, capture_output=True)
    fail(conf.get("cniVersion", "1.0.0"), 7, f"ipam plugin {kind} not in CNI_PATH")


def in_netns(netns, args, stdin=None):
    return subprocess.run(["nsenter", f"--net={netns}", *args], input=stdin,
                          capture_output=True, text=True)


def add(conf, raw, version, ifname, netns):
    r = ipam(conf, raw, "ADD")
    if r.returncode != 0:
        sys.stdout.write(r.stdout.decode())
        sys.exit(1)
    res = json.loads(r.stdout)
    addrs = [ip["address"] for ip in res.get("ips", [])]
    if not addrs:
        fail(version, 11, "ipam returned no address")
    peer = ifname + "p"
    batch = [f"link add {ifname} type veth peer name {peer}", f"link set {peer} up",
             f"link set {ifname} up"] + [f"addr add {a} dev {ifname}" for a in addrs]
    out = in_netns(netns, ["ip", "-batch", "-"], "\n".join(batch) + "\n")
    if out.returncode != 0:
        ipam(conf, raw, "DEL")
        fail(version, 100, f"setting up {ifname} in {netns}: {(out.stderr or out.stdout).strip()}")
    link = in_netns(netns, ["ip", "-j", "link", "show", ifname])
    mac = json.loads(link.stdout)[0].get("address", "") if link.returncode == 0 else ""
    ips = []
    for ip in res["ips"]:
        entry = {"address": ip["address"], "interface": 0}
        if "gateway" in ip:
            entry["gateway"] = ip["gateway"]
        if version.startswith("0."):
            entry["version"] = "6" if ":" in ip["address"] else "4"
        ips.append(entry)
    print(json.dumps({"cniVersion": version,
                      "interfaces": [{"name": ifname, "mac": mac, "sandbox": netns}],
                      "ips": ips, "dns": res.get("dns", {})}))


def main():
    command = os.environ.get("CNI_COMMAND", "")
    if command == "VERSION":
        print(json.dumps({"cniVersion": "1.0.0", "supportedVersions": SUPPORTED}))
        return
    raw = sys.stdin.buffer.read()
    try:
        conf = json.loads(raw)
    except ValueError as e:
        fail("1.0.0", 6, f"config is not JSON: {e}")
    version = conf.get("cniVersion", "1.0.0")
    ifname = os.environ.get("CNI_IFNAME", "eth0")
    netns = os.environ.get("CNI_NETNS", "")
    if command == "ADD":
        if not netns:
            fail(version, 7, "CNI_NETNS missing")
        add(conf, raw, version, ifname, netns)
    elif command == "DEL":
        ipam(conf, raw, "DEL")
        if netns and os.path.exists(netns):
            in_netns(netns, ["ip", "link", "del", ifname])
    elif command in ("CHECK", "GC", "STATUS"):
        pass
    else:
        fail(version, 4, f"unknown CNI_COMMAND {command!r}")


if __name__ == "__main__":
    main()
