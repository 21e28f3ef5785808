"""Fixtures of the integration tests: a farm per test (the operator and stand-in workers for one namespace,
with media and outputs), and a client and bucket of the session's S3 server."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ffrtmp.storage.s3 import S3Client
from helpers import Service, TestCluster, operator_argv, start_service, transcode_job, wait_for, workers_argv
from s3server import S3Server


@dataclass
class Farm:
    cluster: TestCluster
    namespace: str
    root: Path
    media: Path
    output: Path
    services: dict[str, Service] = field(default_factory=dict)

    def start_operator(self, *extra: str, name: str = "operator") -> Service:
        svc = start_service(name, operator_argv(self.cluster, self.namespace, *extra), self.root / "logs")
        self.services[name] = svc
        return svc

    def start_workers(self, *extra: str, env: dict[str, str] | None = None) -> Service:
        state = self.root / "workers"
        argv = workers_argv(self.cluster, self.namespace, state, *extra)
        for k, v in (env or {}).items():
            argv += ["--env", f"{k}={v}"]
        svc = start_service("workers", argv, self.root / "logs")
        self.services["workers"] = svc
        return svc

    def pool(self, name: str, accelerator: str = "cpu", **spec: Any) -> dict[str, Any]:
        doc = {
            "apiVersion": "ffmpeg-rtmp.io/v1alpha1",
            "kind": "WorkerPool",
            "metadata": {"name": name},
            "spec": {
                "accelerator": accelerator,
                "mediaRoots": [str(self.media)],
                "outputRoot": str(self.output),
                "terminationGracePeriodSeconds": 20,
                **spec,
            },
        }
        self.cluster.apply(doc, self.namespace)
        return doc

    def job_doc(self, name: str, uri: str, outputs: list[dict[str, Any]] | None = None, **spec: Any) -> dict[str, Any]:
        """A TranscodeJob (default: one fast h264 output); `realtime=True` paces the encode (helpers.transcode_job)."""
        fast = [{"name": "out", "video": {"codec": "h264", "crf": 32, "preset": "ultrafast"}}]
        return transcode_job(name, uri, outputs or fast, **spec)

    def job(self, name: str, uri: str, outputs: list[dict[str, Any]] | None = None, **spec: Any) -> dict[str, Any]:
        doc = self.job_doc(name, uri, outputs, **spec)
        self.cluster.apply(doc, self.namespace)
        return doc

    def get_job(self, name: str) -> dict[str, Any]:
        return self.cluster.get("tj", name, self.namespace)

    def jobs(self) -> list[dict[str, Any]]:
        return self.cluster.list("tj", self.namespace)

    def phase(self, name: str) -> str | None:
        return (self.get_job(name).get("status") or {}).get("phase")

    def wait_phase(self, name: str, *phases: str, timeout: float = 90) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            job = self.get_job(name)
            return job if (job.get("status") or {}).get("phase") in phases else None

        try:
            return wait_for(check, timeout, f"{name} to be {'/'.join(phases)}")  # type: ignore[no-any-return]
        except AssertionError:
            print(json.dumps(self.get_job(name).get("status"), indent=1))
            raise

    def wait_all(self, phases: tuple[str, ...] = ("Succeeded", "Failed"), timeout: float = 180) -> list[dict[str, Any]]:
        def check() -> list[dict[str, Any]] | None:
            jobs = self.jobs()
            done = [j for j in jobs if (j.get("status") or {}).get("phase") in phases]
            return jobs if len(done) == len(jobs) else None

        try:
            return wait_for(check, timeout, "all jobs to finish", interval=0.5)  # type: ignore[no-any-return]
        except AssertionError:
            for j in self.jobs():
                s = j.get("status") or {}
                if s.get("phase") not in phases:
                    print(j["metadata"]["name"], json.dumps(s)[:1500])
            raise

    def workers_state(self) -> dict[str, Any]:
        path = self.root / "workers" / "workers.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def events(self, name: str) -> list[dict[str, Any]]:
        out = self.cluster.kubectl(
            "get",
            "events",
            "-n",
            self.namespace,
            "--field-selector",
            f"involvedObject.name={name}",
            "-o",
            "json",
        ).stdout
        return sorted(json.loads(out)["items"], key=lambda e: e.get("firstTimestamp") or "")

    def everything_said(self) -> str:
        """Every job (spec and status), Event and log line of the farm (operator, stand-in kubelet, workers):
        where a credential must never appear."""
        texts = [json.dumps(self.jobs())]
        texts.append(self.cluster.kubectl("get", "events", "-n", self.namespace, "-o", "json").stdout)
        texts += [svc.log.read_text(errors="replace") for svc in self.services.values()]
        texts += [p.read_text(errors="replace") for p in (self.root / "workers").glob("*")
                  if p.is_file() and p.suffix in (".log", ".json")]  # fmt: skip
        return "\n".join(texts)

    def dump(self) -> None:
        for svc in self.services.values():
            print(f"--- {svc.name} ---\n{svc.tail(60)}")
        for log in (self.root / "workers").glob("*.log"):
            print(f"--- {log.name} ---\n" + "\n".join(log.read_text(errors="replace").splitlines()[-30:]))


@pytest.fixture
def farm(cluster: TestCluster, namespace: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Farm]:
    media, output = tmp_path / "media", tmp_path / "output"
    media.mkdir()
    output.mkdir()
    f = Farm(cluster, namespace, tmp_path, media, output)
    yield f
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        f.dump()
    for svc in reversed(list(f.services.values())):
        svc.stop()
    # The stand-in kubelet stops its workers; any left over must not outlive the test.
    for info in f.workers_state().values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(info["pid"]), 9)


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{rep.when}", rep)


@pytest.fixture
async def s3(s3_server: S3Server) -> AsyncIterator[S3Client]:
    """A client of the session's S3 server, as its root user."""
    async with S3Client(s3_server.endpoint, s3_server.credentials, backoff_seconds=0.05) as client:
        yield client


@pytest.fixture
async def bucket(s3: S3Client) -> str:
    """A new, empty bucket."""
    name = f"test-{secrets.token_hex(4)}"
    await s3.create_bucket(name)
    return name
