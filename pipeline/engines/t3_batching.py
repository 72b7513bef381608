"""Batched T3 decoding: many requests' speech-token steps in one forward pass, each row its own.

Why our own Llama step instead of ``T3.tfmr(...)`` with a padded ``DynamicCache``:

- **rows join and leave between steps** (continuous batching). Each request keeps its own
  key/value buffers (:class:`RequestCache`), so joining is a prefill of that request alone and
  leaving is dropping its buffers: no re-padding of the others, no cache surgery that depends on
  the transformers version (4.x and 5.x store caches differently);
- **a seed gives the same tokens alone or batched.** The dense parts (projections, MLP, speech
  head) run on all rows at once; attention runs per request over exactly its own keys, because
  padding a shorter request's keys changes SDPA's rounding (measured: 1.2e-7 on this CPU), and
  greedy-free sampling turns such differences into other tokens now and then. The matrix
  products are row-independent only when their row count is a multiple of ``row_multiple``
  (measured here with MKL: 2 or 3 rows take another kernel than 4+, and rows past the last
  multiple of 4 round differently), so the batch is padded with zero rows up to that multiple;
- **no attentions, one host sync per step** (the stop check), the speech head on the last
  position only.

Every request has two rows, its conditional and unconditional halves of classifier-free guidance
(with ``cfg_weight == 0`` the second contributes nothing), so a batch of B requests is 2B rows.
The sampling chain is upstream's (CFG, repetition penalty, temperature, min-p, top-p, multinomial),
written per row so each request keeps its own settings; the draw uses the request's generator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from chatterbox.models.s3tokenizer import SPEECH_VOCAB_SIZE
from chatterbox.models.t3 import T3
from chatterbox.models.t3.modules.cond_enc import T3Cond
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from pipeline.engines.base import SynthesisParams

# Key/value buffers grow by this many positions at a time (amortises the copy of a growing cache).
CACHE_GROWTH = 64


@dataclass(frozen=True)
class SpeechTokens:
    """What T3 said: the S3 tokens S3Gen can render, and why sampling stopped."""

    tokens: torch.Tensor  # (1, n) long, every id < SPEECH_VOCAB_SIZE
    sampled: int  # tokens drawn before the stop token or the cap, invalid ids included
    stop_reason: str  # "eos" | "token_cap"
    peak_batch: int = 1  # the most requests its decode steps shared a forward pass with (itself included)


class RequestCache:
    """One request's keys and values for every layer: (2 rows, kv heads, capacity, head dim)."""

    def __init__(self, layers: int, kv_heads: int, head_dim: int, like: torch.Tensor) -> None:
        self._shape = (2, kv_heads, 0, head_dim)
        self._like = like
        self.keys: list[torch.Tensor] = [like.new_empty(self._shape) for _ in range(layers)]
        self.values: list[torch.Tensor] = [like.new_empty(self._shape) for _ in range(layers)]
        self.length = 0

    def write(
        self, layer: int, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``keys``/``values`` (2, heads, n, dim) after the cached ones; all of them come back."""
        end = self.length + keys.size(2)
        if end > self.keys[layer].size(2):
            grown = max(end, self.keys[layer].size(2) + CACHE_GROWTH)
            self.keys[layer] = _grow(self.keys[layer], self.length, grown)
            self.values[layer] = _grow(self.values[layer], self.length, grown)
        self.keys[layer][:, :, self.length : end] = keys
        self.values[layer][:, :, self.length : end] = values
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, positions: int) -> None:
        self.length += positions

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))


def _grow(buffer: torch.Tensor, used: int, capacity: int) -> torch.Tensor:
    grown = buffer.new_empty((*buffer.shape[:2], capacity, buffer.size(3)))
    grown[:, :, :used] = buffer[:, :, :used]
    return grown


@dataclass
class DecodeState:
    """A request in the batch: its cache, its sampling settings and what it has said so far."""

    params: SynthesisParams
    max_new_tokens: int
    generator: torch.Generator
    cache: RequestCache
    seen: torch.Tensor  # (1, vocab) bool: tokens the repetition penalty punishes (start token too)
    logits: torch.Tensor | None = None  # (2, vocab): the next step's, from the last forward
    sampled: list[int] | None = None
    peak_batch: int = 1

    def __post_init__(self) -> None:
        self.sampled = []

    @property
    def steps(self) -> int:
        return len(self.sampled or ())


class BatchedT3:
    """Prefill and batched decode steps on upstream T3 modules; stateless between calls."""

    def __init__(self, t3: T3, row_multiple: int = 4) -> None:
        self.t3 = t3
        self.row_multiple = max(1, row_multiple)
        config = t3.cfg
        self._layers = t3.tfmr.layers
        self._heads = config.num_attention_heads
        self._kv_heads = config.num_key_value_heads
        self._head_dim = getattr(config, "head_dim", None) or config.hidden_size // self._heads

    @property
    def device(self) -> torch.device:
        return self.t3.device

    @property
    def vocab_limit(self) -> int:
        """Ids from here on are T3's special tokens, which S3Gen cannot render."""
        return SPEECH_VOCAB_SIZE

    def result(self, state: DecodeState) -> SpeechTokens:
        """The request's tokens once it stopped (upstream's generate() drops the special ids too)."""
        stop_token = self.t3.hp.stop_speech_token
        sampled = state.sampled or []
        stopped = bool(sampled) and sampled[-1] == stop_token
        spoken = sampled[:-1] if stopped else sampled
        valid = [token for token in spoken if token < SPEECH_VOCAB_SIZE]
        tokens = torch.tensor(valid, dtype=torch.long, device=self.device).reshape(1, len(valid))
        return SpeechTokens(
            tokens=tokens,
            sampled=len(spoken),
            stop_reason="eos" if stopped else "token_cap",
            peak_batch=state.peak_batch,
        )

    @torch.inference_mode()
    def prefill(
        self,
        t3_cond: T3Cond,
        text_tokens: torch.Tensor,
        params: SynthesisParams,
        max_new_tokens: int,
        generator: torch.Generator,
    ) -> DecodeState:
        """Run one request's prompt (its two CFG rows) and keep its cache and first logits.

        ``t3_cond`` must be the request's own copy: ``T3.prepare_conditioning`` writes into it.
        """
        t3, hp = self.t3, self.t3.hp
        start = torch.full((1, 1), hp.start_speech_token, dtype=torch.long, device=self.device)
        embeds, _ = t3.prepare_input_embeds(
            t3_cond=t3_cond,
            text_tokens=torch.cat([text_tokens, text_tokens]),
            speech_tokens=start.expand(2, 1),
            cfg_weight=params.cfg_weight,
        )
        # Upstream quirk kept on purpose: T3.inference appends a second start-of-speech embedding
        # after the one prepare_input_embeds already placed; the released weights were sampled so.
        start_embed = t3.speech_emb(start) + t3.speech_pos_emb.get_fixed_embedding(0)
        embeds = torch.cat([embeds, start_embed.expand(2, -1, -1)], dim=1)
        cache = RequestCache(len(self._layers), self._kv_heads, self._head_dim, embeds)
        positions = torch.arange(embeds.size(1), device=self.device).unsqueeze(0).expand(2, -1)
        hidden = self._forward(embeds, positions, [cache], causal=True)
        seen = torch.zeros((1, t3.speech_head.out_features), dtype=torch.bool, device=self.device)
        seen[0, hp.start_speech_token] = True
        state = DecodeState(params, max_new_tokens, generator, cache, seen)
        state.logits = t3.speech_head(hidden[:, -1, :]).float()
        return state

    @torch.inference_mode()
    def sample(self, states: Sequence[DecodeState]) -> list[int]:
        """Each request's next token from its pending logits (upstream's processors, per row)."""
        for state in states:
            state.peak_batch = max(state.peak_batch, len(states))
        logits = torch.stack([s.logits for s in states])  # (B, 2, vocab)
        cond, uncond = logits[:, 0, :], logits[:, 1, :]
        column = _per_row(states, self.device)
        logits = cond + column("cfg_weight") * (cond - uncond)
        # RepetitionPenaltyLogitsProcessor: negative scores times the penalty, positive ones divided.
        seen = torch.cat([s.seen for s in states])
        penalty = column("repetition_penalty")
        penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
        logits = torch.where(seen, penalised, logits)
        logits = logits / column("temperature")
        logits = _min_p(logits, column("min_p"))
        logits = _top_p(logits, column("top_p"))
        probs = torch.softmax(logits, dim=-1)
        drawn = torch.cat(
            [
                torch.multinomial(probs[row : row + 1], num_samples=1, generator=state.generator)
                for row, state in enumerate(states)
            ]
        )
        tokens = drawn.squeeze(1).tolist()  # the one host sync of a step: stopping needs it
        for state, token in zip(states, tokens, strict=True):
            state.sampled.append(token)
            state.seen[0, token] = True
        return tokens

    @torch.inference_mode()
    def step(self, states: Sequence[DecodeState]) -> None:
        """Feed each request its last sampled token; their next logits replace the pending ones."""
        t3 = self.t3
        tokens = torch.tensor([s.sampled[-1] for s in states], device=self.device).unsqueeze(1)
        # The speech position of a token is how many speech tokens came before it (+1 for start).
        speech_positions = torch.tensor([s.steps for s in states], device=self.device).unsqueeze(1)
        embeds = t3.speech_emb(tokens) + t3.speech_pos_emb.emb(speech_positions)  # (B, 1, dim)
        embeds = embeds.repeat_interleave(2, dim=0)
        positions = torch.tensor([s.cache.length for s in states], device=self.device)
        positions = positions.repeat_interleave(2).unsqueeze(1)
        hidden = self._forward(embeds, positions, [s.cache for s in states], causal=False)
        logits = t3.speech_head(hidden[:, -1, :]).float()
        for index, state in enumerate(states):
            state.logits = logits[2 * index : 2 * index + 2]

    def _forward(
        self, embeds: torch.Tensor, positions: torch.Tensor, caches: Sequence[RequestCache], causal: bool
    ) -> torch.Tensor:
        """Upstream's LlamaModel forward for 2 rows per cache, attention per request.

        Rows beyond ``2 * len(caches)`` up to the next multiple of ``row_multiple`` are zeros
        that only keep the matrix products row-independent; they are cut off before returning.
        """
        tfmr = self.t3.tfmr
        rows, length = 2 * len(caches), embeds.size(1)
        padded = -(-rows // self.row_multiple) * self.row_multiple
        hidden = F.pad(embeds, (0, 0, 0, 0, 0, padded - rows))
        positions = F.pad(positions, (0, 0, 0, padded - rows))
        cos, sin = tfmr.rotary_emb(hidden, positions)
        for index, layer in enumerate(self._layers):
            attention = layer.self_attn
            normed = layer.input_layernorm(hidden)
            query = attention.q_proj(normed).view(padded, length, -1, self._head_dim).transpose(1, 2)
            key = attention.k_proj(normed).view(padded, length, -1, self._head_dim).transpose(1, 2)
            value = attention.v_proj(normed).view(padded, length, -1, self._head_dim).transpose(1, 2)
            query, key = apply_rotary_pos_emb(query, key, cos, sin)
            outputs = []
            for slot, cache in enumerate(caches):
                rows_of = slice(2 * slot, 2 * slot + 2)
                keys, values = cache.write(index, key[rows_of], value[rows_of])
                outputs.append(
                    F.scaled_dot_product_attention(
                        query[rows_of],
                        keys,
                        values,
                        is_causal=causal,
                        scale=attention.scaling,
                        enable_gqa=self._kv_heads != self._heads,
                    )
                )
            if padded > rows:
                outputs.append(query.new_zeros((padded - rows, *query.shape[1:])))
            attended = torch.cat(outputs).transpose(1, 2).reshape(padded, length, -1)
            hidden = hidden + attention.o_proj(attended)
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        for cache in caches:
            cache.advance(length)
        return tfmr.norm(hidden)[:rows]


def _per_row(states: Sequence[DecodeState], device: torch.device):
    """A (B, 1) float column of one sampling setting, one value per request."""

    def column(name: str) -> torch.Tensor:
        values = [float(getattr(state.params, name)) for state in states]
        return torch.tensor(values, dtype=torch.float32, device=device).unsqueeze(1)

    return column


def _min_p(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """MinPLogitsWarper per row: drop tokens below min_p times the most likely one's probability."""
    probs = torch.softmax(logits, dim=-1)
    threshold = min_p * probs.amax(dim=-1, keepdim=True)
    remove = probs < threshold
    # min_tokens_to_keep=1: the most likely token always survives.
    remove.scatter_(1, probs.argmax(dim=-1, keepdim=True), False)
    return logits.masked_fill(remove, -float("inf"))


def _top_p(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """TopPLogitsWarper per row: keep the smallest set whose probability reaches top_p."""
    sorted_logits, sorted_indices = torch.sort(logits, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cumulative <= (1 - top_p)
    remove_sorted[:, -1] = False  # min_tokens_to_keep=1
    remove = remove_sorted.scatter(1, sorted_indices, remove_sorted)
    return logits.masked_fill(remove, -float("inf"))
