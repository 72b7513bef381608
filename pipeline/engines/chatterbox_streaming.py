"""S3Gen audio for one chunk, rendered block by block while T3 is still sampling its speech tokens.

Why not render each block of tokens on its own: S3Gen's flow encoder (upsample conformer) and its
decoder's attention see the whole token sequence, and HiFT's convolutions reach about ten mel
frames either side, so blocks rendered apart disagree at their edges (clicks, level jumps) and the
flow loses its context. Instead every block re-runs the flow over the whole prefix so far, reference
prompt included, and keeps only the mel frames it had not committed yet (upstream's streaming
convention: frames of the last ``pre_lookahead_len`` tokens wait for their look-ahead); then it
vocodes a window of committed frames with enough context on both sides that the samples it emits do
not depend on where the window ends, the sine source continuing its phase from the previous window.
Emitted samples therefore equal a vocoding of the committed mel at once, to within 1e-5; what
remains of the difference from a whole-chunk render is what the flow did not yet know when it
committed a frame.

Randomness comes only from the request's generator, drawn once, up front, for the chunk's token
cap: the flow noise over every mel frame the chunk may have and the vocoder's source phases and
noise over every sample. Each render slices them by position, so a frame sees the same noise in
every block and in :func:`render_whole`: a seed reproduces the stream, and stream and whole render
differ only through what the flow saw.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from chatterbox.models.s3gen import S3Gen
from chatterbox.models.s3tokenizer import SPEECH_VOCAB_SIZE

from pipeline.engines.chatterbox_decoding import CFM_TIMESTEPS, draw_source_noise, source_excitation

# Mel frames of context HiFT needs on each side of the samples it emits. Measured on the full-size
# vocoder (f0 predictor's five 3-tap convs, conv_pre, the dilated resblocks, the source branch): cut
# the mel 10 frames away and the samples move by under 1e-6, against 2e-2 right at the cut.
VOCODER_CONTEXT_FRAMES = 10


class StreamingRenderer:
    """Feed a chunk's speech tokens as T3 samples them; get back the chunk's audio as it becomes final.

    :meth:`feed` renders when the tokens fed so far reach the next block boundary
    (``first_block_tokens``, then every ``block_tokens`` more) and returns the samples that became
    final, otherwise an empty array; :meth:`finish` renders the rest. Each render costs a flow run
    over the prompt and the whole prefix, so blocks trade compute for latency. Every return is
    float32 at 24 kHz; concatenated they are the chunk's audio, as long as :func:`render_waveform`'s
    for the same tokens (480 samples per mel frame: 960 per token, 480 fewer when the reference
    prompt has an odd number of mel frames) and faded in at its start like upstream's.

    ``max_tokens`` is the chunk's token cap: the noise is drawn for it up front (about 35 KB per
    token, mostly the vocoder's per-sample noise). One renderer serves one chunk of one request.
    """

    def __init__(
        self,
        s3gen: S3Gen,
        reference: Mapping[str, torch.Tensor | None],
        generator: torch.Generator,
        max_tokens: int,
        block_tokens: int = 25,
        first_block_tokens: int | None = None,
    ) -> None:
        first_block_tokens = block_tokens if first_block_tokens is None else first_block_tokens
        if min(max_tokens, block_tokens, first_block_tokens) < 1:
            raise ValueError("max_tokens, block_tokens and first_block_tokens must be positive")
        self._s3gen = s3gen
        self._hift = s3gen.mel2wav
        self._samples_per_frame = int(self._hift.f0_upsamp.scale_factor)
        # S3Token2Mel.forward casts the ref dict's tensors like this (in place; here on a copy).
        self._reference = {
            key: value.to(device=s3gen.device, dtype=s3gen.dtype) if torch.is_tensor(value) else value
            for key, value in reference.items()
        }
        self._prompt_tokens = self._reference["prompt_token"].long()
        self._prompt_frames = self._reference["prompt_feat"].size(1)
        self._max_tokens = max_tokens
        self._block_tokens = block_tokens
        self._next_render = first_block_tokens
        # Upstream's draws in upstream's order (flow noise, then source phases and noise), each for
        # the longest chunk: with max_tokens equal to the chunk's length they are render_waveform's.
        max_frames = self._flow_frames(max_tokens, final=True)
        with torch.inference_mode():
            self._flow_noise = torch.randn(
                (1, s3gen.flow.output_size, max_frames),
                generator=generator,
                device=s3gen.device,
                dtype=s3gen.dtype,
            )
            self._source_phase, self._source_noise = draw_source_noise(
                self._hift.m_source,
                1,
                (max_frames - self._prompt_frames) * self._samples_per_frame,
                generator,
                s3gen.device,
            )
        self._tokens = torch.zeros((1, 0), dtype=torch.long, device=s3gen.device)
        self._mel = torch.zeros((1, s3gen.flow.output_size, 0), device=s3gen.device, dtype=s3gen.dtype)
        self._f0 = torch.zeros((1, 0), device=s3gen.device)  # the f0 each emitted frame was vocoded with
        self._emitted_frames = 0
        self._finished = False

    def feed(self, tokens: torch.Tensor | Sequence[int]) -> np.ndarray:
        """Add speech tokens (valid ids only); the samples that became final, possibly none."""
        self._append(tokens)
        if self._tokens.size(1) < self._next_render:
            return np.zeros(0, dtype=np.float32)
        self._next_render = self._tokens.size(1) + self._block_tokens
        return self._render(final=False)

    def finish(self, tokens: torch.Tensor | Sequence[int] = ()) -> np.ndarray:
        """Add the last tokens, if any, and return the rest of the chunk's audio."""
        self._append(tokens)
        self._finished = True
        return self._render(final=True)

    def _append(self, tokens: torch.Tensor | Sequence[int]) -> None:
        if self._finished:
            raise RuntimeError("the chunk is finished")
        new = torch.as_tensor(tokens, dtype=torch.long, device=self._s3gen.device).reshape(1, -1)
        if self._tokens.size(1) + new.size(1) > self._max_tokens:
            raise ValueError(f"more than max_tokens={self._max_tokens} speech tokens")
        if new.numel() and not bool(((new >= 0) & (new < SPEECH_VOCAB_SIZE)).all()):
            raise ValueError(f"speech token ids must be in [0, {SPEECH_VOCAB_SIZE})")
        self._tokens = torch.cat([self._tokens, new], dim=1)

    def _flow_frames(self, tokens: int, final: bool) -> int:
        """Mel frames the flow decodes for ``tokens`` tokens after the prompt, prompt frames included."""
        flow = self._s3gen.flow
        frames = flow.token_mel_ratio * (self._prompt_tokens.size(1) + tokens)
        return frames if final else frames - flow.pre_lookahead_len * flow.token_mel_ratio

    @torch.inference_mode()
    def _render(self, final: bool) -> np.ndarray:
        frames = self._flow_frames(self._tokens.size(1), final) - self._prompt_frames
        if frames > self._mel.size(-1):
            mel = _flow_mels(
                self._s3gen, self._prompt_tokens, self._tokens, self._reference, self._flow_noise, final
            )
            self._mel = torch.cat([self._mel, mel[..., self._mel.size(-1) :]], dim=-1)
        # Until the last block, the vocoder's right context is the newest committed frames.
        emit_end = self._mel.size(-1) if final else self._mel.size(-1) - VOCODER_CONTEXT_FRAMES
        if emit_end <= self._emitted_frames:
            return np.zeros(0, dtype=np.float32)
        return self._vocode(emit_end).squeeze(0).float().cpu().numpy()

    def _vocode(self, emit_end: int) -> torch.Tensor:
        """Samples of frames [emitted, emit_end), vocoded with committed frames around them."""
        hift, hop, emitted = self._hift, self._samples_per_frame, self._emitted_frames
        start = max(0, emitted - VOCODER_CONTEXT_FRAMES)
        mel = self._mel[..., start:]
        # Context frames already emitted keep the f0 they were vocoded with, so the excitation there
        # is the one their samples came from and the phase carried into the new frames is exact.
        f0 = torch.cat([self._f0[:, start:emitted], hift.f0_predictor(mel)[:, emitted - start :]], dim=1)
        f0_upsampled = hift.f0_upsamp(f0[:, None]).transpose(1, 2)  # (1, samples, 1), as HiFT's inference
        end = self._mel.size(-1)
        excitation = source_excitation(
            hift.m_source,
            f0_upsampled,
            self._source_phase,
            self._source_noise[..., start * hop : end * hop],
            self._cycles_before(start),
        )
        audio = hift.decode(x=mel, s=excitation.transpose(1, 2))
        audio = audio[:, (emitted - start) * hop : (emit_end - start) * hop]
        # Upstream's fade-in against spill-over from the reference clip, over the chunk's first samples.
        fade = self._s3gen.trim_fade[emitted * hop :]
        faded = min(fade.size(0), audio.size(1))
        audio[:, :faded] *= fade[:faded]
        self._f0 = torch.cat([self._f0, f0[:, emitted - start : emit_end - start]], dim=1)
        self._emitted_frames = emit_end
        return audio

    def _cycles_before(self, frame: int) -> torch.Tensor:
        """Each harmonic's cycles (mod 1) over the emitted frames before ``frame``: where SineGen's
        cumulative sum of f0 stands there. Summed in float64: upstream's float32 running sum over a
        whole chunk is itself only good to about 1e-3 cycles."""
        sine_gen = self._hift.m_source.l_sin_gen
        harmonics = torch.arange(1, sine_gen.harmonic_num + 2, device=self._f0.device, dtype=torch.float64)
        f0_sum = self._f0[:, :frame].double().sum(dim=1, keepdim=True)  # (1, 1)
        cycles = f0_sum * self._samples_per_frame / sine_gen.sampling_rate * harmonics
        return (cycles % 1).float()[..., None]  # (1, harmonics, 1)


def render_whole(
    s3gen: S3Gen,
    speech_tokens: torch.Tensor,
    reference: Mapping[str, torch.Tensor | None],
    generator: torch.Generator,
    max_tokens: int | None = None,
) -> np.ndarray:
    """The whole chunk in one render under :class:`StreamingRenderer`'s noise convention, for
    comparing a stream with the audio it approximates. With ``max_tokens`` left at the chunk's
    length the draws, and so the samples, are :func:`render_waveform`'s."""
    tokens = speech_tokens.reshape(1, -1)
    renderer = StreamingRenderer(s3gen, reference, generator, max_tokens or tokens.size(1))
    return renderer.finish(tokens)


def _flow_mels(
    s3gen: S3Gen,
    prompt_tokens: torch.Tensor,
    tokens: torch.Tensor,
    reference: Mapping[str, torch.Tensor | None],
    noise: torch.Tensor,
    final: bool,
) -> torch.Tensor:
    """Upstream ``CausalMaskedDiffWithXvec.inference`` for one sequence: the chunk's mel (1, 80, frames).

    Not final, the frames of the last ``pre_lookahead_len`` tokens are left out, as upstream's
    ``finalize=False``, which cannot be called: it shortens the encoder output but builds the
    decoder's mask from the full length, and solve_euler fails on the mismatch. ``noise`` covers at
    least every frame, prompt included, so upstream's own randn_like is overwritten entirely.
    """
    flow = s3gen.flow
    embedding = flow.spk_embed_affine_layer(F.normalize(torch.atleast_2d(reference["embedding"]), dim=1))
    sequence = torch.cat([prompt_tokens, tokens], dim=1)
    lengths = torch.tensor([sequence.size(1)], device=sequence.device)
    encoded, _ = flow.encoder(flow.input_embedding(sequence), lengths)
    if not final:
        encoded = encoded[:, : -flow.pre_lookahead_len * flow.token_mel_ratio]
    frames = encoded.size(1)
    mu = flow.encoder_proj(encoded)
    prompt_feat = reference["prompt_feat"]
    conditions = torch.zeros((1, frames, flow.output_size), device=mu.device, dtype=mu.dtype)
    conditions[:, : prompt_feat.size(1)] = prompt_feat
    mels, _ = flow.decoder(
        mu=mu.transpose(1, 2).contiguous(),
        mask=torch.ones((1, 1, frames), device=mu.device, dtype=mu.dtype),
        spks=embedding,
        cond=conditions.transpose(1, 2),
        n_timesteps=CFM_TIMESTEPS,
        noised_mels=noise[..., :frames],
        meanflow=s3gen.meanflow,
    )
    return mels[..., prompt_feat.size(1) :].to(dtype=s3gen.dtype)
