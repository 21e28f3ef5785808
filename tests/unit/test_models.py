"""The API models: round trips, defaults, strictness, and the shape of the CRDs generated from them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from ffrtmp.api.crd import CATEGORY, CRD_FILES, all_crds, render
from ffrtmp.api.job import TranscodeJobSpec, TranscodeJobStatus
from ffrtmp.api.pool import WorkerPoolSpec, WorkerPoolStatus
from helpers import REPO

pytestmark = pytest.mark.unit

EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
SPEC_MODELS: dict[str, type[BaseModel]] = {"TranscodeJob": TranscodeJobSpec, "WorkerPool": WorkerPoolSpec}
JOB_CRD = CRD_FILES["transcodejobs"]
POOL_CRD = CRD_FILES["workerpools"]
Schema = dict[str, Any]

# Strings in spec that need no maxLength/enum, each with the reason. Empty: every spec string is bounded.
UNBOUNDED_SPEC_STRINGS: dict[str, str] = {}


def minimal_job(**extra: Any) -> TranscodeJobSpec:
    return TranscodeJobSpec.model_validate({"input": {"uri": "/media/a.mp4"}, "outputs": [{"name": "a"}], **extra})


def openapi(crd_file: str) -> Schema:
    schema: Schema = all_crds()[crd_file]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def version(crd_file: str) -> Schema:
    v: Schema = all_crds()[crd_file]["spec"]["versions"][0]
    return v


def nodes(node: Any, path: str) -> Iterator[tuple[str, Any]]:
    """Every schema node below `node` (itself included), with a readable path."""
    yield path, node
    if not isinstance(node, dict):
        return
    for name, child in (node.get("properties") or {}).items():
        yield from nodes(child, f"{path}.{name}")
    if "items" in node:
        yield from nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from nodes(node["additionalProperties"], f"{path}{{}}")


def properties(node: Schema, path: str) -> Iterator[tuple[str, Schema]]:
    """Every named property below `node`, in objects and in list items."""
    for p, n in nodes(node, path):
        for name, child in (n.get("properties") or {}).items() if isinstance(n, dict) else ():
            yield f"{p}.{name}", child


def sections(*names: str) -> Iterator[tuple[str, Schema]]:
    for crd_file in CRD_FILES.values():
        for name in names:
            yield f"{crd_file}:{name}", openapi(crd_file)["properties"][name]


def subset(small: Any, big: Any) -> bool:
    """Whether every field of `small` is in `big` with the same value (big may add defaults)."""
    if isinstance(small, dict):
        return isinstance(big, dict) and all(k in big and subset(v, big[k]) for k, v in small.items())
    if isinstance(small, list):
        return isinstance(big, list) and len(small) == len(big) and all(map(subset, small, big))
    return bool(small == big)


# --- round trips -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_round_trips_through_the_model(path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    model = SPEC_MODELS[doc["kind"]]
    spec = model.model_validate(doc["spec"])
    wire = spec.to_api()  # type: ignore[attr-defined]
    again = model.model_validate(wire)
    assert again == spec
    assert again.to_api() == wire  # type: ignore[attr-defined]
    # Nothing the user wrote is lost or changed; the model only adds defaults.
    assert subset(doc["spec"], wire), f"{path.name}: {doc['spec']} not kept in {wire}"


def test_examples_cover_both_kinds() -> None:
    kinds = {yaml.safe_load(p.read_text())["kind"] for p in EXAMPLES}
    assert kinds == {"TranscodeJob", "WorkerPool"}


# --- defaults ----------------------------------------------------------------------------------


def test_job_defaults() -> None:
    spec = minimal_job()
    assert spec.priority == 0
    assert spec.backoff_limit == 3
    assert spec.accelerator == "auto"
    assert spec.hardware_policy == "preferred"
    assert spec.suspend is False
    out = spec.outputs[0]
    assert out.container == "mp4"
    assert out.video is None and out.audio is None
    wire = spec.to_api()
    assert wire["priority"] == 0 and wire["backoffLimit"] == 3
    assert wire["accelerator"] == "auto" and wire["hardwarePolicy"] == "preferred"
    assert wire["outputs"] == [{"name": "a", "container": "mp4"}]
    assert "hls" not in wire and "extraArgs" not in wire and "timeoutSeconds" not in wire


def test_video_and_audio_defaults() -> None:
    spec = minimal_job(outputs=[{"name": "a", "video": {}, "audio": {}}])
    video, audio = spec.outputs[0].video, spec.outputs[0].audio
    assert video is not None and audio is not None
    assert video.codec == "h264"
    assert video.bitrate is None and video.crf is None and video.preset is None
    assert audio.codec == "aac"


def test_nested_defaults() -> None:
    spec = minimal_job(
        input={"uri": "rtmp://ingest/live/key", "restartPolicy": {}},
        outputs=[{"name": "a", "container": "hls"}],
        hls={},
        thumbnails={"sprite": {}},
    )
    assert spec.input.restart_policy is not None
    assert spec.input.restart_policy.to_api() == {"maxRestarts": 10, "backoffSeconds": 2, "maxBackoffSeconds": 60}
    assert spec.hls is not None
    assert spec.hls.to_api() == {
        "segmentSeconds": 6,
        "segmentType": "ts",
        "playlistType": "vod",
        "listSize": 6,
        "masterPlaylist": "master.m3u8",
    }
    assert spec.thumbnails is not None
    assert spec.thumbnails.to_api() == {
        "intervalSeconds": 10,
        "width": 320,
        "format": "jpg",
        "sprite": {"columns": 5, "rows": 5},
    }


def test_pool_defaults() -> None:
    spec = WorkerPoolSpec.model_validate({"accelerator": "cpu"})
    assert spec.max_concurrent_jobs == 1
    assert spec.min_workers == 0 and spec.max_workers == 10
    assert spec.replicas is None
    assert spec.media_roots == ["/media"]
    assert spec.output_root == "/output"
    assert spec.allowed_protocols == ["file", "http", "https", "rtmp", "rtmps"]
    assert spec.gpus_per_worker == 1
    assert spec.image_pull_policy == "IfNotPresent"
    assert spec.termination_grace_period_seconds == 600
    assert spec.paused is False
    assert spec.autoscaling.to_api() == {
        "enabled": True,
        "targetUtilization": 100,
        "scaleUpStep": 10,
        "scaleDownStabilizationSeconds": 300,
        "idleTimeoutSeconds": 300,
        "pendingTimeoutSeconds": 30,
    }


def test_partial_autoscaling_keeps_the_other_defaults() -> None:
    spec = WorkerPoolSpec.model_validate({"accelerator": "nvenc", "autoscaling": {"idleTimeoutSeconds": 600}})
    assert spec.autoscaling.idle_timeout_seconds == 600
    assert spec.autoscaling.enabled is True
    assert spec.autoscaling.scale_down_stabilization_seconds == 300


# --- strictness --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "doc", "where"),
    [
        (TranscodeJobSpec, {"input": {"uri": "/m/a"}, "outputs": [{"name": "a"}], "retries": 3}, ("retries",)),
        (TranscodeJobSpec, {"input": {"uri": "/m/a", "format": "mp4"}, "outputs": [{"name": "a"}]},
         ("input", "format")),
        (TranscodeJobSpec, {"input": {"uri": "/m/a"}, "outputs": [{"name": "a", "codec": "h264"}]},
         ("outputs", 0, "codec")),
        (
            TranscodeJobSpec,
            {"input": {"uri": "/m/a"}, "outputs": [{"name": "a", "video": {"codec": "h264", "bitRate": "1M"}}]},
            ("outputs", 0, "video", "bitRate"),
        ),
        (
            TranscodeJobSpec,
            {"input": {"uri": "/m/a"}, "outputs": [{"name": "a"}], "hls": {"segmentLength": 4}},
            ("hls", "segmentLength"),
        ),
        (WorkerPoolSpec, {"accelerator": "cpu", "replica": 2}, ("replica",)),
        (WorkerPoolSpec, {"accelerator": "cpu", "autoscaling": {"minReplicas": 1}}, ("autoscaling", "minReplicas")),
        (TranscodeJobStatus, {"phase": "Running", "percent": 5}, ("percent",)),
        (WorkerPoolStatus, {"readyWorkers": 1, "ready": 1}, ("ready",)),
    ],
    ids=["job-top", "job-input", "job-output", "job-video", "job-hls", "pool-top", "pool-autoscaling",
         "job-status", "pool-status"],
)  # fmt: skip
def test_unknown_fields_are_rejected(model: type[BaseModel], doc: dict[str, Any], where: tuple[Any, ...]) -> None:
    """Strict where we write: tests, examples, the CRD generator (model_validate)."""
    with pytest.raises(ValidationError) as info:
        model.model_validate(doc)
    errors = info.value.errors()
    assert [e["type"] for e in errors] == ["extra_forbidden"]
    assert errors[0]["loc"] == where


FUTURE_JOB = {
    "input": {"uri": "/m/a", "futureInputField": {"x": 1}},
    "outputs": [
        {"name": "a", "futureOutputField": "v2", "video": {"codec": "h264", "futureVideoField": 3}},
        {"name": "b", "futureOutputField": ["x"]},
    ],
    "futureSpecField": {"nested": True},
    "priority": 5,
}


def test_runtime_reads_ignore_fields_of_a_newer_version() -> None:
    """Version skew: a worker or operator one release behind reads a job that uses a newer CRD's field
    (under spec and under spec.outputs[]). It runs the job as it understands it, field for field."""
    spec = TranscodeJobSpec.from_api(FUTURE_JOB)
    assert spec.priority == 5
    assert [o.name for o in spec.outputs] == ["a", "b"]
    video = spec.outputs[0].video
    assert video is not None and video.codec == "h264"
    wire = spec.to_api()
    assert "futureSpecField" not in wire and "futureOutputField" not in wire["outputs"][0]
    assert wire == TranscodeJobSpec.model_validate(wire).to_api()  # what it kept is valid strictly
    assert TranscodeJobSpec.from_api_json(json.dumps(FUTURE_JOB)) == spec
    pool = WorkerPoolSpec.from_api({"accelerator": "cpu", "futurePoolField": 1, "autoscaling": {"futureKnob": 2}})
    assert pool.accelerator == "cpu"
    # Everything else is still checked at runtime.
    with pytest.raises(ValidationError, match="priority"):
        TranscodeJobSpec.from_api({**FUTURE_JOB, "priority": 5000})
    with pytest.raises(ValidationError) as info:
        TranscodeJobSpec.model_validate(FUTURE_JOB)
    assert {e["type"] for e in info.value.errors()} == {"extra_forbidden"}


def test_runtime_code_reads_api_objects_leniently() -> None:
    """Every read of an API object in the operator and the worker goes through from_api: a strict
    model_validate there would fail jobs of a newer CRD version (InvalidSpec)."""
    strict = [
        f"{path.relative_to(REPO)}:{n}"
        for path in sorted((REPO / "operator" / "ffrtmp").rglob("*.py"))
        if path.name != "base.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if "model_validate" in line
    ]
    assert strict == []


def test_field_constraints_are_enforced_by_the_model() -> None:
    with pytest.raises(ValidationError, match="outputs"):
        minimal_job(outputs=[])
    with pytest.raises(ValidationError, match="priority"):
        minimal_job(priority=5000)
    with pytest.raises(ValidationError, match="bitrate"):
        minimal_job(outputs=[{"name": "a", "video": {"bitrate": "6 Mbps"}}])
    with pytest.raises(ValidationError, match="accelerator"):
        WorkerPoolSpec.model_validate({"accelerator": "auto"})


# --- the generated CRDs ------------------------------------------------------------------------


def test_crd_has_no_non_structural_keywords() -> None:
    for crd_file in CRD_FILES.values():
        for path, node in nodes(openapi(crd_file), crd_file):
            if not isinstance(node, dict):
                continue
            for word in ("$ref", "$defs", "anyOf", "oneOf", "allOf", "not", "uniqueItems", "title", "const"):
                assert word not in node, f"{path} has {word}"
            assert node.get("additionalProperties") is not False, f"{path} has additionalProperties: false"
            assert "default" not in node or node["default"] is not None, f"{path} has a null default"
            # Every node says what it is (preserve-unknown objects included).
            assert "type" in node, f"{path} has no type"


def model_property_names(schema: Any) -> set[str]:
    """Every property name anywhere in a pydantic JSON schema (its $defs included)."""
    if isinstance(schema, list):
        return set().union(*(model_property_names(s) for s in schema))
    if not isinstance(schema, dict):
        return set()
    own = set(schema["properties"]) if isinstance(schema.get("properties"), dict) else set()
    return own.union(*(model_property_names(v) for v in schema.values()))


@pytest.mark.parametrize(
    ("crd_file", "section", "model"),
    [
        (JOB_CRD, "spec", TranscodeJobSpec), (JOB_CRD, "status", TranscodeJobStatus),
        (POOL_CRD, "spec", WorkerPoolSpec), (POOL_CRD, "status", WorkerPoolStatus),
    ],
)  # fmt: skip
def test_every_model_field_is_in_the_crd(crd_file: str, section: str, model: type[BaseModel]) -> None:
    """Even fields named like a JSON-schema keyword (an output's tags.title): the API server would prune
    a field the CRD lacks, silently."""
    in_crd = {name.rsplit(".", 1)[-1] for name, _ in properties(openapi(crd_file)["properties"][section], section)}
    missing = model_property_names(model.model_json_schema(by_alias=True)) - in_crd
    assert not missing, missing


def test_every_spec_and_status_property_is_described() -> None:
    missing = [
        path
        for section, schema in sections("spec", "status")
        for path, node in [(section, schema), *properties(schema, section)]
        if not node.get("description")
    ]
    assert missing == []


def test_every_spec_string_is_bounded() -> None:
    loose = []
    for section, schema in sections("spec"):
        for path, node in nodes(schema, section):
            if node.get("type") != "string" or path.split(":", 1)[1] in UNBOUNDED_SPEC_STRINGS:
                continue
            if "enum" in node:
                continue
            if "maxLength" not in node:
                loose.append(path)
    assert loose == []


def test_every_spec_integer_has_a_range() -> None:
    open_ended = [
        path
        for section, schema in sections("spec")
        for path, node in nodes(schema, section)
        if node.get("type") == "integer" and not ("minimum" in node and "maximum" in node)
    ]
    assert open_ended == []


def test_no_floats_in_spec() -> None:
    floats = [path for section, schema in sections("spec") for path, node in nodes(schema, section)
              if node.get("type") == "number"]  # fmt: skip
    assert floats == []


def test_every_array_is_bounded_and_has_a_list_type() -> None:
    bad = [
        path
        for section, schema in sections("spec", "status")
        for path, node in nodes(schema, section)
        if node.get("type") == "array"
        and ("maxItems" not in node or node.get("x-kubernetes-list-type") not in ("atomic", "set", "map"))
    ]
    assert bad == []
    # Map lists name their keys, and the keys are required.
    for section, schema in sections("spec", "status"):
        for path, node in nodes(schema, section):
            if node.get("x-kubernetes-list-type") == "map":
                keys = node["x-kubernetes-list-map-keys"]
                assert set(keys) <= set(node["items"]["required"]), path


def test_every_object_with_cel_rules_has_messages() -> None:
    for crd_file in CRD_FILES.values():
        for path, node in nodes(openapi(crd_file), crd_file):
            for rule in node.get("x-kubernetes-validations", []) if isinstance(node, dict) else []:
                assert rule.get("message"), f"{path}: {rule}"
                assert set(rule) <= {"rule", "message", "messageExpression", "fieldPath", "reason"}, path


def test_scalar_defaults_only() -> None:
    """Objects and lists never default in the CRD (the models fill them)."""
    for crd_file in CRD_FILES.values():
        for path, node in nodes(openapi(crd_file), crd_file):
            if isinstance(node, dict) and "default" in node:
                assert not isinstance(node["default"], (dict, list)), path


def columns(crd_file: str) -> list[tuple[str, str, int]]:
    return [(c["name"], c["jsonPath"], c.get("priority", 0)) for c in version(crd_file)["additionalPrinterColumns"]]


def test_transcodejob_printer_columns() -> None:
    assert columns(JOB_CRD) == [
        ("Status", ".status.phase", 0),
        ("Progress", ".status.progress.percent", 0),
        ("Pool", ".status.pool", 0),
        ("Accel", ".spec.accelerator", 0),
        ("Attempts", ".status.attempt", 0),
        ("Chunks", ".status.chunks.summary", 0),
        ("Age", ".metadata.creationTimestamp", 0),
        ("Worker", ".status.worker", 1),
        ("Node", ".status.node", 1),
        ("Message", ".status.message", 1),
    ]
    for col in version(JOB_CRD)["additionalPrinterColumns"]:
        assert col["description"], col
        assert col["type"] in ("string", "integer", "number", "date", "boolean"), col


def test_workerpool_printer_columns() -> None:
    assert columns(POOL_CRD) == [
        ("Accel", ".spec.accelerator", 0),
        ("Ready", ".status.readyWorkers", 0),
        ("Desired", ".status.desiredWorkers", 0),
        ("Busy", ".status.busySlots", 0),
        ("Queued", ".status.queuedJobs", 0),
        ("Max", ".spec.maxWorkers", 0),
        ("Age", ".metadata.creationTimestamp", 0),
        ("Encoders", ".status.encoders", 1),
    ]
    for col in version(POOL_CRD)["additionalPrinterColumns"]:
        assert col["description"], col


def test_printer_columns_point_at_schema_fields() -> None:
    for crd_file in CRD_FILES.values():
        root = openapi(crd_file)
        for col in version(crd_file)["additionalPrinterColumns"]:
            if col["jsonPath"].startswith(".metadata."):
                continue
            node = root
            for part in col["jsonPath"].strip(".").split("."):
                node = node["properties"][part]
            expected = {"string": "string", "integer": "integer", "number": "number", "date": "string"}
            assert node["type"] == expected[col["type"]], col


def test_names_short_names_and_category() -> None:
    job, pool = all_crds()[JOB_CRD]["spec"], all_crds()[POOL_CRD]["spec"]
    assert job["group"] == pool["group"] == "ffmpeg-rtmp.io"
    assert job["scope"] == pool["scope"] == "Namespaced"
    assert job["names"] == {
        "kind": "TranscodeJob",
        "listKind": "TranscodeJobList",
        "plural": "transcodejobs",
        "singular": "transcodejob",
        "shortNames": ["tj"],
        "categories": [CATEGORY],
    }
    assert pool["names"]["shortNames"] == ["wp"]
    assert pool["names"]["plural"] == "workerpools"
    assert pool["names"]["categories"] == ["ffmpeg-rtmp"]
    for spec in (job, pool):
        assert [v["name"] for v in spec["versions"]] == ["v1alpha1"]
        assert spec["versions"][0]["served"] and spec["versions"][0]["storage"]


def test_subresources_and_selectable_fields() -> None:
    assert version(JOB_CRD)["subresources"] == {"status": {}}
    assert version(JOB_CRD)["selectableFields"] == [
        {"jsonPath": ".status.worker"},
        {"jsonPath": ".status.phase"},
        {"jsonPath": ".status.pool"},
    ]
    assert version(POOL_CRD)["subresources"] == {
        "status": {},
        "scale": {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        },
    }
    # The scale paths exist in the schema with the types /scale needs.
    pool = openapi(POOL_CRD)["properties"]
    assert pool["spec"]["properties"]["replicas"]["type"] == "integer"
    assert pool["status"]["properties"]["replicas"]["type"] == "integer"
    assert pool["status"]["properties"]["selector"]["type"] == "string"
    job = openapi(JOB_CRD)["properties"]["status"]["properties"]
    for field in ("worker", "phase", "pool"):
        assert job[field]["type"] == "string", field


def test_spec_is_required() -> None:
    for crd_file in CRD_FILES.values():
        assert openapi(crd_file)["required"] == ["spec"]


@pytest.mark.parametrize("folder", ["crds", "charts/ffmpeg-rtmp/crds"])
def test_committed_crds_match_the_models(folder: str) -> None:
    """`ffrtmp crds` was run after the last model change: the YAML is byte for byte what the models render."""
    rendered = {name: render(doc) for name, doc in all_crds().items()}
    on_disk = {p.name: p.read_text() for p in sorted((REPO / folder).glob("*.yaml"))}
    assert set(on_disk) == set(rendered), f"{folder}: run `ffrtmp crds`"
    for name, text in rendered.items():
        assert on_disk[name] == text, f"{folder}/{name} is stale: run `ffrtmp crds`"
