"""Upstream Chatterbox components, loaded once per replica and only read afterwards.

Heavy module (torch, chatterbox): imported by ``ChatterboxEngine.load`` and
``ChatterboxVCEngine.load`` only. Loading mirrors upstream's ``ChatterboxTTS.from_local`` and
speaker conditioning mirrors its ``prepare_conditionals``, except that results are returned instead
of stored on the model. The VC engine needs only S3Gen: :func:`load_s3gen`,
:func:`load_builtin_voice` and :func:`embed_s3gen_reference` serve both engines.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import librosa
import numpy as np
import torch
import torch.nn.functional as F
from chatterbox.models.s3gen import S3GEN_SR, S3Gen
from chatterbox.models.s3tokenizer import S3_SR
from chatterbox.models.t3 import T3
from chatterbox.models.t3.llama_configs import LLAMA_CONFIGS
from chatterbox.models.t3.modules.cond_enc import T3Cond
from chatterbox.models.t3.modules.t3_config import T3Config
from chatterbox.models.tokenizers import EnTokenizer
from chatterbox.models.voice_encoder import VoiceEncoder
from chatterbox.tts import ChatterboxTTS, Conditionals, punc_norm
from safetensors.torch import load_file

from pipeline.engines.chatterbox_loading import (
    BUILTIN_VOICE_FILE,
    T3_BACKBONE_FILE,
    T3Backbone,
    read_t3_backbone,
)
from pipeline.errors import EngineUnavailable

# Upstream's reference trims: 6 s at 16 kHz feed T3's speech prompt, 10 s at 24 kHz S3Gen's.
ENC_COND_LEN = ChatterboxTTS.ENC_COND_LEN
DEC_COND_LEN = ChatterboxTTS.DEC_COND_LEN
UPSTREAM_BACKBONES = frozenset(LLAMA_CONFIGS)


@dataclass(frozen=True)
class SpeakerConditioning:
    """One voice, ready for generation; shared read-only between requests (the cache holds these)."""

    t3: T3Cond  # emotion_adv is the neutral 0.5 here; each request sets its own on a copy
    s3gen_reference: Mapping[str, torch.Tensor | None]

    def for_request(self, exaggeration: float) -> T3Cond:
        """A private T3Cond with this request's exaggeration (T3 writes into the one it is given)."""
        emotion = torch.full((1, 1, 1), exaggeration, dtype=self.t3.speaker_emb.dtype)
        return dataclasses.replace(self.t3, emotion_adv=emotion.to(self.t3.speaker_emb.device))


def register_t3_backbone(backbone: T3Backbone) -> None:
    """Make a non-default T3 backbone known to upstream, which looks configs up by name in LLAMA_CONFIGS.

    The entry is only read when a T3 is built, so registering a name again just takes the newer
    config; upstream's own entries are never replaced.
    """
    if backbone.name in UPSTREAM_BACKBONES:
        raise EngineUnavailable(
            f"{T3_BACKBONE_FILE} may not redefine upstream's T3 backbone {backbone.name!r}"
        )
    # A deep copy: transformers' LlamaConfig writes into the nested rope_scaling dict it is given.
    LLAMA_CONFIGS[backbone.name] = copy.deepcopy(backbone.llama_config)


class ChatterboxModel:
    """T3, S3Gen, the voice encoder and the text tokenizer of one checkpoint, plus its built-in voice."""

    def __init__(
        self,
        *,
        t3: T3,
        s3gen: S3Gen,
        voice_encoder: VoiceEncoder,
        tokenizer: EnTokenizer,
        device: torch.device,
        builtin_voice: SpeakerConditioning | None,
    ) -> None:
        self.t3 = t3
        self.s3gen = s3gen
        self.voice_encoder = voice_encoder
        self.tokenizer = tokenizer
        self.device = device
        self.builtin_voice = builtin_voice

    @classmethod
    def load(cls, directory: Path, device: torch.device, t3_dtype: torch.dtype) -> ChatterboxModel:
        """Build the modules and load the checkpoint's weights (upstream ``from_local``, stricter)."""
        voice_encoder = VoiceEncoder()
        voice_encoder.load_state_dict(load_file(directory / "ve.safetensors"))
        voice_encoder.to(device).eval()

        hp = T3Config.english_only()
        backbone = read_t3_backbone(directory)
        if backbone is not None:
            register_t3_backbone(backbone)
            hp.llama_config_name = backbone.name
        t3 = T3(hp)
        t3.load_state_dict(load_file(directory / "t3_cfg.safetensors"))
        t3.to(device=device, dtype=t3_dtype).eval()

        return cls(
            t3=t3,
            s3gen=load_s3gen(directory, device),
            voice_encoder=voice_encoder,
            tokenizer=EnTokenizer(str(directory / "tokenizer.json")),
            device=device,
            builtin_voice=load_builtin_voice(directory, device, t3_dtype),
        )

    @property
    def t3_dtype(self) -> torch.dtype:
        return self.t3.speech_head.weight.dtype

    def condition(self, samples: np.ndarray, sample_rate: int) -> SpeakerConditioning:
        """Speaker conditioning from reference audio at any rate: upstream's ``prepare_conditionals``."""
        with torch.inference_mode():
            reference_24k = reference_at_24k(samples, sample_rate)
            reference_16k = librosa.resample(reference_24k, orig_sr=S3GEN_SR, target_sr=S3_SR)
            s3gen_reference = embed_s3gen_reference(self.s3gen, reference_24k, self.device)
            prompt_tokens, _ = self.s3gen.tokenizer.forward(
                [reference_16k[:ENC_COND_LEN]], max_len=self.t3.hp.speech_cond_prompt_len
            )
            speaker_embedding = torch.from_numpy(
                self.voice_encoder.embeds_from_wavs([reference_16k], sample_rate=S3_SR)
            ).mean(axis=0, keepdim=True)
            t3_cond = T3Cond(
                speaker_emb=speaker_embedding,
                cond_prompt_speech_tokens=torch.atleast_2d(prompt_tokens),
                emotion_adv=0.5 * torch.ones(1, 1, 1),
            ).to(device=self.device, dtype=self.t3_dtype)
        return SpeakerConditioning(t3=t3_cond, s3gen_reference=s3gen_reference)

    def text_tokens(self, text: str) -> torch.Tensor:
        """(1, L) ids framed by start/stop tokens, after upstream's punctuation normalisation."""
        ids = self.tokenizer.text_to_tokens(punc_norm(text)).to(self.device)
        ids = F.pad(ids, (1, 0), value=self.t3.hp.start_text_token)
        ids = F.pad(ids, (0, 1), value=self.t3.hp.stop_text_token)
        return ids.long()


def load_s3gen(directory: Path, device: torch.device) -> S3Gen:
    """S3Gen from ``s3gen.safetensors`` (float32, as upstream runs it everywhere), keys checked."""
    s3gen = S3Gen()
    # Upstream loads S3Gen non-strictly because the speech tokenizer's mel filters and window are
    # computed, not stored; anything else missing or unexpected means a wrong file.
    result = s3gen.load_state_dict(load_file(directory / "s3gen.safetensors"), strict=False)
    missing = [key for key in result.missing_keys if not key.endswith(S3Gen.ignore_state_dict_missing)]
    if missing or result.unexpected_keys:
        raise EngineUnavailable(
            f"{directory / 's3gen.safetensors'} does not match S3Gen: "
            f"missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
    return s3gen.to(device).eval()


def load_builtin_voice(
    directory: Path, device: torch.device, t3_dtype: torch.dtype
) -> SpeakerConditioning | None:
    """The checkpoint's built-in voice (``conds.pt``), or None if it has none."""
    if not (directory / BUILTIN_VOICE_FILE).exists():
        return None
    conds = Conditionals.load(directory / BUILTIN_VOICE_FILE, map_location="cpu").to(device)
    return SpeakerConditioning(t3=conds.t3.to(dtype=t3_dtype), s3gen_reference=conds.gen)


def reference_at_24k(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """Reference audio at S3Gen's rate, float32."""
    # librosa.load(path, sr=S3GEN_SR) in upstream resamples with librosa's default (soxr_hq).
    reference_24k = samples.astype(np.float32)
    if sample_rate != S3GEN_SR:
        reference_24k = librosa.resample(reference_24k, orig_sr=sample_rate, target_sr=S3GEN_SR)
    return reference_24k


@torch.inference_mode()
def embed_s3gen_reference(
    s3gen: S3Gen, reference_24k: np.ndarray, device: torch.device
) -> dict[str, torch.Tensor | None]:
    """S3Gen's speaker prompt (``embed_ref``) from the first DEC_COND_LEN samples, as upstream
    ``prepare_conditionals`` and ``ChatterboxVC.set_target_voice`` both build it."""
    return s3gen.embed_ref(reference_24k[:DEC_COND_LEN], S3GEN_SR, device=device)
