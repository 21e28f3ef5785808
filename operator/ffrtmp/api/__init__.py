"""The custom resources, as pydantic models: the single source of the CRDs."""

from ffrtmp.api.constants import API_VERSION, GROUP, VERSION
from ffrtmp.api.job import TranscodeJob, TranscodeJobSpec, TranscodeJobStatus
from ffrtmp.api.pool import WorkerPool, WorkerPoolSpec, WorkerPoolStatus

__all__ = [
    "API_VERSION",
    "GROUP",
    "VERSION",
    "TranscodeJob",
    "TranscodeJobSpec",
    "TranscodeJobStatus",
    "WorkerPool",
    "WorkerPoolSpec",
    "WorkerPoolStatus",
]
