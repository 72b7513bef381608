"""Chatterbox decoding on upstream modules: T3 text -> speech tokens, S3Gen speech tokens -> 24 kHz audio.

Why our own loops instead of ``T3.inference`` / ``S3Gen.inference``:

- upstream samples from torch's global RNG (T3's multinomial, S3Gen's flow-matching noise and its
  vocoder's source excitation), so concurrent requests in one process steal each other's random
  numbers and a seed reproduces nothing. Here every draw comes from the request's own
  ``torch.Generator``, with no lock: requests in a replica's thread pool stay independent and
  concurrent;
- ``T3.inference`` asks the transformer for attentions at every step (transformers then warns that
  SDPA cannot return them), draws a tqdm bar, and takes a token cap that ``generate()`` fixes at 1000.

The arithmetic is upstream's, step for step, and it draws its random numbers in upstream's order:
for the same seed the tokens and samples equal upstream's under ``torch.manual_seed`` (the tests
check this against upstream's own functions).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from chatterbox.models.s3gen import S3Gen
from chatterbox.models.s3gen.hifigan import HiFTGenerator, SourceModuleHnNSF
from chatterbox.models.s3tokenizer import SPEECH_VOCAB_SIZE
from chatterbox.models.t3 import T3
from chatterbox.models.t3.modules.cond_enc import T3Cond
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TopPLogitsWarper,
)

from pipeline.engines.base import SynthesisParams

# Euler steps of S3Gen's flow matching, as upstream's S3Gen.flow_inference uses for this (non-meanflow) model.
CFM_TIMESTEPS = 10


@dataclass(frozen=True)
class SpeechTokens:
    """What T3 said: the S3 tokens S3Gen can render, and why sampling stopped."""

    tokens: torch.Tensor  # (1, n) long, every id < SPEECH_VOCAB_SIZE
    sampled: int  # tokens drawn before the stop token or the cap, invalid ids included
    stop_reason: str  # "eos" | "token_cap"


@torch.inference_mode()
def sample_speech_tokens(
    t3: T3,
    t3_cond: T3Cond,
    text_tokens: torch.Tensor,
    params: SynthesisParams,
    max_new_tokens: int,
    generator: torch.Generator,
) -> SpeechTokens:
    """Upstream ``T3.inference`` with a KV cache and no attentions; ``text_tokens`` is (1, L) with SOT/EOT.

    ``t3_cond`` must be the request's own copy: ``T3.prepare_conditioning`` writes into it.
    With ``cfg_weight == 0`` the unconditional half of the CFG pair contributes nothing, so only
    the conditional sequence runs (upstream's loop crashes there: it always builds the pair).
    """
    hp = t3.hp
    use_cfg = params.cfg_weight > 0.0
    batch_text = torch.cat([text_tokens, text_tokens]) if use_cfg else text_tokens
    start = torch.full((1, 1), hp.start_speech_token, dtype=torch.long, device=t3.device)
    embeds, _ = t3.prepare_input_embeds(
        t3_cond=t3_cond,
        text_tokens=batch_text,
        speech_tokens=start.expand(batch_text.size(0), 1),
        cfg_weight=params.cfg_weight,
    )
    # Upstream quirk kept on purpose: T3.inference appends a second start-of-speech embedding after
    # the one prepare_input_embeds already placed; the released weights were sampled that way.
    start_embed = t3.speech_emb(start) + t3.speech_pos_emb.get_fixed_embedding(0)
    embeds = torch.cat([embeds, _pair(start_embed, use_cfg)], dim=1)

    top_p_warper = TopPLogitsWarper(top_p=params.top_p)
    min_p_warper = MinPLogitsWarper(min_p=params.min_p)
    repetition_penalty = RepetitionPenaltyLogitsProcessor(penalty=float(params.repetition_penalty))

    output = t3.tfmr(inputs_embeds=embeds, use_cache=True)
    cache = output.past_key_values
    step_logits = t3.speech_head(output.last_hidden_state)[:, -1, :]
    generated = start  # the repetition penalty sees the start token too, as upstream's does
    stop_reason = "token_cap"
    for step in range(max_new_tokens):
        logits = step_logits.float()
        if use_cfg:
            cond, uncond = logits[0:1, :], logits[1:2, :]
            cfg = torch.as_tensor(params.cfg_weight, device=cond.device, dtype=cond.dtype)
            logits = cond + cfg * (cond - uncond)
        logits = repetition_penalty(generated, logits)
        if params.temperature != 1.0:
            logits = logits / params.temperature
        logits = min_p_warper(generated, logits)
        logits = top_p_warper(generated, logits)
        probs = torch.softmax(logits, dim=-1)
        next_token = torch.multinomial(probs, num_samples=1, generator=generator)
        if next_token.item() == hp.stop_speech_token:
            stop_reason = "eos"
            break
        generated = torch.cat([generated, next_token], dim=1)
        if step + 1 == max_new_tokens:
            break
        token_embed = t3.speech_emb(next_token) + t3.speech_pos_emb.get_fixed_embedding(step + 1)
        output = t3.tfmr(inputs_embeds=_pair(token_embed, use_cfg), past_key_values=cache, use_cache=True)
        cache = output.past_key_values
        step_logits = t3.speech_head(output.last_hidden_state)[:, -1, :]

    sampled = generated[:, 1:]
    # Ids at or above SPEECH_VOCAB_SIZE are T3's special tokens: S3Gen cannot render them
    # (upstream's generate() filters them the same way).
    valid = sampled[sampled < SPEECH_VOCAB_SIZE].unsqueeze(0)
    return SpeechTokens(tokens=valid, sampled=sampled.size(1), stop_reason=stop_reason)


@torch.inference_mode()
def render_waveform(
    s3gen: S3Gen,
    speech_tokens: torch.Tensor,
    reference: Mapping[str, torch.Tensor | None],
    generator: torch.Generator,
) -> np.ndarray:
    """Upstream ``S3Gen.inference`` (flow matching, HiFT vocoder, fade-in) with seeded noise; 24 kHz float32.

    ``reference`` is the speaker's ``embed_ref`` dict; it is not modified.
    """
    # S3Token2Mel.forward casts the ref dict's tensors in place; the cached dict is shared by threads.
    reference_copy = dict(reference)
    # Flow matching starts from noise over the whole mel sequence (reference prompt + new speech,
    # token_mel_ratio frames per token). Upstream draws it with torch.randn_like; its `noised_mels`
    # argument replaces all of it when it spans the whole sequence, so the global draw goes unused.
    prompt_tokens = reference_copy["prompt_token"].size(-1)
    mel_frames = s3gen.flow.token_mel_ratio * (prompt_tokens + speech_tokens.size(-1))
    noise = torch.randn(
        (1, s3gen.flow.output_size, mel_frames), generator=generator, device=s3gen.device, dtype=s3gen.dtype
    )
    mels = s3gen(
        speech_tokens,
        ref_wav=None,
        ref_sr=None,
        ref_dict=reference_copy,
        finalize=True,
        skip_vocoder=True,
        n_cfm_timesteps=CFM_TIMESTEPS,
        noised_mels=noise,
    ).to(dtype=s3gen.dtype)
    waveform = _vocode(s3gen.mel2wav, mels, generator)
    # Upstream's fade-in against spill-over from the reference clip.
    waveform[:, : len(s3gen.trim_fade)] *= s3gen.trim_fade
    return waveform.squeeze(0).float().cpu().numpy()


def _pair(embedding: torch.Tensor, use_cfg: bool) -> torch.Tensor:
    """The same input for the conditional and the unconditional sequence of the CFG pair."""
    return torch.cat([embedding, embedding]) if use_cfg else embedding


def _vocode(hift: HiFTGenerator, mels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``HiFTGenerator.inference`` with the source excitation's random numbers drawn from ``generator``."""
    f0 = hift.f0_predictor(mels)
    f0_upsampled = hift.f0_upsamp(f0[:, None]).transpose(1, 2)  # (B, samples, 1)
    excitation = _source_excitation(hift.m_source, f0_upsampled, generator)
    return hift.decode(x=mels, s=excitation.transpose(1, 2))


def _source_excitation(
    source: SourceModuleHnNSF, f0_upsampled: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """``SourceModuleHnNSF.forward`` + ``SineGen.forward``, drawing the harmonics' random phases and
    the additive noise from ``generator`` (upstream: torch.distributions.Uniform and randn_like on the
    global RNG)."""
    phase, noise = draw_source_noise(
        source, f0_upsampled.size(0), f0_upsampled.size(1), generator, f0_upsampled.device
    )
    return source_excitation(source, f0_upsampled, phase, noise)


def draw_source_noise(
    source: SourceModuleHnNSF, batch: int, samples: int, generator: torch.Generator, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The source excitation's random numbers in upstream's order: a phase per harmonic, then
    additive noise per harmonic and sample. Apart so that streaming can draw them once, up front."""
    harmonics = source.l_sin_gen.harmonic_num + 1
    # Uniform(-pi, pi).sample() computes low + rand * (high - low) in float32.
    low, high = torch.tensor(-np.pi, device=device), torch.tensor(np.pi, device=device)
    phase = low + torch.rand((batch, harmonics, 1), generator=generator, device=device) * (high - low)
    phase[:, 0, :] = 0
    noise = torch.randn((batch, harmonics, samples), generator=generator, device=device)
    return phase, noise


def source_excitation(
    source: SourceModuleHnNSF,
    f0_upsampled: torch.Tensor,
    phase: torch.Tensor,
    noise: torch.Tensor,
    start_cycles: torch.Tensor | None = None,
) -> torch.Tensor:
    """Upstream's excitation for ``f0_upsampled`` (B, samples, 1) from :func:`draw_source_noise`'s numbers.

    No upstream hook accepts this noise from outside, hence the copy; its unused noise-branch output
    is left out. Written for upstream 0.1.7 (the version pyproject pins).

    ``start_cycles`` (B, harmonics, 1) are the harmonics' cycles (mod 1) before the first sample:
    upstream's sines run on the cumulative sum of f0 from the start of the signal, so a window that
    starts later continues their phase from there instead of restarting it.
    """
    sine_gen = source.l_sin_gen
    f0 = f0_upsampled.transpose(1, 2)  # (B, 1, samples)
    batch, harmonics, samples = f0.size(0), sine_gen.harmonic_num + 1, f0.size(-1)
    frequencies = torch.zeros((batch, harmonics, samples), device=f0.device)
    for harmonic in range(harmonics):
        frequencies[:, harmonic : harmonic + 1, :] = f0 * (harmonic + 1) / sine_gen.sampling_rate
    cycles = torch.cumsum(frequencies, dim=-1)
    if start_cycles is not None:
        cycles = cycles + start_cycles
    theta = 2 * np.pi * (cycles % 1)
    sine_waves = sine_gen.sine_amp * torch.sin(theta + phase)
    voiced = sine_gen._f02uv(f0)
    noise_amp = voiced * sine_gen.noise_std + (1 - voiced) * sine_gen.sine_amp / 3
    sine_waves = sine_waves * voiced + noise_amp * noise
    return source.l_tanh(source.l_linear(sine_waves.transpose(1, 2)))
