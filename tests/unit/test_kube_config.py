"""Kubeconfig and in-cluster configuration, their precedence, and API paths."""

from __future__ import annotations

import base64
import ssl
from pathlib import Path
from typing import Any

import pytest
import yaml

from ffrtmp.kube import config as kube_config
from ffrtmp.kube.client import resource_path
from ffrtmp.kube.config import KubeConfig, load_config, load_incluster, load_kubeconfig

pytestmark = pytest.mark.unit

Obj = dict[str, Any]
CA = b"-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n"
CERT = b"-----BEGIN CERTIFICATE-----\nCLIENT\n-----END CERTIFICATE-----\n"
KEY = b"-----BEGIN PRIVATE KEY-----\nKEY\n-----END PRIVATE KEY-----\n"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def kubeconfig_doc(**overrides: Any) -> Obj:
    doc: Obj = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "kind",
        "clusters": [
            {"name": "kind", "cluster": {"server": "https://127.0.0.1:6443/", "certificate-authority-data": b64(CA)}},
            {"name": "prod", "cluster": {"server": "https://prod.example:443", "certificate-authority": "ca.crt"}},
        ],
        "users": [
            {"name": "admin", "user": {"client-certificate-data": b64(CERT), "client-key-data": b64(KEY)}},
            {"name": "files", "user": {"client-certificate": "certs/user.crt", "client-key": "certs/user.key"}},
            {"name": "bot", "user": {"token": "static-token"}},
        ],
        "contexts": [
            {"name": "kind", "context": {"cluster": "kind", "user": "admin"}},
            {"name": "prod", "context": {"cluster": "prod", "user": "files", "namespace": "video"}},
            {"name": "bot", "context": {"cluster": "kind", "user": "bot", "namespace": "ci"}},
            {"name": "anonymous", "context": {"cluster": "prod"}},
        ],
    }
    doc.update(overrides)
    return doc


def write(path: Path, doc: Obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture
def kubeconfig(tmp_path: Path) -> Path:
    """A kubeconfig in its own folder, next to the files it names by relative path."""
    folder = tmp_path / "conf"
    (folder / "certs").mkdir(parents=True)
    (folder / "ca.crt").write_bytes(CA)
    (folder / "certs" / "user.crt").write_bytes(CERT)
    (folder / "certs" / "user.key").write_bytes(KEY)
    return write(folder / "config", kubeconfig_doc())


# --- load_kubeconfig ------------------------------------------------------------------------------


def test_current_context_with_embedded_data(kubeconfig: Path) -> None:
    assert load_kubeconfig(kubeconfig) == KubeConfig(
        server="https://127.0.0.1:6443",  # trailing slash dropped
        ca_data=CA,
        cert_data=CERT,
        key_data=KEY,
        namespace="default",
    )


def test_file_paths_are_relative_to_the_kubeconfig_not_the_working_directory(
    kubeconfig: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert load_kubeconfig(kubeconfig, "prod") == KubeConfig(
        server="https://prod.example:443", ca_data=CA, cert_data=CERT, key_data=KEY, namespace="video"
    )


def test_absolute_file_paths_are_used_as_they_are(tmp_path: Path) -> None:
    ca = tmp_path / "pki" / "ca.pem"
    ca.parent.mkdir()
    ca.write_bytes(CA)
    doc = kubeconfig_doc(
        clusters=[{"name": "kind", "cluster": {"server": "https://k:6443", "certificate-authority": str(ca)}}]
    )
    assert load_kubeconfig(write(tmp_path / "other" / "config", doc)).ca_data == CA


def test_a_missing_referenced_file_is_an_error(kubeconfig: Path) -> None:
    (kubeconfig.parent / "certs" / "user.key").unlink()
    with pytest.raises(FileNotFoundError):
        load_kubeconfig(kubeconfig, "prod")


def test_token_user_and_context_namespace(kubeconfig: Path) -> None:
    cfg = load_kubeconfig(kubeconfig, "bot")
    assert (cfg.token, cfg.token_file, cfg.cert_data, cfg.namespace) == ("static-token", None, None, "ci")
    assert cfg.bearer_token() == "static-token"


def test_a_context_without_user_has_no_credentials(kubeconfig: Path) -> None:
    cfg = load_kubeconfig(kubeconfig, "anonymous")
    assert (cfg.token, cfg.cert_data, cfg.key_data, cfg.ca_data) == (None, None, None, CA)


def test_token_file_is_read_at_each_request_so_rotation_is_seen(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("first\n")
    doc = kubeconfig_doc(users=[{"name": "admin", "user": {"tokenFile": str(token)}}])
    cfg = load_kubeconfig(write(tmp_path / "config", doc))
    assert cfg.token_file == str(token)
    assert cfg.bearer_token() == "first"
    token.write_text("rotated")
    assert cfg.bearer_token() == "rotated"


def test_a_relative_token_file_is_relative_to_the_kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "conf"
    (folder / "secrets").mkdir(parents=True)
    (folder / "secrets" / "token").write_text("from-file")
    doc = kubeconfig_doc(users=[{"name": "admin", "user": {"tokenFile": "secrets/token"}}])
    cfg = load_kubeconfig(write(folder / "config", doc))
    monkeypatch.chdir(tmp_path)
    assert cfg.bearer_token() == "from-file"


def test_insecure_skip_tls_verify(tmp_path: Path) -> None:
    doc = kubeconfig_doc(
        clusters=[{"name": "kind", "cluster": {"server": "https://k:6443", "insecure-skip-tls-verify": True}}],
        users=[{"name": "admin", "user": {"token": "t"}}],
    )
    cfg = load_kubeconfig(write(tmp_path / "config", doc))
    assert cfg.insecure is True
    assert cfg.ca_data is None
    ctx = cfg.ssl_context()
    assert ctx.check_hostname is False
    assert ctx.verify_mode == ssl.CERT_NONE


def test_an_explicit_context_wins_over_current_context(kubeconfig: Path) -> None:
    assert load_kubeconfig(kubeconfig).server == "https://127.0.0.1:6443"
    assert load_kubeconfig(kubeconfig, "prod").server == "https://prod.example:443"


# --- in-cluster and precedence --------------------------------------------------------------------


@pytest.fixture
def service_account(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "serviceaccount"
    folder.mkdir()
    (folder / "ca.crt").write_bytes(CA)
    (folder / "token").write_text("sa-token\n")
    (folder / "namespace").write_text("ffmpeg-rtmp\n")
    monkeypatch.setattr(kube_config, "SERVICE_ACCOUNT_DIR", folder)
    return folder


@pytest.fixture
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No in-cluster variables, no $KUBECONFIG, and a home of our own."""
    for var in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT", "KUBECONFIG"):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


def in_cluster(monkeypatch: pytest.MonkeyPatch, host: str = "10.96.0.1") -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", host)
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")


def home_config(home: Path, server: str) -> Path:
    doc = kubeconfig_doc(clusters=[{"name": "kind", "cluster": {"server": server}}])
    return write(home / ".kube" / "config", doc)


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize(
    ("host", "server"), [("10.96.0.1", "https://10.96.0.1:443"), ("fd00::1", "https://[fd00::1]:443")]
)
def test_in_cluster_uses_the_service_account(
    service_account: Path, monkeypatch: pytest.MonkeyPatch, host: str, server: str
) -> None:
    in_cluster(monkeypatch, host)
    cfg = load_incluster()
    assert cfg == KubeConfig(
        server=server, ca_data=CA, token_file=str(service_account / "token"), namespace="ffmpeg-rtmp"
    )
    assert cfg.bearer_token() == "sa-token"
    assert load_config() == cfg


def test_an_explicit_kubeconfig_wins_over_everything(
    clean_env: Path, service_account: Path, kubeconfig: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_cluster(monkeypatch)
    monkeypatch.setenv(
        "KUBECONFIG",
        str(
            write(
                tmp_path / "env" / "config",
                kubeconfig_doc(clusters=[{"name": "kind", "cluster": {"server": "https://env:1"}}]),
            )
        ),
    )
    home_config(clean_env, "https://home:1")
    assert load_config(str(kubeconfig)).server == "https://127.0.0.1:6443"
    assert load_config(str(kubeconfig), "prod").server == "https://prod.example:443"


def test_in_cluster_wins_over_kubeconfig_variable_and_home(
    clean_env: Path, service_account: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_cluster(monkeypatch)
    monkeypatch.setenv("KUBECONFIG", str(home_config(tmp_path / "env", "https://env:1")))
    home_config(clean_env, "https://home:1")
    assert load_config().server == "https://10.96.0.1:443"


def test_without_a_token_file_the_service_host_variable_alone_is_not_in_cluster(
    clean_env: Path, service_account: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (service_account / "token").unlink()
    in_cluster(monkeypatch)
    monkeypatch.setenv("KUBECONFIG", str(home_config(tmp_path / "env", "https://env:1")))
    assert load_config().server == "https://env:1"


def test_kubeconfig_variable_wins_over_home_and_its_first_entry_is_used(
    clean_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = home_config(tmp_path / "one", "https://one:1")
    second = home_config(tmp_path / "two", "https://two:1")
    home_config(clean_env, "https://home:1")
    monkeypatch.setenv("KUBECONFIG", f"{first}:{second}")
    assert load_config().server == "https://one:1"


def test_home_kubeconfig_is_the_last_resort(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home_config(clean_env, "https://home:1")
    assert load_config().server == "https://home:1"
    monkeypatch.setenv("KUBECONFIG", "")  # set but empty: as if unset
    assert load_config().server == "https://home:1"


def test_the_context_argument_applies_to_the_kubeconfig_variable(
    clean_env: Path, kubeconfig: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    assert load_config(context="bot").namespace == "ci"


# --- resource_path --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "path"),
    [
        (("", "v1", "pods"), "/api/v1/pods"),
        (("", "v1", "pods", "media"), "/api/v1/namespaces/media/pods"),
        (("", "v1", "pods", "media", "w-1"), "/api/v1/namespaces/media/pods/w-1"),
        (("", "v1", "pods", "media", "w-1", "status"), "/api/v1/namespaces/media/pods/w-1/status"),
        (("", "v1", "namespaces", None, "media"), "/api/v1/namespaces/media"),
        (("", "v1", "events", "media"), "/api/v1/namespaces/media/events"),
        (("coordination.k8s.io", "v1", "leases", "media"), "/apis/coordination.k8s.io/v1/namespaces/media/leases"),
        (("ffmpeg-rtmp.io", "v1alpha1", "transcodejobs"), "/apis/ffmpeg-rtmp.io/v1alpha1/transcodejobs"),
        (
            ("ffmpeg-rtmp.io", "v1alpha1", "transcodejobs", "media", "job", "status"),
            "/apis/ffmpeg-rtmp.io/v1alpha1/namespaces/media/transcodejobs/job/status",
        ),
        (
            ("ffmpeg-rtmp.io", "v1alpha1", "workerpools", "media", "gpu", "scale"),
            "/apis/ffmpeg-rtmp.io/v1alpha1/namespaces/media/workerpools/gpu/scale",
        ),
        (
            ("apiextensions.k8s.io", "v1", "customresourcedefinitions", None, "x.io"),
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/x.io",
        ),
    ],
)
def test_resource_path(args: tuple[Any, ...], path: str) -> None:
    assert resource_path(*args) == path
