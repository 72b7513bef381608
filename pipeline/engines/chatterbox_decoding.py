"""S3Gen decoding on upstream modules: speech tokens -> 24 kHz audio, with the request's own randomness.

Why our own functions instead of ``S3Gen.inference``: upstream draws S3Gen's flow-matching noise
and its vocoder's source excitation from torch's global RNG, so concurrent requests in one process
steal each other's random numbers and a seed reproduces nothing. Here every draw comes from the
request's own ``torch.Generator``. The arithmetic is upstream's, and the draws come in upstream's
order: for the same seed the samples equal upstream's under ``torch.manual_seed`` (the tests check
this against upstream's own function). T3's decoding lives in pipeline.engines.t3_batching.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from chatterbox.models.s3gen import S3Gen
from chatterbox.models.s3gen.hifigan import HiFTGenerator, SourceModuleHnNSF

# Euler steps of S3Gen's flow matching, as upstream's S3Gen.flow_inference uses for this (non-meanflow) model.
CFM_TIMESTEPS = 10


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
