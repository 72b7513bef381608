"""Block-by-block S3Gen rendering (pipeline/engines/chatterbox_streaming.py) on the random checkpoint.

The stream is compared with the whole chunk rendered at once under the same noise convention
(``render_whole``), on fixed token ids. Random weights predict an f0 of about 0 Hz, which would
leave the vocoder's source all noise and the sine phase carried across windows untested, so this
module's S3Gen has its f0 lifted to 150 Hz: every frame is voiced. Every block re-runs the flow over
the reference prompt and the prefix (about 0.15 s of CPU per token here), hence a 12-token prompt
and a 3 s chunk in blocks of 1 s.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from pipeline.engines.chatterbox import ChatterboxEngine, ChatterboxSettings

TOKENS = 75
BLOCK_TOKENS = 25
MAX_TOKENS = 100  # the noise is drawn for the cap, not for the chunk's actual length
PROMPT_TOKENS = 12
VOICED_F0_HZ = 150.0
SEED = 3


@pytest.fixture(scope="module")
def engine(chatterbox_checkpoint: Path) -> ChatterboxEngine:
    import torch

    # One intra-op thread, as in test_chatterbox_engine.py: spinning OpenMP workers slow S3Gen here.
    engine = ChatterboxEngine.load(
        ChatterboxSettings(checkpoint_dir=str(chatterbox_checkpoint), cpu_threads=1)
    )
    with torch.no_grad():
        engine.model.s3gen.mel2wav.f0_predictor.classifier.bias += VOICED_F0_HZ
    return engine


@pytest.fixture(scope="module")
def reference(engine: ChatterboxEngine) -> Mapping:
    """The built-in voice cut to its first 12 tokens. Like the whole voice it keeps one mel frame
    more than 2 per token, which makes the chunk 480 samples shorter than 960 per token."""
    import torch

    full = engine.model.builtin_voice.s3gen_reference
    return {
        **full,
        "prompt_token": full["prompt_token"][:, :PROMPT_TOKENS],
        "prompt_token_len": torch.tensor([PROMPT_TOKENS]),
        "prompt_feat": full["prompt_feat"][:, : 2 * PROMPT_TOKENS + 1],
    }


@pytest.fixture(scope="module")
def tokens():
    import torch

    return torch.randint(0, 6561, (1, TOKENS), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def whole(engine: ChatterboxEngine, reference: Mapping, tokens) -> np.ndarray:
    import torch

    from pipeline.engines.chatterbox_streaming import render_whole

    return render_whole(
        engine.model.s3gen, tokens, reference, torch.Generator().manual_seed(SEED), MAX_TOKENS
    )


@pytest.fixture(scope="module")
def stream(engine: ChatterboxEngine, reference: Mapping, tokens) -> list[np.ndarray]:
    """What the renderer returns for the chunk fed a block at a time: two feeds, then finish."""
    blocks = [tokens[:, start : start + BLOCK_TOKENS] for start in range(0, TOKENS, BLOCK_TOKENS)]
    renderer = _renderer(engine, reference)
    return [renderer.feed(block) for block in blocks[:-1]] + [renderer.finish(blocks[-1])]


def _renderer(engine: ChatterboxEngine, reference: Mapping):
    import torch

    from pipeline.engines.chatterbox_streaming import StreamingRenderer

    return StreamingRenderer(
        engine.model.s3gen, reference, torch.Generator().manual_seed(SEED), MAX_TOKENS, BLOCK_TOKENS
    )


def snr_db(signal: np.ndarray, reference: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(reference**2) / np.sum((signal - reference) ** 2)))


def seam_steps(blocks: list[np.ndarray], reference: np.ndarray) -> list[float]:
    """At each block boundary, the largest step of (stream - reference) within two samples of the
    seam, over the 99th percentile of the reference's own sample-to-sample steps."""
    deviation_steps = np.abs(np.diff(np.concatenate(blocks) - reference))
    typical = np.percentile(np.abs(np.diff(reference)), 99)
    seams = np.cumsum([len(block) for block in blocks])[:-1]
    return [float(deviation_steps[seam - 3 : seam + 2].max() / typical) for seam in seams]


@pytest.mark.slow
def test_streamed_audio_matches_the_whole_chunk_render(stream: list[np.ndarray], whole: np.ndarray) -> None:
    """Metric: SNR of the streamed samples against the whole render's, >= 25 dB (measured: 34.7).

    Checked by hand: blocks rendered independently (render_waveform on each block's tokens alone,
    same seed, each against the whole render's same frames) reach 2 dB; the stream without the sine
    phase carried across vocoder windows 10 dB; with flow context but each block vocoded alone
    (no vocoder context) 23 dB.
    """
    assert snr_db(np.concatenate(stream), whole) >= 25.0


@pytest.mark.slow
def test_block_boundaries_have_no_clicks(stream: list[np.ndarray], whole: np.ndarray) -> None:
    """A click is a step at a seam that the whole render does not make. Random weights make
    noise-like audio whose own steps hide one (blocks rendered apart step by 0.9 of the median step
    at their seams), so the check is on the stream's deviation from the whole render: across each
    seam it steps by under a tenth of the whole render's 99th-percentile step (measured: 0.010 and
    0.007).

    Checked by hand: blocks rendered independently step by 1.1 and 1.3 of it at their seams,
    blocks vocoded without context by 1.1 and 1.2.
    """
    assert max(seam_steps(stream, whole)) < 0.1


@pytest.mark.slow
def test_first_audio_comes_with_the_first_block(stream: list[np.ndarray]) -> None:
    # 25 tokens give 49 mel frames; 3 tokens wait for their look-ahead and 10 frames for the
    # vocoder's right context: 33 frames (0.66 s) are final.
    assert len(stream[0]) == 33 * 480


@pytest.mark.slow
def test_streamed_audio_is_as_long_as_the_whole_render(stream: list[np.ndarray], whole: np.ndarray) -> None:
    assert sum(len(block) for block in stream) == len(whole) == 960 * TOKENS - 480
    assert all(block.dtype == np.float32 for block in stream)


@pytest.mark.slow
def test_same_seed_streams_the_same_audio(
    engine: ChatterboxEngine, reference: Mapping, tokens, stream: list[np.ndarray]
) -> None:
    # Fed one token at a time, as a T3 loop would, the last one to finish (as at the loop's token
    # cap): the renders fall at the same boundaries.
    renderer = _renderer(engine, reference)
    returned = [renderer.feed(tokens[:, index : index + 1]) for index in range(TOKENS - 1)]
    returned.append(renderer.finish(tokens[:, -1:]))
    again = [samples for samples in returned if len(samples)]
    assert len(again) == len(stream)
    for ours, first in zip(again, stream, strict=True):
        np.testing.assert_array_equal(ours, first)


@pytest.mark.slow
def test_whole_render_with_the_chunk_as_cap_is_render_waveform(
    engine: ChatterboxEngine, reference: Mapping
) -> None:
    """With the cap at the chunk's length the up-front draws are render_waveform's, and so is every
    sample: the streaming module's own flow and vocoder path equals upstream's by transitivity
    (test_rendering_equals_upstream_s3gen_inference)."""
    import torch

    from pipeline.engines.chatterbox_decoding import render_waveform
    from pipeline.engines.chatterbox_streaming import render_whole

    s3gen, speech_tokens = engine.model.s3gen, torch.tensor([[10, 200, 3000, 4000, 6000, 17, 6560]])
    ours = render_whole(s3gen, speech_tokens, reference, torch.Generator().manual_seed(9))
    np.testing.assert_array_equal(
        ours, render_waveform(s3gen, speech_tokens, reference, torch.Generator().manual_seed(9))
    )
