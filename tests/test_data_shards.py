"""WebDataset shards (issue 13): pack skips and reports corrupt clips, random access returns
the original bytes, plain WebDataset reads the shards, the dataset never raises, the CLI."""

from __future__ import annotations

import json
import re
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from midashenglm.data.archive import read_member
from midashenglm.data.dataset import LoadedSample, SampleError, TrainingDataset
from midashenglm.data.manifest import read_training_manifest
from midashenglm.data.shards import pack
from tests.conftest import clip

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Five samples (one with two clips and two turns), one of them a corrupt WAV."""
    d = tmp_path_factory.mktemp("corpus")
    for i, seconds in enumerate([1.0, 2.0, 0.5, 3.0]):
        sf.write(d / f"c{i}.{'flac' if i % 2 else 'wav'}", clip(seconds, seed=i), 16000)
    (d / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 10)
    rows = [
        {"audio": "c0.wav", "prompt": "What?", "answer": "A tone.", "dataset": "a"},
        {"audio": "broken.wav", "answer": "Nothing.", "dataset": "a"},
        {"messages": [{"role": "user", "content": [{"type": "audio", "path": "c1.flac"}]},
                      {"role": "assistant", "content": "One."},
                      {"role": "user", "content": [{"type": "audio", "path": "c2.wav"},
                                                   {"type": "text", "text": "And this?"}]},
                      {"role": "assistant", "content": "Two."}], "dataset": "b", "task": "qa"},
        {"audio": "c3.flac", "answer": "Three.", "dataset": "b"},
        {"audio": "c0.wav", "answer": "Again.", "dataset": "b"},
    ]
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


@pytest.fixture(scope="module")
def packed(corpus):
    return pack(corpus / "train.jsonl", corpus / "shards", shard_size=2, workers=2)


def test_pack_skips_corrupt_files_and_measures_durations(corpus, packed):
    assert packed.packed == 4 and [Path(p).name for p in packed.shards] == ["train-000000.tar", "train-000001.tar"]
    ((source, reason),) = packed.skipped
    assert source == f"{corpus / 'train.jsonl'}:2" and str(corpus / "broken.wav") in reason
    samples = read_training_manifest(packed.manifest, measure_missing=False)
    assert [s.id for s in samples] == ["train.jsonl:1", "train.jsonl:3", "train.jsonl:4", "train.jsonl:5"]
    assert [s.duration for s in samples] == pytest.approx([1.0, 2.5, 3.0, 1.0])
    assert packed.seconds == pytest.approx(7.5)
    assert samples[1].messages[2]["content"][1] == {"type": "text", "text": "And this?"}


def test_random_access_returns_the_original_bytes(corpus, packed):
    samples = read_training_manifest(packed.manifest)
    originals = ["c0.wav", "c1.flac", "c2.wav", "c3.flac", "c0.wav"]
    parts = [p for s in samples for p in s.audio_parts]
    assert [Path(p["shard"]).name for p in parts] == ["train-000000.tar"] * 3 + ["train-000001.tar"] * 2
    for part, name in zip(reversed(parts), reversed(originals), strict=True):  # any order
        assert read_member(part["shard"], part["key"]) == (corpus / name).read_bytes()


def test_plain_webdataset_reads_the_shards(corpus, packed):
    import webdataset as wds

    urls = [str(p) for p in packed.shards]
    got = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    assert [g["__key__"] for g in got] == [f"s{i:09d}" for i in range(4)]
    row = json.loads(got[1]["json"])
    members = [p["member"] for m in row["messages"] if isinstance(m["content"], list)
               for p in m["content"] if p["type"] == "audio"]
    assert members == ["0.flac", "1.wav"] and row["origin"].endswith("train.jsonl:3")
    assert got[1]["1.wav"] == (corpus / "c2.wav").read_bytes()


def test_dataset_returns_errors_instead_of_raising(corpus, packed):
    samples = read_training_manifest(packed.manifest) + read_training_manifest(corpus / "train.jsonl")[1:2]
    bad_shard = samples[0].audio_parts[0] | {"key": "s999.0.wav"}
    samples.append(replace(samples[0], id="x", messages=[{"role": "user", "content": [bad_shard]},
                                                         {"role": "assistant", "content": "x"}]))
    dataset = TrainingDataset(samples, max_seconds=2.5)
    items = [dataset[i] for i in range(len(dataset))]
    kinds = [type(x).__name__ for x in items]
    assert kinds == ["LoadedSample", "LoadedSample", "SampleError", "LoadedSample", "SampleError", "SampleError"]
    assert "[s000000002.0.flac]: " in items[2].message  # the 3 s clip is over max_seconds
    assert items[4].source.endswith("train.jsonl:2") and "broken.wav" in items[4].message
    assert "s999.0.wav" in items[5].message
    loaded = items[1]
    assert isinstance(loaded, LoadedSample) and isinstance(items[5], SampleError)
    waves = [p["audio"] for m in loaded.conversation if isinstance(m["content"], list)
             for p in m["content"] if p["type"] == "audio"]
    assert [w.dtype for w in waves] == [np.float32] * 2 and [len(w) for w in waves] == [32000, 8000]


def test_cli_pack_and_stats(corpus, tmp_path):
    from midashenglm.cli import app

    runner = CliRunner()
    done = runner.invoke(app, ["data", "pack", str(corpus / "train.jsonl"), "--out", str(tmp_path / "s"),
                               "--shard-size", "3", "--workers", "1"])
    assert done.exit_code == 0, done.output
    assert re.search(r"samples packed\s*│\s*4", done.output) and "broken.wav" in done.output
    assert json.loads((tmp_path / "s" / "skipped.jsonl").read_text())["source"].endswith("train.jsonl:2")
    done = runner.invoke(app, ["data", "stats", str(tmp_path / "s" / "manifest.jsonl"), "--out",
                               str(tmp_path / "hist.png")])
    assert done.exit_code == 0, done.output
    assert re.search(r"b\s*│\s*qa\s*│\s*1\s*│\s*0\.001", done.output)
    assert (tmp_path / "hist.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_errors_are_one_line(tmp_path, monkeypatch, capsys):
    from midashenglm.cli import main

    (tmp_path / "bad.jsonl").write_text('{"audio": "a.wav"}\n')
    monkeypatch.setattr(sys, "argv", ["midashenglm", "data", "stats", str(tmp_path / "bad.jsonl")])
    monkeypatch.setenv("COLUMNS", "300")
    with pytest.raises(SystemExit) as done:
        main()
    assert done.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {tmp_path / 'bad.jsonl'}:1: field 'answer': needs the text to learn (or give 'messages')"]


@pytest.mark.parametrize("command", [["data", "pack"], ["data", "stats"]])
def test_every_option_is_documented(command):
    import typer

    from midashenglm.cli import app

    group = typer.main.get_command(app)
    for name in command:
        group = group.commands[name]
    options = {o for p in group.params for o in p.opts + p.secondary_opts if o.startswith("--")}
    documented = set(re.findall(r"`(--[a-z0-9-]+)", (ROOT / "docs" / "data.md").read_text()))
    assert not sorted(options - documented - {"--help"})


def test_an_interrupted_pack_leaves_nothing_and_a_rerun_works(corpus, tmp_path):
    def stop_after_two(sample, reason, seen=[]):  # noqa: B006 - a counter for this test only
        seen.append(sample)
        if len(seen) == 3:
            raise KeyboardInterrupt

    out = tmp_path / "shards"
    with pytest.raises(KeyboardInterrupt):
        pack(corpus / "train.jsonl", out, shard_size=1, workers=1, progress=stop_after_two)
    assert not list(out.glob("train-*.tar")) and not (out / "manifest.jsonl").exists()
    assert pack(corpus / "train.jsonl", out, shard_size=1, workers=1).packed == 4
