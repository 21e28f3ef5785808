"""merge_patched: the JSON merge patch (RFC 7386) a worker's status update applies locally before it PUTs
the status, where a patch would have left the merge to the API server."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from ffrtmp.kube.client import merge_patched

pytestmark = pytest.mark.unit


# RFC 7386, Appendix A: every example, as (original, patch, result).
RFC_7386_EXAMPLES = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize(("original", "patch", "result"), RFC_7386_EXAMPLES, ids=json.dumps)
def test_rfc_7386_examples(original: Any, patch: Any, result: Any) -> None:
    assert merge_patched(original, patch) == result


def test_a_status_write_merges_nested_objects_deletes_nulls_and_replaces_lists() -> None:
    status = {
        "phase": "Running", "worker": "cpu-a", "attempt": 2, "restarts": 1, "reason": "Retrying",
        "progress": {"percent": 42.0, "fps": 25.0, "speed": 1.0},
        "conditions": [{"type": "Running", "status": "True"}, {"type": "Complete", "status": "False"}],
        "result": {"attempt": 1, "worker": "cpu-b", "outcome": "Failed", "stderrTail": "boom"},
    }  # fmt: skip
    before = copy.deepcopy(status)
    change = {
        "phase": "Succeeded",
        "progress": {"percent": 100.0, "speed": None},
        "restarts": None,
        "reason": None,
        "conditions": [{"type": "Complete", "status": "True"}],
        "result": {"attempt": 2, "worker": "cpu-a", "outcome": "Succeeded", "stderrTail": None},
        "outputs": [{"name": "out", "bytes": 10, "codec": None}],
        "gone": None,  # deleting what is not there is no error
    }
    assert merge_patched(status, change) == {
        "phase": "Succeeded", "worker": "cpu-a", "attempt": 2,
        "progress": {"percent": 100.0, "fps": 25.0},
        "conditions": [{"type": "Complete", "status": "True"}],
        "result": {"attempt": 2, "worker": "cpu-a", "outcome": "Succeeded"},
        # A list is taken as it is, nulls inside it included: RFC 7386 merges objects only.
        "outputs": [{"name": "out", "bytes": 10, "codec": None}],
    }  # fmt: skip
    assert status == before, "the original is not changed"


def test_the_patch_is_not_changed_and_nulls_inside_new_objects_are_dropped() -> None:
    change = {"progress": {"percent": 1.0, "fps": None}}
    before = copy.deepcopy(change)
    out = merge_patched({}, change)
    assert out == {"progress": {"percent": 1.0}}
    assert change == before
    out["progress"]["percent"] = 2.0
    assert change == before, "the objects of the patch are copied into the result, not shared"
