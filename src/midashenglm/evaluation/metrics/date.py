"""DATE, MECAT's metric, and MECAT's aggregation over subtask groups.

DATE (Discriminability-based Audio Task Evaluation) scores a group of candidates
against their references with the FENSE models, in four steps (the facts come from the
``mecat`` package, version 1.1):

1. **TF-IDF-weighted embeddings.** Within one corpus (all references of the group, or
   all candidates), each token's weight is TF x IDF, computed from the *static* word
   embeddings of the Sentence-BERT model: TF = sum over the sentence's tokens of the
   squared cosine to this token; IDF = log((N + 1) / (s + 1)) + 1 where s sums, over the
   N sentences, min(1, sum of squared cosines to the sentence's tokens). Weights are
   divided by their mean in the sentence; [CLS] gets the largest, the first [SEP] the
   smallest, padding 1. The word embeddings times the weights go through the encoder
   (``inputs_embeds``), mean pooling, normalisation. Cosines are in float16, as in
   MECAT.
2. **Similarity** s_i = cos(candidate_i, mean of its normalised references) x penalty_i,
   penalty 0.1 when the FENSE error detector gives P(error) > 0.9 (MECAT runs the
   detector with 256 tokens on batches; 64 for a single sentence).
3. **Discrimination** r_i = 1 - (#{j: S_ij > s_i + d/2} + #{j: |S_ij - s_i| <= d/2}) / N,
   with S_ij = cos(candidate_i, reference mean_j) x penalty_i over the group's N items
   and d the subtask's delta (long 0.1703, short 0.1772, speech 0.2078, music 0.1566,
   sound 0.1988, environment 0.2150; QA categories use long's).
4. **DATE** = mean over items of 2 s_i r_i / (s_i + r_i + 1e-8).

MECAT (``mode="fense"``) also reports its FENSE: step 2 without the TF-IDF weights.

Aggregation: caption subsets are coded by content (``000``, ``00A``, ``0M0``, ``0MA``,
``S00``, ``S0A``, ``SM0``, ``SMA``: Speech, Music, Acoustic sound). Caption groups are
long/short/environment over every subset, pure speech/music/sound over ``S00``/
``0M0``/``00A``, and mixed speech/music/sound over ``SMA``, ``SM0``, ``S0A``, ``0MA``.
Caption overall = 0.4 (0.8 Long + 0.2 Short) + 0.4 (0.6 Speech + 0.3 Music + 0.1 Sound)
+ 0.2 Environment, Speech/Music/Sound being the mean of their pure and mixed groups.
QA overall = mean over its 6 categories.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from midashenglm.evaluation.metrics.base import MetricOutput, references

SUBSETS = ("000", "00A", "0M0", "0MA", "S00", "S0A", "SM0", "SMA")
MIXED_SUBSETS = ("SMA", "SM0", "S0A", "0MA")
CAPTION_SUBTASKS = ("long", "short", "speech", "music", "sound", "environment")
# group -> (subsets, subtask)
CAPTION_GROUPS: dict[str, tuple[tuple[str, ...], str]] = {
    "content_long": (SUBSETS, "long"),
    "content_short": (SUBSETS, "short"),
    "pure_speech": (("S00",), "speech"),
    "pure_sound": (("00A",), "sound"),
    "pure_music": (("0M0",), "music"),
    "mixed_speech": (MIXED_SUBSETS, "speech"),
    "mixed_sound": (MIXED_SUBSETS, "sound"),
    "mixed_music": (MIXED_SUBSETS, "music"),
    "environment": (SUBSETS, "environment"),
}
QA_CATEGORIES = (
    "direct_perception",
    "sound_characteristics",
    "quality_assessment",
    "environment_reasoning",
    "inference_judgement",
    "application_context",
)
DELTAS = {
    "long": 0.1703,
    "short": 0.1772,
    "speech": 0.2078,
    "music": 0.1566,
    "sound": 0.1988,
    "environment": 0.2150,
}
MECAT_ECHECKER_MAX_LENGTH = 256


def delta_for(subtask: str | None) -> float:
    """The discrimination threshold of a caption subtask; QA categories use long's."""
    return DELTAS.get(subtask or "long", DELTAS["long"])


def caption_overall(scores: dict[str, float]) -> float:
    """MECAT-Caption's weighted overall score from the nine group scores."""
    missing = [g for g in CAPTION_GROUPS if g not in scores]
    if missing:
        raise ValueError(f"MECAT caption overall needs every group; missing {missing}")

    def both(kind: str) -> float:
        return (scores[f"pure_{kind}"] + scores[f"mixed_{kind}"]) / 2

    systematic = 0.8 * scores["content_long"] + 0.2 * scores["content_short"]
    content = 0.6 * both("speech") + 0.3 * both("music") + 0.1 * both("sound")
    return 0.4 * systematic + 0.4 * content + 0.2 * scores["environment"]


def qa_overall(scores: dict[str, float]) -> float:
    """MECAT-QA's score: the mean over its six categories."""
    missing = [c for c in QA_CATEGORIES if c not in scores]
    if missing:
        raise ValueError(f"MECAT QA overall needs every category; missing {missing}")
    return sum(scores[c] for c in QA_CATEGORIES) / len(QA_CATEGORIES)


def caption_group(subset: str, subtask: str) -> str | None:
    """The MECAT caption group an item of ``subset`` asked for ``subtask`` belongs to."""
    for group, (subsets, group_subtask) in CAPTION_GROUPS.items():
        if group_subtask == subtask and subset in subsets:
            return group
    return None


# --------------------------------------------------------------------------- DATE
def _matmul_half(a: Any, b: Any) -> Any:
    """A float16 product as MECAT computes it; on CPU through float32, which is ~4x faster
    there and differs from a float16 GEMM by at most one float16 step in rare elements."""
    if a.is_cuda:
        return a @ b
    return (a.float() @ b.float()).half()


@dataclass
class DateScores:
    similarity: list[float]
    discrimination: list[float] = field(default_factory=list)
    date: list[float] = field(default_factory=list)

    def mean(self, name: str) -> float:
        values = getattr(self, name)
        return sum(values) / len(values) if values else float("nan")


class DateScorer:
    """DATE and MECAT's FENSE over groups of items, with the models of a :class:`Fense`."""

    def __init__(self, fense: Any, *, batch_size: int = 32,
                 echecker_max_length: int = MECAT_ECHECKER_MAX_LENGTH) -> None:
        self.fense = fense
        self.sbert = fense.sbert
        self.batch_size = batch_size
        self.echecker_max_length = echecker_max_length
        tokenizer = self.sbert.tokenizer
        self.special_ids = {
            i for i in (tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id)
            if i is not None
        }

    # -- embeddings
    def _word_embeddings(self) -> Any:
        return self.sbert[0].auto_model.get_input_embeddings()

    def _tokenize(self, sentences: list[str]) -> dict[str, Any]:
        # sentence-transformers 6 renamed tokenize() to preprocess().
        tokenize = getattr(self.sbert, "preprocess", None) or self.sbert.tokenize
        return dict(tokenize(sentences))

    def tfidf_weights(self, input_ids: Any) -> Any:
        """Per-token TF-IDF weights of a corpus (float16, shaped like ``input_ids``)."""
        import numpy as np
        import torch

        ids = input_ids.cpu()
        special = torch.tensor(sorted(self.special_ids), dtype=ids.dtype)
        unique = torch.unique(ids)
        unique = unique[~torch.isin(unique, special)]
        weights = torch.ones(ids.shape, dtype=torch.float16)
        if len(unique) == 0:
            return weights
        with torch.inference_mode():
            table = self._word_embeddings().weight.detach().cpu()
            emb = torch.nn.functional.normalize(table[unique].to(torch.float16), p=2, dim=-1)
            word_sim = _matmul_half(emb, emb.T)
            position = {int(u): i for i, u in enumerate(unique)}
            # IDF: per sentence, sum over its tokens of squared cosines, clipped to 1.
            lookup = torch.zeros(table.shape[0], emb.shape[1], dtype=torch.float16)
            lookup[unique] = emb
            idf_sum = torch.zeros(len(unique), dtype=torch.float32)
            # Chunks of 64 sentences keep the (vocabulary x tokens) block near 250 MB.
            for start in range(0, len(ids), 64):
                chunk = ids[start:start + 64]
                vectors = lookup[chunk] * (~torch.isin(chunk, special)).unsqueeze(-1).half()
                sims = _matmul_half(emb, vectors.reshape(-1, emb.shape[1]).T).reshape(
                    len(unique), len(chunk), -1)
                per_doc = sims.pow(2).sum(dim=2).clamp(0, 1)
                idf_sum += per_doc.float().sum(dim=1)
        idf = (torch.log((len(ids) + 1) / (idf_sum + 1)) + 1).numpy()
        sim = word_sim.numpy()
        cls_id = self.sbert.tokenizer.cls_token_id
        sep_id = self.sbert.tokenizer.sep_token_id
        for row in range(len(ids)):
            row_ids = ids[row].numpy()
            cols = [j for j, t in enumerate(row_ids) if int(t) in position]
            if not cols:
                continue
            index = [position[int(row_ids[j])] for j in cols]
            tf = np.sum(sim[np.ix_(index, index)] ** 2, axis=1)
            w = tf * idf[index]
            if w.mean() > 1e-9:
                w = w / w.mean()
            weights[row, cols] = torch.from_numpy(w.astype(np.float32)).half()
            if row_ids[0] == cls_id:
                weights[row, 0] = float(w.max())
            seps = np.nonzero(row_ids == sep_id)[0]
            if len(seps):
                weights[row, int(seps[0])] = float(w.min())
        return weights

    def embed(self, sentences: list[str], *, weighted: bool) -> Any:
        """Normalised sentence embeddings, TF-IDF-weighted at the input when ``weighted``."""
        import torch

        features = self._tokenize(sentences)
        weights = self.tfidf_weights(features["input_ids"]) if weighted else None
        device = self.sbert.device
        out = []
        with torch.inference_mode():
            for start in range(0, len(sentences), self.batch_size):
                part = {k: v[start:start + self.batch_size].to(device)
                        for k, v in features.items() if hasattr(v, "to")}
                if weights is not None:
                    embeds = self._word_embeddings()(part["input_ids"])
                    scale = weights[start:start + self.batch_size].to(device, embeds.dtype)
                    part["inputs_embeds"] = embeds * scale.unsqueeze(-1)
                    del part["input_ids"]
                out.append(self.sbert.forward(part)["sentence_embedding"].float().cpu())
        return torch.nn.functional.normalize(torch.cat(out), p=2, dim=-1)

    def penalties(self, candidates: list[str]) -> Any:
        import torch

        detector = self.fense.detector
        if detector is None:
            return torch.ones(len(candidates))
        max_length = 64 if len(candidates) == 1 else self.echecker_max_length
        probs = detector.error_probabilities(candidates, batch_size=self.batch_size,
                                             max_length=max_length)
        threshold, factor = self.fense.error_threshold, self.fense.penalty_factor
        return torch.tensor([factor if p > threshold else 1.0 for p in probs])

    def score(self, candidates: list[str], refs: Sequence[Sequence[str]], *,
              delta: float = DELTAS["long"], mode: str = "date") -> DateScores:
        """DATE (``mode="date"``) or MECAT's FENSE (``mode="fense"``) of one group."""
        import torch

        if len(candidates) != len(refs) or not candidates:
            raise ValueError(f"{len(candidates)} candidates for {len(refs)} reference lists")
        weighted = mode == "date"
        flat = [r for group in refs for r in group]
        ref_emb = self.embed(flat, weighted=weighted)
        starts = [0]
        for group in refs:
            starts.append(starts[-1] + len(group))
        ref_mean = torch.stack([ref_emb[a:b].mean(dim=0) for a, b in zip(starts, starts[1:],
                                                                          strict=False)])
        cand_emb = self.embed(list(candidates), weighted=weighted)
        penalty = self.penalties(list(candidates))
        similarity = (cand_emb * ref_mean).sum(dim=1) * penalty
        if mode == "fense":
            return DateScores(similarity.tolist())
        matrix = (cand_emb @ ref_mean.T) * penalty.unsqueeze(1)
        upper = similarity.unsqueeze(1) + delta / 2
        lower = similarity.unsqueeze(1) - delta / 2
        above = (matrix > upper).sum(dim=1).float()
        near = ((matrix <= upper) & (matrix >= lower)).sum(dim=1).float()
        rank = 1 - (above + near) / len(candidates)
        date = 2 * similarity * rank / (similarity + rank + 1e-8)
        return DateScores(similarity.tolist(), rank.tolist(), date.tolist())


# ------------------------------------------------------------------------ metrics
def _scorer(options: dict[str, Any]) -> DateScorer:
    from midashenglm.evaluation.metrics.fense import get_scorer

    fense = options.get("scorer") or get_scorer(
        options.get("sbert_model"), options.get("echecker_model"),
        options.get("echecker_tokenizer"), options.get("device", "cpu"),
        options.get("batch_size", 32),
    )
    return DateScorer(fense, batch_size=options.get("batch_size", 32))


def date(rows: list[dict[str, Any]], *, subtask: str | None = None, delta: float | None = None,
         **options: Any) -> MetricOutput:
    """DATE of one group of rows (one subtask); ``delta`` defaults to the subtask's."""
    if not rows:
        return MetricOutput(float("nan"), 0)
    subtask = subtask or rows[0].get("subtask")
    d = delta if delta is not None else delta_for(subtask)
    scores = _scorer(options).score([r["model_output"] for r in rows],
                                    [references(r) for r in rows], delta=d)
    details = {
        "similarity": scores.mean("similarity"),
        "discrimination": scores.mean("discrimination"),
        "delta": d,
    }
    return MetricOutput(scores.mean("date"), len(rows), details)


def _subset(row: dict[str, Any]) -> str | None:
    for key in ("subset", "domain"):
        value = row.get(key)
        if isinstance(value, str) and value.upper() in SUBSETS:
            return value.upper()
    return None


def mecat(rows: list[dict[str, Any]], *, mecat_metric: str = "date",
          **options: Any) -> MetricOutput:
    """MECAT's score: DATE (or FENSE) per group, then the caption or QA overall.

    Caption rows need ``subtask`` (long, short, speech, music, sound, environment) and
    the subset code (``subset`` or ``domain``); QA rows need ``category``. The value is
    the overall score when every group is present, the group's score when there is one
    group, and NaN otherwise (the groups are in the details).
    """
    if mecat_metric not in ("date", "fense"):
        raise ValueError(f"mecat_metric must be 'date' or 'fense', not {mecat_metric!r}")
    groups: dict[str, list[int]] = {}
    skipped: list[tuple[int, str]] = []
    for index, row in enumerate(rows):
        category = row.get("category")
        if category in QA_CATEGORIES:
            groups.setdefault(category, []).append(index)
            continue
        subtask, subset = row.get("subtask"), _subset(row)
        if subtask not in CAPTION_SUBTASKS or subset is None:
            skipped.append((index, "MECAT row without a known subtask+subset or QA category"))
            continue
        group = caption_group(subset, subtask)
        if group is None:
            skipped.append((index, f"subset {subset} is not scored for {subtask} captions"))
            continue
        groups.setdefault(group, []).append(index)
    if not groups:
        return MetricOutput(float("nan"), 0, {}, skipped)

    scorer = _scorer(options)
    scores: dict[str, float] = {}
    details: dict[str, Any] = {"metric": mecat_metric, "groups": {}}
    for group, indices in groups.items():
        part = [rows[i] for i in indices]
        subtask = CAPTION_GROUPS[group][1] if group in CAPTION_GROUPS else None
        result = scorer.score([r["model_output"] for r in part], [references(r) for r in part],
                              delta=delta_for(subtask), mode=mecat_metric)
        scores[group] = result.mean("date" if mecat_metric == "date" else "similarity")
        details["groups"][group] = {"value": scores[group], "count": len(part)}
    value = float("nan")
    if all(g in scores for g in CAPTION_GROUPS):
        value = caption_overall(scores)
        details["caption_overall"] = value
    elif all(c in scores for c in QA_CATEGORIES):
        value = qa_overall(scores)
        details["qa_overall"] = value
    elif len(scores) == 1:
        value = next(iter(scores.values()))
    else:
        details["note"] = "groups missing for an overall score: see details['groups']"
    count = sum(len(v) for v in groups.values())
    return MetricOutput(value, count, details, skipped)
