"""The Event budget on the local control plane. With --event-rate 1 and --event-burst 2, the Normal
Events of twenty fast jobs (Scheduled, Queued, Started, Completed) are mostly not written: the operator
writes no more than the bucket allows, sums the rest up in EventsSampled Events against the pool whose
counts add up to what it held back, and writes every Warning."""

from __future__ import annotations

import calendar
import json
import re
import time
import urllib.request
from collections import Counter
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import Farm
from ffrtmp.dev.cluster import free_port
from helpers import make_clip, wait_for

pytestmark = pytest.mark.integration
RATE, BURST, SUMMARY_SECONDS = 1, 2, 5
GOOD, MISSING = 20, 2
SUMMARY = re.compile(r"^(.+) events not recorded in the last \d+s")


def operator_events(farm: Farm) -> list[dict[str, Any]]:
    out = farm.cluster.kubectl("get", "events", "-n", farm.namespace, "-o", "json").stdout
    return [e for e in json.loads(out)["items"] if e.get("reportingComponent") == "ffmpeg-rtmp.io/operator"]


def summarized(events: list[dict[str, Any]]) -> Counter[str]:
    """Reason -> Events counted in the EventsSampled summaries."""
    counts: Counter[str] = Counter()
    for e in events:
        if e["reason"] == "EventsSampled":
            m = SUMMARY.match(e["message"])
            assert m, e["message"]
            for part in m.group(1).split(", "):
                n, reason = part.split(" ")
                counts[reason] += int(n)
    return counts


def events_total(port: int) -> dict[tuple[str, str, str], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {
        (s.labels["type"], s.labels["reason"], s.labels["outcome"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "ffrtmp_events_total"
    }


def test_normal_events_stay_within_the_budget_the_rest_is_summed_up_and_every_warning_is_written(farm: Farm) -> None:
    clip = make_clip(farm.media / "clip.mp4", seconds=1, size="160x120")
    farm.pool("cpu", "cpu", maxConcurrentJobs=4, minWorkers=2, maxWorkers=2, autoscaling={"enabled": False})
    port = free_port()
    farm.start_operator(
        "--event-rate", str(RATE), "--event-burst", str(BURST), "--event-summary-seconds", str(SUMMARY_SECONDS),
        "--job-events", "all", "--metrics-port", str(port),
    )  # fmt: skip
    farm.start_workers()
    wait_for(lambda: (farm.cluster.get("wp", "cpu", farm.namespace).get("status") or {}).get("readyWorkers") == 2,
             60, "2 ready workers")  # fmt: skip
    docs = [farm.job_doc(f"ok-{i:02d}", str(clip), resources={"limits": {"cpu": "1"}}) for i in range(GOOD)]
    docs += [farm.job_doc(f"missing-{i}", str(farm.media / "nope.mp4")) for i in range(MISSING)]
    farm.cluster.apply(docs, farm.namespace)
    jobs = farm.wait_all(timeout=240)
    phases = Counter((j["status"]["phase"], j["status"].get("reason")) for j in jobs)
    assert phases == {("Succeeded", None): GOOD, ("Failed", "InputNotFound"): MISSING}, phases

    # Once the jobs are done nothing new is held back: every Event held is in a summary within the
    # summary interval, plus a token's wait.
    def all_summed_up() -> tuple[list[dict[str, Any]], dict[tuple[str, str, str], float]] | None:
        events, total = operator_events(farm), events_total(port)
        sampled = Counter({reason: int(n) for (_, reason, outcome), n in total.items() if outcome == "sampled"})
        return (events, total) if sampled and summarized(events) == sampled else None

    wait_for(all_summed_up, 60, "every held-back Event in an EventsSampled summary")
    time.sleep(1)  # a write the API server had answered may still be counted by the operator
    events, total = operator_events(farm), events_total(port)
    written = Counter((e["type"], e["reason"]) for e in events)
    counted = summarized(events)

    # Every Warning written, none held back.
    failed = {e["involvedObject"]["name"] for e in events if (e["type"], e["reason"]) == ("Warning", "InputNotFound")}
    assert failed == {f"missing-{i}" for i in range(MISSING)}
    assert not [k for k in total if k[0] == "Warning" and k[2] != "written"], total
    assert {(t, r): n for (t, r, o), n in total.items() if o == "written"} == dict(written), (total, written)

    # Each job was scheduled once and each good one completed once: what was not written was counted.
    assert written[("Normal", "Scheduled")] + counted["Scheduled"] == GOOD + MISSING
    assert written[("Normal", "Completed")] + counted["Completed"] == GOOD
    assert counted["Scheduled"] > 0 and counted["Completed"] > 0  # the budget did hold Events back
    for e in events:
        if e["reason"] == "EventsSampled":
            assert (e["involvedObject"]["kind"], e["involvedObject"]["name"]) == ("WorkerPool", "cpu"), e

    # Normal Events (summaries included) within RATE * window + BURST over every window. Timestamps have
    # whole seconds: the writes stamped a..b happened within b - a + 1 seconds.
    normal = [e["firstTimestamp"] for e in events if e["type"] == "Normal"]
    stamps = sorted(calendar.timegm(time.strptime(t, "%Y-%m-%dT%H:%M:%SZ")) for t in normal)
    print(f"Normal Events written {dict(written)}, summed up {dict(counted)}, over {stamps[-1] - stamps[0] + 1}s")
    for i, start in enumerate(stamps):
        for j in range(i, len(stamps)):
            assert j - i + 1 <= RATE * (stamps[j] - start + 1) + BURST, (start, stamps[j], j - i + 1)
