"""How an attempt applies the egress policy: ffmpeg's environment, refusals as job failures,
and the protocols that cannot go through the proxy."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from ffrtmp.egress.guard import Endpoint
from ffrtmp.egress.policy import EgressPolicy, normalize_host
from ffrtmp.egress.proxy import Resolver, system_resolver
from ffrtmp.ffmpeg.errors import Failure

# ffmpeg reads `http_proxy` (http, and https/rtmps through CONNECT) and `no_proxy` (names that skip
# the proxy). The upper-case and other variables are dropped too, so no tool ffmpeg starts sees them.
_PROXY_VARIABLES = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY",
                    "no_proxy", "NO_PROXY")  # fmt: skip
# Schemes ffmpeg connects with directly, past the proxy.
UNPROXIED_SCHEMES = ("rtmp",)
_DEFAULT_PORTS = {"http": 80, "https": 443, "rtmp": 1935, "rtmps": 443}


def proxy_env(env: Mapping[str, str], proxy_url: str) -> dict[str, str]:
    """`env` with every proxy variable replaced by `http_proxy=proxy_url` (and no `no_proxy`)."""
    clean = {k: v for k, v in env.items() if k not in _PROXY_VARIABLES}
    clean["http_proxy"] = proxy_url
    return clean


def destination_refusal(host: str, port: int | None) -> Failure:
    """The job's failure when the policy refused a destination. The same text whether or not
    anything listens there, and without the resolved address or the rule that matched (those go
    to the worker's log): no port-scan or internal-DNS oracle for job authors."""
    where = f"{host}:{port}" if port else host
    return Failure(
        "DestinationNotAllowed",
        f"The job tried to connect to {where}, which this worker pool's egress policy does not allow "
        "(loopback, private, link-local and cluster addresses are refused unless the WorkerPool's "
        "spec.egress.allow lists them).",
        False,
    )


def guard_refusal() -> Failure:
    """The job's failure when the connect guard refused a connection ffmpeg opened itself. It names no
    address: ffmpeg resolved the name, and its answer (an internal DNS name's address) is not for the
    job's author; the worker's log has it."""
    return Failure(
        "DestinationNotAllowed",
        "The job's ffmpeg tried to connect to a destination directly instead of through the worker's egress "
        "proxy (a URL such as httpproxy:// or tcp:// in a playlist, or an rtmp host that resolved to another "
        "address than the one checked), which this worker pool's egress policy does not allow.",
        False,
    )


@dataclass(frozen=True)
class UnproxiedCheck:
    """The worker's decision on a URL ffmpeg opens past the proxy (rtmp)."""

    refused: Failure | None = None
    # The addresses checked for its host: the connect guard lets ffmpeg reach these and no other, so
    # ffmpeg's own lookup of the name must agree with the worker's (no DNS rebinding).
    pinned: tuple[Endpoint, ...] = ()


async def check_unproxied(
    url: str,
    policy: EgressPolicy,
    allowed_unproxied: Iterable[str],
    resolver: Resolver = system_resolver,
) -> UnproxiedCheck:
    """For a URL ffmpeg would open past the proxy (rtmp): refused unless the pool allows the
    protocol; then every address of its host is checked, and those addresses are pinned."""
    scheme = urlsplit(url).scheme.lower()
    if scheme not in UNPROXIED_SCHEMES:
        return UnproxiedCheck()
    if scheme not in set(allowed_unproxied):
        return UnproxiedCheck(Failure(
            "DestinationNotAllowed",
            f"{scheme}:// connections cannot go through the worker's egress check, and this worker pool does "
            f"not allow them (WorkerPool spec.egress.allowUnproxiedProtocols): {url}",
            False,
        ))  # fmt: skip
    refused, checked = await _check_url(url, policy, resolver)
    return UnproxiedCheck(refused, () if refused else checked)


async def url_refusal(url: str, policy: EgressPolicy, resolver: Resolver = system_resolver) -> Failure | None:
    """DestinationNotAllowed when the host of `url` resolves to an address the policy refuses
    (None when it is allowed or does not resolve: then something else explains the failure)."""
    refused, _ = await _check_url(url, policy, resolver)
    return refused


async def _check_url(url: str, policy: EgressPolicy, resolver: Resolver) -> tuple[Failure | None, tuple[Endpoint, ...]]:
    """(the refusal, or None) and the (address, port) pairs of `url`'s host that were checked."""
    parts = urlsplit(url)
    host = normalize_host(parts.hostname or "")
    try:
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme.lower(), 0)
    except ValueError:
        return None, ()
    if not host:
        return None, ()
    try:
        addresses = await resolver(host, port)
    except (OSError, UnicodeError):
        return None, ()
    if any(policy.denied_because(host, address) is not None for address in addresses):
        return destination_refusal(host, port), ()
    return None, tuple((address, port) for address in addresses)
