"""What a real node changes on its host, recorded before `up` so that `down` undoes exactly that:
kernel tunables, iptables chains, network devices, cgroups and folders the node's programs create
outside the cluster's own folder. Anything that existed before is left alone."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

# Tunables the node sets: ip_forward and bridge netfilter for Pod traffic (set here), the kubelet's
# kernel defaults (overcommit, panic, keys), kube-proxy's conntrack and localnet settings.
SYSCTLS = (
    "net/ipv4/ip_forward",
    "net/bridge/bridge-nf-call-iptables",
    "net/bridge/bridge-nf-call-ip6tables",
    "net/ipv4/conf/all/route_localnet",
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    "net/netfilter/nf_conntrack_max",
    "net/netfilter/nf_conntrack_tcp_timeout_established",
    "net/netfilter/nf_conntrack_tcp_timeout_close_wait",
)
IPTABLES_TABLES = ("filter", "nat", "mangle")
# Folders that containerd, runc, CNI and the kubelet create at fixed places whatever their config says.
HOST_PATHS = (
    "/run/containerd",
    "/run/netns",
    "/var/run/nri",
    "/var/log/pods",
    "/var/log/containers",
    "/var/lib/cni",
    "/var/lib/kubelet",
    "/opt/containerd",
    "/etc/cni",
)
CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_NAMES = ("kubepods", "kubepods.slice", "k8s.io")
_CHAIN = re.compile(r"^:(\S+) ")


@dataclass
class HostSnapshot:
    sysctls: dict[str, str] = field(default_factory=dict)
    chains: dict[str, list[str]] = field(default_factory=dict)
    links: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    cgroups: list[str] = field(default_factory=list)
    netns: list[str] = field(default_factory=list)


def read_sysctl(name: str) -> str | None:
    try:
        return Path("/proc/sys", name).read_text().strip()
    except OSError:
        return None


def write_sysctl(name: str, value: str) -> None:
    with contextlib.suppress(OSError):
        Path("/proc/sys", name).write_text(value + "\n")


def iptables_chains(table: str) -> list[str]:
    out = subprocess.run(["iptables-save", "-t", table], capture_output=True, text=True, check=False).stdout
    return [m.group(1) for line in out.splitlines() if (m := _CHAIN.match(line))]


def links() -> list[str]:
    return sorted(os.listdir("/sys/class/net"))


def cgroups() -> list[str]:
    """Every `<controller>/<name>` node-owned cgroup folder that exists now."""
    found = []
    if CGROUP_ROOT.is_dir():
        for controller in sorted(os.listdir(CGROUP_ROOT)):
            for name in CGROUP_NAMES:
                if (CGROUP_ROOT / controller / name).is_dir():
                    found.append(f"{controller}/{name}")
    return found


def netns_files() -> list[str]:
    path = Path("/run/netns")
    return sorted(os.listdir(path)) if path.is_dir() else []


def snapshot() -> HostSnapshot:
    return HostSnapshot(
        sysctls={name: value for name in SYSCTLS if (value := read_sysctl(name)) is not None},
        chains={table: iptables_chains(table) for table in IPTABLES_TABLES},
        links=links(),
        paths=[p for p in HOST_PATHS if os.path.lexists(p)],
        cgroups=cgroups(),
        netns=netns_files(),
    )


def mounts_under(prefixes: list[str]) -> list[str]:
    """Mount points at or below any of `prefixes`, deepest first (the order to unmount them)."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if any(point == p or point.startswith(p.rstrip("/") + "/") for p in prefixes):
            found.append(point)
    return sorted(set(found), key=lambda p: p.count("/"), reverse=True)


def unmount_all(prefixes: list[str]) -> None:
    for _ in range(3):  # a mount can hide another at the same point
        points = mounts_under(prefixes)
        if not points:
            return
        for point in points:
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def kill_cgroup_tasks(names: list[str]) -> None:
    """SIGKILL every process in the given cgroups (and below): containers the runtime left."""
    for entry in names:
        root = CGROUP_ROOT / entry
        for dirpath, _dirs, _files in os.walk(root):
            with contextlib.suppress(OSError):
                for pid in Path(dirpath, "cgroup.procs").read_text().split():
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(int(pid), 9)


def remove_cgroups(names: list[str]) -> None:
    for entry in names:
        root = CGROUP_ROOT / entry
        for dirpath, _dirs, _files in sorted(os.walk(root), key=lambda t: t[0].count("/"), reverse=True):
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)


def restore(before: HostSnapshot) -> list[str]:
    """Undo what differs from `before`; returns what could not be undone (empty when clean)."""
    # Processes in node cgroups first: they hold mounts, network namespaces and devices.
    new_cgroups = [c for c in cgroups() if c not in before.cgroups]
    kill_cgroup_tasks(new_cgroups)
    for name in netns_files():
        if name not in before.netns:
            unmount_all([f"/run/netns/{name}"])
            with contextlib.suppress(OSError):
                os.unlink(f"/run/netns/{name}")
    for table in IPTABLES_TABLES:
        _remove_chains(table, [c for c in iptables_chains(table) if c not in before.chains.get(table, [])])
    for link in links():
        if link not in before.links:
            subprocess.run(["ip", "link", "delete", link], capture_output=True, check=False)
    remove_cgroups(new_cgroups)
    for path in HOST_PATHS:
        if path not in before.paths and os.path.lexists(path):
            unmount_all([path])
            shutil.rmtree(path, ignore_errors=True)
    for name, value in before.sysctls.items():
        if read_sysctl(name) != value:
            write_sysctl(name, value)
    return leftovers(before)


def leftovers(before: HostSnapshot) -> list[str]:
    now = snapshot()
    problems = [
        f"sysctl {k}={now.sysctls.get(k)} (was {v})" for k, v in before.sysctls.items() if now.sysctls.get(k) != v
    ]
    for table in IPTABLES_TABLES:
        problems += [f"iptables {table} chain {c}" for c in now.chains[table] if c not in before.chains.get(table, [])]
    problems += [f"network device {link}" for link in now.links if link not in before.links]
    problems += [f"path {p}" for p in now.paths if p not in before.paths]
    problems += [f"cgroup {c}" for c in now.cgroups if c not in before.cgroups]
    problems += [f"network namespace {n}" for n in now.netns if n not in before.netns]
    return problems


def _remove_chains(table: str, chains: list[str]) -> None:
    """Delete the rules that jump to `chains` from other chains, then flush and delete them."""
    if not chains:
        return
    wanted = set(chains)
    rules = subprocess.run(["iptables-save", "-t", table], capture_output=True, text=True, check=False).stdout
    for line in rules.splitlines():
        if not line.startswith("-A "):
            continue
        parts = shlex.split(line)
        owner = parts[1]
        target = parts[parts.index("-j") + 1] if "-j" in parts else ""
        if owner not in wanted and target in wanted:
            subprocess.run(["iptables", "-t", table, "-D", *parts[1:]], capture_output=True, check=False)
    for chain in chains:
        subprocess.run(["iptables", "-t", table, "-F", chain], capture_output=True, check=False)
    for chain in chains:
        subprocess.run(["iptables", "-t", table, "-X", chain], capture_output=True, check=False)
