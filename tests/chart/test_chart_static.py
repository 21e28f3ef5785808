"""Static checks of the Helm chart charts/ffmpeg-rtmp, without a cluster.

- `helm lint --strict` with the default values and with tests/chart/values-all.yaml;
- `helm template | kubeconform -strict` against offline schemas: the core Kubernetes kinds from the
  kubernetes-validate package (the "local-strict" schemas of the pinned Kubernetes minor), our CRDs
  converted to strict JSON schemas here, and minimal strict schemas of the
  Prometheus Operator's ServiceMonitor and PrometheusRule in tests/chart/schemas/;
- `promtool check rules` / `promtool test rules` of files/alerts.yaml, and the PrometheusRule the
  chart makes from that file;
- values.yaml <-> values.schema.json, RBAC, Pod Security, leader election, runbook anchors, the dashboard.

Tools: helm and kubeconform from `hack/tools.sh` (its bin folder, printed by `--print`), promtool
from Debian's `prometheus` package on PATH. A missing tool fails the test; it is never skipped.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import shlex
import shutil
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ffrtmp.api.pool import WorkerPoolSpec
from ffrtmp.controller.cadence import WriteBudget
from ffrtmp.controller.events import EventBudget

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "ffmpeg-rtmp"
HERE = Path(__file__).resolve().parent
VALUES_ALL = HERE / "values-all.yaml"
ALERTS = CHART / "files" / "alerts.yaml"
RUNBOOK = ROOT / "docs" / "RUNBOOK.md"
RELEASE = "ffmpeg-rtmp"
NAMESPACE = "ffmpeg-rtmp"


# --------------------------------------------------------------------------------------------
# tools


def _versions() -> dict[str, str]:
    out = {}
    for line in (ROOT / "tools" / "versions.env").read_text().splitlines():
        m = re.match(r"^([A-Z_]+)=(\S+)", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


KUBE_VERSION = _versions().get("KUBERNETES_VERSION", "v1.36.0").lstrip("v")


@functools.cache
def _tools_bin() -> Path:
    out = subprocess.run(
        ["bash", str(ROOT / "hack" / "tools.sh"), "--print"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return Path(out)


def _tool(name: str) -> str:
    path = _tools_bin() / name
    assert path.exists(), f"{name} is missing from {path.parent}: run `bash hack/tools.sh` first"
    return str(path)


@pytest.fixture(scope="module")
def helm() -> str:
    return _tool("helm")


@pytest.fixture(scope="module")
def kubeconform() -> str:
    return _tool("kubeconform")


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    assert path, (
        "promtool is not on PATH: DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus"
    )
    return path


def run(cmd: list[str], *, input: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, input=input, capture_output=True, text=True, cwd=cwd, timeout=120, check=False)


# --------------------------------------------------------------------------------------------
# rendering


def _template_cmd(helm: str, args: tuple[str, ...], release: str, namespace: str, crds: bool) -> list[str]:
    cmd = [helm, "template", release, str(CHART), "--namespace", namespace, "--kube-version", KUBE_VERSION]
    if crds:
        cmd.append("--include-crds")
    return cmd + list(args)


@functools.cache
def _render_text(helm: str, args: tuple[str, ...], release: str, namespace: str, crds: bool) -> str:
    proc = run(_template_cmd(helm, args, release, namespace, crds))
    assert proc.returncode == 0, f"helm template {' '.join(args)} failed:\n{proc.stderr}"
    return proc.stdout


def render_text(helm: str, *args: str, release: str = RELEASE, namespace: str = NAMESPACE, crds: bool = False) -> str:
    return _render_text(helm, tuple(args), release, namespace, crds)


def render(
    helm: str, *args: str, release: str = RELEASE, namespace: str = NAMESPACE, crds: bool = False
) -> list[dict[str, Any]]:
    text = render_text(helm, *args, release=release, namespace=namespace, crds=crds)
    return [d for d in yaml.safe_load_all(text) if d]


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in of_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[d['metadata'] for d in found]}"
    return found[0]


ALL = ("-f", str(VALUES_ALL))
NAMESPACED = ("--set", "watchNamespaces={media,media-gpu}")
CONFIGS = {
    "default": (),
    "all": ALL,
    "namespaced": NAMESPACED,
    "leader-election-cluster-wide": ("--set", "operator.replicaCount=3"),
    "operator-disabled": ("--set", "operator.enabled=false", "--set", "prometheusRule.enabled=true"),
}


# --------------------------------------------------------------------------------------------
# chart metadata and lint


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "ffmpeg-rtmp"
    assert chart["version"] == "0.3.0"
    assert chart["appVersion"] == "0.3.0"
    # CRD selectableFields (TranscodeJob status.phase, status.worker) are GA since Kubernetes 1.31.
    assert chart["kubeVersion"] == ">=1.31.0-0"
    for f in (
        "values.yaml",
        "values.schema.json",
        "templates/NOTES.txt",
        "templates/_helpers.tpl",
        "templates/tests/test-operator-health.yaml",
        "files/alerts.yaml",
        "dashboards/ffmpeg-rtmp.json",
    ):
        assert (CHART / f).is_file(), f
    # kopf peering is gone: the operator runs kopf standalone and elects a leader on a Lease.
    assert not (CHART / "templates" / "peering.yaml").exists()


def test_chart_crds_are_the_generated_ones() -> None:
    """crds/ of the chart holds exactly the generated CRDs."""
    chart_crds = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    assert chart_crds == ["ffmpeg-rtmp.io_transcodejobs.yaml", "ffmpeg-rtmp.io_workerpools.yaml"]


@pytest.mark.parametrize("values", ["default", "all"])
def test_helm_lint_strict(helm: str, values: str) -> None:
    cmd = [helm, "lint", "--strict", "--kube-version", KUBE_VERSION, str(CHART), *CONFIGS[values]]
    proc = run(cmd)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "0 chart(s) failed" in out
    assert "[WARNING]" not in out and "[ERROR]" not in out, out


@pytest.mark.parametrize(
    "bad",
    [
        "operator.logFormat=xml",
        "operator.replicaCount=-1",
        "operator.metricsPort=80",
        "operator.events.rate=0",
        "operator.events.burst=0",
        "operator.events.summarySeconds=-1",
        "operator.events.unknown=1",
        "unknownTopLevel=1",
        "operator.unknown=1",
        "operator.securityContext.allowPrivilegeEscalation=true",
        "operator.podSecurityContext.runAsNonRoot=false",
        "operator.securityContext.capabilities.drop={NET_RAW}",
        "operator.image.digest=md5:abc",
        "watchNamespaces={Bad_Namespace}",
        "prometheusRule.thresholds.failureRatioWarning=2",
        "prometheusRule.disabledAlerts={NoSuchAlert}",
        "workerPools[0].name=cpu,workerPools[0].spec.accelerator=tpu",
        "serviceMonitor.interval=soon",
        "podMonitor.interval=soon",
        "podMonitor.unknown=1",
        "operator.podDisruptionBudget.maxUnavailable=half",
        "operator.podDisruptionBudget.unhealthyPodEvictionPolicy=Never",
        "worker.runtimeClassByAccelerator.tpu=x",
        "worker.runtimeClassByAccelerator.nvenc=Not_A_Name",
        "worker.imagePullSecrets[0].nam=ghcr",
        "egress.clusterCIDRs={10.96.0.0}",
        "egress.networkPolicy.enabled=true",  # without apiServer: workers could not reach the API
        "egress.networkPolicy.deniedCIDRs={not-a-cidr}",
        "poolPolicy.allowedRuntimeClasses={Not_A_Name}",
        "poolPolicy.allowedPodLabelKeys={a*b}",
        "poolPolicy.egress.allowedDestinations={bad name}",
        "poolPolicy.egress.allowedUnproxiedProtocols={ftp}",
        "poolPolicy.egress.unknown=1",
    ],
)
def test_schema_rejects_bad_values(helm: str, bad: str) -> None:
    proc = run(_template_cmd(helm, ("--set", bad), RELEASE, NAMESPACE, False))
    assert proc.returncode != 0, f"--set {bad} was accepted"
    assert "schema" in proc.stderr, proc.stderr


def test_workerpool_outside_watched_namespaces_fails(helm: str) -> None:
    proc = run(
        _template_cmd(
            helm,
            (
                *NAMESPACED,
                "--set",
                "workerPools[0].name=cpu",
                "--set",
                "workerPools[0].namespace=elsewhere",
                "--set",
                "workerPools[0].spec.accelerator=cpu",
            ),
            RELEASE,
            NAMESPACE,
            False,
        )
    )
    assert proc.returncode != 0
    assert "not in watchNamespaces" in proc.stderr


# --------------------------------------------------------------------------------------------
# values.yaml <-> values.schema.json, documentation


def _values() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def _schema() -> dict[str, Any]:
    return json.loads((CHART / "values.schema.json").read_text())


def _walk_values(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            path = f"{prefix}.{k}" if prefix else k
            yield path, v
            yield from _walk_values(v, path)


def _schema_at(schema: dict[str, Any], path: str) -> dict[str, Any] | None:
    node = schema
    for part in path.split("."):
        props = node.get("properties", {})
        if part in props:
            node = props[part]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        else:
            return None
    return node


def test_every_value_has_a_schema_and_every_schema_property_a_value() -> None:
    values, schema = _values(), _schema()
    missing = [p for p, _ in _walk_values(values) if _schema_at(schema, p) is None]
    assert not missing, f"values without a schema: {missing}"

    def walk_schema(node: dict[str, Any], prefix: str = "") -> Iterator[str]:
        for k, sub in node.get("properties", {}).items():
            path = f"{prefix}.{k}" if prefix else k
            yield path
            if sub.get("type") == "object":
                yield from walk_schema(sub, path)

    value_paths = {p for p, _ in _walk_values(values)}
    # Optional sub-objects that values.yaml leaves out on purpose (documented in the schema).
    optional = {
        "global",
        "operator.strategy.type",
        "operator.strategy.rollingUpdate",
        "operator.strategy.rollingUpdate.maxSurge",
        "operator.strategy.rollingUpdate.maxUnavailable",
        "operator.resources.claims",
        "tests.resources.claims",
        "operator.podSecurityContext.fsGroupChangePolicy",
        "operator.podSecurityContext.supplementalGroups",
        "operator.podSecurityContext.seccompProfile.localhostProfile",
        "operator.securityContext.seccompProfile.localhostProfile",
        "operator.securityContext.runAsGroup",
        "operator.securityContext.privileged",
        "operator.securityContext.capabilities.add",
        # Per accelerator, set only where a RuntimeClass is wanted.
        *(f"worker.runtimeClassByAccelerator.{a}" for a in ("cpu", "nvenc", "qsv", "vaapi")),
    }
    extra = [p for p in walk_schema(schema) if p not in value_paths and p not in optional]
    assert not extra, f"schema properties without a default in values.yaml: {extra}"


def test_values_files_validate_against_schema() -> None:
    import jsonschema

    schema = _schema()
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    for path in (CHART / "values.yaml", VALUES_ALL):
        merged = _values()
        _deep_merge(merged, yaml.safe_load(path.read_text()))
        errors = sorted(validator.iter_errors(merged), key=lambda e: list(e.path))
        assert not errors, f"{path.name}: {[f'{list(e.path)}: {e.message}' for e in errors]}"


def _deep_merge(dst: dict[str, Any], src: dict[str, Any]) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _deep_merge(dst[k], v)
        else:
            dst[k] = v


def test_every_key_in_values_yaml_is_documented() -> None:
    """Each key has a comment line right above it; each leaf has a `## @param path` line."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []
    params = set()
    undocumented = []
    leaves = {p for p, v in _walk_values(_values()) if not isinstance(v, dict) or not v}
    seen = set()
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)## @param (\S+)", line)
        if m:
            params.add(m.group(2))
        m = re.match(r"^(\s*)([A-Za-z0-9_.\"'-]+):(\s|$)", line)
        if not m:
            continue
        indent, key = len(m.group(1)), m.group(2).strip("\"'")
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([k for _, k in stack] + [key])
        stack.append((indent, key))
        seen.add(path)
        prev = lines[i - 1].strip() if i else ""
        if not prev.startswith("#"):
            undocumented.append(path)
    assert not undocumented, f"keys without a comment line above: {undocumented}"
    assert leaves <= seen
    assert not leaves - params, f"leaves without '## @param': {sorted(leaves - params)}"
    unknown = params - seen
    assert not unknown, f"@param lines naming no key: {sorted(unknown)}"


# --------------------------------------------------------------------------------------------
# kubeconform


def _strictify(node: Any) -> Any:
    """A CRD's structural schema as a strict JSON schema (unknown fields rejected)."""
    if isinstance(node, list):
        return [_strictify(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strictify(v) for k, v in node.items()}
    if out.pop("x-kubernetes-int-or-string", False):
        out.pop("type", None)
        out["oneOf"] = [{"type": "string"}, {"type": "integer"}]
    if out.pop("nullable", False) and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def _kind_file(kind: str, api_version: str) -> str:
    # kubeconform's {{ .ResourceKind }}{{ .KindSuffix }}: kind-<first label of group>-<version>.
    group, _, version = api_version.rpartition("/")
    suffix = f"-{group.split('.')[0]}-{version}" if group else f"-{version}"
    return f"{kind.lower()}{suffix}.json"


def _crd_schemas(crd: dict[str, Any]) -> dict[str, Any]:
    spec = crd["spec"]
    out = {}
    for v in spec["versions"]:
        schema = _strictify(copy.deepcopy(v["schema"]["openAPIV3Schema"]))
        props = schema.setdefault("properties", {})
        props["apiVersion"] = {"type": "string", "enum": [f"{spec['group']}/{v['name']}"]}
        props["kind"] = {"type": "string", "enum": [spec["names"]["kind"]]}
        props.setdefault("metadata", {"type": "object"})
        schema["additionalProperties"] = False
        out[_kind_file(spec["names"]["kind"], f"{spec['group']}/{v['name']}")] = schema
    return out


@functools.cache
def _k8s_schema_dir() -> Path:
    """The kubernetes-validate package's strict schemas of our Kubernetes minor."""
    try:
        import kubernetes_validate  # a dev dependency, for its bundled JSON schemas
    except ImportError as exc:
        raise AssertionError("pip install kubernetes-validate (offline Kubernetes JSON schemas)") from exc

    base = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    major, minor = (int(x) for x in KUBE_VERSION.split(".")[:2])
    candidates = sorted(
        (tuple(int(x) for x in m.groups()), p)
        for p in base.glob("v*-local-strict")
        if (m := re.match(r"v(\d+)\.(\d+)\.\d+-local-strict$", p.name))
    )
    usable = [p for v, p in candidates if v <= (major, minor)]
    assert usable, f"no schemas at or below Kubernetes {KUBE_VERSION} in {base}"
    return usable[-1]


def _core_schema(name: str) -> str | None:
    src = _k8s_schema_dir() / name
    if not src.exists():
        return None
    text = src.read_text()
    # Make the package's absolute references (resolved against https://kubernetes.io/api/...)
    # local: the definitions file sits next to the kind's schema.
    text = text.replace('"/api/_definitions.json#', '"_definitions.json#')
    data = json.loads(text)
    data.pop("$id", None)
    return json.dumps(data)


@pytest.fixture(scope="module")
def schema_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("kubeconform-schemas")
    defs = json.loads((_k8s_schema_dir() / "_definitions.json").read_text())
    defs.pop("$id", None)
    (d / "_definitions.json").write_text(json.dumps(defs))
    for crd_file in sorted((CHART / "crds").glob("*.yaml")):
        for name, schema in _crd_schemas(yaml.safe_load(crd_file.read_text())).items():
            (d / name).write_text(json.dumps(schema))
    for f in (HERE / "schemas").glob("*.json"):
        shutil.copy(f, d / f.name)
    return d


def kubeconform_check(kubeconform: str, schema_dir: Path, manifests: str) -> tuple[int, str]:
    docs = [doc for doc in yaml.safe_load_all(manifests) if doc]
    for doc in docs:
        if doc["kind"] == "CustomResourceDefinition":  # a CRD rendered among the manifests
            for name, schema in _crd_schemas(doc).items():
                if not (schema_dir / name).exists():
                    (schema_dir / name).write_text(json.dumps(schema))
    for doc in docs:
        name = _kind_file(doc["kind"], doc["apiVersion"])
        if not (schema_dir / name).exists():
            core = _core_schema(name)
            if core is not None:
                (schema_dir / name).write_text(core)
    proc = run(
        [
            kubeconform,
            "-strict",
            "-summary",
            "-n",
            "2",
            "-schema-location",
            str(schema_dir / "{{ .ResourceKind }}{{ .KindSuffix }}.json"),
            "-",
        ],
        input=manifests,
    )
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_kubeconform_strict(helm: str, kubeconform: str, schema_dir: Path, config: str) -> None:
    text = render_text(helm, *CONFIGS[config], crds=True)
    n = len([d for d in yaml.safe_load_all(text) if d])
    rc, out = kubeconform_check(kubeconform, schema_dir, text)
    assert rc == 0, out
    m = re.search(r"Summary: (\d+) resources? found .*Valid: (\d+), Invalid: (\d+), Errors: (\d+), Skipped: (\d+)", out)
    assert m, out
    found, valid, invalid, errors, skipped = map(int, m.groups())
    assert (found, valid, invalid, errors, skipped) == (n, n, 0, 0, 0), out


@pytest.mark.parametrize(
    "manifest,needle",
    [
        # A typo in a core kind (strict: unknown field).
        (
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  replica: 2\n"
            "  selector: {matchLabels: {a: b}}\n"
            "  template: {metadata: {labels: {a: b}}, spec: {containers: [{name: c, image: i}]}}\n",
            "replica",
        ),
        # A WorkerPool with an accelerator the CRD does not know.
        (
            "apiVersion: ffmpeg-rtmp.io/v1alpha1\nkind: WorkerPool\nmetadata: {name: x}\nspec: {accelerator: tpu}\n",
            "/spec/accelerator",
        ),
        # An unknown field in a TranscodeJob spec.
        (
            "apiVersion: ffmpeg-rtmp.io/v1alpha1\nkind: TranscodeJob\nmetadata: {name: x}\n"
            "spec: {input: {uri: /media/in.mp4}, outputs: [{name: a}], timeout: 5}\n",
            "timeout",
        ),
        # A PrometheusRule rule without expr.
        (
            "apiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\nmetadata: {name: x}\n"
            "spec: {groups: [{name: g, rules: [{alert: A}]}]}\n",
            "expr",
        ),
    ],
)
def test_kubeconform_setup_rejects_invalid(kubeconform: str, schema_dir: Path, manifest: str, needle: str) -> None:
    """The offline schemas really validate (nothing is skipped or accepted blindly)."""
    rc, out = kubeconform_check(kubeconform, schema_dir, manifest)
    assert rc != 0, out
    assert needle in out, out


# --------------------------------------------------------------------------------------------
# operator Deployment, Service, ServiceMonitor


def _args(docs: list[dict[str, Any]]) -> list[str]:
    dep = one(docs, "Deployment")
    return dep["spec"]["template"]["spec"]["containers"][0]["args"]


def test_deployment_defaults(helm: str) -> None:
    docs = render(helm)
    dep = one(docs, "Deployment", "ffmpeg-rtmp-operator")
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    assert c["image"] == "ghcr.io/ffmpeg-rtmp/worker:0.3.0"
    assert c["command"] == ["ffrtmp", "operator"]
    assert c["args"] == [
        "--all-namespaces",
        "--metrics-port=9090",
        "--health-port=8080",
        "--ready-port=8081",
        "--log-format=json",
        "--write-budget=100",
        "--renew-max-seconds=40",
        "--progress-floor-seconds=5",
        "--progress-max-seconds=300",
        "--event-rate=10",
        "--event-burst=50",
        "--event-summary-seconds=60",
        "--worker-image=ghcr.io/ffmpeg-rtmp/worker:0.3.0",
        "--worker-service-account=ffmpeg-rtmp-worker",
        "--pool-allowed-image-prefixes=ghcr.io/ffmpeg-rtmp/worker:,ghcr.io/ffmpeg-rtmp/worker@",
        "--pool-allowed-volume-types=persistentVolumeClaim,emptyDir,configMap,secret,projected,downwardAPI",
        "--pool-allowed-service-accounts=ffmpeg-rtmp-worker",
        "--pool-allowed-runtime-classes=",
        "--pool-allowed-image-pull-secrets=",
        "--pool-allowed-priority-classes=",
        "--pool-denied-toleration-keys=node-role.kubernetes.io/control-plane,node-role.kubernetes.io/master",
        "--pool-allowed-pod-label-keys=",
        "--pool-allowed-pod-annotation-keys=",
        "--pool-allowed-egress-destinations=",
        "--pool-allowed-unproxied-protocols=",
        "--notification-timeout-seconds=10",
    ]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http-health"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http-ready"}
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http-metrics": 9090, "http-health": 8080, "http-ready": 8081}
    assert pod["serviceAccountName"] == "ffmpeg-rtmp-operator"
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]


def test_event_budget_defaults_are_the_operators() -> None:
    """The chart passes --event-* always: its defaults must be the operator's own."""
    events = _values()["operator"]["events"]
    assert (events["rate"], events["burst"], events["summarySeconds"]) == (
        EventBudget().rate, EventBudget().burst, EventBudget().summary_seconds,
    )  # fmt: skip


def test_deployment_all_options(helm: str) -> None:
    docs = render(helm, *ALL)
    dep = one(docs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert dep["spec"]["replicas"] == 2
    assert c["image"] == "registry.example.com:5000/ffmpeg-rtmp/worker:0.1.0-rc1"
    assert c["args"] == [
        "--namespace=media",
        "--namespace=media-gpu",
        "--metrics-port=9090",
        "--health-port=8080",
        "--ready-port=8081",
        "--leader-elect",
        "--leader-election-namespace=ffmpeg-rtmp",
        "--log-format=text",
        "--write-budget=250",
        "--renew-max-seconds=60",
        "--progress-floor-seconds=10",
        "--progress-max-seconds=120",
        "--event-rate=2.5",
        "--event-burst=1000000",
        "--event-summary-seconds=300",
        "--worker-image=registry.example.com:5000/ffmpeg-rtmp/worker@sha256:" + "0123456789abcdef" * 4,
        "--worker-service-account=transcoder",
        "--worker-image-pull-secret=ghcr",
        "--worker-pod-label=team=media",
        "--worker-pod-annotation=example.com/owner=media-platform",
        "--worker-runtime-class=nvenc=nvidia",
        "--pool-allowed-image-prefixes=registry.example.com:5000/ffmpeg-rtmp/",
        "--pool-allowed-volume-types=persistentVolumeClaim,emptyDir,hostPath",
        "--pool-allowed-service-accounts=transcoder,transcoder-gpu",
        "--pool-allowed-runtime-classes=kata,nvidia",
        "--pool-allowed-image-pull-secrets=quay,ghcr",
        "--pool-allowed-priority-classes=batch-low",
        "--pool-denied-toleration-keys=node-role.kubernetes.io/control-plane,dedicated",
        "--pool-allowed-pod-label-keys=team,example.com/*",
        "--pool-allowed-pod-annotation-keys=*",
        "--pool-allowed-egress-destinations=media.internal,*.corp.example,10.20.0.0/16,192.168.50.7,fd00:20::/32",
        "--pool-allowed-unproxied-protocols=rtmp",
        "--cluster-cidrs=10.96.0.0/12,100.96.0.0/11,fd00:10:96::/108",
        "--notification-timeout-seconds=5",
        "--notification-allowed-destinations=hooks.media.svc,10.20.0.0/16",
        "--verbose",
    ]
    env = {e["name"]: e for e in c["env"]}
    assert env["FFRTMP_SCHEDULER_INTERVAL"]["value"] == "2"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert dep["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    assert pod["imagePullSecrets"] == [{"name": "ghcr"}]
    assert pod["priorityClassName"] == "media-control-plane"
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["tolerations"][0]["key"] == "dedicated"
    assert "podAntiAffinity" in pod["affinity"]
    assert dep["spec"]["template"]["metadata"]["annotations"]["example.com/scrape"] == "false"
    assert dep["spec"]["template"]["metadata"]["labels"]["tier"] == "control"
    assert dep["metadata"]["labels"]["team"] == "media"
    assert dep["metadata"]["annotations"]["owner"] == "media-platform"


LEADER_ARGS = ["--leader-elect", f"--leader-election-namespace={NAMESPACE}"]


def _leader_args(docs: list[dict[str, Any]]) -> list[str]:
    return [a for a in _args(docs) if a.startswith("--leader-elect")]


def test_leader_election_flags(helm: str) -> None:
    """--leader-elect with more than one replica (or when asked for), never kopf's --peering."""
    for docs in (render(helm), render(helm, *ALL), render(helm, *NAMESPACED)):
        assert not any(a.startswith("--peering") for a in _args(docs))
    assert _leader_args(render(helm)) == []
    assert _leader_args(render(helm, "--set", "operator.replicaCount=2")) == LEADER_ARGS
    assert _leader_args(render(helm, "--set", "operator.leaderElection.enabled=true")) == LEADER_ARGS
    assert _leader_args(render(helm, "--set", "operator.leaderElection.enabled=false")) == []
    # The Lease namespace follows the release namespace.
    other = render(helm, "--set", "operator.replicaCount=2", namespace="video")
    assert "--leader-election-namespace=video" in _args(other)
    # The downward-API env (identity and default Lease namespace) is always there.
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in _container(render(helm))["env"]}
    assert env == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}


def _container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]


ROLLING = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}


@pytest.mark.parametrize(
    "args,strategy",
    [
        ((), {"type": "Recreate"}),
        (("--set", "operator.replicaCount=2"), ROLLING),
        (("--set", "operator.leaderElection.enabled=true"), ROLLING),
        (("--set", "operator.replicaCount=0"), {"type": "Recreate"}),
        (
            ("--set", "operator.replicaCount=2", "--set", "operator.strategy.type=Recreate"),
            {"type": "Recreate"},
        ),
        (
            (
                "--set",
                "operator.replicaCount=3",
                "--set",
                "operator.strategy.type=RollingUpdate",
                "--set",
                "operator.strategy.rollingUpdate.maxSurge=2",
            ),
            {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 2}},
        ),
    ],
)
def test_deployment_strategy(helm: str, args: tuple[str, ...], strategy: dict[str, Any]) -> None:
    """Automatic: RollingUpdate with a surge Pod that waits for the Lease, else Recreate."""
    assert one(render(helm, *args), "Deployment")["spec"]["strategy"] == strategy


@pytest.mark.parametrize(
    "args,needle",
    [
        (
            ("--set", "operator.replicaCount=2", "--set", "operator.leaderElection.enabled=false"),
            "needs leader election",
        ),
        (("--set", "operator.strategy.type=RollingUpdate"), "two operators at once"),
        (("--set", "operator.strategy.rollingUpdate.maxSurge=1"), "schema"),
        (("--set", "operator.leaderElection.enabled=yes"), "schema"),
    ],
)
def test_unsafe_operator_settings_are_refused(helm: str, args: tuple[str, ...], needle: str) -> None:
    proc = run(_template_cmd(helm, args, RELEASE, NAMESPACE, False))
    assert proc.returncode != 0, f"{args} was accepted"
    assert needle in proc.stderr, proc.stderr


def test_operator_extra_args_env_and_image(helm: str) -> None:
    docs = render(
        helm,
        "--set",
        "operator.image.repository=localhost:5001/worker",
        "--set",
        "operator.image.tag=dev",
        "--set",
        "operator.extraArgs={--dev,--verbose}",
        "--set",
        "operator.env[0].name=A",
        "--set",
        "operator.env[0].value=b",
    )
    c = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == "localhost:5001/worker:dev"
    assert c["args"][-2:] == ["--dev", "--verbose"]
    assert "--worker-image=localhost:5001/worker:dev" in c["args"]
    assert {"name": "A", "value": "b"} in c["env"]


def test_operator_disabled_keeps_rbac_and_service_accounts(helm: str) -> None:
    docs = render(helm, *CONFIGS["operator-disabled"], "--set", "serviceMonitor.enabled=true")
    kinds = {d["kind"] for d in docs}
    assert not kinds & {"Deployment", "Service", "Pod", "ServiceMonitor"}, kinds
    assert {
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "PrometheusRule",
    } <= kinds
    names = {d["metadata"]["name"] for d in of_kind(docs, "ServiceAccount")}
    assert names == {"ffmpeg-rtmp-operator", "ffmpeg-rtmp-worker"}


def test_service_and_servicemonitor(helm: str) -> None:
    docs = render(helm, *ALL)
    svc = one(docs, "Service")
    assert svc["metadata"]["name"] == "ffmpeg-rtmp-operator"
    assert {p["name"]: (p["port"], p["targetPort"]) for p in svc["spec"]["ports"]} == {
        "http-metrics": (9090, "http-metrics"),
        "http-health": (8080, "http-health"),
    }
    dep = one(docs, "Deployment")
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    sm = one(docs, "ServiceMonitor")
    assert sm["metadata"]["namespace"] == "monitoring"
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (ep,) = sm["spec"]["endpoints"]
    assert ep["port"] == "http-metrics" and ep["path"] == "/metrics" and ep["honorLabels"] is True
    assert ep["interval"] == "15s"
    assert not of_kind(render(helm), "ServiceMonitor")


def test_podmonitor_of_worker_metrics(helm: str) -> None:
    from ffrtmp.controller.pods import METRICS_PORT, build_worker_pod
    from ffrtmp.controller.settings import OperatorSettings

    docs = render(helm, *ALL)
    pm = one(docs, "PodMonitor")
    assert pm["metadata"]["namespace"] == "monitoring"
    assert pm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    # It selects the Pods the operator really builds, on the port their metrics are served on.
    worker = build_worker_pod("cpu", "media", "uid", WorkerPoolSpec(accelerator="cpu"), OperatorSettings())
    assert pm["spec"]["selector"]["matchLabels"].items() <= worker["metadata"]["labels"].items()
    (port,) = worker["spec"]["containers"][0]["ports"]
    (ep,) = pm["spec"]["podMetricsEndpoints"]
    assert (ep["port"], ep["path"], ep["interval"]) == (port["name"], "/metrics", "15s")
    assert port["containerPort"] == METRICS_PORT
    assert ep["relabelings"][0]["targetLabel"] == "node"
    assert pm["spec"]["namespaceSelector"] == {"matchNames": ["media", "media-batch", "media-gpu"]}
    everywhere = one(render(helm, "--set", "podMonitor.enabled=true"), "PodMonitor")
    assert everywhere["spec"]["namespaceSelector"] == {"any": True}
    assert not of_kind(render(helm), "PodMonitor")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), None),
        (("--set", "operator.replicaCount=2"), {"maxUnavailable": 1}),
        (("--set", "operator.podDisruptionBudget.enabled=true"), {"maxUnavailable": 1}),
        (("--set", "operator.replicaCount=3", "--set", "operator.podDisruptionBudget.enabled=false"), None),
        (
            ("--set", "operator.replicaCount=3", "--set", "operator.podDisruptionBudget.minAvailable=2"),
            {"minAvailable": 2},
        ),
        (
            ("--set", "operator.replicaCount=2", "--set", "operator.podDisruptionBudget.maxUnavailable=50%"),
            {"maxUnavailable": "50%"},
        ),
        (("--set", "operator.replicaCount=2", "--set", "operator.enabled=false"), None),
    ],
)
def test_operator_pod_disruption_budget(helm: str, args: tuple[str, ...], expected: dict[str, Any] | None) -> None:
    docs = render(helm, *args)
    pdbs = of_kind(docs, "PodDisruptionBudget")
    if expected is None:
        assert not pdbs
        return
    (pdb,) = pdbs
    dep = one(docs, "Deployment")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    budget = {k: v for k, v in pdb["spec"].items() if k in ("minAvailable", "maxUnavailable")}
    assert budget == expected
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def test_worker_extras_reach_the_worker_pods_through_the_operator_flags(helm: str) -> None:
    """The chart's worker values become operator flags, and those flags the worker Pods' fields."""
    import argparse

    from ffrtmp.controller import main
    from ffrtmp.controller.pods import build_worker_pod

    parser = argparse.ArgumentParser()
    main.add_arguments(parser)
    flags = [a for a in _args(render(helm, *ALL)) if a.startswith("--worker-")]
    settings = main.settings_from(parser.parse_args(flags))
    pod = build_worker_pod("gpu", "media-gpu", "uid", WorkerPoolSpec(accelerator="nvenc"), settings)
    assert pod["spec"]["runtimeClassName"] == "nvidia"
    assert pod["spec"]["imagePullSecrets"] == [{"name": "ghcr"}]
    assert pod["metadata"]["labels"]["team"] == "media"
    assert pod["metadata"]["annotations"] == {"example.com/owner": "media-platform"}


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ((), WriteBudget()),
        (ALL, WriteBudget(250, renew_max_seconds=60, progress_floor_seconds=10, progress_max_seconds=120)),
    ],
)
def test_write_budget_values_become_the_operators_budget(
    helm: str, values: tuple[str, ...], expected: WriteBudget
) -> None:
    import argparse

    from ffrtmp.controller import main

    parser = argparse.ArgumentParser()
    main.add_arguments(parser)
    budget_flags = ("--write-budget=", "--renew-max-seconds=", "--progress-floor-seconds=", "--progress-max-seconds=")
    flags = [a for a in _args(render(helm, *values)) if a.startswith(budget_flags)]
    assert len(flags) == 4
    assert main.settings_from(parser.parse_args(flags)).write_budget == expected


def test_helm_test_pod(helm: str) -> None:
    docs = render(helm)
    pod = one(docs, "Pod")
    assert pod["metadata"]["name"] == "ffmpeg-rtmp-test-operator-health"
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    c = pod["spec"]["containers"][0]
    assert c["image"] == one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert c["command"][:2] == ["python3", "-c"]
    assert "http://ffmpeg-rtmp-operator.ffmpeg-rtmp.svc:8080/healthz" in c["command"]
    assert "http://ffmpeg-rtmp-operator.ffmpeg-rtmp.svc:9090/metrics" in c["command"]
    compile(c["command"][2], "helm-test", "exec")  # the inline script is valid Python
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert not of_kind(render(helm, "--set", "tests.enabled=false"), "Pod")


# --------------------------------------------------------------------------------------------
# Pod Security Standard "restricted"

ALLOWED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def _restricted_violations(pod: dict[str, Any]) -> list[str]:
    """The checks of the restricted Pod Security Standard (v1.30+), plus our own hardening."""
    bad = []
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            bad.append(field)
    for vol in pod.get("volumes", []):
        kinds = set(vol) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            bad.append(f"volume {vol['name']}: {kinds}")
    psc = pod.get("securityContext", {})
    if psc.get("runAsUser") == 0:
        bad.append("pod runAsUser 0")
    for c in pod.get("initContainers", []) + pod["containers"]:
        sc = c.get("securityContext", {})
        name = c["name"]
        if sc.get("privileged"):
            bad.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            bad.append(f"{name}: allowPrivilegeEscalation")
        if sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
            bad.append(f"{name}: runAsNonRoot")
        if sc.get("runAsUser", psc.get("runAsUser")) in (0, None):
            bad.append(f"{name}: runAsUser")
        seccomp = sc.get("seccompProfile", psc.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            bad.append(f"{name}: seccompProfile")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            bad.append(f"{name}: capabilities.drop ALL")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            bad.append(f"{name}: capabilities.add")
        if c.get("ports") and any(p.get("hostPort") for p in c["ports"]):
            bad.append(f"{name}: hostPort")
        if sc.get("readOnlyRootFilesystem") is not True:
            bad.append(f"{name}: readOnlyRootFilesystem")
        mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
        vols = {v["name"]: v for v in pod.get("volumes", [])}
        if "/tmp" not in mounts or "emptyDir" not in vols.get(mounts["/tmp"], {}):
            bad.append(f"{name}: /tmp emptyDir")
    return bad


@pytest.mark.parametrize("config", ["default", "all"])
def test_pods_meet_restricted_pod_security(helm: str, config: str) -> None:
    docs = render(helm, *CONFIGS[config])
    pods = [one(docs, "Deployment")["spec"]["template"]["spec"], one(docs, "Pod")["spec"]]
    for pod in pods:
        assert _restricted_violations(pod) == []
    assert pods[0]["securityContext"]["runAsUser"] == 10001


# --------------------------------------------------------------------------------------------
# RBAC

OPERATOR_NAMESPACED_RULES = {
    ("ffmpeg-rtmp.io", "transcodejobs"): {"get", "list", "watch", "create", "delete"},
    ("ffmpeg-rtmp.io", "transcodejobs/status"): {"get", "patch", "update"},
    ("ffmpeg-rtmp.io", "workerpools"): {"get", "list", "watch"},
    ("ffmpeg-rtmp.io", "workerpools/status"): {"get", "patch", "update"},
    ("", "pods"): {"list", "watch", "create", "delete"},
    ("coordination.k8s.io", "leases"): {"get", "list", "watch", "delete"},
    ("", "events"): {"create"},
}
LEADER_LEASE = "ffmpeg-rtmp-operator"
LEADER_RULES = [
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
    {
        "apiGroups": ["coordination.k8s.io"],
        "resources": ["leases"],
        "resourceNames": [LEADER_LEASE],
        "verbs": ["get", "update", "patch"],
    },
]
WORKER_RULES = {
    ("ffmpeg-rtmp.io", "transcodejobs"): {"get", "list", "watch"},
    ("ffmpeg-rtmp.io", "transcodejobs/status"): {"get", "patch", "update"},
    ("coordination.k8s.io", "leases"): {"create", "get", "update", "patch"},
}


def _rules(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert "nonResourceURLs" not in rule and "resourceNames" not in rule
        for group in rule["apiGroups"]:
            for res in rule["resources"]:
                key = (group, res)
                assert key not in out, f"{key} granted twice in {role['metadata']['name']}"
                out[key] = set(rule["verbs"])
    return out


NOTIFICATION_SECRETS = "ffmpeg-rtmp-operator-notification-secrets"


def _no_wildcards(docs: list[dict[str, Any]]) -> None:
    for role in of_kind(docs, "ClusterRole") + of_kind(docs, "Role"):
        if role["metadata"]["name"] == NOTIFICATION_SECRETS:
            # The one grant of Secrets: get, by name (notifications.secretNames), nothing else.
            (rule,) = role["rules"]
            assert rule["resources"] == ["secrets"] and rule["verbs"] == ["get"] and rule["resourceNames"], rule
            continue
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], (role["metadata"]["name"], rule)
            assert not {"secrets", "configmaps", "pods/exec", "pods/log", "serviceaccounts/token"} & set(
                rule["resources"]
            )
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])
            assert "rbac.authorization.k8s.io" not in rule["apiGroups"], rule
            forbidden = {"nodes", "serviceaccounts", "kopfpeerings", "clusterkopfpeerings"}
            assert not forbidden & set(rule["resources"]), rule


def test_rbac_cluster_wide(helm: str) -> None:
    docs = render(helm)
    _no_wildcards(docs)
    (cr,) = of_kind(docs, "ClusterRole")
    assert cr["metadata"]["name"] == "ffmpeg-rtmp-operator"
    assert _rules(cr) == OPERATOR_NAMESPACED_RULES
    crb = one(docs, "ClusterRoleBinding")
    assert crb["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "ffmpeg-rtmp-operator",
    }
    assert crb["subjects"] == [{"kind": "ServiceAccount", "name": "ffmpeg-rtmp-operator", "namespace": NAMESPACE}]
    # Worker: one Role in the release namespace, bound to the worker ServiceAccount there.
    (role,) = of_kind(docs, "Role")
    assert role["metadata"] == {**role["metadata"], "name": "ffmpeg-rtmp-worker", "namespace": NAMESPACE}
    assert _rules(role) == WORKER_RULES
    (rb,) = of_kind(docs, "RoleBinding")
    assert rb["subjects"] == [{"kind": "ServiceAccount", "name": "ffmpeg-rtmp-worker", "namespace": NAMESPACE}]
    assert rb["roleRef"]["kind"] == "Role" and rb["roleRef"]["name"] == "ffmpeg-rtmp-worker"


def _leader_roles(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in of_kind(docs, "Role") if d["metadata"]["name"].endswith("-leader-election")]


def test_rbac_cluster_wide_with_leader_election(helm: str) -> None:
    docs = render(helm, "--set", "operator.replicaCount=2")
    _no_wildcards(docs)
    (cr,) = of_kind(docs, "ClusterRole")
    assert _rules(cr) == OPERATOR_NAMESPACED_RULES
    (role,) = _leader_roles(docs)
    assert role["metadata"]["name"] == "ffmpeg-rtmp-operator-leader-election"
    assert role["metadata"]["namespace"] == NAMESPACE
    assert role["rules"] == LEADER_RULES
    rb = one(docs, "RoleBinding", "ffmpeg-rtmp-operator-leader-election")
    assert rb["metadata"]["namespace"] == NAMESPACE
    assert rb["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]}
    assert rb["subjects"] == [{"kind": "ServiceAccount", "name": "ffmpeg-rtmp-operator", "namespace": NAMESPACE}]


def test_leader_election_rbac_follows_the_setting(helm: str) -> None:
    assert not _leader_roles(render(helm))
    assert not _leader_roles(render(helm, "--set", "operator.leaderElection.enabled=false"))
    assert len(_leader_roles(render(helm, "--set", "operator.leaderElection.enabled=true"))) == 1
    # An operator run outside the cluster (operator.enabled=false) may elect a leader too.
    off = render(helm, "--set", "operator.enabled=false", "--set", "operator.leaderElection.enabled=true")
    assert len(_leader_roles(off)) == 1
    assert not _leader_roles(render(helm, "--set", "operator.replicaCount=2", "--set", "operator.rbac.create=false"))


def test_rbac_namespaced(helm: str) -> None:
    docs = render(helm, *NAMESPACED)
    _no_wildcards(docs)
    assert not of_kind(docs, "ClusterRole") and not of_kind(docs, "ClusterRoleBinding"), "nothing cluster-wide"
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]): r for r in of_kind(docs, "Role")}
    assert set(roles) == {(ns, f"ffmpeg-rtmp-{who}") for ns in ("media", "media-gpu") for who in ("operator", "worker")}
    for ns in ("media", "media-gpu"):
        assert _rules(roles[(ns, "ffmpeg-rtmp-operator")]) == OPERATOR_NAMESPACED_RULES
        assert _rules(roles[(ns, "ffmpeg-rtmp-worker")]) == WORKER_RULES
    bindings = {(b["metadata"]["namespace"], b["metadata"]["name"]): b for b in of_kind(docs, "RoleBinding")}
    for ns in ("media", "media-gpu"):
        op = bindings[(ns, "ffmpeg-rtmp-operator")]
        assert op["subjects"] == [{"kind": "ServiceAccount", "name": "ffmpeg-rtmp-operator", "namespace": NAMESPACE}]
        wk = bindings[(ns, "ffmpeg-rtmp-worker")]
        assert wk["subjects"] == [{"kind": "ServiceAccount", "name": "ffmpeg-rtmp-worker", "namespace": ns}]
    sas = {(s["metadata"]["namespace"], s["metadata"]["name"]) for s in of_kind(docs, "ServiceAccount")}
    assert sas == {
        (NAMESPACE, "ffmpeg-rtmp-operator"),
        ("media", "ffmpeg-rtmp-worker"),
        ("media-gpu", "ffmpeg-rtmp-worker"),
    }


def test_rbac_namespaced_with_leader_election(helm: str) -> None:
    docs = render(helm, *ALL)
    _no_wildcards(docs)
    assert not of_kind(docs, "ClusterRole")
    operator_roles = [r for r in of_kind(docs, "Role") if r["metadata"]["name"].endswith("-operator")]
    assert sorted(r["metadata"]["namespace"] for r in operator_roles) == ["media", "media-gpu"]
    for role in operator_roles:
        assert _rules(role) == OPERATOR_NAMESPACED_RULES
    # The leader Lease lives in the release namespace, which is not watched here.
    (leader,) = _leader_roles(docs)
    assert leader["metadata"]["namespace"] == NAMESPACE and leader["rules"] == LEADER_RULES
    worker_ns = sorted(
        r["metadata"]["namespace"] for r in of_kind(docs, "Role") if r["metadata"]["name"].endswith("-worker")
    )
    assert worker_ns == ["media", "media-batch", "media-gpu"]


def test_notification_secrets_are_readable_by_name_only(helm: str) -> None:
    assert not [r for r in of_kind(render(helm), "ClusterRole") if r["metadata"]["name"] == NOTIFICATION_SECRETS]
    names = ("--set", "notifications.secretNames={hook-key,hook-url}")
    rule = {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["hook-key", "hook-url"], "verbs": ["get"]}
    docs = render(helm, *names)
    _no_wildcards(docs)
    (secrets,) = [r for r in of_kind(docs, "ClusterRole") if r["metadata"]["name"] == NOTIFICATION_SECRETS]
    assert secrets["rules"] == [rule]
    binding = one(docs, "ClusterRoleBinding", NOTIFICATION_SECRETS)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "ffmpeg-rtmp-operator", "namespace": NAMESPACE}]
    # Namespaced: a Role in each watched namespace, nothing cluster-wide.
    docs = render(helm, *names, *NAMESPACED)
    _no_wildcards(docs)
    assert not of_kind(docs, "ClusterRole")
    roles = [r for r in of_kind(docs, "Role") if r["metadata"]["name"] == NOTIFICATION_SECRETS]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["media", "media-gpu"]
    assert all(r["rules"] == [rule] for r in roles)
    bindings = [b for b in of_kind(docs, "RoleBinding") if b["metadata"]["name"] == NOTIFICATION_SECRETS]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["media", "media-gpu"]


def test_rbac_can_be_turned_off(helm: str) -> None:
    docs = render(
        helm,
        "--set",
        "operator.rbac.create=false",
        "--set",
        "worker.rbac.create=false",
        "--set",
        "worker.serviceAccount.create=false",
        "--set",
        "worker.serviceAccount.name=transcoder",
    )
    assert not {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"} & {d["kind"] for d in docs}
    assert "--worker-service-account=transcoder" in _args(docs)


def test_worker_service_account_follows_workerpool_namespaces(helm: str) -> None:
    docs = render(
        helm,
        "--set",
        "workerPools[0].name=cpu",
        "--set",
        "workerPools[0].namespace=media",
        "--set",
        "workerPools[0].spec.accelerator=cpu",
    )
    sas = {(s["metadata"]["namespace"], s["metadata"]["name"]) for s in of_kind(docs, "ServiceAccount")}
    assert ("media", "ffmpeg-rtmp-worker") in sas and (NAMESPACE, "ffmpeg-rtmp-worker") in sas
    assert {r["metadata"]["namespace"] for r in of_kind(docs, "Role")} == {"media", NAMESPACE}


# --------------------------------------------------------------------------------------------
# no kopf peering


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_no_kopf_peering_objects(helm: str, config: str) -> None:
    """The operator runs kopf standalone: no peering CRD, object, flag or RBAC in any configuration."""
    text = render_text(helm, *CONFIGS[config], crds=True)
    assert "kopf.dev" not in text and "peering" not in text.lower()
    assert not of_kind(render(helm, *CONFIGS[config]), "CustomResourceDefinition")


# --------------------------------------------------------------------------------------------
# WorkerPools and the dashboard ConfigMap


def test_workerpools_from_values(helm: str) -> None:
    docs = render(helm, *ALL)
    pools = {p["metadata"]["name"]: p for p in of_kind(docs, "WorkerPool")}
    assert set(pools) == {"cpu", "nvenc", "qsv"}
    assert {n: p["spec"]["accelerator"] for n, p in pools.items()} == {
        "cpu": "cpu",
        "nvenc": "nvenc",
        "qsv": "qsv",
    }
    assert all(p["apiVersion"] == "ffmpeg-rtmp.io/v1alpha1" for p in pools.values())
    assert all(p["spec"]["serviceAccountName"] == "transcoder" for p in pools.values())
    nvenc = pools["nvenc"]
    assert nvenc["metadata"]["namespace"] == "media-gpu" and nvenc["metadata"]["labels"]["gpu"] == "nvidia"
    assert nvenc["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert nvenc["spec"]["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"}
    ]
    assert not of_kind(render(helm), "WorkerPool")


def test_workerpool_examples_in_values_render(helm: str, kubeconform: str, schema_dir: Path) -> None:
    """The commented CPU/NVENC/QSV examples of values.yaml are valid WorkerPools."""
    text = (CHART / "values.yaml").read_text()
    block = text[text.index("## Examples:") : text.index("workerPools: []")]
    example = "\n".join(line[3:] for line in block.splitlines()[1:])
    pools = yaml.safe_load(example)
    assert [p["spec"]["accelerator"] for p in pools] == ["cpu", "nvenc", "qsv"]
    values = Path(schema_dir.parent / "example-values.yaml")
    values.write_text(yaml.safe_dump({"workerPools": pools}))
    out = render_text(helm, "-f", str(values))
    rc, msg = kubeconform_check(kubeconform, schema_dir, out)
    assert rc == 0, msg


def readme_helm_commands() -> list[list[str]]:
    """The `helm install`/`helm upgrade` command lines of README.md's shell blocks, as argv."""
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```(?:bash|sh|shell)\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            if argv[:1] == ["helm"] and argv[1:2] in (["install"], ["upgrade"]):
                commands.append(argv)
    return commands


def test_readme_helm_commands_render_and_pass_the_schemas(helm: str, kubeconform: str, schema_dir: Path) -> None:
    """Each helm command of the README, run as `helm template` (values.schema.json applies), renders
    manifests that pass kubeconform, WorkerPools included."""
    # An upgrade that reuses the release's values has none to render here: tests/e2e/test_helm_upgrade.py
    # runs it against a release.
    reusing = ("--reuse-values", "--reset-then-reuse-values")
    commands = [argv for argv in readme_helm_commands() if not set(argv) & set(reusing)]
    assert commands, "README.md shows no helm install command"
    for argv in commands:
        args = [a for a in argv[2:] if a not in ("--install", "--wait", "--atomic")]
        proc = run([helm, "template", *args, "--kube-version", KUBE_VERSION], cwd=ROOT)
        assert proc.returncode == 0, f"{shlex.join(argv)}\nfailed as helm template:\n{proc.stderr}"
        rc, msg = kubeconform_check(kubeconform, schema_dir, proc.stdout)
        assert rc == 0, msg
        pools = of_kind([d for d in yaml.safe_load_all(proc.stdout) if d], "WorkerPool")
        assert pools, f"{shlex.join(argv)} creates no WorkerPool"
        for pool in pools:
            WorkerPoolSpec.model_validate(pool["spec"])


def test_dashboard_configmap(helm: str) -> None:
    docs = render(helm, *ALL)
    cm = one(docs, "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"]["grafana_folder"] == "Media"
    assert cm["metadata"]["namespace"] == "monitoring"
    assert json.loads(cm["data"]["ffmpeg-rtmp.json"]) == json.loads(
        (CHART / "dashboards" / "ffmpeg-rtmp.json").read_text()
    )
    docs = render(
        helm,
        "--set",
        "grafanaDashboard.enabled=true",
        "--set",
        "grafanaDashboard.labels.grafana_dashboard=null",
        "--set",
        "grafanaDashboard.labels.dashboards=ffmpeg",
    )
    assert one(docs, "ConfigMap")["metadata"]["labels"]["dashboards"] == "ffmpeg"
    assert not of_kind(render(helm), "ConfigMap")


OPERATOR_METRICS = {
    "ffrtmp_jobs",
    "ffrtmp_queue_depth",
    "ffrtmp_job_queue_seconds_bucket",
    "job_duration_seconds_bucket",
    "ffrtmp_jobs_finished_total",
    "ffrtmp_jobs_failed_total",
    "ffrtmp_worker_sla_compliance_rate",
    "ffrtmp_pool_workers",
    "ffrtmp_pool_ready_workers",
    "ffrtmp_pool_desired_workers",
    "ffrtmp_pool_busy_slots",
    "ffrtmp_pool_free_slots",
    "ffrtmp_reconcile_errors_total",
    "up",
}
WORKER_METRICS = {
    "ffrtmp_worker_jobs_failed_total",
    "ffrtmp_worker_jobs_completed_total",
    "ffrtmp_job_input_bytes_total",
    "ffrtmp_worker_active_jobs",
    "ffrtmp_worker_free_slots",
    "ffrtmp_worker_encode_fps",
}
PROMQL_WORDS = {
    "sum",
    "max",
    "min",
    "by",
    "rate",
    "histogram_quantile",
    "on",
    "or",
    "unless",
    "and",
    "absent",
    "le",
    "namespace",
    "pool",
    "phase",
    "reason",
    "kind",
    "job",
    "instance",
    "__rate_interval",
}


def _metric_names(expr: str) -> set[str]:
    expr = re.sub(r'"[^"]*"', '""', expr)  # label values
    expr = re.sub(r"\{[^}]*\}", "", expr)  # matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"#.*", "", expr)  # comments
    expr = re.sub(r"\b(by|on)\s*\([^)]*\)", "", expr)  # grouping labels
    return {w for w in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr) if w not in PROMQL_WORDS}


def test_dashboard_json(promtool: str, tmp_path: Path) -> None:
    dash = json.loads((CHART / "dashboards" / "ffmpeg-rtmp.json").read_text())
    assert dash["uid"] == "ffmpeg-rtmp"
    titles = " | ".join(p["title"] for p in dash["panels"]).lower()
    for needed in (
        "queue depth",
        "jobs by phase",
        "failures per second by reason",
        "sla compliance",
        "desired / ready",
        "busy / free",
        "p95 job duration",
        "p95 submit-to-running",
    ):
        assert needed in titles, needed
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    used = set().union(*(_metric_names(e) for e in exprs))
    assert used <= OPERATOR_METRICS | WORKER_METRICS, used - OPERATOR_METRICS - WORKER_METRICS
    # Every query is valid PromQL: promtool parses them as recording rules.
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {
                        "record": f"dashboard:query_{i}",
                        "expr": e.replace("$__rate_interval", "5m").replace("$namespace", ".*").replace("$pool", ".*"),
                    }
                    for i, e in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    proc = run([promtool, "check", "rules", str(path)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --------------------------------------------------------------------------------------------
# alerts

ALERT_NAMES = {
    "OperatorDown",
    "OperatorNoLeader",
    "AllWorkersDown",
    "CriticalFailureRate",
    "HighJobFailureRate",
    "HighJobLatency",
    "WorkerCapacityHigh",
    "SLAComplianceBelowTarget",
    "QueueBacklog",
}
CRITICAL = {"OperatorDown", "OperatorNoLeader", "AllWorkersDown", "CriticalFailureRate"}


def _alert_rules(groups: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}


def test_promtool_check_rules(promtool: str) -> None:
    proc = run([promtool, "check", "rules", str(ALERTS)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 9 rules found" in proc.stdout


def test_promtool_unit_tests(promtool: str) -> None:
    proc = run([promtool, "test", "rules", str(HERE / "alerts_test.yaml")])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout
    # Every alert has a test where it fires.
    tests = yaml.safe_load((HERE / "alerts_test.yaml").read_text())["tests"]
    firing = {t["alertname"] for test in tests for t in test.get("alert_rule_test", []) if t["exp_alerts"]}
    silent = {t["alertname"] for test in tests for t in test.get("alert_rule_test", []) if not t["exp_alerts"]}
    assert firing == ALERT_NAMES and silent == ALERT_NAMES


def test_alerts_file_shape() -> None:
    rules = _alert_rules(yaml.safe_load(ALERTS.read_text())["groups"])
    assert set(rules) == ALERT_NAMES
    for name, rule in rules.items():
        assert rule["labels"]["severity"] == ("critical" if name in CRITICAL else "warning"), name
        ann = rule["annotations"]
        assert set(ann) == {"summary", "description", "runbook_url"}, name
        assert "$labels" in ann["description"] or "$value" in ann["description"], name
        assert ann["runbook_url"] == (
            "https://github.com/ffmpeg-rtmp/ffmpeg-rtmp/blob/main/docs/RUNBOOK.md#" + name.lower()
        ), name


def test_alert_threshold_defaults_match_values() -> None:
    text = ALERTS.read_text()
    thresholds = _values()["prometheusRule"]["thresholds"]
    for name, value in thresholds.items():
        found = re.findall(rf"([0-9.eE+-]+)\s*# threshold: {name}\b", text)
        assert found, f"no '# threshold: {name}' marker in {ALERTS.name}"
        assert all(float(f) == float(value) for f in found), (name, found, value)
    markers = set(re.findall(r"[0-9]\s*# threshold: (\w+)", text))
    assert markers == set(thresholds)


def test_prometheusrule_is_the_alerts_file(helm: str) -> None:
    """With the default values, the PrometheusRule's groups are exactly files/alerts.yaml's."""
    docs = render(helm, "--set", "prometheusRule.enabled=true")
    pr = one(docs, "PrometheusRule")
    assert pr["metadata"]["namespace"] == NAMESPACE
    assert pr["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]
    assert not of_kind(render(helm), "PrometheusRule")


def test_prometheusrule_overrides(helm: str, promtool: str, tmp_path: Path) -> None:
    docs = render(
        helm,
        "--set",
        "prometheusRule.enabled=true",
        "--set-json",
        "prometheusRule.thresholds.failureRatioCritical=0.25",
        "--set",
        "prometheusRule.thresholds.jobLatencyP95Seconds=900",
        "--set-json",
        "prometheusRule.thresholds.slaCompliancePercent=99.5",
        "--set",
        "prometheusRule.thresholds.queueBacklogJobs=1000000",
        "--set",
        "prometheusRule.runbookBaseURL=https://wiki.example.com/ops/",
        "--set",
        "prometheusRule.additionalAlertLabels.team=media",
        "--set",
        "prometheusRule.disabledAlerts={HighJobFailureRate}",
        release="transcode",
        namespace="video",
    )
    pr = one(docs, "PrometheusRule")
    rules = _alert_rules(pr["spec"]["groups"])
    assert set(rules) == ALERT_NAMES - {"HighJobFailureRate"}
    assert "> 0.25  # threshold: failureRatioCritical" in rules["CriticalFailureRate"]["expr"]
    assert "> 900  # threshold: jobLatencyP95Seconds" in rules["HighJobLatency"]["expr"]
    assert "< 99.5  # threshold: slaCompliancePercent" in rules["SLAComplianceBelowTarget"]["expr"]
    assert re.search(r"> (1000000|1e\+06)  # threshold: queueBacklogJobs", rules["QueueBacklog"]["expr"])
    assert "> 0.9  # threshold: workerCapacityRatio" in rules["WorkerCapacityHigh"]["expr"]
    assert rules["OperatorDown"]["expr"].count('up{job="transcode-ffmpeg-rtmp-operator", namespace="video"}') == 2
    leader = 'ffrtmp_operator_leader{job="transcode-ffmpeg-rtmp-operator", namespace="video"}'
    assert rules["OperatorNoLeader"]["expr"].count(leader) == 1
    assert one(docs, "Service")["metadata"]["name"] == "transcode-ffmpeg-rtmp-operator"
    for name, rule in rules.items():
        assert rule["annotations"]["runbook_url"] == f"https://wiki.example.com/ops#{name.lower()}"
        assert rule["labels"]["team"] == "media" and rule["labels"]["severity"]
    path = tmp_path / "rendered-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": pr["spec"]["groups"]}))
    proc = run([promtool, "check", "rules", str(path)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --------------------------------------------------------------------------------------------
# runbook


def _github_anchors(markdown: str) -> set[str]:
    anchors = set()
    in_code = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        m = None if in_code else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            slug = m.group(1).strip().lower()
            slug = re.sub(r"[^\w\- ]", "", slug).replace(" ", "-")
            anchors.add(slug)
    return anchors


def test_runbook_anchors_match_alerts() -> None:
    assert RUNBOOK.is_file(), "docs/RUNBOOK.md is missing"
    text = RUNBOOK.read_text()
    anchors = _github_anchors(text)
    for name, rule in _alert_rules(yaml.safe_load(ALERTS.read_text())["groups"]).items():
        anchor = rule["annotations"]["runbook_url"].rsplit("#", 1)[1]
        assert anchor in anchors, f"{name}: #{anchor} is not a heading of docs/RUNBOOK.md"
    for link in re.findall(r"\]\(#([^)]+)\)", text):
        assert link in anchors, f"broken link #{link} in docs/RUNBOOK.md"


def test_runbook_covers_the_old_incidents() -> None:
    text = RUNBOOK.read_text().lower()
    for topic in (
        "operator not responding",
        "worker not registering",
        "jobs stuck",
        "high failure rate",
        "sla compliance",
        "slow job",
        "high cpu",
        "memory",
        "database locked",
        "database growing",
        "query performance",
        "worker crashing",
        "not picking up jobs",
        "network latency",
        "bandwidth",
        "capacity",
        "workerlost",
        "deadlineexceeded",
        "ttlsecondsafterfinished",
        "kubectl get tj -a",
        "--field-selector status.phase=running",
        "kubectl wait --for=condition=complete",
        "kubectl get wp",
        "kubectl get lease",
        "kubectl logs",
        "kubectl describe tj",
    ):
        assert topic in text, topic
    assert re.search(r"kubectl get events [^\n]*--field-selector reason=", text)


# --------------------------------------------------------------------------------------------
# NOTES.txt


def test_notes_examples_are_valid(helm: str, kubeconform: str, schema_dir: Path, tmp_path: Path) -> None:
    """NOTES.txt renders, and the WorkerPool and TranscodeJob it tells users to apply are valid."""
    # `helm template` does not print NOTES.txt: render a copy of the chart in which a ConfigMap
    # carries the NOTES rendered with tpl.
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    shutil.copy(CHART / "templates" / "NOTES.txt", chart / "notes.txt")
    (chart / "templates" / "zz-notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\ndata:\n  notes: |-\n"
        '{{ tpl (.Files.Get "notes.txt") . | indent 4 }}\n'
    )
    for args in ((), ("-f", str(VALUES_ALL)), ("--set", "operator.enabled=false")):
        proc = run(
            [
                helm,
                "template",
                RELEASE,
                str(chart),
                "-n",
                NAMESPACE,
                "--kube-version",
                KUBE_VERSION,
                "-s",
                "templates/zz-notes.yaml",
                *args,
            ]
        )
        assert proc.returncode == 0, proc.stderr
        notes = yaml.safe_load(proc.stdout)["data"]["notes"]
        assert "kubectl get tj" in notes and "-w" in notes
        blocks = re.findall(r"cat <<'YAML'[^\n]*\n(.*?)\n\s*YAML\n", notes + "\n", flags=re.S)
        kinds = set()
        for block in blocks:
            doc = textwrap.dedent(block)
            kinds.add(yaml.safe_load(doc)["kind"])
            rc, out = kubeconform_check(kubeconform, schema_dir, doc)
            assert rc == 0, out
        assert "TranscodeJob" in kinds
        if not args:
            assert kinds == {"TranscodeJob", "WorkerPool"}


# --------------------------------------------------------------------------------------------
# pool admission (poolPolicy)


def test_pool_admission_policy_defaults(helm: str) -> None:
    """On by default: a ValidatingAdmissionPolicy (v1) for WorkerPools with the chart's worker image
    repository, worker ServiceAccount and the safe volume sources baked in, one validation per volume
    index (the CRD's maxItems 16), and a Deny binding."""
    docs = render(helm)
    vap = one(docs, "ValidatingAdmissionPolicy", "ffmpeg-rtmp-workerpools")
    assert vap["apiVersion"] == "admissionregistration.k8s.io/v1"
    assert vap["spec"]["matchConstraints"]["resourceRules"] == [
        {
            "apiGroups": ["ffmpeg-rtmp.io"],
            "apiVersions": ["*"],
            "operations": ["CREATE", "UPDATE"],
            "resources": ["workerpools"],
        }
    ]
    rules = vap["spec"]["validations"]
    assert len(rules) == 2 + 16 + 8
    assert '["ghcr.io/ffmpeg-rtmp/worker:","ghcr.io/ffmpeg-rtmp/worker@"]' in rules[0]["expression"]
    assert "'spec.image '" in rules[0]["messageExpression"]
    assert '["ffmpeg-rtmp-worker"]' in rules[1]["expression"]
    assert "'spec.serviceAccountName '" in rules[1]["messageExpression"]
    assert "object.spec.volumes[15]" in rules[17]["expression"]
    assert "hostPath" not in rules[2]["expression"]
    assert "'spec.volumes[0].'" in rules[2]["messageExpression"]
    # Beyond the defaults a pool may add nothing: no RuntimeClass, pull secret, PriorityClass, Pod label
    # or annotation, egress destination or unproxied protocol; no control-plane toleration.
    extra = {r["messageExpression"].split("'")[1].split()[0]: r for r in rules[18:]}
    assert list(extra) == [
        "spec.runtimeClassName", "spec.imagePullSecrets", "spec.priorityClassName", "spec.tolerations",
        "spec.podAnnotations", "spec.podLabels", "spec.egress.allow", "spec.egress.allowUnproxiedProtocols",
    ]  # fmt: skip
    assert all(r["reason"] == "Forbidden" for r in rules)
    assert "object.spec.runtimeClassName in []" in extra["spec.runtimeClassName"]["expression"]
    assert "(allowed: none)" in extra["spec.egress.allow"]["messageExpression"]
    assert (
        '["node-role.kubernetes.io/control-plane","node-role.kubernetes.io/master"]'
        in (extra["spec.tolerations"]["expression"])
    )
    binding = one(docs, "ValidatingAdmissionPolicyBinding", "ffmpeg-rtmp-workerpools")
    assert binding["spec"] == {"policyName": "ffmpeg-rtmp-workerpools", "validationActions": ["Deny"]}


def test_pool_admission_policy_follows_the_values(helm: str) -> None:
    vap = one(render(helm, *ALL), "ValidatingAdmissionPolicy", "ffmpeg-rtmp-workerpools")
    rules = vap["spec"]["validations"]
    assert '["registry.example.com:5000/ffmpeg-rtmp/"]' in rules[0]["expression"]
    assert '["transcoder","transcoder-gpu"]' in rules[1]["expression"]
    assert '["persistentVolumeClaim","emptyDir","hostPath"]' in rules[2]["expression"]
    extra = {r["messageExpression"].split("'")[1].split()[0]: r["expression"] for r in rules[18:]}
    # The chart's own RuntimeClasses and pull secrets are allowed besides the listed ones.
    assert '["kata","nvidia"]' in extra["spec.runtimeClassName"]
    assert '["quay","ghcr"]' in extra["spec.imagePullSecrets"]
    assert '["batch-low"]' in extra["spec.priorityClassName"]
    assert '["node-role.kubernetes.io/control-plane","dedicated"]' in extra["spec.tolerations"]
    assert '(k in ["team"] || ["example.com/"].exists(p, k.startsWith(p)))' in extra["spec.podLabels"]
    assert '(k in [] || [""].exists(p, k.startsWith(p)))' in extra["spec.podAnnotations"]
    # Addresses become /32 and /128 CIDRs, names are compared in lower case, `*.d` as a `.d` suffix.
    allow = extra["spec.egress.allow"]
    assert '["10.20.0.0/16","192.168.50.7/32","fd00:20::/32"]' in allow
    assert 'a.lowerAscii() in ["media.internal"]' in allow
    assert '[".corp.example"].exists(d, a.lowerAscii().endsWith(d))' in allow
    assert '["rtmp"]' in extra["spec.egress.allowUnproxiedProtocols"]
    # secret is not among the volume sources: spec.jobSecrets (secret volumes) is refused too.
    assert extra["spec.jobSecrets"] == "!has(object.spec.jobSecrets) || size(object.spec.jobSecrets) == 0"
    # No denied toleration keys: no toleration rule.
    open_taints = one(render(helm, "--set-json", "poolPolicy.deniedTolerationKeys=[]"), "ValidatingAdmissionPolicy",
                      "ffmpeg-rtmp-workerpools")  # fmt: skip
    assert "spec.tolerations" not in json.dumps(open_taints["spec"]["validations"])


def test_pool_policy_flags_give_the_operator_the_lists_of_the_admission_policy(helm: str) -> None:
    import argparse

    from ffrtmp.controller import main
    from ffrtmp.controller.policy import PoolPolicy

    parser = argparse.ArgumentParser()
    main.add_arguments(parser)
    flags = [a for a in _args(render(helm, *ALL)) if a.startswith(("--worker-", "--pool-"))]
    assert main.settings_from(parser.parse_args(flags)).pool_policy == PoolPolicy(
        image_prefixes=("registry.example.com:5000/ffmpeg-rtmp/",),
        volume_types=("persistentVolumeClaim", "emptyDir", "hostPath"),
        service_accounts=("transcoder", "transcoder-gpu"),
        runtime_classes=("kata", "nvidia"),
        image_pull_secrets=("quay", "ghcr"),
        priority_classes=("batch-low",),
        denied_toleration_keys=("node-role.kubernetes.io/control-plane", "dedicated"),
        pod_label_keys=("team", "example.com/*"),
        pod_annotation_keys=("*",),
        egress_destinations=("media.internal", "*.corp.example", "10.20.0.0/16", "192.168.50.7", "fd00:20::/32"),
        unproxied_protocols=("rtmp",),
    )
    off = render(helm, "--set", "poolPolicy.admissionPolicy=false")
    policies = [d["metadata"]["name"] for d in off if d["kind"].startswith("ValidatingAdmissionPolicy")]
    assert policies == ["ffmpeg-rtmp-worker-identity", "ffmpeg-rtmp-worker-identity"]  # worker.admissionPolicy
    # The operator enforces the lists either way.
    dep = one(off, "Deployment", "ffmpeg-rtmp-operator")
    assert (
        "--pool-allowed-service-accounts=ffmpeg-rtmp-worker" in dep["spec"]["template"]["spec"]["containers"][0]["args"]
    )


# --------------------------------------------------------------------------------------------
# worker egress NetworkPolicy


def test_worker_network_policy_is_off_by_default(helm: str) -> None:
    docs = render(helm)
    assert of_kind(docs, "NetworkPolicy") == []
    assert not any(a.startswith("--cluster-cidrs") for a in _args(docs))


def test_worker_network_policy_limits_egress_in_every_worker_namespace(helm: str) -> None:
    docs = render(helm, *ALL)
    policies = of_kind(docs, "NetworkPolicy")
    assert sorted(p["metadata"]["namespace"] for p in policies) == ["media", "media-batch", "media-gpu"]
    spec = policies[0]["spec"]
    workers = {"app.kubernetes.io/component": "worker", "app.kubernetes.io/managed-by": "ffmpeg-rtmp-operator"}
    assert spec["podSelector"] == {"matchLabels": workers}
    assert spec["policyTypes"] == ["Egress"]
    dns, api, internet, lan, single = spec["egress"]
    assert dns["to"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "kube-system"}
    assert dns["to"][0]["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
    assert sorted((p["port"], p["protocol"]) for p in dns["ports"]) == [(53, "TCP"), (53, "UDP")]
    assert api == {"to": [{"ipBlock": {"cidr": "203.0.113.10/32"}}], "ports": [{"port": 6443, "protocol": "TCP"}]}
    v4, v6 = (block["ipBlock"] for block in internet["to"])
    assert v4["cidr"] == "0.0.0.0/0" and v6["cidr"] == "::/0"
    # Link-local (cloud metadata), private, CGNAT and the cluster's own ranges are cut out, per family.
    assert v4["except"] == ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16",
                            "10.96.0.0/12", "100.96.0.0/11"]  # fmt: skip
    assert v6["except"] == ["fc00::/7", "fe80::/10", "fd00:10:96::/108"]
    assert lan == {"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}], "ports": [{"port": 8080, "protocol": "TCP"}]}
    assert single == {"to": [{"ipBlock": {"cidr": "192.168.50.7/32"}}]}


def test_worker_network_policy_without_internet_allows_only_dns_api_and_listed_destinations(helm: str) -> None:
    docs = render(
        helm, "--set", "egress.networkPolicy.enabled=true", "--set", "egress.networkPolicy.internet=false",
        "--set", "egress.networkPolicy.apiServer[0].cidr=172.18.0.2/32",
        "--set", "egress.networkPolicy.apiServer[0].port=6443",
    )  # fmt: skip
    (policy,) = of_kind(docs, "NetworkPolicy")
    assert policy["metadata"]["namespace"] == NAMESPACE
    rules = policy["spec"]["egress"]
    assert len(rules) == 2
    assert rules[1]["to"] == [{"ipBlock": {"cidr": "172.18.0.2/32"}}]


# --------------------------------------------------------------------------------------------
# worker identity (worker.admissionPolicy)


def test_worker_identity_policy_defaults(helm: str) -> None:
    """On by default: a ValidatingAdmissionPolicy (v1) matching the worker ServiceAccount's writes of
    Leases and TranscodeJobs, keyed on the Pod its token is bound to, and a Deny binding. The worker's own
    Lease name (ffrtmp-worker-<pod>) is the agent's LEASE_PREFIX; the leader Lease never matches it."""
    from ffrtmp.api.constants import LEASE_PREFIX

    docs = render(helm)
    vap = one(docs, "ValidatingAdmissionPolicy", "ffmpeg-rtmp-worker-identity")
    assert vap["apiVersion"] == "admissionregistration.k8s.io/v1"
    spec = vap["spec"]
    assert spec["failurePolicy"] == "Fail"
    rules = {r["apiGroups"][0]: r for r in spec["matchConstraints"]["resourceRules"]}
    assert rules["coordination.k8s.io"]["resources"] == ["leases"]
    assert rules["ffmpeg-rtmp.io"]["resources"] == ["transcodejobs", "transcodejobs/status"]
    assert all(set(r["operations"]) == {"CREATE", "UPDATE", "DELETE"} for r in rules.values())
    (match,) = spec["matchConditions"]
    assert '["ffmpeg-rtmp-worker"]' in match["expression"]
    assert "system:serviceaccount:" in match["expression"]
    pod = next(v for v in spec["variables"] if v["name"] == "pod")
    assert "request.userInfo.extra['authentication.kubernetes.io/pod-name']" in pod["expression"]
    text = json.dumps(spec["validations"])
    assert f"'{LEASE_PREFIX}' + variables.pod" in text
    assert "oldObject.status.worker == variables.pod" in text
    assert "['Scheduled', 'Running']" in text
    assert "ffmpeg-rtmp-operator" not in text.replace(LEASE_PREFIX, "")
    assert all(v["reason"] == "Forbidden" for v in spec["validations"])
    binding = one(docs, "ValidatingAdmissionPolicyBinding", "ffmpeg-rtmp-worker-identity")
    assert binding["spec"] == {"policyName": "ffmpeg-rtmp-worker-identity", "validationActions": ["Deny"]}


def test_worker_identity_policy_follows_the_values(helm: str) -> None:
    """It matches the ServiceAccounts pools may use (poolPolicy.allowedServiceAccounts, else the worker's);
    worker.admissionPolicy=false leaves it out and keeps the pool policy."""
    vap = one(render(helm, *ALL), "ValidatingAdmissionPolicy", "ffmpeg-rtmp-worker-identity")
    assert '["transcoder","transcoder-gpu"]' in vap["spec"]["matchConditions"][0]["expression"]
    named = one(render(helm, "--set", "worker.serviceAccount.name=enc"), "ValidatingAdmissionPolicy",
                "ffmpeg-rtmp-worker-identity")  # fmt: skip
    assert '["enc"]' in named["spec"]["matchConditions"][0]["expression"]
    off = render(helm, "--set", "worker.admissionPolicy=false")
    names = [d["metadata"]["name"] for d in off if d["kind"].startswith("ValidatingAdmissionPolicy")]
    assert names == ["ffmpeg-rtmp-workerpools", "ffmpeg-rtmp-workerpools"]


# --------------------------------------------------------------------------------------------
# API Priority and Fairness (templates/flowcontrol.yaml; on a real API server: tests/integration/test_api_priority.py)

FLOWCONTROL = "flowcontrol.apiserver.k8s.io/v1"
DEFAULT_QUEUING = {"queues": 64, "handSize": 6, "queueLengthLimit": 50}


def _flow_schemas(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d["spec"] for d in of_kind(docs, "FlowSchema")}


def _priority_levels(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d["spec"] for d in of_kind(docs, "PriorityLevelConfiguration")}


def _sa(namespace: str, name: str) -> dict[str, Any]:
    return {"kind": "ServiceAccount", "serviceAccount": {"namespace": namespace, "name": name}}


def test_api_priority_defaults(helm: str) -> None:
    """On by default: three Limited levels, and four FlowSchemas that send the operator's requests and the
    workers' status updates to control, their Lease writes to liveness, their status patches to progress."""
    docs = render(helm)
    assert {d["apiVersion"] for d in docs if d["kind"] in ("FlowSchema", "PriorityLevelConfiguration")} == {FLOWCONTROL}
    levels = _priority_levels(docs)

    def limited(shares: int, **extra: int) -> dict[str, Any]:
        return {"type": "Limited", "limited": {
            "nominalConcurrencyShares": shares, "lendablePercent": 0, **extra,
            "limitResponse": {"type": "Queue", "queuing": DEFAULT_QUEUING},
        }}  # fmt: skip

    assert levels == {
        "ffmpeg-rtmp-control": limited(40),  # no borrowingLimitPercent: it may borrow without limit
        "ffmpeg-rtmp-liveness": limited(20),
        "ffmpeg-rtmp-progress": limited(10, borrowingLimitPercent=0),
    }
    schemas = _flow_schemas(docs)
    assert {n: (s["priorityLevelConfiguration"]["name"], s["matchingPrecedence"], s["distinguisherMethod"]["type"])
            for n, s in schemas.items()} == {
        "ffmpeg-rtmp-operator": ("ffmpeg-rtmp-control", 850, "ByUser"),
        "ffmpeg-rtmp-worker-results": ("ffmpeg-rtmp-control", 850, "ByUser"),
        "ffmpeg-rtmp-worker-leases": ("ffmpeg-rtmp-liveness", 860, "ByNamespace"),
        "ffmpeg-rtmp-worker-progress": ("ffmpeg-rtmp-progress", 870, "ByNamespace"),
    }  # fmt: skip
    (op,) = schemas["ffmpeg-rtmp-operator"]["rules"]
    assert op["subjects"] == [_sa(NAMESPACE, "ffmpeg-rtmp-operator")]
    assert op["resourceRules"] == [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"], "clusterScope": True,
                                    "namespaces": ["*"]}]  # fmt: skip
    assert op["nonResourceRules"] == [{"verbs": ["*"], "nonResourceURLs": ["*"]}]
    worker = [_sa(NAMESPACE, "ffmpeg-rtmp-worker")]
    expected = {
        "ffmpeg-rtmp-worker-results": (["update", "create"], "ffmpeg-rtmp.io", "transcodejobs/status"),
        "ffmpeg-rtmp-worker-leases": (["create", "update", "patch"], "coordination.k8s.io", "leases"),
        "ffmpeg-rtmp-worker-progress": (["patch"], "ffmpeg-rtmp.io", "transcodejobs/status"),
    }
    for name, (verbs, group, resource) in expected.items():
        (rule,) = schemas[name]["rules"]
        assert rule["subjects"] == worker, name
        assert rule["resourceRules"] == [
            {"verbs": verbs, "apiGroups": [group], "resources": [resource], "namespaces": ["*"]}
        ], name
        assert "nonResourceRules" not in rule
    # The two worker verbs on transcodejobs/status never meet in one level, and the progress level is the
    # only one that matches a patch of it.
    assert not set(expected["ffmpeg-rtmp-worker-results"][0]) & set(expected["ffmpeg-rtmp-worker-progress"][0])


def test_api_priority_matches_every_worker_service_account_in_every_worker_namespace(helm: str) -> None:
    """APF names a ServiceAccount by namespace and name: one subject per worker namespace (those of the worker
    RBAC) and per name a pool may use (worker.serviceAccount.name and poolPolicy.allowedServiceAccounts)."""
    docs = render(helm, *ALL)
    names = ("transcoder", "transcoder-gpu")
    namespaces = ("media", "media-batch", "media-gpu")
    roles = of_kind(docs, "Role")
    assert {r["metadata"]["namespace"] for r in roles if r["metadata"]["name"].endswith("-worker")} == set(namespaces)
    schemas = _flow_schemas(docs)
    for name in ("ffmpeg-rtmp-worker-results", "ffmpeg-rtmp-worker-leases", "ffmpeg-rtmp-worker-progress"):
        (rule,) = schemas[name]["rules"]
        assert rule["subjects"] == [_sa(ns, sa) for ns in namespaces for sa in names], name
    # The operator stays in the release namespace, whatever it watches.
    assert schemas["ffmpeg-rtmp-operator"]["rules"][0]["subjects"] == [_sa(NAMESPACE, "ffmpeg-rtmp-operator")]
    # The worker ServiceAccount counts even when poolPolicy.allowedServiceAccounts leaves it out (pools
    # without spec.serviceAccountName use it).
    docs = render(helm, "--set", "poolPolicy.allowedServiceAccounts={enc}", "--set", "operator.serviceAccount.name=op")
    (rule,) = _flow_schemas(docs)["ffmpeg-rtmp-worker-progress"]["rules"]
    assert rule["subjects"] == [_sa(NAMESPACE, "ffmpeg-rtmp-worker"), _sa(NAMESPACE, "enc")]
    assert _flow_schemas(docs)["ffmpeg-rtmp-operator"]["rules"][0]["subjects"] == [_sa(NAMESPACE, "op")]


def test_api_priority_follows_the_values(helm: str) -> None:
    docs = render(helm, *ALL)
    levels = _priority_levels(docs)
    assert levels["ffmpeg-rtmp-control"]["limited"] == {
        "nominalConcurrencyShares": 60, "lendablePercent": 10, "borrowingLimitPercent": 50,
        "limitResponse": {"type": "Queue", "queuing": {"queues": 32, "handSize": 4, "queueLengthLimit": 100}},
    }  # fmt: skip
    assert levels["ffmpeg-rtmp-progress"]["limited"] == {
        "nominalConcurrencyShares": 5, "lendablePercent": 0,  # borrowingLimitPercent null: left out, no limit
        "limitResponse": {"type": "Queue", "queuing": {"queues": 16, "handSize": 2, "queueLengthLimit": 20}},
    }  # fmt: skip
    assert levels["ffmpeg-rtmp-liveness"]["limited"]["nominalConcurrencyShares"] == 20  # untouched default
    precedence = {n: s["matchingPrecedence"] for n, s in _flow_schemas(docs).items()}
    assert precedence == {"ffmpeg-rtmp-operator": 700, "ffmpeg-rtmp-worker-results": 700,
                          "ffmpeg-rtmp-worker-leases": 710, "ffmpeg-rtmp-worker-progress": 720}  # fmt: skip
    off = render(helm, "--set", "apiPriority.enabled=false")
    assert not of_kind(off, "FlowSchema") and not of_kind(off, "PriorityLevelConfiguration")


@pytest.mark.parametrize(
    "bad",
    [
        "apiPriority.matchingPrecedence=9000",  # at or after the cluster's service-accounts: never matched
        "apiPriority.matchingPrecedence=0",
        "apiPriority.control.nominalConcurrencyShares=0",
        "apiPriority.progress.lendablePercent=101",
        "apiPriority.liveness.borrowingLimitPercent=-1",
        "apiPriority.progress.queuing.queues=0",
        "apiPriority.progress.queuing.unknown=1",
    ],
)
def test_api_priority_schema_rejects_bad_values(helm: str, bad: str) -> None:
    proc = run(_template_cmd(helm, ("--set", bad), RELEASE, NAMESPACE, False))
    assert proc.returncode != 0, f"--set {bad} was accepted"
    assert "schema" in proc.stderr, proc.stderr
