"""The write cadence the operator publishes on a worker's Lease, and how the worker applies it.

The annotation `ffmpeg-rtmp.io/cadence: renew=10,lease=30,progress=20` (seconds) says how often the
worker renews its Lease, the Lease duration it must write, and how often each running job reports
progress. The operator writes it only when the farm's size needs longer periods than a worker's own
configuration (controller/cadence.py); the worker reads it back in every renewal's answer and never
goes below its own configuration, so a small farm runs exactly as configured.

When the progress period changes, each running job's next report is drawn between now and one new
period after its last report (next_progress_due): every job of a farm changes period within one
renewal of the others, and reports kept one period after the last would stay in the band the old
period put them in, narrower with every step (figure 9 in BENCHMARKS.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from ffrtmp.api.constants import GROUP

ANNOTATION_CADENCE: Final = f"{GROUP}/cadence"


@dataclass(frozen=True, slots=True)
class Cadence:
    renew_seconds: float
    lease_seconds: float
    progress_seconds: float

    def annotation(self) -> str:
        return f"renew={self.renew_seconds:g},lease={self.lease_seconds:g},progress={self.progress_seconds:g}"

    @classmethod
    def parse(cls, text: object) -> Cadence | None:
        """The annotation's value; None for an absent or malformed one (then the worker's own settings hold)."""
        if not isinstance(text, str):
            return None
        fields: dict[str, float] = {}
        for part in text.split(","):
            name, _, value = part.partition("=")
            try:
                fields[name.strip()] = float(value)
            except ValueError:
                return None
        try:
            cadence = cls(fields["renew"], fields["lease"], fields["progress"])
        except KeyError:
            return None
        if min(cadence.renew_seconds, cadence.lease_seconds, cadence.progress_seconds) <= 0:
            return None
        return cadence

    def at_least(self, floor: Cadence) -> Cadence:
        """Each period the longer of the two: the published cadence only ever slows a worker down."""
        return Cadence(
            max(self.renew_seconds, floor.renew_seconds),
            max(self.lease_seconds, floor.lease_seconds),
            max(self.progress_seconds, floor.progress_seconds),
        )


def next_progress_due(last: float, period: float, previous: float | None, now: float, draw: float) -> float:
    """When a job's next progress report is due (monotonic seconds). `last`: its last report (or its
    Running write); `period`: the progress period now; `previous`: the period the report due now was
    scheduled with (None: none yet); `draw`: uniform in [0, 1). One period after the last report,
    unless the period changed, when a point is drawn, so that the farm's reports spread over the new
    period: for a longer period, between now and one new period after the last report (never older
    than a period); for a shorter one, within one new period from now but no later than the old
    period had it (the reports the shorter period makes overdue do not all go at once)."""
    due = last + period
    if previous is None or previous == period:
        return due
    if period > previous:
        return now + draw * max(due - now, 0.0)
    return min(last + previous, now + draw * period)
