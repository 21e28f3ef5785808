"""Where the API server is and how to authenticate, found as kubectl and controller-runtime find it.

Precedence (controller-runtime's `config.GetConfig`): an explicit `--kubeconfig` file, else the files
of `$KUBECONFIG` merged, else the in-cluster ServiceAccount, else `~/.kube/config`.

Merging (client-go's `ClientConfigLoadingRules`): files are read in order, missing ones skipped;
the first file to name a cluster, user or context wins that name whole (a later file's entry of the
same name is ignored, even its other fields), and the first file to set `current-context` wins.
Relative paths in an entry are relative to the file the entry came from.

Credentials: a token, a token file (re-read per request), client certificates, an exec credential
plugin (`client.authentication.k8s.io/v1` or `v1beta1`, run by `ffrtmp.kube.auth`), or an OIDC
`auth-provider`'s id-token. Anything else (gcp/azure auth-providers, basic auth, impersonation,
fields this module does not know) is a `KubeConfigError` naming the entry: never an anonymous
request. No message carries a credential.

Proxies (Go's `net/http` rules, which kubectl follows): a cluster's `proxy-url` is used for every
request to it; otherwise `HTTPS_PROXY`/`HTTP_PROXY` (or lowercase) unless `NO_PROXY` matches the
server, and never for `localhost` or a loopback address.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import ipaddress
import json
import os
import ssl
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
CONTEXT_ENV = "FFRTMP_KUBE_CONTEXT"
EXEC_API_VERSIONS = ("client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1")

CLUSTER_FIELDS = frozenset(
    {
        "server",
        "certificate-authority",
        "certificate-authority-data",
        "insecure-skip-tls-verify",
        "tls-server-name",
        "proxy-url",
        "disable-compression",
        "extensions",
    }
)
USER_FIELDS = frozenset(
    {
        "client-certificate",
        "client-certificate-data",
        "client-key",
        "client-key-data",
        "token",
        "tokenFile",
        "exec",
        "auth-provider",
        "extensions",
    }
)
# Known to kubectl, not supported here: each gets its own message.
UNSUPPORTED_USER_FIELDS = {
    "username": "basic authentication (username/password)",
    "password": "basic authentication (username/password)",
    "as": "impersonation (as)",
    "as-uid": "impersonation (as-uid)",
    "as-groups": "impersonation (as-groups)",
    "as-user-extra": "impersonation (as-user-extra)",
}
EXEC_FIELDS = frozenset(
    {"apiVersion", "command", "args", "env", "installHint", "provideClusterInfo", "interactiveMode"}
)


class KubeConfigError(ValueError):
    """A kubeconfig that cannot be used as it is; the message names the file and entry."""


@dataclass(frozen=True)
class ExecConfig:
    """An exec credential plugin of a kubeconfig user (client.authentication.k8s.io)."""

    api_version: str
    command: str  # a path (resolved against the kubeconfig's folder) or a name looked up in $PATH
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    install_hint: str | None = None
    # What KUBERNETES_EXEC_INFO carries as spec.cluster (provideClusterInfo), else None.
    cluster: Mapping[str, Any] | None = field(default=None, hash=False, compare=False)


@dataclass(frozen=True)
class KubeConfig:
    """Connection settings for one API server."""

    server: str
    ca_data: bytes | None = None
    cert_data: bytes | None = None
    key_data: bytes | None = None
    token: str | None = None
    token_file: str | None = None
    insecure: bool = False
    namespace: str = "default"
    tls_server_name: str | None = None  # SNI and the name the server's certificate is checked for
    proxy: str | None = None  # http(s):// proxy for every request, None: direct
    exec: ExecConfig | None = None
    user: str = ""  # the kubeconfig user entry, for messages

    def bearer_token(self) -> str | None:
        """The static token, re-read from its file each time (projected tokens rotate)."""
        if self.token_file:
            return Path(self.token_file).read_text().strip()
        return self.token

    def ssl_context(self, cert_data: bytes | None = None, key_data: bytes | None = None) -> ssl.SSLContext:
        """Verification per the config; the client certificate given, else the config's own."""
        ctx = ssl.create_default_context()
        if self.ca_data:
            ctx.load_verify_locations(cadata=self.ca_data.decode())
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        cert, key = (cert_data, key_data) if cert_data else (self.cert_data, self.key_data)
        if cert and key:
            # ssl wants files; keep them private and short-lived.
            with tempfile.TemporaryDirectory() as tmp:
                cert_path, key_path = Path(tmp, "tls.crt"), Path(tmp, "tls.key")
                cert_path.write_bytes(cert)
                key_path.touch(0o600)
                key_path.write_bytes(key)
                ctx.load_cert_chain(str(cert_path), str(key_path))
        return ctx


# --- reading and merging files -------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One named cluster, user or context, and the folder its relative paths are relative to."""

    body: Mapping[str, Any]
    base: Path
    source: Path


@dataclass
class Merged:
    """Several kubeconfig files merged as client-go merges them."""

    sources: list[Path] = field(default_factory=list)
    current_context: str | None = None
    clusters: dict[str, Entry] = field(default_factory=dict)
    users: dict[str, Entry] = field(default_factory=dict)
    contexts: dict[str, Entry] = field(default_factory=dict)


def kubeconfig_paths(value: str) -> list[Path]:
    """The files of a `$KUBECONFIG` value: split on os.pathsep, empty entries and repeats dropped."""
    seen: list[Path] = []
    for part in value.split(os.pathsep):
        if part and Path(part) not in seen:
            seen.append(Path(part))
    return seen


def merge(docs: list[tuple[Path, Mapping[str, Any] | None]]) -> Merged:
    """client-go's merge: the first file to name an entry, or to set current-context, wins."""
    merged = Merged()
    for path, doc in docs:
        merged.sources.append(path)
        if not doc:
            continue
        if not isinstance(doc, Mapping):
            raise KubeConfigError(f"{path}: not a kubeconfig (a YAML mapping expected)")
        if not merged.current_context and doc.get("current-context"):
            merged.current_context = str(doc["current-context"])
        for key, into in (("clusters", merged.clusters), ("users", merged.users), ("contexts", merged.contexts)):
            inner = key[:-1]  # clusters -> cluster
            for item in doc.get(key) or []:
                if not isinstance(item, Mapping) or "name" not in item:
                    raise KubeConfigError(f"{path}: an entry of {key} has no name")
                name = str(item["name"])
                if name not in into:
                    into[name] = Entry(item.get(inner) or {}, path.parent, path)
    return merged


def read_files(paths: list[Path], *, explicit: bool) -> Merged:
    """Read and merge. An explicit file must exist; of $KUBECONFIG's, missing ones are skipped."""
    docs: list[tuple[Path, Mapping[str, Any] | None]] = []
    for path in paths:
        try:
            text = path.read_text()
        except FileNotFoundError:
            if explicit:
                raise KubeConfigError(f"kubeconfig {path} does not exist") from None
            continue
        try:
            docs.append((path, yaml.safe_load(text)))
        except yaml.YAMLError as e:
            raise KubeConfigError(f"{path}: not valid YAML: {e}") from None
    if not docs:
        raise KubeConfigError(f"none of the kubeconfig files exists: {', '.join(map(str, paths))}")
    return merge(docs)


# --- one context ---------------------------------------------------------------------------------


def _data(entry: Entry, key: str) -> bytes | None:
    body = entry.body
    if body.get(f"{key}-data"):
        try:
            return base64.b64decode(body[f"{key}-data"], validate=True)
        except (binascii.Error, ValueError):
            raise KubeConfigError(f"{entry.source}: {key}-data is not valid base64") from None
    if body.get(key):
        path = Path(body[key])
        return (path if path.is_absolute() else entry.base / path).read_bytes()
    return None


def _proxy_url(url: str, where: str) -> str:
    scheme = urlsplit(url).scheme
    if scheme not in ("http", "https"):
        raise KubeConfigError(f"{where}: proxy {scheme or url!r} is not supported (http:// and https:// proxies are)")
    return url


def _cluster_info(server: str, cluster: Entry, ca: bytes | None) -> dict[str, Any]:
    """spec.cluster of KUBERNETES_EXEC_INFO (provideClusterInfo): client-go's field names."""
    info: dict[str, Any] = {"server": server}
    body = cluster.body
    if body.get("tls-server-name"):
        info["tls-server-name"] = body["tls-server-name"]
    if body.get("insecure-skip-tls-verify"):
        info["insecure-skip-tls-verify"] = True
    if ca:
        info["certificate-authority-data"] = base64.b64encode(ca).decode()
    if body.get("proxy-url"):
        info["proxy-url"] = body["proxy-url"]
    for ext in body.get("extensions") or []:
        if isinstance(ext, Mapping) and ext.get("name") == "client.authentication.k8s.io/exec":
            info["config"] = ext.get("extension")
    return info


def _exec_config(user: Entry, where: str, server: str, cluster: Entry, ca: bytes | None) -> ExecConfig:
    spec = user.body["exec"]
    if not isinstance(spec, Mapping):
        raise KubeConfigError(f"{where}: exec must be a mapping")
    unknown = sorted(set(spec) - EXEC_FIELDS)
    if unknown:
        raise KubeConfigError(f"{where}: exec has fields this client does not support: {', '.join(unknown)}")
    api_version = spec.get("apiVersion")
    if api_version not in EXEC_API_VERSIONS:
        raise KubeConfigError(
            f"{where}: exec apiVersion {api_version!r} is not supported (use one of {', '.join(EXEC_API_VERSIONS)})"
        )
    command = spec.get("command")
    if not command or not isinstance(command, str):
        raise KubeConfigError(f"{where}: exec has no command")
    mode = spec.get("interactiveMode")
    if mode is None and api_version.endswith("/v1"):
        raise KubeConfigError(f"{where}: exec interactiveMode must be set for {api_version}")
    if mode not in (None, "Never", "IfAvailable", "Always"):
        raise KubeConfigError(f"{where}: exec interactiveMode {mode!r} is not Never, IfAvailable or Always")
    if mode == "Always":
        raise KubeConfigError(
            f"{where}: the exec plugin needs a terminal (interactiveMode Always); this program runs unattended"
        )
    if os.sep in command and not Path(command).is_absolute():
        command = str(user.base / command)  # as client-go: a relative path is relative to the kubeconfig
    env = []
    for item in spec.get("env") or []:
        if not isinstance(item, Mapping) or "name" not in item or "value" not in item:
            raise KubeConfigError(f"{where}: exec env entries need a name and a value")
        env.append((str(item["name"]), str(item["value"])))
    return ExecConfig(
        api_version=api_version,
        command=command,
        args=tuple(str(a) for a in spec.get("args") or []),
        env=tuple(env),
        install_hint=spec.get("installHint"),
        cluster=_cluster_info(server, cluster, ca) if spec.get("provideClusterInfo") else None,
    )


def jwt_expiry(token: str) -> float | None:
    """The `exp` claim of a JWT (seconds since the epoch), None when there is none to read."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return float(exp) if isinstance(exp, int | float) else None


def _oidc_token(user: Entry, where: str, now: float) -> str:
    provider = user.body["auth-provider"]
    name = provider.get("name") if isinstance(provider, Mapping) else None
    if name != "oidc":
        raise KubeConfigError(
            f"{where}: auth-provider {name!r} is not supported (only oidc with an id-token is); "
            "use the provider's exec credential plugin instead (e.g. gke-gcloud-auth-plugin, kubelogin)"
        )
    token = (provider.get("config") or {}).get("id-token")
    if not token:
        raise KubeConfigError(f"{where}: auth-provider oidc has no id-token (log in first, or use an exec plugin)")
    exp = jwt_expiry(str(token))
    if exp is not None and exp <= now:
        raise KubeConfigError(
            f"{where}: the oidc id-token has expired and this client does not refresh it; "
            "log in again, or use an exec plugin such as kubelogin"
        )
    return str(token)


def from_merged(
    merged: Merged,
    context: str | None = None,
    env: Mapping[str, str] | None = None,
    now: float | None = None,
) -> KubeConfig:
    """The settings of one context (the given one, else current-context) of merged kubeconfigs."""
    env = os.environ if env is None else env
    now = time.time() if now is None else now
    files = ", ".join(map(str, merged.sources))
    name = context or merged.current_context
    if not name:
        raise KubeConfigError(f"{files}: no current-context set and no --context given")
    ctx = merged.contexts.get(name)
    if ctx is None:
        raise KubeConfigError(f"{files}: no context named {name!r}")
    cluster_name = ctx.body.get("cluster")
    cluster = merged.clusters.get(str(cluster_name))
    if cluster is None:
        raise KubeConfigError(f"{ctx.source}: context {name!r} names cluster {cluster_name!r}, which is not defined")
    cluster_where = f"{cluster.source}: cluster {cluster_name!r}"
    unknown = sorted(set(cluster.body) - CLUSTER_FIELDS)
    if unknown:
        raise KubeConfigError(f"{cluster_where} has fields this client does not support: {', '.join(unknown)}")
    server = str(cluster.body.get("server") or "").rstrip("/")
    if not server:
        raise KubeConfigError(f"{cluster_where} has no server")
    ca = _data(cluster, "certificate-authority")
    insecure = bool(cluster.body.get("insecure-skip-tls-verify", False))
    if insecure and ca:
        raise KubeConfigError(f"{cluster_where}: insecure-skip-tls-verify with a certificate authority is ambiguous")

    user_name = ctx.body.get("user")
    user = Entry({}, ctx.base, ctx.source)
    if user_name:
        found = merged.users.get(str(user_name))
        if found is None:
            raise KubeConfigError(f"{ctx.source}: context {name!r} names user {user_name!r}, which is not defined")
        user = found
    where = f"{user.source}: user {user_name!r}"
    unsupported = sorted(set(user.body) & set(UNSUPPORTED_USER_FIELDS))
    if unsupported:
        raise KubeConfigError(f"{where}: {UNSUPPORTED_USER_FIELDS[unsupported[0]]} is not supported by this client")
    unknown = sorted(set(user.body) - USER_FIELDS)
    if unknown:
        raise KubeConfigError(f"{where} has fields this client does not support: {', '.join(unknown)}")
    kinds = [k for k in ("exec", "auth-provider") if user.body.get(k)]
    if user.body.get("token") or user.body.get("tokenFile"):
        kinds.append("token")
    if len(kinds) > 1:
        raise KubeConfigError(f"{where}: {' and '.join(kinds)} cannot be used together")

    token = user.body.get("token")
    token_file = user.body.get("tokenFile")
    if token_file and not Path(token_file).is_absolute():
        token_file = str(user.base / token_file)  # as kubectl: relative to the kubeconfig
    if user.body.get("auth-provider"):
        token = _oidc_token(user, where, now)
    cert, key = _data(user, "client-certificate"), _data(user, "client-key")
    if bool(cert) != bool(key):
        raise KubeConfigError(f"{where}: a client certificate needs its key, and a key its certificate")

    proxy = None
    if cluster.body.get("proxy-url"):
        proxy = _proxy_url(str(cluster.body["proxy-url"]), cluster_where)
    else:
        from_env = proxy_from_env(server, env)
        proxy = _proxy_url(from_env, "HTTPS_PROXY/HTTP_PROXY") if from_env else None
    return KubeConfig(
        server=server,
        ca_data=ca,
        cert_data=cert,
        key_data=key,
        token=str(token) if token else None,
        token_file=token_file,
        insecure=insecure,
        namespace=str(ctx.body.get("namespace") or "default"),
        tls_server_name=cluster.body.get("tls-server-name") or None,
        proxy=proxy,
        exec=_exec_config(user, where, server, cluster, ca) if user.body.get("exec") else None,
        user=str(user_name or ""),
    )


def load_kubeconfig(
    path: str | os.PathLike[str], context: str | None = None, env: Mapping[str, str] | None = None
) -> KubeConfig:
    """One context of one kubeconfig file."""
    return from_merged(read_files([Path(path)], explicit=True), context, env)


# --- proxies -------------------------------------------------------------------------------------


def _env(env: Mapping[str, str], name: str) -> str:
    return env.get(name) or env.get(name.lower()) or ""


def _no_proxy_matches(host: str, port: int, no_proxy: str) -> bool:
    """Go's NO_PROXY: `*`; an IP (optionally with a port) or CIDR; a domain matching itself and its
    subdomains, or only its subdomains with a leading dot; a port in an entry must match too."""
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        if ip is not None and "/" in entry:
            try:
                if ip in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                pass
            continue
        entry_host, entry_port = entry, None
        split = urlsplit(f"//{entry}")
        try:
            if split.port is not None:
                entry_host, entry_port = split.hostname or "", split.port
        except ValueError:
            pass
        if entry_port is not None and entry_port != port:
            continue
        if ip is not None:
            try:
                if ipaddress.ip_address(entry_host.strip("[]")) == ip:
                    return True
            except ValueError:
                pass
            continue
        if entry_host.startswith("*."):
            entry_host = entry_host[1:]
        if entry_host.startswith("."):
            if host.endswith(entry_host):
                return True
        elif host == entry_host or host.endswith("." + entry_host):
            return True
    return False


def proxy_from_env(server: str, env: Mapping[str, str]) -> str | None:
    """The proxy Go's http.ProxyFromEnvironment picks for `server`, None for a direct connection."""
    url = urlsplit(server)
    host = (url.hostname or "").lower()
    port = url.port or (443 if url.scheme == "https" else 80)
    proxy = _env(env, "HTTPS_PROXY") if url.scheme == "https" else _env(env, "HTTP_PROXY")
    if not proxy or host == "localhost":
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass
    if _no_proxy_matches(host, port, _env(env, "NO_PROXY")):
        return None
    return proxy if "://" in proxy else f"http://{proxy}"


# --- in-cluster and precedence -------------------------------------------------------------------


def in_cluster(env: Mapping[str, str]) -> bool:
    return (
        bool(env.get("KUBERNETES_SERVICE_HOST") and env.get("KUBERNETES_SERVICE_PORT"))
        and (SERVICE_ACCOUNT_DIR / "token").exists()
    )


def load_incluster(env: Mapping[str, str] | None = None) -> KubeConfig:
    """The Pod's ServiceAccount token and the cluster CA."""
    env = os.environ if env is None else env
    host, port = env["KUBERNETES_SERVICE_HOST"], env["KUBERNETES_SERVICE_PORT"]
    if ":" in host:
        host = f"[{host}]"
    server = f"https://{host}:{port}"
    proxy = proxy_from_env(server, env)
    return KubeConfig(
        server=server,
        ca_data=(SERVICE_ACCOUNT_DIR / "ca.crt").read_bytes(),
        token_file=str(SERVICE_ACCOUNT_DIR / "token"),
        namespace=(SERVICE_ACCOUNT_DIR / "namespace").read_text().strip(),
        proxy=_proxy_url(proxy, "HTTPS_PROXY/HTTP_PROXY") if proxy else None,
    )


def config_source(kubeconfig: str | None, env: Mapping[str, str], home: Path) -> tuple[str, list[Path]]:
    """Which configuration controller-runtime would use: ("explicit" | "env" | "home", files) or
    ("in-cluster", [])."""
    if kubeconfig:
        return "explicit", [Path(kubeconfig)]
    if env.get("KUBECONFIG"):
        return "env", kubeconfig_paths(env["KUBECONFIG"])
    if in_cluster(env):
        return "in-cluster", []
    return "home", [home / ".kube" / "config"]


def add_kubeconfig_arguments(parser: argparse.ArgumentParser) -> None:
    """`--kubeconfig` and `--context`, the same for the operator and the worker."""
    parser.add_argument(
        "--kubeconfig", default=None,
        help="kubeconfig file (default: $KUBECONFIG's files merged, else in-cluster, else ~/.kube/config)",
    )  # fmt: skip
    parser.add_argument(
        "--context", default=None,
        help=f"kubeconfig context to use (default: ${CONTEXT_ENV}, else the current-context)",
    )  # fmt: skip


def load_config(
    kubeconfig: str | None = None, context: str | None = None, env: Mapping[str, str] | None = None
) -> KubeConfig:
    """The explicit kubeconfig, else $KUBECONFIG's files merged, else in-cluster, else ~/.kube/config.
    `context` (else $FFRTMP_KUBE_CONTEXT) picks a kubeconfig context; with in-cluster config it is
    an error, not silently ignored."""
    env = os.environ if env is None else env
    context = context or env.get(CONTEXT_ENV) or None
    home = Path(env.get("HOME") or Path.home())
    source, paths = config_source(kubeconfig, env, home)
    if source == "in-cluster":
        if context:
            raise KubeConfigError(
                f"context {context!r} was asked for, but no kubeconfig is in use (in-cluster ServiceAccount); "
                "set --kubeconfig or $KUBECONFIG"
            )
        return load_incluster(env)
    if source == "home" and not paths[0].exists():
        raise KubeConfigError(
            f"no Kubernetes configuration: no --kubeconfig, $KUBECONFIG unset, not in a cluster, and no {paths[0]}"
        )
    return from_merged(read_files(paths, explicit=source == "explicit"), context, env)
