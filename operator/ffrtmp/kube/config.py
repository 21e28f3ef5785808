"""Where the API server is and how to authenticate: kubeconfig or in-cluster."""

from __future__ import annotations

import base64
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


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

    def bearer_token(self) -> str | None:
        """The token, re-read from its file each time (projected tokens rotate)."""
        if self.token_file:
            return Path(self.token_file).read_text().strip()
        return self.token

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        if self.ca_data:
            ctx.load_verify_locations(cadata=self.ca_data.decode())
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.cert_data and self.key_data:
            # ssl wants files; keep them private and short-lived.
            with tempfile.TemporaryDirectory() as tmp:
                cert, key = Path(tmp, "tls.crt"), Path(tmp, "tls.key")
                cert.write_bytes(self.cert_data)
                key.write_bytes(self.key_data)
                os.chmod(key, 0o600)
                ctx.load_cert_chain(str(cert), str(key))
        return ctx


def _data(entry: dict[str, Any], key: str, base: Path) -> bytes | None:
    if f"{key}-data" in entry:
        return base64.b64decode(entry[f"{key}-data"])
    if key in entry:
        path = Path(entry[key])
        return (path if path.is_absolute() else base / path).read_bytes()
    return None


def load_kubeconfig(path: str | os.PathLike[str], context: str | None = None) -> KubeConfig:
    """Read one context of a kubeconfig file (client certificates or tokens)."""
    path = Path(path)
    doc = yaml.safe_load(path.read_text())
    name = context or doc.get("current-context")
    ctx = next((c["context"] for c in doc.get("contexts", []) if c["name"] == name), None)
    if ctx is None:
        raise ValueError(f"{path}: no context named {name!r}")
    cluster = next(c["cluster"] for c in doc["clusters"] if c["name"] == ctx["cluster"])
    user: dict[str, Any] = next((u["user"] for u in doc.get("users", []) if u["name"] == ctx.get("user")), {})
    base = path.parent
    token_file = user.get("tokenFile")
    if token_file and not Path(token_file).is_absolute():
        token_file = str(base / token_file)  # as kubectl: relative to the kubeconfig
    return KubeConfig(
        server=cluster["server"].rstrip("/"),
        ca_data=_data(cluster, "certificate-authority", base),
        cert_data=_data(user, "client-certificate", base),
        key_data=_data(user, "client-key", base),
        token=user.get("token"),
        token_file=token_file,
        insecure=bool(cluster.get("insecure-skip-tls-verify", False)),
        namespace=ctx.get("namespace", "default"),
    )


def load_incluster() -> KubeConfig:
    """The Pod's ServiceAccount token and the cluster CA."""
    host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
    if ":" in host:
        host = f"[{host}]"
    return KubeConfig(
        server=f"https://{host}:{port}",
        ca_data=(SERVICE_ACCOUNT_DIR / "ca.crt").read_bytes(),
        token_file=str(SERVICE_ACCOUNT_DIR / "token"),
        namespace=(SERVICE_ACCOUNT_DIR / "namespace").read_text().strip(),
    )


def load_config(kubeconfig: str | None = None, context: str | None = None) -> KubeConfig:
    """Explicit kubeconfig, else in-cluster, else $KUBECONFIG, else ~/.kube/config."""
    if kubeconfig:
        return load_kubeconfig(kubeconfig, context)
    if "KUBERNETES_SERVICE_HOST" in os.environ and (SERVICE_ACCOUNT_DIR / "token").exists():
        return load_incluster()
    env = os.environ.get("KUBECONFIG")
    if env:
        return load_kubeconfig(env.split(os.pathsep)[0], context)
    return load_kubeconfig(Path.home() / ".kube" / "config", context)
