"""``midashenglm probe``: frozen-encoder probes on a generated labelled manifest (issue 13).

``make_probe_manifest`` is the generator other tests reuse (e.g. to compare an encoder
aligned by the ``align`` recipe with a random one on the same data and split).
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from midashenglm.errors import UserError
from midashenglm.modeling.config import DashengConfig
from midashenglm.modeling.encoder import DashengEncoder
from midashenglm.training.probe import (
    ProbeRow,
    load_encoder,
    read_probe_manifest,
    run_probe,
    split_indices,
)

ROOT = Path(__file__).resolve().parents[1]
TONES = {"low": 300.0, "mid": 1200.0, "high": 3500.0, "noise": None}
FAST = {"epochs": 30, "hidden": 64}  # enough to fit 32 clips; keeps each probe well under a second


def tone_clip(label: str, rng: np.random.Generator, *, noise: float = 0.05) -> np.ndarray:
    """0.5-1 s of a tone of the class's frequency (+-10 %), or white noise for "noise"."""
    n = int(16000 * rng.uniform(0.5, 1.0))
    wave = noise * rng.standard_normal(n)
    freq = TONES[label]
    if freq is not None:
        t = np.arange(n) / 16000
        wave += 0.3 * np.sin(2 * np.pi * freq * rng.uniform(0.9, 1.1) * t + rng.uniform(0, 2 * np.pi))
    return wave.astype(np.float32)


def make_probe_manifest(folder: Path, *, clips: int = 40, seed: int = 0, noise: float = 0.05,
                        fmt: str = "jsonl", corrupt: int = 0) -> Path:
    """A labelled manifest of generated clips (4 classes, balanced) with relative paths,
    plus ``corrupt`` rows whose file is not audio. Raise ``noise`` to make the task harder."""
    rng = np.random.default_rng(seed)
    (folder / "clips").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(clips):
        label = list(TONES)[i % len(TONES)]
        name = f"clips/{i:03d}_{label}.wav"
        sf.write(folder / name, tone_clip(label, rng, noise=noise), 16000, subtype="PCM_16")
        rows.append({"audio": name, "label": label})
    for i in range(corrupt):
        name = f"clips/corrupt_{i}.wav"
        (folder / name).write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 8)
        rows.append({"audio": name, "label": "low"})
    path = folder / f"tones.{fmt}"
    if fmt == "csv":
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["audio", "label"])
            writer.writeheader()
            writer.writerows(rows)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def random_encoder(seed: int) -> DashengEncoder:
    torch.manual_seed(seed)
    return DashengEncoder(DashengConfig.from_preset("tiny")).eval()


def test_cli_probe_end_to_end(tiny_checkpoint, tmp_path):
    manifest = make_probe_manifest(tmp_path, corrupt=1)
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")} | {"HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "midashenglm.cli", "probe", "--encoder", str(tiny_checkpoint), "--data",
         str(manifest), "--task", "tones", "--epochs", "30", "--device", "cpu", "--json"],
        capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["task"] == "tones" and result["kind"] == "classification" and result["metric"] == "accuracy"
    assert 0.0 <= result["score"] <= 1.0 and result["num_classes"] == 4
    assert result["train_clips"] + result["test_clips"] == 40  # the corrupt clip is not scored
    assert result["num_skipped"] == 1 and "corrupt_0.wav" in result["skipped"][0]
    assert "skipped 1 of 41 clips" in done.stderr


def test_cli_table_and_user_errors(tiny_checkpoint, tmp_path):
    from typer.testing import CliRunner

    from midashenglm.cli import app

    manifest = make_probe_manifest(tmp_path, clips=12)
    runner = CliRunner()
    done = runner.invoke(app, ["probe", "-e", str(tiny_checkpoint), "-d", str(manifest), "--epochs", "5",
                               "--device", "cpu", "--pooling", "frame"])
    assert done.exit_code == 0, done.output
    assert "accuracy" in done.output and "tones" in done.output
    wrong = runner.invoke(app, ["probe", "-e", str(tiny_checkpoint), "-d", str(manifest), "--kind", "ranking"])
    assert isinstance(wrong.exception, UserError) and "--kind" in str(wrong.exception)


def test_api_compares_encoders_on_the_same_split_deterministically(tmp_path):
    rows = read_probe_manifest(make_probe_manifest(tmp_path, fmt="csv", noise=0.3))
    assert all(Path(r.audio).is_absolute() for r in rows)  # resolved against the manifest's folder
    a = run_probe(random_encoder(0), rows, "tones", seed=7, **FAST)
    assert run_probe(random_encoder(0), rows, "tones", seed=7, **FAST).to_dict() == a.to_dict()  # deterministic
    b = run_probe(random_encoder(1), rows, "tones", seed=7, **FAST)
    assert a.test_rows == b.test_rows and a.test_clips == 8 and a.train_clips == 32  # same split
    assert a.metric == "accuracy" and 0.0 <= a.score <= 1.0 and a.baseline == 0.25
    assert a.train_loss != b.train_loss  # the encoders differ, the data and split do not


def test_load_encoder_from_a_checkpoint_folder_and_a_dasheng_pt(tiny_checkpoint, tmp_path):
    from midashenglm.modeling.model import MiDashengLM

    reference = MiDashengLM.from_pretrained(tiny_checkpoint, dtype="float32").audio_encoder.state_dict()
    loaded = load_encoder(tiny_checkpoint)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert loaded.state_dict().keys() == reference.keys()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in reference.items())
    config = {"embed_dim": 64, "depth": 2, "num_heads": 4}
    torch.save({"model": {k: v.clone() for k, v in reference.items()}, "config": config}, tmp_path / "d.pt")
    dasheng = load_encoder(tmp_path / "d.pt")
    assert all(torch.equal(dasheng.state_dict()[k], v) for k, v in reference.items())


def test_kinds_metrics_and_frame_pooling():
    rng = np.random.default_rng(3)
    labels = [list(TONES)[i % 4] for i in range(24)]
    waves = [tone_clip(label, rng) for label in labels]
    encoder = random_encoder(0)
    multi = [{"audio": w, "label": [lab, "tonal"] if lab != "noise" else ["noise"]}
             for w, lab in zip(waves, labels, strict=True)]
    result = run_probe(encoder, multi, "events", **FAST)
    assert result.kind == "multilabel" and result.metric == "mAP" and 0.0 <= result.score <= 1.0
    assert result.classes == ["high", "low", "mid", "noise", "tonal"]
    # The same labels as a CSV would give them ("a;b" strings), with the kind passed.
    as_text = [{"audio": r["audio"], "label": ";".join(r["label"])} for r in multi]
    assert run_probe(encoder, as_text, "events", "multilabel", **FAST).to_dict() == result.to_dict()
    durations = [{"audio": w, "label": len(w) / 16000} for w in waves]
    regression = run_probe(encoder, durations, "duration", **FAST)
    assert regression.kind == "regression" and regression.metric == "R2" and regression.score <= 1.0
    assert set(regression.details) == {"mae", "pearson"}
    frames = run_probe(encoder, [ProbeRow(w, lab) for w, lab in zip(waves, labels, strict=True)], "tones",
                       pooling="frame", **FAST)
    assert frames.pooling == "frame" and 0.0 <= frames.score <= 1.0 and frames.test_clips == 4


def test_split_is_seeded_and_stratified():
    labels = ["a"] * 10 + ["b"] * 5 + ["c"] * 2 + ["d"]
    train, test = split_indices(labels, "classification", seed=1, test_fraction=0.2)
    assert sorted(train + test) == list(range(len(labels)))
    held = [labels[i] for i in test]
    assert held.count("a") == 2 and held.count("b") == 1 and held.count("c") == 1 and "d" not in held
    assert split_indices(labels, "classification", seed=1, test_fraction=0.2) == (train, test)
    assert split_indices(labels, "classification", seed=2, test_fraction=0.2) != (train, test)
    train, test = split_indices([0.5] * 10, "regression", seed=0, test_fraction=0.3)
    assert len(test) == 3 and len(train) == 7


def test_manifest_mistakes_name_the_row(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"audio": "x.wav", "label": "dog"}) + "\n"
                                      + json.dumps({"audio": "y.wav"}) + "\n")
    with pytest.raises(UserError, match=r"a\.jsonl, row 2: no 'label'"):
        read_probe_manifest(tmp_path / "a.jsonl")
    (tmp_path / "b.jsonl").write_text(json.dumps({"audio": "x.wav", "label": "dog", "part": "train"}) + "\n"
                                      + json.dumps({"audio": "y.wav", "label": "cat", "part": "dev"}) + "\n")
    with pytest.raises(UserError, match=r"row 2: column 'part' must be train or test"):
        read_probe_manifest(tmp_path / "b.jsonl", split_column="part")
    rows = [ProbeRow(np.zeros(16000, np.float32), 1.5, "m.jsonl, row 1"),
            ProbeRow(np.zeros(16000, np.float32), "n/a", "m.jsonl, row 2")]
    with pytest.raises(UserError, match=r"m\.jsonl, row 2: 'label' must be a number"):
        run_probe(random_encoder(0), rows, "t", "regression")


def test_every_probe_option_is_documented():
    import typer

    from midashenglm.cli import app

    command = typer.main.get_command(app).commands["probe"]
    options = {opt for p in command.params for opt in p.opts + p.secondary_opts if opt.startswith("--")}
    documented = set(re.findall(r"`(--[a-z0-9-]+)", (ROOT / "docs" / "probe.md").read_text()))
    assert not sorted(options - documented - {"--help"})
