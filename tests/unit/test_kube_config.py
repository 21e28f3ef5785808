"""Kubeconfig and in-cluster configuration, their precedence, and API paths."""

from __future__ import annotations

import base64
import json
import os
import ssl
from pathlib import Path
from typing import Any

import pytest
import yaml

from ffrtmp.kube import config as kube_config
from ffrtmp.kube.client import resource_path
from ffrtmp.kube.config import CONTEXT_ENV, KubeConfig, KubeConfigError, load_config, load_incluster, load_kubeconfig

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
        user="admin",
    )


def test_file_paths_are_relative_to_the_kubeconfig_not_the_working_directory(
    kubeconfig: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert load_kubeconfig(kubeconfig, "prod") == KubeConfig(
        server="https://prod.example:443", ca_data=CA, cert_data=CERT, key_data=KEY, namespace="video", user="files"
    )


def test_absolute_file_paths_are_used_as_they_are(tmp_path: Path) -> None:
    ca = tmp_path / "pki" / "ca.pem"
    ca.parent.mkdir()
    ca.write_bytes(CA)
    doc = kubeconfig_doc(
        clusters=[{"name": "kind", "cluster": {"server": "https://k:6443", "certificate-authority": str(ca)}}]
    )
    assert load_kubeconfig(write(tmp_path / "other" / "config", doc)).ca_data == CA


def test_a_missing_kubeconfig_named_explicitly_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(KubeConfigError, match=r"kubeconfig .*/nope does not exist"):
        load_kubeconfig(tmp_path / "nope")


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


def test_kubeconfig_variable_wins_over_in_cluster_and_in_cluster_over_home(
    clean_env: Path, service_account: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """controller-runtime's order: --kubeconfig, $KUBECONFIG, in-cluster, ~/.kube/config."""
    in_cluster(monkeypatch)
    home_config(clean_env, "https://home:1")
    monkeypatch.setenv("KUBECONFIG", str(home_config(tmp_path / "env", "https://env:1")))
    assert load_config().server == "https://env:1"
    monkeypatch.delenv("KUBECONFIG")
    assert load_config().server == "https://10.96.0.1:443"


def test_a_context_asked_for_in_cluster_is_an_error_not_ignored(
    clean_env: Path, service_account: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_cluster(monkeypatch)
    with pytest.raises(KubeConfigError, match="context 'prod' was asked for, but no kubeconfig is in use"):
        load_config(context="prod")
    monkeypatch.setenv(CONTEXT_ENV, "prod")
    with pytest.raises(KubeConfigError, match="context 'prod'"):
        load_config()


def test_without_a_token_file_the_service_host_variable_alone_is_not_in_cluster(
    clean_env: Path, service_account: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (service_account / "token").unlink()
    in_cluster(monkeypatch)
    monkeypatch.setenv("KUBECONFIG", str(home_config(tmp_path / "env", "https://env:1")))
    assert load_config().server == "https://env:1"


def test_kubeconfig_variable_wins_over_home_and_its_first_file_wins_a_shared_name(
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


# --- $KUBECONFIG with several files: client-go's merge ---------------------------------------------


def test_merge_first_file_wins_each_name_whole_and_the_first_current_context(
    clean_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "one" / "certs").mkdir(parents=True)
    (tmp_path / "one" / "certs" / "u.crt").write_bytes(CERT)
    (tmp_path / "one" / "certs" / "u.key").write_bytes(KEY)
    (tmp_path / "two").mkdir()
    (tmp_path / "two" / "ca.crt").write_bytes(CA)
    one = write(
        tmp_path / "one" / "config",
        {
            "users": [{"name": "me", "user": {"client-certificate": "certs/u.crt", "client-key": "certs/u.key"}}],
            "contexts": [{"name": "work", "context": {"cluster": "prod", "user": "me", "namespace": "video"}}],
        },
    )
    two = write(
        tmp_path / "two" / "config",
        {
            "current-context": "work",
            # the same user again: ignored whole, its token too (it does not add to the first's)
            "users": [{"name": "me", "user": {"token": "second-file-token"}}],
            "clusters": [
                {"name": "prod", "cluster": {"server": "https://prod:6443", "certificate-authority": "ca.crt"}}
            ],
            "contexts": [
                {"name": "work", "context": {"cluster": "prod", "user": "me", "namespace": "ignored"}},
                {"name": "other", "context": {"cluster": "prod", "namespace": "elsewhere"}},
            ],
        },
    )
    monkeypatch.setenv("KUBECONFIG", f"{one}{os.pathsep}{tmp_path / 'missing'}{os.pathsep}{two}{os.pathsep}{one}")
    cfg = load_config()
    # paths relative to the file each entry came from; the context of the first file
    assert cfg == KubeConfig(
        server="https://prod:6443", ca_data=CA, cert_data=CERT, key_data=KEY, namespace="video", user="me"
    )
    assert cfg.token is None
    assert load_config(context="other").namespace == "elsewhere"
    monkeypatch.setenv(CONTEXT_ENV, "other")
    assert load_config().namespace == "elsewhere"
    assert load_config(context="work").namespace == "video"  # the flag wins over the variable


def test_merge_takes_current_context_from_the_first_file_that_sets_it(tmp_path: Path) -> None:
    first = (tmp_path / "a", {"contexts": [{"name": "b-ctx", "context": {"cluster": "c", "user": "u"}}]})
    second = (tmp_path / "b", {"current-context": "b-ctx"})
    third = (tmp_path / "c", {"current-context": "never"})
    merged = kube_config.merge([first, second, third])
    assert merged.current_context == "b-ctx"
    assert merged.contexts["b-ctx"].source == tmp_path / "a"


def test_kubeconfig_paths_drop_empty_entries_and_repeats() -> None:
    value = os.pathsep.join(["/a", "", "/b", "/a", "/c"])
    assert kube_config.kubeconfig_paths(value) == [Path("/a"), Path("/b"), Path("/c")]


def test_kubeconfig_variable_whose_files_all_are_missing_is_an_error(
    clean_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home_config(clean_env, "https://home:1")  # not a fallback once $KUBECONFIG is set, as in client-go
    monkeypatch.setenv("KUBECONFIG", f"{tmp_path / 'x'}{os.pathsep}{tmp_path / 'y'}")
    with pytest.raises(KubeConfigError, match="none of the kubeconfig files exists"):
        load_config()


def test_no_configuration_anywhere_is_a_clear_error(clean_env: Path) -> None:
    with pytest.raises(KubeConfigError, match=r"no Kubernetes configuration: .*\.kube/config"):
        load_config()


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"contexts": []}, "no current-context set and no --context given"),
        ({"current-context": "x", "contexts": []}, "no context named 'x'"),
        ({"current-context": "x", "contexts": [{"name": "x", "context": {"cluster": "c"}}]}, "cluster 'c'"),
        (
            {
                "current-context": "x",
                "clusters": [{"name": "c", "cluster": {"server": "https://c"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "ghost"}}],
            },
            "names user 'ghost', which is not defined",
        ),
        ({"current-context": "x", "contexts": [{"context": {}}]}, "an entry of contexts has no name"),
    ],
)
def test_broken_references_are_errors(tmp_path: Path, doc: Obj, message: str) -> None:
    with pytest.raises(KubeConfigError, match=message):
        load_kubeconfig(write(tmp_path / "config", doc))


# --- what a user entry may hold ---------------------------------------------------------------------


def user_config(tmp_path: Path, user: Obj, cluster: Obj | None = None) -> Path:
    doc = kubeconfig_doc(
        clusters=[{"name": "kind", "cluster": cluster or {"server": "https://k:6443"}}],
        users=[{"name": "admin", "user": user}],
    )
    return write(tmp_path / "conf" / "config", doc)


SECRET = "s3cr3t-never-printed"


@pytest.mark.parametrize(
    ("user", "message"),
    [
        (
            {"auth-provider": {"name": "gcp", "config": {"access-token": SECRET}}},
            r"user 'admin': auth-provider 'gcp' is not supported .*exec credential plugin",
        ),
        ({"auth-provider": {"name": "azure", "config": {"access-token": SECRET}}}, "auth-provider 'azure'"),
        ({"auth-provider": {"name": "oidc", "config": {"refresh-token": SECRET}}}, "oidc has no id-token"),
        ({"username": "u", "password": SECRET}, "basic authentication"),
        ({"token": SECRET, "as": "someone"}, r"impersonation \(as\)"),
        ({"token": SECRET, "shiny-new-auth": {}}, "fields this client does not support: shiny-new-auth"),
        ({"token": SECRET, "exec": {"command": "x"}}, "exec and token cannot be used together"),
        ({"client-certificate-data": b64(CERT)}, "a client certificate needs its key"),
        ({"exec": {"apiVersion": "client.authentication.k8s.io/v1alpha1", "command": "x"}}, "v1alpha1"),
        ({"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "x"}}, "interactiveMode must be set"),
        (
            {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "x", "interactiveMode": "Always"}},
            "needs a terminal",
        ),
        ({"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1"}}, "exec has no command"),
        (
            {"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1", "command": "x", "stdin": True}},
            "exec has fields this client does not support: stdin",
        ),
    ],
)
def test_unsupported_or_ambiguous_users_fail_loudly_naming_the_entry_and_no_secret(
    tmp_path: Path, user: Obj, message: str
) -> None:
    path = user_config(tmp_path, user)
    with pytest.raises(KubeConfigError, match=message) as err:
        load_kubeconfig(path)
    assert str(path) in str(err.value) and "'admin'" in str(err.value)
    assert SECRET not in str(err.value)


@pytest.mark.parametrize(
    ("cluster", "message"),
    [
        ({"server": "https://k", "certificate-authority-data": b64(CA), "insecure-skip-tls-verify": True}, "ambiguous"),
        ({"server": "https://k", "proxy-url": "socks5://p:1080"}, "proxy 'socks5' is not supported"),
        ({"server": "https://k", "new-field": 1}, "cluster 'kind' has fields this client does not support: new-field"),
        ({"certificate-authority-data": b64(CA)}, "cluster 'kind' has no server"),
        ({"server": "https://k", "certificate-authority-data": "%%%"}, "not valid base64"),
    ],
)
def test_cluster_entries_this_client_cannot_honour_fail_loudly(tmp_path: Path, cluster: Obj, message: str) -> None:
    with pytest.raises(KubeConfigError, match=message):
        load_kubeconfig(user_config(tmp_path, {"token": "t"}, cluster))


def jwt(claims: Obj) -> str:
    def part(obj: Obj) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256'})}.{part(claims)}.c2lnbmF0dXJl"


def test_oidc_id_token_is_the_bearer_token_until_it_expires(tmp_path: Path) -> None:
    token = jwt({"sub": "me", "exp": 2_000_000_000})
    path = user_config(tmp_path, {"auth-provider": {"name": "oidc", "config": {"id-token": token, "client-id": "k"}}})
    assert kube_config.from_merged(kube_config.read_files([path], explicit=True), now=1_999_999_999).token == token
    with pytest.raises(KubeConfigError, match="oidc id-token has expired") as err:
        kube_config.from_merged(kube_config.read_files([path], explicit=True), now=2_000_000_000)
    assert token not in str(err.value)
    opaque = user_config(tmp_path, {"auth-provider": {"name": "oidc", "config": {"id-token": "opaque"}}})
    assert load_kubeconfig(opaque).token == "opaque"  # not a JWT: used as it is


def test_exec_plugin_settings(tmp_path: Path) -> None:
    exec_spec = {
        "apiVersion": "client.authentication.k8s.io/v1",
        "command": "bin/get-token",
        "args": ["--cluster", "prod"],
        "env": [{"name": "AWS_PROFILE", "value": "video"}],
        "interactiveMode": "IfAvailable",
        "installHint": "install get-token",
        "provideClusterInfo": True,
    }
    cluster = {
        "server": "https://k:6443/",
        "certificate-authority-data": b64(CA),
        "tls-server-name": "api.internal",
        "extensions": [{"name": "client.authentication.k8s.io/exec", "extension": {"audience": "x"}}],
    }
    cfg = load_kubeconfig(user_config(tmp_path, {"exec": exec_spec}, cluster))
    assert cfg.exec is not None
    assert cfg.exec.command == str(tmp_path / "conf" / "bin" / "get-token")  # relative to the kubeconfig
    assert cfg.exec.args == ("--cluster", "prod")
    assert cfg.exec.env == (("AWS_PROFILE", "video"),)
    assert cfg.exec.install_hint == "install get-token"
    assert cfg.exec.cluster == {
        "server": "https://k:6443",
        "tls-server-name": "api.internal",
        "certificate-authority-data": b64(CA),
        "config": {"audience": "x"},
    }
    assert (cfg.token, cfg.cert_data, cfg.user, cfg.tls_server_name) == (None, None, "admin", "api.internal")
    # a bare name is looked up in $PATH, as kubectl does; v1beta1 needs no interactiveMode
    exec_spec.update(command="aws", apiVersion="client.authentication.k8s.io/v1beta1", provideClusterInfo=False)
    del exec_spec["interactiveMode"]
    cfg = load_kubeconfig(user_config(tmp_path, {"exec": exec_spec}))
    assert cfg.exec is not None and cfg.exec.command == "aws" and cfg.exec.cluster is None


# --- proxies: Go's rules ----------------------------------------------------------------------------


def test_proxy_url_of_the_cluster_wins_over_the_environment_and_applies_to_loopback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://env-proxy:3128")
    cfg = load_kubeconfig(
        user_config(tmp_path, {"token": "t"}, {"server": "https://127.0.0.1:6443", "proxy-url": "http://p:8080"})
    )
    assert cfg.proxy == "http://p:8080"
    env = {"HTTPS_PROXY": "http://env-proxy:3128"}
    cfg = load_kubeconfig(user_config(tmp_path, {"token": "t"}, {"server": "https://api.example:6443"}), env=env)
    assert cfg.proxy == "http://env-proxy:3128"
    cfg = load_kubeconfig(user_config(tmp_path, {"token": "t"}, {"server": "https://api.example:6443"}), env={})
    assert cfg.proxy is None


@pytest.mark.parametrize(
    ("server", "env", "proxy"),
    [
        ("https://api.example:6443", {"HTTPS_PROXY": "http://p:3128"}, "http://p:3128"),
        ("https://api.example:6443", {"https_proxy": "p:3128"}, "http://p:3128"),  # no scheme: http
        ("https://api.example:6443", {"HTTP_PROXY": "http://p:3128"}, None),  # https asks HTTPS_PROXY
        ("http://api.example:8080", {"HTTP_PROXY": "http://p:3128"}, "http://p:3128"),
        ("https://localhost:6443", {"HTTPS_PROXY": "http://p:3128"}, None),
        ("https://127.0.0.1:6443", {"HTTPS_PROXY": "http://p:3128"}, None),
        ("https://[::1]:6443", {"HTTPS_PROXY": "http://p:3128"}, None),
        ("https://api.example:6443", {"HTTPS_PROXY": "http://p:3128", "NO_PROXY": "*"}, None),
        ("https://api.example:6443", {"HTTPS_PROXY": "http://p:3128", "NO_PROXY": "other, example"}, None),
        ("https://api.example:6443", {"HTTPS_PROXY": "http://p:3128", "no_proxy": "api.example"}, None),
        ("https://example:6443", {"HTTPS_PROXY": "http://p:3128", "NO_PROXY": ".example"}, "http://p:3128"),
        ("https://a.example:6443", {"HTTPS_PROXY": "http://p:3128", "NO_PROXY": ".example"}, None),
        ("https://api.example:6443", {"HTTPS_PROXY": "http://p:3128", "NO_PROXY": "api.example:443"}, "http://p:3128"),
        ("https://api.example:6443", {"HTTPS_PROXY": "http://p:3128", "NO_PROXY": "api.example:6443"}, None),
        ("https://10.0.3.4:6443", {"HTTPS_PROXY": "http://p:3128", "NO_PROXY": "10.0.0.0/16"}, None),
        ("https://10.1.3.4:6443", {"HTTPS_PROXY": "http://p:3128", "NO_PROXY": "10.0.0.0/16"}, "http://p:3128"),
        ("https://10.0.3.4:6443", {"HTTPS_PROXY": "http://p:3128", "NO_PROXY": "10.0.3.4"}, None),
        ("https://[fd00::1]:6443", {"HTTPS_PROXY": "http://p:3128", "NO_PROXY": "fd00::/8"}, None),
        ("https://api.example:6443", {}, None),
    ],
)
def test_proxy_from_env(server: str, env: dict[str, str], proxy: str | None) -> None:
    assert kube_config.proxy_from_env(server, env) == proxy


def test_a_socks_proxy_from_the_environment_fails_loudly(tmp_path: Path) -> None:
    path = user_config(tmp_path, {"token": "t"}, {"server": "https://api.example:6443"})
    with pytest.raises(KubeConfigError, match="HTTPS_PROXY/HTTP_PROXY: proxy 'socks5' is not supported"):
        load_kubeconfig(path, env={"HTTPS_PROXY": "socks5://p:1080"})
