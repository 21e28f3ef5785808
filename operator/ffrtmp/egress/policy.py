"""Which network destinations a job's ffmpeg may connect to: pure decisions, no I/O.

The egress proxy (`ffrtmp.egress.proxy`) resolves every destination itself and asks
`EgressPolicy.check` about each resolved address before it connects to exactly that address.
By default a job may reach public unicast addresses only; the pool's allowlist
(`spec.egress.allow`: host names and CIDRs) opens more, including anything below.

Refused unless allowlisted:
- loopback (127.0.0.0/8, ::1), unspecified and "this network" (0.0.0.0/8, ::);
- private RFC 1918 (10/8, 172.16/12, 192.168/16) and unique local fc00::/7 (plus the old
  site-local fec0::/10);
- link-local 169.254.0.0/16 (cloud metadata 169.254.169.254) and fe80::/10;
- carrier-grade NAT 100.64.0.0/10;
- multicast 224.0.0.0/4, ff00::/8; reserved 240.0.0.0/4 (with the broadcast address);
- the cluster's Service and Pod ranges (`extra_denied`, from the operator's --cluster-cidrs).
The API server's addresses (`always_denied`, which the worker knows from its own API endpoint)
are refused even when the allowlist covers them: no job needs to talk to the control plane.
IPv6 forms that embed an IPv4 address (IPv4-mapped ::ffff:a.b.c.d, IPv4-compatible
::a.b.c.d, NAT64 64:ff9b::/96, 6to4 2002::/16) are judged by the embedded address too.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# (network, why) pairs refused by default.
DEFAULT_DENIED: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(cidr), why)
    for cidr, why in (
        ("0.0.0.0/8", "unspecified"),
        ("127.0.0.0/8", "loopback"),
        ("10.0.0.0/8", "private"),
        ("172.16.0.0/12", "private"),
        ("192.168.0.0/16", "private"),
        ("100.64.0.0/10", "carrier-grade NAT"),
        ("169.254.0.0/16", "link-local"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("fc00::/7", "unique local"),
        ("fec0::/10", "site-local"),
        ("fe80::/10", "link-local"),
        ("ff00::/8", "multicast"),
    )
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# The same shape as api.pool.ADDRESS_LIKE (the CRD's CEL rule): such entries are never host names.
_ADDRESS_LIKE = re.compile(r"^([0-9.]+|[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*)(/[0-9]+)?$")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


class EgressConfigError(ValueError):
    """An allowlist or deny-list entry that is neither a host name nor an IP address or CIDR."""


def parse_address(text: str) -> IPAddress | None:
    """`text` as an IP address (brackets and an IPv6 zone stripped), or None if it is a name."""
    bare = text.strip().strip("[]").split("%", 1)[0]
    try:
        return ipaddress.ip_address(bare)
    except ValueError:
        return None


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, compatible, NAT64, 6to4), if any."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or (address in _IPV4_COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def normalize_host(host: str) -> str:
    """A host name as compared with the allowlist: lower case, no trailing dot, no brackets."""
    return host.strip().strip("[]").rstrip(".").lower()


def _valid_host_pattern(name: str) -> bool:
    labels = (name[2:] if name.startswith("*.") else name).split(".")
    return bool(name) and all(
        label and len(label) <= 63 and all(c.isalnum() or c == "-" for c in label) for label in labels
    )


@dataclass(frozen=True)
class EgressPolicy:
    """Allowlist (host names, `*.suffix` patterns, networks) over the default and extra deny ranges."""

    allow_hosts: frozenset[str] = frozenset()
    allow_networks: tuple[IPNetwork, ...] = ()
    extra_denied: tuple[tuple[IPNetwork, str], ...] = ()
    always_denied: tuple[tuple[IPNetwork, str], ...] = ()

    @classmethod
    def build(
        cls, allow: Iterable[str] = (), deny: Iterable[tuple[str, str]] = (), always: Iterable[tuple[str, str]] = ()
    ) -> EgressPolicy:
        """From allowlist entries (names or CIDRs/addresses), (CIDR, why) deny entries and (CIDR, why)
        entries refused whatever the allowlist says."""
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in allow:
            network = parse_network(entry)
            if network is not None:
                networks.append(network)
                continue
            if _ADDRESS_LIKE.match(entry.strip()):
                raise EgressConfigError(f"egress allow entry {entry!r} is not a valid IP address or CIDR")
            name = normalize_host(entry)
            if not _valid_host_pattern(name):
                raise EgressConfigError(f"egress allow entry {entry!r} is neither a host name nor an IP or CIDR")
            hosts.add(name)
        return cls(frozenset(hosts), tuple(networks), _networks(deny), _networks(always))

    def host_allowed(self, host: str) -> bool:
        """Whether the allowlist names `host` (exactly, or by a `*.suffix` pattern)."""
        name = normalize_host(host)
        if name in self.allow_hosts:
            return True
        return any(p.startswith("*.") and name.endswith(p[1:]) for p in self.allow_hosts)

    def denied_because(self, host: str, address: IPAddress) -> str | None:
        """Why connecting to `address` (which `host` resolved to) is refused; None when allowed.

        The allowlist wins over every deny range: a pool that names a host or network may reach it.
        """
        candidates: list[IPAddress] = [address]
        inner = embedded_ipv4(address)
        if inner is not None:
            candidates.append(inner)
        always = _first_match(candidates, self.always_denied)
        if always is not None:
            return always
        if self.host_allowed(host):
            return None
        if any(c in n for c in candidates for n in self.allow_networks if c.version == n.version):
            return None
        return _first_match(candidates, (*DEFAULT_DENIED, *self.extra_denied))


def _first_match(candidates: list[IPAddress], ranges: Iterable[tuple[IPNetwork, str]]) -> str | None:
    for network, why in ranges:
        for candidate in candidates:
            if candidate.version == network.version and candidate in network:
                return f"{candidate} is {why} ({network})"
    return None


def _networks(entries: Iterable[tuple[str, str]]) -> tuple[tuple[IPNetwork, str], ...]:
    found: list[tuple[IPNetwork, str]] = []
    for cidr, why in entries:
        network = parse_network(cidr)
        if network is None:
            raise EgressConfigError(f"egress deny entry {cidr!r} is not an IP address or CIDR")
        found.append((network, why))
    return tuple(found)


def parse_network(text: str) -> IPNetwork | None:
    """`text` as a network (an address alone is a /32 or /128), or None if it is not one."""
    bare = text.strip()
    address = parse_address(bare)
    if address is not None:
        return ipaddress.ip_network(address)
    try:
        return ipaddress.ip_network(bare, strict=False)
    except ValueError:
        return None


def parse_cidrs(text: str | None) -> tuple[str, ...]:
    """A comma-separated list of CIDRs or addresses (a flag or env value), each checked; blanks dropped."""
    items = tuple(v.strip() for v in (text or "").split(",") if v.strip())
    for item in items:
        if parse_network(item) is None:
            raise EgressConfigError(f"{item!r} is not an IP address or CIDR")
    return items
