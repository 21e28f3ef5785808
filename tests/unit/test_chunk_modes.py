"""Chunking mode Auto and hls ladders: the mode decider (properties), the Auto parent's steps over a
store, what can be chunked, and the hls argv the chunk and stitch tasks share with a single pass."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_chunked import NOW, NS, PLAN, SETTINGS, child, creates, decide, parent, parent_patch

from ffrtmp.api.constants import CHUNKED_CONDITION
from ffrtmp.api.job import AudioSpec, ChunkTask, TranscodeJobSpec, VideoSpec
from ffrtmp.conditions import condition
from ffrtmp.controller.chunking import MICROS, choose_mode, plan_chunks
from ffrtmp.controller.lifecycle import PatchStatus, decide_jobs
from ffrtmp.controller.state import Store, parse_job
from ffrtmp.ffmpeg.argv import BASE_ARGS, ROLL_SHIFT_SECONDS, build_encode_plan
from ffrtmp.ffmpeg.chunks import (
    CHUNK_VBV_INIT,
    CHUNK_VBV_SECONDS,
    DURATION_PROBE_ARGS,
    KEYFRAME_PROBE_ARGS,
    ROLL_AFTER_US,
    ROLL_BEFORE_US,
    TimeRange,
    audio_files,
    audio_plan,
    chunk_rate_control,
    chunk_roll,
    chunk_video_plan,
    chunking_refusal,
    cuts_on_keyframes,
    input_share,
    plan_probe_args,
    stitch_plan,
)

pytestmark = pytest.mark.unit

Obj = dict[str, Any]
refusals = st.one_of(st.none(), st.just("output a: fps is not supported with chunking yet"))
durations = st.one_of(st.none(), st.integers(min_value=1, max_value=7 * 86400 * MICROS))
thresholds = st.integers(min_value=1, max_value=7 * 86400)


@given(st.sampled_from(["On", "Auto"]), refusals, durations, thresholds)
def test_the_mode_decider(mode: str, refusal: str | None, duration: int | None, threshold: int) -> None:
    choice = choose_mode(mode, refusal, duration, threshold)
    if mode == "On":
        assert choice is not None and choice.chunked and choice.reason == "ChunkingOn"
        return
    if refusal is not None:  # decided before any probing: no plan task for a spec that cannot be chunked
        assert choice is not None and not choice.chunked and refusal in choice.message
        return
    if duration is None:
        assert choice is None  # the plan task has not measured the input yet
        return
    assert choice is not None
    assert choice.chunked == (duration >= threshold * MICROS)
    assert choice.reason == ("LongInput" if choice.chunked else "ShortInput")
    assert f"autoMinSeconds {threshold}" in choice.message


def test_the_mode_decider_names_the_numbers() -> None:
    short = choose_mode("Auto", None, 12_500_000, 600)
    assert short is not None
    assert short.message == "single-pass (mode Auto): the input is 12.500000 s, under autoMinSeconds 600"
    long = choose_mode("Auto", None, 600 * MICROS, 600)
    assert long is not None and long.chunked


def auto_parent(outputs: list[Obj] | None = None, chunks: Obj | None = None, **chunking: Any) -> Obj:
    job = parent(chunks, "Running" if chunks else None, mode="Auto", autoMinSeconds=5, **chunking)
    if outputs is not None:
        job["spec"]["outputs"] = outputs
    return job


def chunked_condition(status: Obj) -> tuple[str, str, str]:
    found = condition(status["conditions"], CHUNKED_CONDITION)
    assert found is not None
    return found["status"], found["reason"], found["message"]


def test_auto_with_outputs_that_cannot_be_chunked_runs_single_pass_without_a_plan_task() -> None:
    actions = decide(auto_parent([{"name": "main", "container": "mkv"}]))
    assert creates(actions) == {}
    status = parent_patch(actions)
    assert status["phase"] == "Pending"
    assert chunked_condition(status)[:2] == ("False", "NotChunkable")
    assert "not mkv" in status["message"]
    (patch,) = [a for a in actions if isinstance(a, PatchStatus)]
    assert patch.event is not None and patch.event.reason == "SinglePass"


def test_auto_probes_first_then_a_short_input_runs_single_pass_as_a_job_of_its_own() -> None:
    assert list(creates(decide(auto_parent()))) == ["plan"]
    short = "0,2000000,4100000"  # 4.1 s, under autoMinSeconds 5
    status = parent_patch(decide(auto_parent(), child("plan", "Succeeded", chunks={"plan": short})))
    assert (status["phase"], status["chunks"], status["startTime"]) == ("Pending", None, None)
    assert chunked_condition(status) == (
        "False", "ShortInput", "single-pass (mode Auto): the input is 4.100000 s, under autoMinSeconds 5",
    )  # fmt: skip

    # With that status the parent is an ordinary job: queued and assigned, never given children.
    job = auto_parent()
    job["status"] = status
    view = parse_job(job)
    assert view.chunked_spec is None
    store = Store()
    store.put_job(job)
    store.put_job(child("plan", "Succeeded", chunks={"plan": short}))
    actions = decide_jobs(store, NOW, SETTINGS).actions
    assert creates(actions) == {}
    (patch,) = [a for a in actions if isinstance(a, PatchStatus) and a.key == f"{NS}/film"]
    assert patch.status["phase"] == "Queued"  # no pool in this store: it waits like any job


def test_auto_chunks_a_long_input_and_says_why() -> None:
    status = parent_patch(decide(auto_parent(), child("plan", "Succeeded", chunks={"plan": PLAN})))
    assert status["phase"] == "Running" and status["chunks"]["plan"] == PLAN
    assert chunked_condition(status) == (
        "True", "LongInput", "chunked (mode Auto): the input is 6.000000 s, at least autoMinSeconds 5",
    )  # fmt: skip
    # told once: with the children running, the passes settle (no write each pass for the condition)
    children = [child("plan", "Succeeded"), *(child(p, "Running") for p in ("audio", "c00000", "c00001", "c00002"))]
    job = auto_parent(chunks={"plan": PLAN})
    job["status"] = {**status}
    for _ in range(3):
        patches = [a for a in decide(job, *children) if isinstance(a, PatchStatus) and a.key == f"{NS}/film"]
        if not patches:
            break
        job["status"] = {k: v for k, v in {**job["status"], **patches[0].status}.items() if v is not None}
    assert patches == []
    assert chunked_condition(job["status"])[:2] == ("True", "LongInput")


def test_mode_on_says_so_once() -> None:
    status = parent_patch(decide(parent()))
    assert chunked_condition(status)[:2] == ("True", "ChunkingOn")
    job = parent()
    job["status"] = status
    plan = child("plan", "Queued")
    assert [a for a in decide(job, plan) if isinstance(a, PatchStatus) and a.key == f"{NS}/film"] == []


def ladder(**extra: Any) -> TranscodeJobSpec:
    return TranscodeJobSpec.model_validate({
        "input": {"uri": "/media/film.mp4"},
        "outputs": [
            {"name": "hi", "container": "hls", "video": {"bitrate": "2M", "height": 720}},
            {"name": "lo", "container": "hls", "video": {"crf": 28, "maxrate": "800k", "height": 360},
             "audio": {"bitrate": "64k"}},
            {"name": "file", "container": "mp4", "video": {"crf": 23}},
        ],
        **extra,
    })  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "chunk_seconds", "refusal"),
    [
        ({}, 12, None),
        ({"hls": {"segmentSeconds": 4}}, 12, None),
        ({"hls": {"segmentSeconds": 4}}, 10, "chunkSeconds 10 is not a whole multiple of hls.segmentSeconds 4"),
        ({}, 10, "chunkSeconds 10 is not a whole multiple of hls.segmentSeconds 6"),
        ({"thumbnails": {"intervalSeconds": 5}}, None, None),
        ({"input": {"uri": "rtmp://cam/live"}}, None, "chunking needs a file input"),
        ({"input": {"uri": "https://cdn.example.com/a.mp4"}}, None, "chunking needs a file input"),
    ],
)
def test_what_can_be_chunked(extra: Obj, chunk_seconds: int | None, refusal: str | None) -> None:
    found = chunking_refusal(ladder(**extra), chunk_seconds)
    assert found == refusal if refusal is None else (found is not None and refusal in found)


def test_hls_chunks_are_cut_on_the_grid_and_keep_the_segment_keyframes() -> None:
    constant_quality = [{"name": "hi", "container": "hls", "video": {"crf": 20, "maxrate": "2M", "height": 720}},
                        *ladder().model_dump(by_alias=True, exclude_none=True)["outputs"][1:]]  # fmt: skip
    spec = ladder(hls={"segmentSeconds": 4}, outputs=constant_quality)
    assert [o.video.bitrate for o in spec.outputs if o.video] == [None, None, None]
    mp4 = TranscodeJobSpec.model_validate({"input": {"uri": "/a.mp4"}, "outputs": [{"name": "a"}]})
    assert not cuts_on_keyframes(spec)
    assert cuts_on_keyframes(mp4)
    # the plan reads the keyframes only where a cut may move onto one: an hls plan reads the header alone
    assert plan_probe_args(spec) == DURATION_PROBE_ARGS and "-skip_frame" not in plan_probe_args(spec)
    assert plan_probe_args(mp4) == KEYFRAME_PROBE_ARGS and "frame=pts_time" in " ".join(plan_probe_args(mp4))
    keyframes = [3_900_000, 8_100_000]  # where an mp4 plan would move the cuts
    assert [c.start_us for c in plan_chunks(20_000_000, 8, [] if not cuts_on_keyframes(spec) else keyframes)] == [
        0, 8_000_000,
    ]  # fmt: skip
    common: Obj = {"output_dir": "/out/c", "scratch_dir": "/scratch", "allowed_protocols": ["file"]}
    argv, *copies = chunk_video_plan(spec, TimeRange(1, 8_000_000, 16_000_000), "cpu", input_url="/media/film.mp4",
                                     **common).passes  # fmt: skip
    single = build_encode_plan(spec, "cpu", input_url="/media/film.mp4", **common).passes[0]
    forced = "expr:gte(t,n_forced*4)"
    assert [single[i + 1] for i, a in enumerate(single) if a.startswith("-force_key_frames")] == [forced, forced]
    # Rolled (x264): encoded from 0.2 s before the start to 0.1 s past the end, shifted by ROLL_SHIFT_SECONDS;
    # hi and lo get the single pass's segment keyframes (every 4 s from the chunk start), the mp4 output
    # keyframes at the start and the end only, where the stream copies cut.
    shift = f"+round({ROLL_SHIFT_SECONDS}/TB)"
    assert (
        f"trim=start=7.800000:end=16.100000,setpts=PTS-round(8.000000/TB){shift}"
        in argv[argv.index("-filter_complex") + 1]
    )
    assert argv[argv.index("-ss") + 1] == "7.800000"
    k = ROLL_SHIFT_SECONDS
    segments, ends = f"{k}.000000,{k + 4}.000000,{k + 8}.000000", f"{k}.000000,{k + 8}.000000"
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "-force_key_frames:v"] == [segments, segments, ends]
    assert [a for a in argv if a.endswith(".nut")] == ["/scratch/hi.rolled.nut", "/scratch/lo.rolled.nut",
                                                       "/scratch/file.rolled.nut"]  # fmt: skip
    drop = "noise=drop=2-sgn(pts*tb+0.000005)-sgn(7.999995-pts*tb)"
    assert copies == [
        ["ffmpeg", *BASE_ARGS, "-protocol_whitelist", "file", "-copyts", "-itsoffset", f"-{k}", "-i",
         f"/scratch/{name}.rolled.nut", "-map", "0:v:0", "-c", "copy", "-bsf:v", drop, "-f", "mp4",
         "-movflags", "+faststart", f"/out/c/{name}.mp4"]
        for name in ("hi", "lo", "file")
    ]  # fmt: skip


def test_chunks_are_rolled_only_for_x264_at_constant_quality_on_cpu() -> None:
    common: Obj = {"input_url": "/media/film.mp4", "output_dir": "/out/c", "scratch_dir": "/s",
                   "allowed_protocols": ["file"]}  # fmt: skip
    chunk = TimeRange(1, 8_000_000, 16_000_000)
    h264 = ladder(outputs=[{"name": "a", "container": "mp4", "video": {"crf": 28}}])
    assert chunk_roll(h264, "cpu") == (ROLL_BEFORE_US, ROLL_AFTER_US) == (200_000, 100_000)
    assert len(chunk_video_plan(h264, chunk, "cpu", **common).passes) == 2
    # another roll: decoded and encoded from 0.5 s before the start, dropped by the copy
    argv, _ = build_encode_plan(
        h264, "cpu", **common, time_range=(chunk.start_us, chunk.end_us), roll_us=(500_000, 100_000)
    ).passes
    assert argv[argv.index("-ss") + 1] == "7.500000"
    assert (
        f"trim=start=7.500000:end=16.100000,setpts=PTS-round(8.000000/TB)+round({ROLL_SHIFT_SECONDS}/TB)"
        in argv[argv.index("-filter_complex") + 1]
    )
    hevc = ladder(outputs=[{"name": "a", "container": "mp4", "video": {"codec": "hevc", "crf": 28}}])
    av1 = ladder(outputs=[{"name": "a", "video": {"codec": "av1"}}])
    with_bitrate = ladder(outputs=[{"name": "a", "container": "mp4", "video": {"crf": 28}},
                                   {"name": "b", "container": "mp4", "video": {"bitrate": "800k"}}])  # fmt: skip
    for spec, accelerator in ((h264, "nvenc"), (hevc, "cpu"), (av1, "cpu"), (with_bitrate, "cpu")):
        assert chunk_roll(spec, accelerator) == (0, 0)
        (argv,) = chunk_video_plan(spec, chunk, accelerator, **common).passes
        assert (
            "trim=start=8.000000:end=16.000000,setpts=PTS-round(8.000000/TB)" in argv[argv.index("-filter_complex") + 1]
        )
        assert "-force_key_frames:v" not in argv and argv[-1] == f"/out/c/{spec.outputs[-1].name}.mp4"


def test_outputs_with_the_same_audio_settings_share_one_audio_encode() -> None:
    spec = ladder()
    assert audio_files(spec) == {"hi": "hi", "lo": "lo", "file": "hi"}
    common: Obj = {"input_url": "/media/film.mp4", "output_dir": "/w/audio", "scratch_dir": "/s",
                   "allowed_protocols": ["file"]}  # fmt: skip
    plan = audio_plan(spec, **common)
    assert plan is not None and [o.path for o in plan.outputs] == ["hi.m4a", "lo.m4a"]
    silent = spec.model_copy(update={"outputs": [o.model_copy(update={"audio": AudioSpec(codec="none")})
                                                 for o in spec.outputs]})  # fmt: skip
    assert audio_files(silent) == {} and audio_plan(silent, **common) is None


def test_the_stitch_packages_with_the_single_pass_hls_muxer_options() -> None:
    spec = ladder(hls={"segmentSeconds": 4, "segmentType": "fmp4"})
    chunks = [TimeRange(0, 0, 8_000_000), TimeRange(1, 8_000_000, 16_000_000)]
    stitch = stitch_plan(spec, chunks, work_dir="/out/.chunks", output_dir="/out/.attempt", with_audio=True)
    mp4, hls = stitch.passes
    single = build_encode_plan(
        spec,
        "cpu",
        input_url="/media/film.mp4",
        output_dir="/out/.attempt",
        scratch_dir="/s",
        allowed_protocols=["file"],
    ).passes[0]

    # the same muxer, options and target: `-f hls` to the playlists
    target = "/out/.attempt/hls/%v/index.m3u8"
    assert hls[hls.index("hls") - 1 :] == single[single.index("hls") - 1 : single.index(target) + 1]
    assert hls[-1] == target
    assert "v:0,a:0,name:hi v:1,a:1,name:lo" in hls
    # stream copies carrying the encodes' targets: BANDWIDTH as the single pass's encoders give it
    assert hls[hls.index("-b:v:0") + 1] == "2M" and hls[hls.index("-b:v:1") + 1] == "800k"
    assert hls[hls.index("-b:a:1") + 1] == "64k"
    assert [hls[i + 1] for i, a in enumerate(hls) if a == "-i"] == [
        "/out/.chunks/hi.ffconcat", "/out/.chunks/audio/hi.m4a",
        "/out/.chunks/lo.ffconcat", "/out/.chunks/audio/lo.m4a",
    ]  # fmt: skip
    assert mp4[-1] == "/out/.attempt/file.mp4"
    # file's audio settings are hi's (aac 128k): one encode for both
    assert [mp4[i + 1] for i, a in enumerate(mp4) if a == "-i"] == [
        "/out/.chunks/file.ffconcat",
        "/out/.chunks/audio/hi.m4a",
    ]
    assert [(o.name, o.kind) for o in stitch.outputs] == [
        ("file", "file"), ("hi", "hls-variant"), ("lo", "hls-variant"), ("master", "hls-master"),
    ]  # fmt: skip


def test_a_libx264_chunk_with_a_bitrate_is_encoded_cbr_like_without_the_macroblock_tree() -> None:
    common: Obj = {"input_url": "/media/film.mp4", "output_dir": "/out/c", "scratch_dir": "/s",
                   "allowed_protocols": ["file"]}  # fmt: skip
    chunk = TimeRange(1, 8_000_000, 16_000_000)
    spec = ladder(outputs=[
        {"name": "a", "container": "hls", "video": {"bitrate": "800k"}},
        {"name": "b", "container": "hls", "video": {"bitrate": "2M", "maxrate": "3M"}},  # bufsize 6M: 4M is lower
        {"name": "c", "container": "hls", "video": {"bitrate": "2M", "maxrate": "3M", "bufsize": "1M"}},
        {"name": "d", "container": "mp4", "video": {"bitrate": "1M", "maxrate": "500k"}},
        {"name": "e", "container": "mp4", "video": {"crf": 23, "maxrate": "1M"}},
        {"name": "f", "container": "mp4", "video": {"codec": "hevc", "bitrate": "1M"}},
    ])  # fmt: skip
    (argv,) = chunk_video_plan(spec, chunk, "cpu", **common).passes
    ends = [k for k, a in enumerate(argv) if a.startswith("/out/c/")]
    outputs = [argv[i:j] for i, j in zip([argv.index("-map"), *ends[:-1]], ends, strict=True)]
    rates = [[o[k + 1] for k, a in enumerate(o) if a in ("-b:v", "-maxrate:v", "-bufsize:v", "-rc_init_occupancy:v",
                                                          "-mbtree:v")] for o in outputs]  # fmt: skip
    assert rates == [
        ["800k", "800k", "1600k", "1280000", "0"],
        ["2M", "2M", "4M", "3200000", "0"],
        ["2M", "2M", "1M", "800000", "0"],
        ["1M", "500k", "1M", "800000", "0"],
        ["1M", "2M"],  # crf: not a bitrate rendition (-crf:v 23, the single pass's maxrate and bufsize)
        ["1M"],  # libx265: the single pass's rate control
    ]
    # The single pass keeps plain ABR; hardware chunks too.
    single = build_encode_plan(spec, "cpu", **common).passes[0]
    assert "-mbtree:v" not in single and "-rc_init_occupancy:v" not in single
    assert chunk_rate_control(VideoSpec(bitrate="1M"), "nvenc") is None
    assert chunk_rate_control(VideoSpec(bitrate="1M"), "cpu") == (
        VideoSpec(bitrate="1M", maxrate="1M", bufsize="2M"),
        [("-rc_init_occupancy", "1600000"), ("-mbtree", "0")],
    )
    assert CHUNK_VBV_SECONDS == 2 and CHUNK_VBV_INIT == 0.8


def test_a_chunked_jobs_tasks_count_the_part_of_the_input_they_read() -> None:
    hls = ladder(hls={"segmentSeconds": 2})
    mp4 = TranscodeJobSpec.model_validate({"input": {"uri": "/a.mp4"}, "outputs": [{"name": "a"}]})
    chunks = [ChunkTask(kind="Video", parent="p", index=i, start_micros=i * 10**7, end_micros=(i + 1) * 10**7)
              for i in range(12)]  # fmt: skip
    # the chunks of a 120 s input add up to the input once; the audio reads all of it, the stitch none
    assert sum(input_share(c, hls, 120.0) for c in chunks) == pytest.approx(1.0)
    assert input_share(chunks[3], hls, 120.0) == pytest.approx(1 / 12)
    assert input_share(ChunkTask(kind="Audio", parent="p"), hls, 120.0) == 1.0
    assert input_share(ChunkTask(kind="Stitch", parent="p", plan="0-1"), hls, None) == 0.0
    # the plan reads the keyframes (the whole input) for mp4 outputs, the header alone for an hls ladder
    assert input_share(ChunkTask(kind="Plan", parent="p"), mp4, 120.0) == 1.0
    assert input_share(ChunkTask(kind="Plan", parent="p"), hls, 120.0) == 0.0
    # a chunk past a shorter probed duration, or without one, counts at most the whole input
    assert input_share(chunks[0], hls, 5.0) == 1.0
    assert input_share(chunks[0], hls, None) == 1.0
