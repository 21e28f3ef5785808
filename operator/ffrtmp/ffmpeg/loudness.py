"""Two-pass EBU R128 loudness normalisation with ffmpeg's `loudnorm`, as planner data.

Pass 1 (`LoudnessMeasurePass`, one per distinct source audio stream) decodes that stream
alone into the null muxer through `loudnorm=...:print_format=json`; loudnorm prints its
measurement as a JSON object on stderr (info level) when the graph closes. The encode
passes carry a placeholder where the measured values go; `apply_measurements` (pure) fills
it in from `parse_loudnorm_output`, giving

    loudnorm=I=-23:TP=-1:LRA=11:measured_I=..:measured_TP=..:measured_LRA=..:
        measured_thresh=..:linear=true:print_format=none,aformat=sample_rates=48000

The figures describe the input, not the target, so renditions with different targets share
one measurement; loudnorm's `target_offset` is not passed on (it belongs to the measuring
pass's target, and in linear mode loudnorm computes the gain itself: target - measured_I).
`linear=true` applies one gain to the whole programme; loudnorm itself falls back to its
dynamic mode when the source's range or peaks make one gain miss the targets. The trailing
`aformat` brings loudnorm's 192 kHz working rate back to the output rate (ffmpeg 5.1 cannot
link an explicit `aresample` after loudnorm to the encoder). A silent source
(measured integrated loudness -inf) gets single-pass loudnorm: there is nothing to measure.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from ffrtmp.api.job import LoudnessSpec

DEFAULT_OUTPUT_SAMPLE_RATE = 48000
_PLACEHOLDER = "@measured({stream})@"
_JSON_OBJECT_RE = re.compile(r"\{[^{}]*\}", re.S)
_MEASURED_KEYS = (
    ("measured_I", "input_i"),
    ("measured_TP", "input_tp"),
    ("measured_LRA", "input_lra"),
    ("measured_thresh", "input_thresh"),
)


@dataclass(frozen=True)
class LoudnessMeasurePass:
    """A measuring ffmpeg run for the source audio stream `stream` (e.g. `0:a:1`)."""

    stream: str
    argv: list[str]


@dataclass(frozen=True)
class LoudnessMeasurement:
    """loudnorm's first-pass figures, as the decimal strings it printed."""

    input_i: str
    input_tp: str
    input_lra: str
    input_thresh: str

    @property
    def measurable(self) -> bool:
        """False for silence: loudnorm reports -inf and a measured pass would divide by it."""
        return all(_finite(getattr(self, key)) for _, key in _MEASURED_KEYS)


class LoudnessParseError(ValueError):
    """The measuring pass did not print loudnorm's JSON."""


def _finite(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def placeholder(stream: str) -> str:
    """What the encode passes carry until the measurement of `stream` is known."""
    return _PLACEHOLDER.format(stream=stream)


def target_options(loudness: LoudnessSpec) -> str:
    return f"I={loudness.integrated_lufs}:TP={loudness.true_peak_db}:LRA={loudness.loudness_range_lu}"


def measure_filter(loudness: LoudnessSpec) -> str:
    return f"loudnorm={target_options(loudness)}:print_format=json"


def apply_filter(loudness: LoudnessSpec, stream: str, sample_rate: int | None) -> str:
    """The encode pass's audio filter, with the placeholder for `stream`'s measurement."""
    rate = sample_rate or DEFAULT_OUTPUT_SAMPLE_RATE
    return f"loudnorm={target_options(loudness)}:{placeholder(stream)}:print_format=none,aformat=sample_rates={rate}"


def parse_loudnorm_output(stderr: str) -> LoudnessMeasurement:
    """The last loudnorm JSON object in a measuring pass's stderr."""
    for match in reversed(_JSON_OBJECT_RE.findall(stderr)):
        try:
            document = json.loads(match)
        except ValueError:
            continue
        if isinstance(document, dict) and all(key in document for _, key in _MEASURED_KEYS):
            return LoudnessMeasurement(**{key: str(document[key]).strip() for _, key in _MEASURED_KEYS})
    raise LoudnessParseError("the loudness measuring pass printed no loudnorm measurement")


def measured_options(measurement: LoudnessMeasurement) -> str:
    """`measured_I=..:...:linear=true` for a measurable source; empty (single pass) for silence."""
    if not measurement.measurable:
        return ""
    values = ":".join(f"{option}={getattr(measurement, key)}" for option, key in _MEASURED_KEYS)
    return f"{values}:linear=true"


def apply_measurements(passes: list[list[str]], measurements: Mapping[str, LoudnessMeasurement]) -> list[list[str]]:
    """`passes` with every placeholder replaced by its stream's measured values."""
    replacements = {placeholder(stream): measured_options(m) for stream, m in measurements.items()}

    def fill(item: str) -> str:
        for token, options in replacements.items():
            if token in item:
                item = item.replace(f":{token}", f":{options}" if options else "")
        return item

    filled = [[fill(item) for item in argv] for argv in passes]
    leftover = [item for argv in filled for item in argv if "@measured(" in item]
    if leftover:
        raise LoudnessParseError(f"no loudness measurement for {leftover[0]}")
    return filled
