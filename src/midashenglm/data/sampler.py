"""The batch sampler: dataset mixing, length-aware batches under a memory budget, exact resume.

The stream is an infinite sequence of micro-batches (lists of sample indices), built in
**rounds** and fully determined by the seed:

1. *Mixing.* Each dataset ``d`` has its own endless stream of shuffled epochs (a fresh
   permutation per epoch, from ``(seed, d, epoch)``). Every round takes the next
   ``round(weight_d * len(d))`` samples of each stream (at least one for a positive
   weight), so weight 0.25 spends a quarter epoch of ``d`` per round and weight 3 three
   epochs: the paper's per-dataset ratios (it down-weights its ~90 % ASR hours). Epochs are counted per dataset (:meth:`epochs`).
2. *Batching.* ``length_aware``: the round's samples are sorted by (audio seconds, tokens),
   cut into ``num_buckets`` equal-count buckets of similar length, shuffled within each
   bucket, and packed greedily (in bucket order) into micro-batches whose *padded* cost
   stays within the budgets: rows x longest token count <= ``max_tokens``, rows x longest
   audio <= ``max_audio_seconds``, rows <= ``max_batch_size``. A sample over a budget on
   its own gets a batch of its own. Otherwise (the benchmark's baseline) the round is
   shuffled and cut into batches of ``batch_size``.
3. The round's batches are shuffled, so lengths do not come in a ramp.

Micro-batch ``n`` of the stream is the same whatever happened before, so the state is one
number, ``consumed``: the trainer calls :meth:`advance` after each optimiser step with the
micro-batches it used (over all ranks), saves :meth:`state_dict` in its checkpoint, and a
resumed run iterates from micro-batch ``consumed`` on. Iterating never changes the state
(DataLoader workers prefetch ahead of what was trained on).

Ranks: :meth:`rank_view` gives rank ``r`` of ``W`` the micro-batches ``consumed + r``,
``consumed + r + W``, ...; a step with ``A`` accumulation steps per rank consumes ``W * A``
of them, so 2 ranks x 1 accumulation step train on exactly what 1 rank x 2 does.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import zlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from midashenglm.data.manifest import TrainingSample
from midashenglm.errors import UserError


class BatchSampler:
    """Micro-batches of sample indices: mixture + length-aware packing, resumable, rank-sharded.

    ``samples`` and ``token_counts`` (decoder tokens per sample, from
    :func:`~midashenglm.data.collate.text_token_counts`) are aligned; a sample's audio cost is
    its ``duration`` (seconds, unknown counts as 0). Budgets, per micro-batch: ``max_tokens``
    (padded decoder tokens, rows x longest), ``max_audio_seconds`` (padded audio, rows x
    longest sample's audio; ``None``: no limit), ``max_batch_size`` (rows). ``weights``:
    ``{dataset: weight}`` (default 1.0 each: one epoch per round). ``length_aware=False``
    makes fixed-size random batches of ``batch_size`` instead (budgets unused).

    Raises :class:`~midashenglm.errors.UserError` for a weight naming no dataset of the
    manifest, negative weights, weights that select nothing, or non-positive budgets.
    """

    def __init__(
        self,
        samples: Sequence[TrainingSample],
        token_counts: Sequence[int],
        *,
        max_tokens: int,
        max_audio_seconds: float | None = None,
        max_batch_size: int | None = None,
        weights: dict[str, float] | None = None,
        length_aware: bool = True,
        batch_size: int | None = None,
        seed: int = 0,
        num_buckets: int = 30,
    ) -> None:
        if len(samples) != len(token_counts):
            raise ValueError(f"{len(samples)} samples but {len(token_counts)} token counts")
        if not samples:
            raise UserError("the batch sampler has no samples")
        for name, value in (("max_tokens", max_tokens), ("max_audio_seconds", max_audio_seconds),
                            ("max_batch_size", max_batch_size), ("num_buckets", num_buckets)):
            if value is not None and not value > 0:
                raise UserError(f"{name} must be positive, not {value!r}")
        if not length_aware and not (batch_size and batch_size > 0):
            raise UserError("fixed-size batches (length_aware=False) need a positive batch_size")
        self.ids = [s.id for s in samples]
        self.durations = np.array([s.duration or 0.0 for s in samples], dtype=np.float64)
        self.tokens = np.asarray(token_counts, dtype=np.int64)
        self.names = sorted({s.dataset for s in samples})
        dataset_of = {name: k for k, name in enumerate(self.names)}
        self.dataset_of = np.array([dataset_of[s.dataset] for s in samples], dtype=np.int64)
        self.members = [np.flatnonzero(self.dataset_of == k) for k in range(len(self.names))]
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(self.names))
        if unknown:
            raise UserError(f"weights name dataset(s) {unknown} that the manifest does not have "
                            f"(it has {self.names})")
        if any(not w >= 0 for w in weights.values()):
            raise UserError(f"dataset weights must be >= 0, got {weights}")
        self.weights = {name: float(weights.get(name, 1.0)) for name in self.names}
        # A dataset with a positive weight contributes at least one sample per round.
        self.quota = [max(round(self.weights[n] * len(m)), int(self.weights[n] > 0))
                      for n, m in zip(self.names, self.members, strict=True)]
        if not sum(self.quota):
            raise UserError(f"dataset weights {self.weights} select no sample per round")
        self.max_tokens, self.max_audio_seconds = max_tokens, max_audio_seconds
        self.max_batch_size, self.num_buckets = max_batch_size, num_buckets
        self.length_aware, self.batch_size, self.seed = length_aware, batch_size, seed
        self.consumed = 0
        self._round_sizes: list[int] = []  # micro-batches in rounds 0, 1, ... (as computed)
        self._cache: dict[int, list[list[int]]] = {}

    # ------------------------------------------------------------------ iteration
    def __iter__(self) -> Iterator[list[int]]:
        """The endless stream of micro-batches from micro-batch ``consumed`` on."""
        return self.batches_from(self.consumed)

    def batches_from(self, position: int) -> Iterator[list[int]]:
        """The stream from micro-batch ``position`` on (0 = the start of round 0)."""
        index, offset = self._locate(position)
        while True:
            yield from self.round(index)[offset:]
            index, offset = index + 1, 0

    def rank_view(self, rank: int, world_size: int) -> Iterable[list[int]]:
        """Rank ``rank``'s share for a DataLoader's ``batch_sampler``: micro-batches
        ``consumed + rank + k * world_size``, k = 0, 1, ... (``consumed`` read at each
        ``iter()``)."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
        return _RankView(self, rank, world_size)

    def advance(self, n: int) -> None:
        """Count ``n`` more micro-batches (all ranks together) as trained on."""
        if n < 0:
            raise ValueError(f"advance({n}): the count cannot go back")
        self.consumed += n

    # ---------------------------------------------------------------------- rounds
    def round(self, index: int) -> list[list[int]]:
        """The micro-batches of round ``index`` (the last two rounds asked for are cached)."""
        if index not in self._cache:
            rng = np.random.default_rng([self.seed, index, 1])
            pool = np.concatenate([self._take(k, index) for k in range(len(self.names))])
            if self.length_aware:
                batches = self._pack(pool, rng)
            else:
                pool = rng.permutation(pool)
                batches = [pool[i:i + self.batch_size] for i in range(0, len(pool), self.batch_size)]
            self._cache = {k: v for k, v in self._cache.items() if k == index - 1}
            self._cache[index] = [batches[k].tolist() for k in rng.permutation(len(batches))]
        return self._cache[index]

    def _take(self, k: int, index: int) -> np.ndarray:
        """Dataset ``k``'s samples for round ``index``: positions index*q .. (index+1)*q of its
        endless stream of shuffled epochs."""
        members, need = self.members[k], self.quota[k]
        position, parts = index * need, []
        while need:
            epoch, offset = divmod(position, len(members))
            rng = np.random.default_rng([self.seed, zlib.crc32(self.names[k].encode()), epoch, 2])
            part = members[rng.permutation(len(members))][offset:offset + need]
            parts.append(part)
            position, need = position + len(part), need - len(part)
        return np.concatenate(parts) if parts else members[:0]

    def _pack(self, pool: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        """Sort by (seconds, tokens), shuffle within equal-count buckets, then fill each
        micro-batch until one more row would take its padded cost over a budget."""
        pool = pool[np.lexsort((self.tokens[pool], self.durations[pool]))]
        buckets = np.array_split(pool, min(self.num_buckets, len(pool)))
        batches, current, longest_s, longest_t = [], [], 0.0, 0
        for i in np.concatenate([rng.permutation(b) for b in buckets]):
            seconds, tokens = max(longest_s, self.durations[i]), max(longest_t, self.tokens[i])
            rows = len(current) + 1
            if current and (rows * tokens > self.max_tokens
                            or (self.max_audio_seconds is not None and rows * seconds > self.max_audio_seconds)
                            or (self.max_batch_size is not None and rows > self.max_batch_size)):
                batches.append(np.array(current))
                current, seconds, tokens = [], self.durations[i], self.tokens[i]
            current.append(i)
            longest_s, longest_t = seconds, tokens
        if current:
            batches.append(np.array(current))
        return batches

    def _locate(self, position: int) -> tuple[int, int]:
        """(round, offset in it) of micro-batch ``position``."""
        index = 0
        while True:
            if index == len(self._round_sizes):
                self._round_sizes.append(len(self.round(index)))
            if position < self._round_sizes[index]:
                return index, position
            position -= self._round_sizes[index]
            index += 1

    # ---------------------------------------------------------------------- reports
    def epochs(self) -> dict[str, float]:
        """Epochs of each dataset trained on at ``consumed`` (fractional)."""
        index, offset = self._locate(self.consumed)
        seen = np.array(self.quota, dtype=np.float64) * index
        for batch in self.round(index)[:offset]:
            np.add.at(seen, self.dataset_of[batch], 1)
        return {name: float(seen[k] / len(self.members[k])) for k, name in enumerate(self.names)}

    def padding(self, batches: Iterable[Sequence[int]] | None = None) -> dict[str, float]:
        """Padding the budgets count, over ``batches`` (default: round 0): ``tokens`` =
        1 - real / (rows x longest) decoder tokens, ``audio`` = the same for audio seconds
        (a sample's audio as one clip); ``batch_size``: mean rows per micro-batch."""
        batches = list(self.round(0) if batches is None else batches)
        real_t = padded_t = real_s = padded_s = 0.0
        for batch in batches:
            tokens, seconds = self.tokens[list(batch)], self.durations[list(batch)]
            real_t, padded_t = real_t + float(tokens.sum()), padded_t + len(batch) * float(tokens.max())
            real_s, padded_s = real_s + float(seconds.sum()), padded_s + len(batch) * float(seconds.max())
        return {"tokens": 1 - real_t / padded_t if padded_t else 0.0,
                "audio": 1 - real_s / padded_s if padded_s else 0.0,
                "batch_size": sum(map(len, batches)) / max(1, len(batches))}

    # ------------------------------------------------------------------------ state
    def settings(self) -> dict[str, Any]:
        """Everything besides the samples that decides the stream."""
        return {"max_tokens": self.max_tokens, "max_audio_seconds": self.max_audio_seconds,
                "max_batch_size": self.max_batch_size, "weights": dict(self.weights),
                "length_aware": self.length_aware, "batch_size": self.batch_size,
                "num_buckets": self.num_buckets}

    @functools.cached_property
    def fingerprint(self) -> str:
        """A hash of the samples' ids, datasets and costs, in order."""
        digest = hashlib.sha256()
        for ident, k, seconds, tokens in zip(self.ids, self.dataset_of, self.durations, self.tokens,
                                             strict=True):
            digest.update(f"{ident}\t{self.names[k]}\t{seconds:.6f}\t{tokens}\n".encode())
        return digest.hexdigest()[:16]

    def state_dict(self) -> dict[str, Any]:
        """``{"consumed", "seed", "fingerprint", "settings"}``: JSON-serialisable."""
        return {"consumed": self.consumed, "seed": self.seed, "fingerprint": self.fingerprint,
                "settings": self.settings()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at micro-batch ``state["consumed"]``.

        Raises :class:`~midashenglm.errors.UserError` when the seed, the settings or the
        samples differ from the run that saved it (the stream would not continue exactly).
        """
        if state.get("seed") != self.seed:
            raise UserError(f"sampler state: saved with seed {state.get('seed')}, now {self.seed}")
        saved = state.get("settings", {})
        changed = sorted(k for k, v in self.settings().items() if saved.get(k) != v)
        if changed:
            listed = ", ".join(f"{k} {saved.get(k)!r} -> {self.settings()[k]!r}" for k in changed)
            raise UserError(f"sampler state: the batching settings changed ({listed})")
        if state.get("fingerprint") != self.fingerprint:
            raise UserError("sampler state: the manifest's samples (ids, datasets or durations) "
                            "differ from those of the saved run")
        self.consumed = int(state["consumed"])


class _RankView:
    """One rank's slice of the stream; each ``iter()`` starts from the sampler's ``consumed``."""

    def __init__(self, sampler: BatchSampler, rank: int, world_size: int) -> None:
        self.sampler, self.rank, self.world_size = sampler, rank, world_size

    def __iter__(self) -> Iterator[list[int]]:
        return itertools.islice(iter(self.sampler), self.rank, None, self.world_size)
