"""Generate CustomResourceDefinitions from the pydantic models.

Pydantic's JSON schema is turned into a structural OpenAPI v3 schema the API server accepts:
`$ref`s inlined, `anyOf [X, null]` collapsed to X, titles dropped, `null` defaults dropped.
Defaulting policy: scalar fields with a default carry it in the CRD, so the API server stores
effective values and `kubectl get -o yaml` shows them; objects and lists never default in the CRD
(the models fill them when the operator reads a resource).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from ffrtmp.api.constants import GROUP, JOB_PLURAL, POOL_PLURAL, VERSION
from ffrtmp.api.job import TranscodeJobSpec, TranscodeJobStatus
from ffrtmp.api.pool import WorkerPoolSpec, WorkerPoolStatus

Schema = dict[str, Any]
CATEGORY = "ffmpeg-rtmp"
CRD_FILES = {
    JOB_PLURAL: f"{GROUP}_{JOB_PLURAL}.yaml",
    POOL_PLURAL: f"{GROUP}_{POOL_PLURAL}.yaml",
}


def _inline(node: Any, defs: dict[str, Schema]) -> Any:
    if isinstance(node, list):
        return [_inline(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        target = copy.deepcopy(defs[node.pop("$ref").split("/")[-1]])
        # The field's own description wins over the model's docstring.
        node = {**target, **node}
    if "allOf" in node and len(node["allOf"]) == 1:
        inner = node.pop("allOf")[0]
        node = {**_inline(inner, defs), **node}
    if "anyOf" in node:
        variants = [v for v in node["anyOf"] if v.get("type") != "null"]
        if len(variants) != 1:
            raise ValueError(f"not structural: anyOf with {len(variants)} non-null variants: {node}")
        del node["anyOf"]
        node = {**_inline(variants[0], defs), **node}
    if isinstance(node.get("title"), str):  # pydantic's title keyword, not a property named "title"
        del node["title"]
    if node.get("additionalProperties") is False:
        # extra="forbid" in the models (strict in tests); the API server prunes or refuses unknown fields.
        del node["additionalProperties"]
    if "default" in node and (node["default"] is None or isinstance(node["default"], (dict, list))):
        del node["default"]
    if "const" in node:
        node["enum"] = [node.pop("const")]
    return {k: _inline(v, defs) if k not in ("default", "enum") else v for k, v in node.items()}


def _order(node: Any) -> Any:
    """Stable, readable key order: description first, properties last."""
    if isinstance(node, list):
        return [_order(n) for n in node]
    if not isinstance(node, dict):
        return node
    first = [k for k in ("description", "type") if k in node]
    last = [k for k in ("properties", "items", "additionalProperties") if k in node]
    middle = sorted(k for k in node if k not in first and k not in last)
    out: Schema = {}
    for key in first + middle + last:
        value = node[key]
        if key == "properties":
            out[key] = {name: _order(v) for name, v in value.items()}
        elif key in ("x-kubernetes-validations", "enum", "required", "x-kubernetes-list-map-keys", "default"):
            out[key] = value
        else:
            out[key] = _order(value)
    return out


def structural_schema(model: type[BaseModel]) -> Schema:
    """The model's JSON schema in the structural form the API server requires."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    schema = _inline(raw, defs)
    return dict(_order(schema))


def _root_schema(description: str, spec: type[BaseModel], status: type[BaseModel]) -> Schema:
    return {
        "description": description,
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "APIVersion of this object."},
            "kind": {"type": "string", "description": "Kind of this object."},
            "metadata": {"type": "object"},
            "spec": structural_schema(spec),
            "status": structural_schema(status),
        },
    }


def _column(name: str, type_: str, path: str, description: str, priority: int = 0) -> Schema:
    col: Schema = {"name": name, "type": type_, "jsonPath": path, "description": description}
    if priority:
        col["priority"] = priority
    return col


def _crd(
    kind: str,
    plural: str,
    short: str,
    schema: Schema,
    columns: list[Schema],
    subresources: Schema,
    selectable: list[str],
) -> Schema:
    version: Schema = {
        "name": VERSION,
        "served": True,
        "storage": True,
        "schema": {"openAPIV3Schema": schema},
        "subresources": subresources,
        "additionalPrinterColumns": columns,
    }
    if selectable:
        version["selectableFields"] = [{"jsonPath": p} for p in selectable]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "ffmpeg-rtmp", "app.kubernetes.io/part-of": "ffmpeg-rtmp"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short],
                "categories": [CATEGORY],
            },
            "versions": [version],
        },
    }


def transcodejob_crd() -> Schema:
    age = _column("Age", "date", ".metadata.creationTimestamp", "Time since the job was created.")
    columns = [
        _column("Status", "string", ".status.phase", "Display phase of the job."),
        _column("Progress", "number", ".status.progress.percent", "Percent done of the current attempt."),
        _column("Pool", "string", ".status.pool", "WorkerPool of the current attempt."),
        _column("Accel", "string", ".spec.accelerator", "Requested encoder family."),
        _column("Attempts", "integer", ".status.attempt", "Attempts so far."),
        _column("Chunks", "string", ".status.chunks.summary", "Chunked jobs: chunks encoded / total."),
        age,
        _column("Worker", "string", ".status.worker", "Worker Pod of the current attempt.", 1),
        _column("Node", "string", ".status.node", "Node of that worker.", 1),
        _column("Message", "string", ".status.message", "Latest status message.", 1),
    ]
    return _crd(
        "TranscodeJob",
        JOB_PLURAL,
        "tj",
        _root_schema(
            "A transcode of one input into one or more renditions, run by a WorkerPool.",
            TranscodeJobSpec,
            TranscodeJobStatus,
        ),
        columns,
        {"status": {}},
        [".status.worker", ".status.phase", ".status.pool"],
    )


def workerpool_crd() -> Schema:
    columns = [
        _column("Accel", "string", ".spec.accelerator", "Encoder family of the pool."),
        _column("Ready", "integer", ".status.readyWorkers", "Workers that passed their encoder self-test."),
        _column("Desired", "integer", ".status.desiredWorkers", "Worker count the pool is driven to."),
        _column("Busy", "integer", ".status.busySlots", "Slots running a job."),
        _column("Queued", "integer", ".status.queuedJobs", "Jobs waiting for this pool."),
        _column("Max", "integer", ".spec.maxWorkers", "Upper bound of workers."),
        _column("Age", "date", ".metadata.creationTimestamp", "Time since the pool was created."),
        _column("Encoders", "string", ".status.encoders", "Encoders every ready worker passed its self-test with.", 1),
    ]
    subresources = {
        "status": {},
        "scale": {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        },
    }
    return _crd(
        "WorkerPool",
        POOL_PLURAL,
        "wp",
        _root_schema(
            "A pool of worker Pods on one kind of node, sized by its queue.",
            WorkerPoolSpec,
            WorkerPoolStatus,
        ),
        columns,
        subresources,
        [],
    )


def all_crds() -> dict[str, Schema]:
    """File name -> CRD document."""
    return {CRD_FILES[JOB_PLURAL]: transcodejob_crd(), CRD_FILES[POOL_PLURAL]: workerpool_crd()}


def render(doc: Schema) -> str:
    header = "# Generated by `ffrtmp crds` from operator/ffrtmp/api; do not edit.\n"
    return header + yaml.safe_dump(doc, sort_keys=False, width=100, allow_unicode=True)


def write_crds(*folders: Path) -> list[Path]:
    """Write every CRD into each folder; returns the files written."""
    written = []
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        for name, doc in all_crds().items():
            path = folder / name
            path.write_text(render(doc))
            written.append(path)
    return written
