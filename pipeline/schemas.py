"""Request and response models of both API dialects: native (reference-compatible) and OpenAI.

Defaults and ranges follow the reference server's code (factsheet §3); every accepted field is
honoured or rejected with a 4xx naming it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.outputs import folder_parts

# The most any server accepts in one request (about two hours of speech); each server's own,
# lower limit is AppSettings.limits.max_text_chars, enforced by SpeechService.
MAX_TEXT_CHARS = 100_000
OutputFormat = Literal["wav", "mp3", "flac", "opus", "aac", "pcm"]
WhisperModelName = Literal[
    "tiny",
    "tiny.en",
    "base",
    "base.en",
    "small",
    "small.en",
    "medium",
    "medium.en",
    "large",
    "large-v2",
    "large-v3",
    "turbo",
]


class _StrictModel(BaseModel):
    """Unknown fields are an error: a misspelt option must not be silently ignored. NaN and
    infinities (which Python's JSON parser accepts) are refused like any out-of-range number."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class TTSRequest(_StrictModel):
    """Body of ``POST /api/v1/tts``; the reference's TTSRequest plus a few Chatterbox knobs."""

    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    reference_audio_filename: str | None = None

    exaggeration: float = Field(0.5, ge=0.0, le=2.0, description="Capped at 1.0, as the reference does.")
    temperature: float = Field(0.75, ge=0.1, le=2.0)
    cfg_weight: float = Field(1.0, ge=0.0, le=2.0)
    min_p: float = Field(0.05, ge=0.0, le=1.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    repetition_penalty: float = Field(1.2, ge=1.0, le=2.0)
    seed: int = Field(0, ge=0, le=2**32 - 1, description="0 picks a random seed; the seed used is returned.")

    num_candidates_per_chunk: int = Field(3, ge=1, le=10)
    max_attempts_per_candidate: int = Field(3, ge=1, le=10)
    bypass_whisper_checking: bool = False
    use_faster_whisper: bool = True
    use_longest_transcript_on_fail: bool = True
    whisper_model_name: WhisperModelName | None = Field(
        None, description="None uses the validator's configured model; another name must match it."
    )
    validation_threshold: float | None = Field(
        None,
        ge=0.0,
        le=1.01,
        description="Word-similarity a candidate needs to pass; None uses the server's default. "
        "Above 1.0 no candidate can pass, which exercises the fallback path.",
    )

    enable_batching: bool = False
    smart_batch_short_sentences: bool = True
    to_lowercase: bool = True
    normalize_spacing: bool = True
    fix_dot_letters: bool = True
    remove_reference_numbers: bool = True
    sound_words_field: str = ""

    use_auto_editor: bool = Field(
        False, description="Cut pauses inside the audio (the reference UI's auto-editor)."
    )
    keep_original_wav_ae: bool = False
    ae_threshold: float = Field(
        0.06, ge=0.0, le=1.0, description="Sound is louder than this fraction of the peak."
    )
    ae_margin: float = Field(0.2, ge=0.0, le=1.0, description="Seconds of each pause kept around the sound.")

    normalize_audio: bool = False
    normalize_method: Literal["ebu", "peak"] = "ebu"
    normalize_level: float = Field(-24.0, ge=-70.0, le=-5.0)
    normalize_tp: float = Field(-2.0, ge=-9.0, le=0.0)
    normalize_lra: float | None = Field(
        None,
        description="Not supported: loudness is matched as integrated loudness (pyloudnorm), which has "
        "no loudness-range control; a value is refused rather than ignored.",
    )

    speed_factor: float = Field(1.0, ge=0.5, le=2.0)
    speed_factor_library: Literal["auto", "audiostretchy"] | None = "auto"
    trim: bool = False
    trim_threshold_ms: int = Field(200, ge=50, le=1000)
    crossfade_ms: float = Field(20.0, ge=0.0, le=500.0)
    sample_rate: int | None = Field(
        None, ge=8000, le=48000, description="Output rate; None keeps the engine's."
    )

    project: str | None = None
    folder: str | None = None
    export_formats: list[OutputFormat] = Field(default_factory=lambda: ["wav", "mp3"], min_length=1)
    disable_watermark: bool = True

    @field_validator("text")
    @classmethod
    def _text_not_blank(cls, value: str) -> str:
        stripped = value.strip()
        if not stripped:
            raise ValueError("text must contain something to say")
        return stripped

    @field_validator("export_formats", mode="before")
    @classmethod
    def _lowercase_formats(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part for part in value.split(",") if part.strip()]
        if isinstance(value, list):
            return [item.strip().lower() if isinstance(item, str) else item for item in value]
        return value

    @field_validator("use_faster_whisper")
    @classmethod
    def _only_faster_whisper(cls, value: bool) -> bool:
        if not value:
            raise ValueError("only faster-whisper is available on this server; leave use_faster_whisper true")
        return value

    @field_validator("keep_original_wav_ae")
    @classmethod
    def _no_original_copy(cls, value: bool) -> bool:
        if value:
            raise ValueError(
                "keeping an unedited copy is not supported; request once with use_auto_editor false"
            )
        return value

    @field_validator("normalize_lra")
    @classmethod
    def _no_loudness_range(cls, value: float | None) -> float | None:
        if value is not None:
            raise ValueError(
                "loudness-range control is not supported (loudness is matched as integrated "
                "loudness only); omit normalize_lra"
            )
        return value

    @field_validator("project", "folder")
    @classmethod
    def _valid_folder(cls, value: str | None) -> str | None:
        # Checked here, before any work: a bad folder used to fail only after all generation.
        if value is not None:
            folder_parts(value)
        return value

    @model_validator(mode="after")
    def _project_alias(self) -> TTSRequest:
        if self.project is not None and self.folder is not None and self.project != self.folder:
            raise ValueError("project and folder are aliases; give one, or the same value in both")
        return self

    @property
    def output_folder(self) -> str | None:
        return self.project if self.project is not None else self.folder


class ChunkReport(BaseModel):
    """What happened to one chunk: the user sees retries and fallbacks instead of guessing."""

    index: int
    text: str
    attempts: int
    passed: bool
    fallback: str | None = Field(None, description="How the chunk was chosen when no candidate passed.")
    score: float | None = None
    transcript: str | None = None
    seed: int
    duration_sec: float
    engine_metadata: dict[str, Any] = Field(
        default_factory=dict,
        description="What the engine reports: speech tokens, stop reason, cache hit, timings.",
    )


class OutputFile(BaseModel):
    format: str
    filename: str
    url: str


class AudioFilesResponse(BaseModel):
    """What every generating route answers in ``response_mode=url``: the stored files and the run."""

    success: bool = True
    output_files: list[OutputFile]
    generation_seed_used: int
    processing_time_seconds: float
    engine: str
    sample_rate: int
    duration_sec: float


class TTSResponse(AudioFilesResponse):
    message: str = "TTS generation completed successfully"
    validated: bool
    chunks: list[ChunkReport]


OPENAI_MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts", "chatterbox")


class OpenAISpeechRequest(_StrictModel):
    """Body of ``POST /v1/audio/speech``. Every model name is an alias of the active engine."""

    model: Literal[OPENAI_MODELS] = Field(
        "tts-1", description="Any of these names: each is the server's active engine."
    )
    input: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    voice: str = "alloy"
    instructions: str | None = Field(
        None,
        description="Not supported (Chatterbox takes no style prompt): empty or omitted, else refused.",
    )
    response_format: OutputFormat = "mp3"
    speed: float = Field(1.0, ge=0.25, le=4.0, description="Pitch-kept speed change, OpenAI's range.")
    stream_format: Literal["audio", "sse"] = "audio"

    @field_validator("instructions")
    @classmethod
    def _no_instructions(cls, value: str | None) -> str | None:
        if value and value.strip():
            raise ValueError(
                "voice instructions are not supported: Chatterbox takes no style prompt; "
                "omit instructions (use a voice and its exaggeration/cfg_weight defaults instead)"
            )
        return value

    @field_validator("input")
    @classmethod
    def _input_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("input must contain something to say")
        return value.strip()


class VCOptions(_StrictModel):
    """Voice-conversion settings shared by the JSON and the multipart form of ``POST /api/v1/vc``."""

    target_voice_source: str | None = Field(
        None, description="A voice library file (or URL, where enabled); None: the model's built-in voice."
    )
    chunk_sec: float = Field(60.0, ge=1.0, le=300.0, description="Window length for long inputs.")
    overlap_sec: float = Field(0.1, ge=0.0, le=5.0, description="Equal-power crossfade between windows.")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="0 picks a random seed; the seed used is returned.")
    disable_watermark: bool = True
    export_formats: list[OutputFormat] = Field(default_factory=lambda: ["wav", "mp3"], min_length=1)
    normalize_audio: bool = False
    normalize_method: Literal["ebu", "peak"] = "ebu"
    normalize_level: float = Field(-24.0, ge=-70.0, le=-5.0)
    normalize_tp: float = Field(-2.0, ge=-9.0, le=0.0)
    trim: bool = False
    trim_threshold_ms: int = Field(200, ge=50, le=1000)
    sample_rate: int | None = Field(None, ge=8000, le=48000, description="Output rate; None keeps 24 kHz.")

    _formats = field_validator("export_formats", mode="before")(TTSRequest._lowercase_formats.__func__)

    @model_validator(mode="after")
    def _overlap_inside_window(self) -> VCOptions:
        if self.overlap_sec >= self.chunk_sec / 2:
            raise ValueError("overlap_sec must be less than half of chunk_sec")
        return self


class VCRequest(VCOptions):
    """JSON body of ``POST /api/v1/vc``: both sources name stored files."""

    input_audio_source: str = Field(
        min_length=1, description="A file of the VC input store (or URL, where enabled)."
    )


class VCResponse(AudioFilesResponse):
    message: str = "Voice conversion completed successfully"
    windows: list[dict[str, Any]] = Field(
        description="Each window converted: its span, tries and what the engine reported (replica included)."
    )
