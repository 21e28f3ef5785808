"""Names shared by the API, the operator and the worker."""

from typing import Final

GROUP: Final = "ffmpeg-rtmp.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
JOB_PLURAL: Final = "transcodejobs"
POOL_PLURAL: Final = "workerpools"

LABEL_POOL: Final = f"{GROUP}/pool"
LABEL_WORKER: Final = f"{GROUP}/worker"
# On a chunked job's children: the parent's name, and the part (`plan`, `audio`, `stitch` or the chunk number).
LABEL_PARENT: Final = f"{GROUP}/parent"
LABEL_CHUNK: Final = f"{GROUP}/chunk"
# The condition of a job with spec.chunking On or Auto: True when it runs chunked, False when single-pass.
CHUNKED_CONDITION: Final = "Chunked"
# On worker Pods: the leaseTransitions of the leader Lease when the creating replica led (its term).
LABEL_LEADER_TERM: Final = f"{GROUP}/leader-term"
LABEL_COMPONENT: Final = "app.kubernetes.io/component"
LABEL_NAME: Final = "app.kubernetes.io/name"
LABEL_INSTANCE: Final = "app.kubernetes.io/instance"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
APP_NAME: Final = "ffmpeg-rtmp"
WORKER_COMPONENT: Final = "worker"

# Annotations a worker sets on its own Lease, read by the operator for pool status.
ANNOTATION_ENCODER: Final = f"{GROUP}/encoder-self-test"
# The encoders that passed the self-test, comma-separated ("libx264,libx265,libsvtav1"); a Lease
# without it (a worker from before the capability test) is taken as able to run any codec.
ANNOTATION_ENCODERS: Final = f"{GROUP}/encoders"
ANNOTATION_STORAGE: Final = f"{GROUP}/storage-check"
ANNOTATION_DRAINING: Final = f"{GROUP}/draining"

LEASE_PREFIX: Final = "ffrtmp-worker-"
