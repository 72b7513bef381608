"""The request flow with fake stages: fan-out, retries, selection and ordering, without Ray or models."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import numpy as np
import pytest

from pipeline.clip import AudioClip
from pipeline.engines.base import SynthesisParams
from pipeline.errors import GenerationFailed, InvalidField, Overloaded, ReplicaCrashed, UnsupportedCapability
from pipeline.graph import QualityPolicy, TTSJob, TTSPipeline, candidate_seed
from pipeline.postprocess import PostProcessOptions
from pipeline.rendering import RenderedAudio
from pipeline.text import TextOptions

RATE = 1000


class FakeStages:
    """Synthesis makes `len(text) * 10` samples of seed-dependent noise; transcripts are scripted."""

    def __init__(self, transcripts=None, synth_delay=0.0, fail_seeds=()):
        self.transcripts = transcripts or {}
        self.synth_delay = synth_delay
        self.fail_seeds = set(fail_seeds)
        self.synth_calls: list[tuple[str, int]] = []
        self.active = 0
        self.max_active = 0

    async def split(self, text, options):
        return [part.strip() + "." for part in text.split(".") if part.strip()]

    async def synthesize(self, text, voice, params):
        self.synth_calls.append((text, params.seed))
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await asyncio.sleep(self.synth_delay)
            if params.seed in self.fail_seeds:
                raise GenerationFailed("the engine produced no speech")
            length = len(text) * 10 + params.seed % 7
            samples = np.random.default_rng(params.seed).uniform(-0.1, 0.1, length).astype(np.float32)
            return AudioClip(samples, RATE, text=text, metadata={"seed": params.seed})
        finally:
            self.active -= 1

    async def transcribe(self, audio):
        script = self.transcripts.get(audio.text, audio.text)
        return script(audio) if callable(script) else script

    async def render(self, clips, options, formats):
        joined = AudioClip(
            np.concatenate([clip.samples for clip in clips]), RATE, " ".join(c.text for c in clips)
        )
        return RenderedAudio(joined, {}, RATE, joined.duration_sec)


def make_job(text, **policy):
    return TTSJob(
        text=text,
        text_options=TextOptions(),
        voice=None,
        params=SynthesisParams(seed=42),
        policy=QualityPolicy(**policy),
        post=PostProcessOptions(),
        formats=(),
    )


def pipeline_of(stages: FakeStages) -> TTSPipeline:
    return TTSPipeline(stages.split, stages.synthesize, stages.transcribe, stages.render)


def run(coro):
    return asyncio.run(coro)


def test_chunks_are_synthesised_concurrently_and_joined_in_order():
    stages = FakeStages(synth_delay=0.05)
    result = run(pipeline_of(stages).run(make_job("One. Two two. Three three three. Four.")))
    assert stages.max_active == 4, "all four chunks are synthesised at the same time"
    assert [chunk.text for chunk in result.chunks] == ["One.", "Two two.", "Three three three.", "Four."]
    assert result.rendered.clip.text == "One. Two two. Three three three. Four."


def test_bypassed_validation_keeps_the_shortest_of_the_candidates():
    stages = FakeStages()
    result = run(pipeline_of(stages).run(make_job("Hello there.", num_candidates=3, max_attempts=3)))
    (chunk,) = result.chunks
    assert chunk.attempts == 3, "one round: every candidate ok, no retry without validation"
    durations = {seed: len("Hello there.") * 10 + seed % 7 for _, seed in stages.synth_calls}
    assert chunk.chosen.seed == min(durations, key=durations.get)
    assert chunk.passed and chunk.fallback is None


def test_failing_validation_retries_rounds_then_falls_back_to_longest_transcript():
    transcripts = {
        "Hello there.": lambda audio: "hello" if audio.metadata["seed"] == 42 else "hello there friend x"
    }
    stages = FakeStages(transcripts=transcripts)
    result = run(
        pipeline_of(stages).run(
            make_job("Hello there.", num_candidates=2, max_attempts=3, validate=True, threshold=1.01)
        )
    )
    (chunk,) = result.chunks
    assert chunk.attempts == 6
    assert not chunk.passed
    assert chunk.fallback == "longest_transcript"
    assert chunk.chosen.transcript == "hello there friend x"


def test_highest_score_fallback_when_longest_transcript_is_off():
    transcripts = {
        "Hello there.": lambda audio: (
            "hello there" if audio.metadata["seed"] == 42 else "a much longer wrong transcript"
        )
    }
    stages = FakeStages(transcripts=transcripts)
    result = run(
        pipeline_of(stages).run(
            make_job(
                "Hello there.",
                num_candidates=2,
                max_attempts=1,
                validate=True,
                threshold=1.01,
                use_longest_transcript_on_fail=False,
            )
        )
    )
    assert result.chunks[0].chosen.seed == 42
    assert result.chunks[0].fallback == "highest_score"


def test_a_passing_round_stops_the_retries():
    transcripts = {
        "Hello there.": lambda audio: "hello there" if audio.metadata["seed"] != 42 else "nothing like it"
    }
    stages = FakeStages(transcripts=transcripts)
    result = run(
        pipeline_of(stages).run(
            make_job("Hello there.", num_candidates=1, max_attempts=5, validate=True, threshold=0.9)
        )
    )
    (chunk,) = result.chunks
    assert chunk.attempts == 2, "round 1 failed, round 2 passed, no round 3"
    assert chunk.passed


def test_failed_generations_are_retried_with_new_seeds():
    stages = FakeStages(fail_seeds={42})
    result = run(pipeline_of(stages).run(make_job("Hello there.", num_candidates=1, max_attempts=3)))
    assert result.chunks[0].attempts == 2
    assert result.chunks[0].chosen.seed == candidate_seed(42, 1, 0, 1)


def test_a_chunk_with_no_audio_at_all_fails_the_request_clearly():
    stages = FakeStages()
    stages.fail_seeds = {candidate_seed(42, r, 0, 1) for r in range(2)}
    with pytest.raises(GenerationFailed, match="produced no audio after 2 tries"):
        run(pipeline_of(stages).run(make_job("Hello there.", num_candidates=1, max_attempts=2)))


@pytest.mark.parametrize(
    "failure",
    [
        TypeError("a bug in the stage"),
        ReplicaCrashed("TTS.synthesize killed its replica 2 times"),
        Overloaded("TTS is at capacity", retry_after_sec=2),
    ],
)
def test_failures_another_candidate_would_hit_too_fail_the_request_at_once(failure):
    """Only GenerationFailed is a bad candidate; a bug is not dressed up as "synthesis failed"."""
    stages = FakeStages()

    async def broken(text, voice, params):
        stages.synth_calls.append((text, params.seed))
        raise failure

    pipeline = TTSPipeline(stages.split, broken, stages.transcribe, stages.render)
    with pytest.raises(type(failure)):
        run(pipeline.run(make_job("Hello there.", num_candidates=1, max_attempts=3)))
    assert len(stages.synth_calls) == 1


def test_a_failing_chunk_cancels_the_chunks_still_running():
    stages = FakeStages()
    cancelled = []

    async def one_fails(text, voice, params):
        if text.startswith("Bad"):
            raise TypeError("a bug")
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(text)
            raise
        return await FakeStages.synthesize(stages, text, voice, params)

    async def scenario():
        pipeline = TTSPipeline(stages.split, one_fails, stages.transcribe, stages.render)
        with pytest.raises(TypeError):
            await pipeline.run(make_job("Long one. Bad one. Other one."))
        await asyncio.sleep(0.01)

    run(scenario())
    assert sorted(cancelled) == ["Long one.", "Other one."]


@pytest.mark.parametrize("mode", ["run", "stream"])
def test_one_request_keeps_at_most_its_share_of_tts_calls_in_flight(mode):
    """Chunks x candidates of one job never exceed max_syntheses_in_flight, in either mode."""
    stages = FakeStages(synth_delay=0.02)
    job = replace(make_job("One. Two. Three. Four. Five. Six.", num_candidates=3), max_syntheses_in_flight=4)

    async def scenario():
        if mode == "run":
            return len((await pipeline_of(stages).run(job)).chunks)
        return len([outcome async for outcome, _ in pipeline_of(stages).stream(job, None)])

    assert run(scenario()) == 6
    assert stages.max_active == 4
    assert len(stages.synth_calls) == 18
    assert stages.synth_calls[:3] == [("One.", seed) for _, seed in stages.synth_calls[:3]], (
        "slots are taken in chunk order"
    )


def test_user_errors_from_the_engine_are_not_retried():
    stages = FakeStages()

    async def refuse(text, voice, params):
        stages.synth_calls.append((text, params.seed))
        raise UnsupportedCapability("cannot clone", param="voice")

    pipeline = TTSPipeline(stages.split, refuse, stages.transcribe, stages.render)
    with pytest.raises(UnsupportedCapability):
        run(pipeline.run(make_job("Hello there.", num_candidates=1, max_attempts=3)))
    assert len(stages.synth_calls) == 1


def test_same_seed_gives_same_candidates_and_seeds_are_distinct():
    seeds = {candidate_seed(7, r, c, 3) for r in range(4) for c in range(3)}
    assert len(seeds) == 12
    assert candidate_seed(7, 0, 0, 3) == 7
    assert all(1 <= seed < 2**32 for seed in seeds)


def test_stream_yields_chunks_in_order_even_when_later_ones_finish_first():
    stages = FakeStages()

    async def synth_slow_first(text, voice, params):
        await asyncio.sleep(0.3 if text.startswith("First") else 0.0)
        return await FakeStages.synthesize(stages, text, voice, params)

    pipeline = TTSPipeline(stages.split, synth_slow_first, stages.transcribe, stages.render)

    async def collect():
        return [outcome.text async for outcome, _ in pipeline.stream(make_job("First one. Second. Third."))]

    assert run(collect()) == ["First one.", "Second.", "Third."]


def test_stream_with_one_chunk_in_flight_reaches_the_first_audio_after_one_chunk():
    stages = FakeStages(synth_delay=0.05)

    async def calls_before_first_audio(max_in_flight):
        """How many syntheses had started when the first chunk came out, and in all."""
        started_at_first = None
        async for _ in pipeline_of(stages).stream(make_job("One. Two. Three. Four."), max_in_flight):
            started_at_first = started_at_first or len(stages.synth_calls)
        return started_at_first, len(stages.synth_calls)

    assert run(calls_before_first_audio(1)) == (1, 4)
    assert stages.max_active == 1
    stages.max_active, stages.synth_calls = 0, []
    assert run(calls_before_first_audio(None)) == (4, 4)
    assert stages.max_active == 4


class BlockStages(FakeStages):
    """An engine that renders each chunk in three blocks; the last carries the chunk's report."""

    def __init__(self, fail_text: str | None = None) -> None:
        super().__init__()
        self.fail_text = fail_text
        self.block_calls: list[str] = []
        self.cancelled: list[str] = []

    async def synthesize_blocks(self, text, voice, params):
        self.block_calls.append(text)
        try:
            for block in range(3):
                await asyncio.sleep(0.01 if block == 0 else 0.05)
                if text == self.fail_text and block == 1:
                    raise GenerationFailed(f"{text} failed mid-way")
                samples = np.full(10, block, dtype=np.float32)
                metadata = {"final_block": block == 2, "block": block}
                yield AudioClip(samples, RATE, text=text, metadata=metadata)
        except asyncio.CancelledError:
            self.cancelled.append(text)
            raise


def block_pipeline(stages: BlockStages) -> TTSPipeline:
    return TTSPipeline(
        stages.split, stages.synthesize, stages.transcribe, stages.render, stages.synthesize_blocks
    )


def test_an_incremental_stream_yields_every_block_in_order_with_outcomes_on_last_blocks():
    stages = BlockStages()

    async def collect():
        job = replace(make_job("One. Two. Three."), incremental=True)
        return [
            (o, clip.text, clip.metadata["block"]) async for o, clip in block_pipeline(stages).stream(job, 2)
        ]

    items = run(collect())
    assert [(text, block) for _, text, block in items] == [
        (text, block) for text in ("One.", "Two.", "Three.") for block in range(3)
    ]
    outcomes = [outcome for outcome, _, _ in items if outcome is not None]
    assert [o.text for o in outcomes] == ["One.", "Two.", "Three."]
    assert all(outcome is None for outcome, _, block in items if block < 2)
    assert stages.synth_calls == [], "whole-chunk synthesis was not used"


def test_an_incremental_stream_fails_in_order_and_cancels_the_chunks_after():
    stages = BlockStages(fail_text="Two.")

    async def collect():
        job = replace(make_job("One. Two. Three. Four."), incremental=True)
        got = []
        with pytest.raises(GenerationFailed, match=r"Two\. failed"):
            async for _, clip in block_pipeline(stages).stream(job, 2):
                got.append((clip.text, clip.metadata["block"]))
        await asyncio.sleep(0.1)
        return got

    got = run(collect())
    assert got == [("One.", 0), ("One.", 1), ("One.", 2), ("Two.", 0)]
    assert "Four." not in stages.block_calls or "Four." in stages.cancelled


def test_closing_an_incremental_stream_cancels_the_chunk_being_rendered():
    stages = BlockStages()

    async def first_block_then_close():
        job = replace(make_job("One. Two."), incremental=True)
        stream = block_pipeline(stages).stream(job, 1)
        await anext(stream)
        await stream.aclose()
        await asyncio.sleep(0.1)

    run(first_block_then_close())
    assert stages.cancelled == ["One."]


def test_a_job_that_is_not_incremental_streams_whole_chunks_even_with_a_block_engine():
    stages = BlockStages()

    async def collect():
        return [o.text async for o, _ in block_pipeline(stages).stream(make_job("One. Two."))]

    assert run(collect()) == ["One.", "Two."]
    assert stages.block_calls == []


@pytest.mark.parametrize("mode", ["run", "stream"])
def test_a_text_of_more_chunks_than_the_job_may_have_is_refused_before_any_synthesis(mode):
    stages = FakeStages()
    job = replace(make_job("One. Two. Three."), max_chunks=2, text_options=TextOptions(text_param="input"))

    async def go():
        if mode == "run":
            return await pipeline_of(stages).run(job)
        return [item async for item in pipeline_of(stages).stream(job)]

    with pytest.raises(InvalidField) as refused:
        run(go())
    assert (refused.value.status_code, refused.value.param) == (422, "input")
    assert "3 chunks" in refused.value.message and "at most 2" in refused.value.message
    assert stages.synth_calls == []
    assert len(run(pipeline_of(stages).run(replace(job, max_chunks=3))).chunks) == 3
