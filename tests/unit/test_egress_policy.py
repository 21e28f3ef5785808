"""The egress policy: which resolved addresses a job's connection may go to."""

from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from ffrtmp.api.pool import ADDRESS_LIKE
from ffrtmp.egress.policy import (
    DEFAULT_DENIED,
    EgressConfigError,
    EgressPolicy,
    IPNetwork,
    embedded_ipv4,
    parse_address,
    parse_cidrs,
)
from ffrtmp.worker.config import WorkerConfig

DEFAULT = EgressPolicy.build()


def denied(policy: EgressPolicy, address: str, host: str = "example.org") -> str | None:
    parsed = parse_address(address)
    assert parsed is not None
    return policy.denied_because(host, parsed)


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "loopback"), ("127.8.9.10", "loopback"), ("::1", "loopback"),
        ("10.0.0.1", "private"), ("172.16.0.1", "private"), ("172.31.255.255", "private"),
        ("192.168.1.1", "private"), ("fc00::1", "unique local"), ("fd12:3456::1", "unique local"),
        ("169.254.169.254", "link-local"), ("169.254.0.1", "link-local"), ("fe80::1", "link-local"),
        ("100.64.0.1", "carrier-grade NAT"), ("100.127.255.254", "carrier-grade NAT"),
        ("224.0.0.1", "multicast"), ("239.255.255.250", "multicast"), ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"), ("::", "unspecified"), ("255.255.255.255", "reserved"),
        # IPv6 spellings of forbidden IPv4 addresses
        ("::ffff:127.0.0.1", "loopback"), ("::ffff:169.254.169.254", "link-local"), ("::ffff:10.1.2.3", "private"),
        ("64:ff9b::a9fe:a9fe", "link-local"), ("2002:7f00:1::", "loopback"), ("::10.0.0.1", "private"),
    ],
)  # fmt: skip
def test_default_policy_refuses_non_public_addresses(address: str, why: str) -> None:
    reason = denied(DEFAULT, address)
    assert reason is not None and why in reason, reason


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "172.32.0.1", "100.128.0.1", "2001:4860:4860::8888",
                                     "::ffff:8.8.8.8", "192.169.0.1"])  # fmt: skip
def test_default_policy_allows_public_addresses(address: str) -> None:
    assert denied(DEFAULT, address) is None


def test_allowlisted_cidr_host_and_wildcard_open_private_destinations() -> None:
    policy = EgressPolicy.build(["10.20.0.0/16", "Media.Internal.", "*.corp.example", "127.0.0.2"])
    assert denied(policy, "10.20.3.4") is None
    assert denied(policy, "::ffff:10.20.3.4") is None  # the mapped form of an allowed address
    assert denied(policy, "10.21.0.1") is not None
    assert denied(policy, "10.9.9.9", host="media.internal") is None  # the name is allowed, whatever it resolves to
    assert denied(policy, "10.9.9.9", host="a.b.corp.example") is None
    assert denied(policy, "10.9.9.9", host="corp.example") is not None  # *.x does not match x itself
    assert denied(policy, "10.9.9.9", host="evilcorp.example") is not None
    assert denied(policy, "127.0.0.2") is None
    assert denied(policy, "127.0.0.3") is not None


def test_cluster_ranges_are_refused_unless_allowlisted_and_the_api_server_always() -> None:
    policy = EgressPolicy.build(
        ["203.0.113.0/24"], deny=[("198.51.100.0/24", "inside the cluster's Service or Pod range")],
        always=[("203.0.113.7", "the API server")],
    )  # fmt: skip
    assert "Service or Pod range" in (denied(policy, "198.51.100.9") or "")
    assert denied(policy, "203.0.113.8") is None
    assert "API server" in (denied(policy, "203.0.113.7") or "")  # the allowlist does not open the API server
    assert "API server" in (denied(policy, "::ffff:203.0.113.7") or "")
    open_cluster = EgressPolicy.build(["198.51.100.0/24"], deny=[("198.51.100.0/24", "cluster")])
    assert denied(open_cluster, "198.51.100.9") is None


def test_worker_config_builds_the_policy_and_refuses_bad_entries() -> None:
    config = WorkerConfig.from_env(
        {"POD_NAME": "w", "POD_NAMESPACE": "ns", "FFRTMP_POOL": "p", "FFRTMP_EGRESS_ALLOW": "127.0.0.2,media.lan",
         "FFRTMP_EGRESS_UNPROXIED": "rtmp", "FFRTMP_EGRESS_DENY": "198.51.100.0/24"}
    )  # fmt: skip
    policy = config.egress_policy()
    assert config.egress_unproxied == ("rtmp",)
    assert denied(policy, "127.0.0.2") is None and denied(policy, "198.51.100.1") is not None
    with pytest.raises(EgressConfigError, match=r"'10\.0\.0\.0/99'"):
        WorkerConfig.from_env({"POD_NAME": "w", "POD_NAMESPACE": "ns", "FFRTMP_POOL": "p",
                               "FFRTMP_EGRESS_DENY": "10.0.0.0/99"})  # fmt: skip
    with pytest.raises(EgressConfigError, match="not an IP address or CIDR"):
        parse_cidrs("10.96.0.0/12, nonsense")
    assert parse_cidrs(" 10.96.0.0/12,,fd00::/108 ") == ("10.96.0.0/12", "fd00::/108")
    with pytest.raises(EgressConfigError, match="neither a host name"):
        EgressPolicy.build(["bad name!"])


# -- properties ------------------------------------------------------------------------------------

ipv4 = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)
ipv6 = st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address)
default_v4 = [n for n, _ in DEFAULT_DENIED if n.version == 4]


@given(ipv4)
def test_an_ipv4_address_and_its_mapped_ipv6_form_get_the_same_answer(address: ipaddress.IPv4Address) -> None:
    mapped = ipaddress.IPv6Address(f"::ffff:{address}")
    assert (DEFAULT.denied_because("h", address) is None) == (DEFAULT.denied_because("h", mapped) is None)
    assert embedded_ipv4(mapped) == address


@given(ipv4)
@example(ipaddress.IPv4Address("224.0.0.0"))
def test_ipv4_is_refused_exactly_when_a_default_range_contains_it(address: ipaddress.IPv4Address) -> None:
    in_range = any(address in network for network in default_v4)
    assert (DEFAULT.denied_because("h", address) is not None) == in_range
    # Python's own classification agrees: nothing refused is global (apart from multicast, which
    # Python 3.11 calls global for 224.0.0.0/4 addresses outside its special registries).
    if in_range and not address.is_multicast:
        assert not address.is_global


@given(ipv6)
def test_every_non_global_ipv6_of_the_classic_kinds_is_refused(address: ipaddress.IPv6Address) -> None:
    if address.is_loopback or address.is_link_local or address.is_multicast or address.is_unspecified:
        assert DEFAULT.denied_because("h", address) is not None
    if address in ipaddress.IPv6Network("fc00::/7"):
        assert DEFAULT.denied_because("h", address) is not None


@given(st.sampled_from([n for n, _ in DEFAULT_DENIED]), st.data())
def test_an_allowlisted_network_opens_its_addresses(network: IPNetwork, data: st.DataObject) -> None:
    policy = EgressPolicy.build([str(network)])
    first, last = int(network.network_address), int(network.broadcast_address)
    inside = type(network.network_address)(data.draw(st.integers(first, last)))
    assert policy.denied_because("h", inside) is None
    assert DEFAULT.denied_because("h", inside) is not None


@pytest.mark.parametrize("entry", ["1.2.3", "10.0.0.0/99", "300.1.1.1", "fd00::/200", "::gg"])
def test_address_shaped_entries_must_parse(entry: str) -> None:
    """What the CRD's CEL rule refuses (address-shaped but not an IP or CIDR), the model refuses too."""
    cel_refuses = bool(re.match(ADDRESS_LIKE, entry))
    assert cel_refuses == (entry != "::gg")  # "::gg" fails the item pattern instead
    with pytest.raises(EgressConfigError):
        EgressPolicy.build([entry])


def test_host_names_with_hex_letters_are_names() -> None:
    assert EgressPolicy.build(["cafe.beef", "add.example"]).allow_hosts == {"cafe.beef", "add.example"}
