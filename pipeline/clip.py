"""The audio value type passed between pipeline steps and Serve deployments."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class AudioClip:
    """Mono float32 samples with their rate, kept float32 end to end.

    Deployments exchange this instead of file paths (replicas may sit on different nodes) and
    instead of bare tuples (the rate travels with the samples). Conversion to integer PCM
    happens once, at encoding.
    """

    samples: np.ndarray
    sample_rate: int
    text: str = ""
    metadata: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        samples = np.asarray(self.samples, dtype=np.float32)
        if samples.ndim != 1:
            raise ValueError(f"AudioClip holds mono audio; got shape {samples.shape}")
        if self.sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive; got {self.sample_rate}")
        object.__setattr__(self, "samples", samples)

    @property
    def duration_sec(self) -> float:
        return len(self.samples) / self.sample_rate

    @property
    def num_samples(self) -> int:
        return len(self.samples)

    def with_samples(self, samples: np.ndarray, sample_rate: int | None = None) -> AudioClip:
        """A copy with new samples (and optionally a new rate), text and metadata kept."""
        return AudioClip(samples, sample_rate or self.sample_rate, self.text, dict(self.metadata))
