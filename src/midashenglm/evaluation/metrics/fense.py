"""FENSE: Sentence-BERT similarity with a fluency-error penalty (Zhou et al., 2022).

For a candidate caption and its references:

- similarity = cosine between the candidate's and each reference's Sentence-BERT
  embedding (mean pooling, normalised), **averaged** over the references;
- the error detector (a BERT encoder, [CLS] -> linear -> 6 sigmoid outputs, the last
  one "error"; input lower-cased with punctuation removed, 64 tokens) gives P(error);
- FENSE = similarity x 0.1 when P(error) > 0.9, else the similarity.

The official ``compute_fense.py`` of MiDashengLM averages the *unpenalised* similarity;
:func:`fense` reports the penalised mean as its value and the unpenalised mean as
``details["similarity"]``.

Models (no PyPI package ships them; nothing here downloads anything by itself):

- ``sbert_model`` (default ``paraphrase-TinyBERT-L6-v2``): a sentence-transformers
  folder, or a Hub name that sentence-transformers finds in the local cache (or
  downloads when online). Environment variable: ``MIDASHENGLM_SBERT_MODEL``.
- ``echecker_model`` (default ``echecker_clotho_audiocaps_base``): the error detector,
  a ``.ckpt`` file path, or a name looked up as ``<name>.ckpt`` in ``$FENSE_DATA``
  (default ``~/.fense_data``, the official package's cache). Environment variable:
  ``MIDASHENGLM_ECHECKER``. ``"none"`` disables the penalty.
- ``echecker_tokenizer``: the detector's tokenizer (a folder or Hub name); by default
  the checkpoint's ``model_type`` (``bert-base-uncased``), which must be in the local
  Hugging Face cache or a folder.

The checkpoint file is a ``torch.save`` dict: ``model_type`` (the encoder's Hub name),
``num_classes`` (6) and ``state_dict`` with the BERT encoder under ``encoder.`` and the
head under ``clf.``. The encoder is built from a config: the ``model_type``'s own
``config.json`` when it is a folder or in the local Hugging Face cache, else one inferred
from the tensor shapes (heads: 12 for bert-base-uncased, otherwise hidden size / 64), so
the weights of bert-base itself are never needed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from midashenglm.errors import UserError
from midashenglm.evaluation.metrics.base import MetricOutput, references

DEFAULT_SBERT = "paraphrase-TinyBERT-L6-v2"
DEFAULT_ECHECKER = "echecker_clotho_audiocaps_base"
ERROR_THRESHOLD = 0.9
PENALTY_FACTOR = 0.1
ECHECKER_MAX_LENGTH = 64
ECHECKER_RELEASES = {
    "echecker_clotho_audiocaps_base": (
        "https://github.com/blmoistawinde/fense/releases/download/V0.1/"
        "echecker_clotho_audiocaps_base.ckpt",
        "1a719f090af70614bbdb9f9437530b7e133c48cfa4a58d964de0d47fc974a2fa",
    ),
    "echecker_clotho_audiocaps_tiny": (
        "https://github.com/blmoistawinde/fense/releases/download/V0.1/"
        "echecker_clotho_audiocaps_tiny.ckpt",
        "90ed0ac5033ec497ec66d4f68588053813e085671136dae312097c96c504f673",
    ),
}
# Encoders whose head count the tensor shapes cannot tell; others use hidden_size // 64.
_KNOWN_HEADS = {"bert-base-uncased": 12, "prajjwal1/bert-tiny": 2}
_NOT_WORD = re.compile(r"[^\w\s]")


HUB_HOST = ("huggingface.co", 443)
HUB_CONNECT_TIMEOUT = 2.0  # seconds: an unreachable Hub is told at once, not after retries


def hub_reachable(timeout: float = HUB_CONNECT_TIMEOUT) -> bool:
    """Whether the Hub may be asked: not ``HF_HUB_OFFLINE`` and a TCP connect succeeds."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    import socket
    import ssl

    # A TLS handshake, not only a TCP connect: some networks accept every connection.
    try:
        with socket.create_connection(HUB_HOST, timeout=timeout) as raw, \
                ssl.create_default_context().wrap_socket(raw, server_hostname=HUB_HOST[0]):
            return True
    except OSError:  # ssl.SSLError and socket.timeout are OSErrors
        return False


def fense_data_dir() -> Path:
    """Where the official FENSE package caches its checkpoints (``$FENSE_DATA``)."""
    return Path(os.environ.get("FENSE_DATA", "~/.fense_data")).expanduser()


# ------------------------------------------------------------------- sentence model
def load_sentence_model(name_or_path: str | None = None, device: str = "cpu") -> Any:
    """A SentenceTransformer from a folder or a cached Hub name, or a clear error."""
    name = name_or_path or os.environ.get("MIDASHENGLM_SBERT_MODEL") or DEFAULT_SBERT
    from sentence_transformers import SentenceTransformer

    path = Path(name).expanduser()
    if path.exists():
        if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
            raise UserError(
                f"sentence model folder {path}: no modules.json or config.json in it "
                "(expected a sentence-transformers model folder)"
            )
        return SentenceTransformer(str(path), device=device)
    try:
        # The local cache first: without HF_HUB_OFFLINE an offline machine would otherwise
        # retry the network for about a minute before failing.
        return SentenceTransformer(name, device=device, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as err:
        error: Exception = err
    if hub_reachable():
        try:
            return SentenceTransformer(name, device=device)
        except (OSError, ValueError, RuntimeError) as err:
            error = err
    else:
        error = OSError("not in the local Hugging Face cache, and huggingface.co is not "
                        "reachable")
    hub = name if "/" in name else f"sentence-transformers/{name}"
    raise UserError(
        f"sentence model {name!r} is not available offline ({type(error).__name__}: "
        f"{str(error).splitlines()[0] if str(error) else 'not found'}). Download it once "
        f"with `hf download {hub}` (any machine with internet, then copy the Hugging "
        "Face cache), or set MIDASHENGLM_SBERT_MODEL=DIR to a sentence-transformers "
        "folder (`midashenglm evaluate` and `report`: --sbert-model DIR)"
    ) from None


# ------------------------------------------------------------------ error detector
def resolve_echecker(name_or_path: str | None = None) -> Path | None:
    """The error-detector checkpoint file, ``None`` for ``"none"``, or a clear error."""
    name = name_or_path or os.environ.get("MIDASHENGLM_ECHECKER") or DEFAULT_ECHECKER
    if name.lower() == "none":
        return None
    path = Path(name).expanduser()
    if path.is_file():
        return path
    if path.exists():
        raise UserError(f"error-detector checkpoint {path}: not a file")
    cached = fense_data_dir() / f"{name}.ckpt"
    if cached.is_file():
        return cached
    release = ECHECKER_RELEASES.get(name)
    how = (
        f"download {release[0]} (sha256 {release[1]}) to {cached}, or "
        "set MIDASHENGLM_ECHECKER=FILE"
        if release
        else "set MIDASHENGLM_ECHECKER=FILE to an existing checkpoint file"
    )
    raise UserError(
        f"error-detector checkpoint {name!r} not found (no file {path}, no {cached}). "
        f"To provide it, {how} (FENSE_DATA=DIR changes the cache folder; "
        "MIDASHENGLM_ECHECKER=none turns the fluency penalty off; `midashenglm evaluate` "
        "and `report` also take --echecker FILE or --echecker none)"
    )


def _bert_config(state: dict[str, Any], model_type: str, extra: dict[str, Any]) -> Any:
    from transformers import BertConfig

    if extra:
        return BertConfig(**extra)
    known = _local_config(model_type)
    if known is not None:
        return known
    vocab, hidden = state["embeddings.word_embeddings.weight"].shape
    layers = {int(k.split(".")[2]) for k in state if k.startswith("encoder.layer.")}
    heads = _KNOWN_HEADS.get(model_type, max(1, hidden // 64))
    return BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=max(layers) + 1 if layers else 0,
        num_attention_heads=heads,
        intermediate_size=state["encoder.layer.0.intermediate.dense.weight"].shape[0],
        max_position_embeddings=state["embeddings.position_embeddings.weight"].shape[0],
        type_vocab_size=state["embeddings.token_type_embeddings.weight"].shape[0],
    )


def _local_config(model_type: str) -> Any:
    """The encoder's own config when ``model_type`` is a folder or in the local HF cache."""
    from transformers import BertConfig

    try:
        return BertConfig.from_pretrained(model_type, local_files_only=True)
    except (OSError, ValueError):
        return None


class ErrorDetector:
    """The FENSE fluency-error detector: BERT encoder, [CLS] -> linear -> sigmoid outputs."""

    def __init__(self, encoder: Any, head: Any, tokenizer: Any, model_type: str,
                 device: str = "cpu") -> None:
        self.encoder = encoder.to(device).eval()
        self.head = head.to(device).eval()
        self.tokenizer = tokenizer
        self.model_type = model_type
        self.device = device

    @classmethod
    def from_checkpoint(cls, path: str | Path, tokenizer: str | None = None,
                        device: str = "cpu") -> ErrorDetector:
        import torch
        from transformers import BertModel

        path = Path(path)
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises many kinds for a bad file
            raise UserError(f"error-detector checkpoint {path}: cannot load it ({err})") from None
        if not isinstance(saved, dict) or "state_dict" not in saved:
            raise UserError(
                f"error-detector checkpoint {path}: expected a dict with 'model_type' and "
                "'state_dict' (the FENSE release format)"
            )
        model_type = str(saved.get("model_type", "bert-base-uncased"))
        state = {
            k.removeprefix("encoder."): v
            for k, v in saved["state_dict"].items()
            if k.startswith("encoder.") and not k.endswith("embeddings.position_ids")
        }
        head_weight = saved["state_dict"].get("clf.weight")
        if head_weight is None or "embeddings.word_embeddings.weight" not in state:
            raise UserError(
                f"error-detector checkpoint {path}: state_dict lacks 'clf.weight' or "
                "'encoder.embeddings.word_embeddings.weight'"
            )
        config = _bert_config(state, model_type, dict(saved.get("config") or {}))
        encoder = BertModel(config, add_pooling_layer="pooler.dense.weight" in state)
        try:
            missing, unexpected = encoder.load_state_dict(state, strict=False)
        except RuntimeError as err:  # tensor shapes that do not fit the config
            raise UserError(f"error-detector checkpoint {path}: {str(err).splitlines()[0]}"
                            ) from None
        if missing or unexpected:
            raise UserError(
                f"error-detector checkpoint {path}: encoder weights do not fit a BERT of "
                f"{config.num_hidden_layers} layers (missing {missing[:3]}, unexpected "
                f"{unexpected[:3]})"
            )
        head = torch.nn.Linear(head_weight.shape[1], head_weight.shape[0])
        head.load_state_dict({"weight": head_weight, "bias": saved["state_dict"]["clf.bias"]})
        return cls(encoder, head, _load_tokenizer(tokenizer or model_type, path), model_type,
                   device)

    def error_probabilities(self, sentences: list[str], *, batch_size: int = 32,
                            max_length: int = ECHECKER_MAX_LENGTH) -> list[float]:
        """P(error) of each sentence (the last sigmoid output)."""
        import torch

        probs: list[float] = []
        for start in range(0, len(sentences), batch_size):
            texts = [_NOT_WORD.sub("", s).lower() for s in sentences[start:start + batch_size]]
            batch = self.tokenizer(texts, truncation=True, padding="max_length",
                                   max_length=max_length, return_tensors="pt")
            batch = {k: v.to(self.device) for k, v in batch.items()
                     if k in ("input_ids", "attention_mask", "token_type_ids")}
            with torch.inference_mode():
                cls_state = self.encoder(**batch).last_hidden_state[:, 0, :]
                logits = self.head(cls_state)
            probs.extend(torch.sigmoid(logits)[:, -1].float().cpu().tolist())
        return probs


def _load_tokenizer(name: str, checkpoint: Path) -> Any:
    from transformers import AutoTokenizer

    folder = Path(name).expanduser()
    source = str(folder) if folder.is_dir() else name
    try:
        return AutoTokenizer.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError) as err:
        error: Exception = err
    try:
        if folder.is_dir() or not hub_reachable():
            raise error
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise UserError(
            f"the error detector {checkpoint.name} needs the {name!r} tokenizer (vocab.txt, "
            f"a few hundred kB), which is not available offline ({type(err).__name__}). "
            f"Download it once with `hf download {name} vocab.txt tokenizer_config.json "
            "tokenizer.json`, or pass a folder holding a BERT uncased tokenizer with "
            "`midashenglm evaluate --echecker-tokenizer DIR`"
        ) from None


# -------------------------------------------------------------------------- scorer
@dataclass
class FenseScores:
    """Per-candidate values: similarity (unpenalised), P(error), and FENSE (penalised)."""

    similarity: list[float]
    error_probability: list[float | None]
    fense: list[float]


class Fense:
    """A loaded Sentence-BERT model and error detector, reusable across files."""

    def __init__(self, sbert_model: str | None = None, echecker_model: str | None = None, *,
                 echecker_tokenizer: str | None = None, device: str = "cpu",
                 batch_size: int = 32, error_threshold: float = ERROR_THRESHOLD,
                 penalty_factor: float = PENALTY_FACTOR,
                 echecker_max_length: int = ECHECKER_MAX_LENGTH) -> None:
        self.sbert = load_sentence_model(sbert_model, device)
        checkpoint = resolve_echecker(echecker_model)
        self.detector = (
            ErrorDetector.from_checkpoint(checkpoint, echecker_tokenizer, device)
            if checkpoint is not None else None
        )
        self.batch_size = batch_size
        self.error_threshold = error_threshold
        self.penalty_factor = penalty_factor
        self.echecker_max_length = echecker_max_length

    def embed(self, sentences: list[str]) -> Any:
        """Normalised Sentence-BERT embeddings (a float tensor, one row per sentence)."""
        return self.sbert.encode(sentences, batch_size=self.batch_size, convert_to_tensor=True,
                                 normalize_embeddings=True, show_progress_bar=False)

    def error_probabilities(self, sentences: list[str]) -> list[float | None]:
        if self.detector is None:
            return [None] * len(sentences)
        return list(self.detector.error_probabilities(
            sentences, batch_size=self.batch_size, max_length=self.echecker_max_length))

    def penalize(self, similarity: float, error_probability: float | None) -> float:
        if error_probability is not None and error_probability > self.error_threshold:
            return similarity * self.penalty_factor
        return similarity

    def score(self, candidates: list[str], refs: list[list[str]]) -> FenseScores:
        """FENSE of each candidate against its own list of references."""
        if len(candidates) != len(refs):
            raise ValueError(f"{len(candidates)} candidates but {len(refs)} reference lists")
        if any(not r for r in refs):
            raise ValueError("every candidate needs at least one reference")
        flat = [r for group in refs for r in group]
        cand_emb = self.embed(candidates)
        ref_emb = self.embed(flat)
        similarity = []
        start = 0
        for i, group in enumerate(refs):
            block = ref_emb[start:start + len(group)]
            similarity.append(float((block @ cand_emb[i]).mean()))
            start += len(group)
        probs = self.error_probabilities(candidates)
        fense_values = [self.penalize(s, p) for s, p in zip(similarity, probs, strict=True)]
        return FenseScores(similarity, probs, fense_values)


@lru_cache(maxsize=2)
def get_scorer(sbert_model: str | None = None, echecker_model: str | None = None,
               echecker_tokenizer: str | None = None, device: str = "cpu",
               batch_size: int = 32) -> Fense:
    """A cached :class:`Fense`, so that scoring many files loads the models once."""
    return Fense(sbert_model, echecker_model, echecker_tokenizer=echecker_tokenizer,
                 device=device, batch_size=batch_size)


def fense(rows: list[dict[str, Any]], *, sbert_model: str | None = None,
          echecker_model: str | None = None, echecker_tokenizer: str | None = None,
          device: str = "cpu", batch_size: int = 32, scorer: Fense | None = None
          ) -> MetricOutput:
    """Mean FENSE of ``rows`` (``model_output`` vs ``text`` or ``answer``, one or more refs)."""
    if not rows:
        return MetricOutput(float("nan"), 0)
    scorer = scorer or get_scorer(sbert_model, echecker_model, echecker_tokenizer, device,
                                  batch_size)
    result = scorer.score([r["model_output"] for r in rows], [references(r) for r in rows])
    n = len(rows)
    flagged = sum(p is not None and p > scorer.error_threshold for p in result.error_probability)
    details = {
        "fense": sum(result.fense) / n,
        "similarity": sum(result.similarity) / n,
        "penalised": flagged,
        "error_detector": scorer.detector is not None,
    }
    return MetricOutput(details["fense"], n, details)
