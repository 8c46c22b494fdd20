"""``recipe: mae`` (masked-autoencoder pretraining of the encoder) on a tiny model, CPU, fp32.

One run through the CLI on a few repeated clips: the loss is finite and falls, an unreadable
clip is skipped with a notice, the export loads with ``from_pretrained`` and differs from the
start in ``audio_encoder.*`` only; a copy of the run cut back to its first checkpoint resumes
to the same losses.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from midashenglm.cli import app
from tests.training_helpers import CONFIGS

STEPS, EVERY = 16, 8


def _invoke(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, f"{args}: {result.output}\n{result.exception!r}"
    return result.output


@pytest.fixture(scope="module")
def start(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("mae") / "init"
    _invoke("init", "--encoder", "tiny", "--decoder", "tiny", "--out", str(folder))
    return folder


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """Six tone clips as corpus rows (``audio``, no answer), one as a training row, one missing."""
    folder = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(7):
        t = np.arange(int(16000 * rng.uniform(1.0, 3.0))) / 16000
        wave = sum(np.sin(2 * np.pi * 220 * (i + 1) * k * t) / k for k in (1, 2, 3)) * (0.5 + 0.5 * np.sin(6 * t))
        sf.write(folder / f"tone{i}.wav", (0.2 * wave + 0.01 * rng.standard_normal(t.size)).astype(np.float32), 16000)
        rows.append({"id": f"c{i}", "audio": f"tone{i}.wav", "category": "tone"})
    rows[-1] = {"messages": [{"role": "user", "content": [{"type": "audio", "path": "tone6.wav"}]},
                             {"role": "assistant", "content": "a tone"}]}
    rows.append({"audio": "missing.wav"})
    path = folder / "manifest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _train(start: Path, manifest: Path, run: Path, *extra: str) -> str:
    return _invoke("train", str(CONFIGS / "mae.yaml"), f"model.checkpoint={start}", f"data.train={manifest}",
                   f"output_dir={run}", f"training.max_steps={STEPS}", f"checkpoint.every_steps={EVERY}",
                   "--no-progress", *extra)


def _losses(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    return [r["loss"] for r in rows]


def test_mae_trains_exports_and_resumes(start: Path, manifest: Path, tmp_path: Path) -> None:
    from midashenglm.modeling.model import MiDashengLM

    run = tmp_path / "run"
    output = _train(start, manifest, run)
    assert "skipped" in output and "missing.wav" in output  # named, and the run went on
    assert (run / "skipped.jsonl").read_text().count("missing.wav") >= 1
    losses = _losses(run)
    assert all(np.isfinite(losses))
    assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.05, losses

    before, after = MiDashengLM.from_pretrained(start).state_dict(), MiDashengLM.from_pretrained(run / "model").state_dict()
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("audio_encoder.") for k in changed)
    assert "audio_encoder.init_bn.running_mean" in changed and "audio_encoder.blocks.0.attn.qkv.weight" in changed

    # Killed after the first checkpoint: the resumed run repeats the same steps exactly.
    cut = tmp_path / "cut"
    shutil.copytree(run, cut)
    shutil.rmtree(cut / "checkpoints" / f"step-{STEPS:08d}")
    shutil.rmtree(cut / "model")
    assert f"resumed from {cut / 'checkpoints' / f'step-{EVERY:08d}'}" in _train(start, manifest, cut, "--resume")
    assert _losses(cut) == losses
    resumed = MiDashengLM.from_pretrained(cut / "model").state_dict()
    assert all(torch.equal(after[k], resumed[k]) for k in changed)


def test_masking_hides_the_masked_patches_from_the_encoder() -> None:
    """Per clip 25 % of its own patches are visible; padding is neither visible nor scored; the
    prediction does not change when a masked patch (even one under a filler token) changes."""
    from midashenglm.modeling.config import DashengConfig
    from midashenglm.modeling.encoder import DashengEncoder
    from midashenglm.training.config import MAESettings
    from midashenglm.training.recipes.mae import MAEDecoder, encode_visible, random_masking

    torch.manual_seed(0)
    valid = torch.tensor([40, 12])
    ids_keep, keep_valid, masked = random_masking(valid, 40, 0.75)
    assert keep_valid.sum(1).tolist() == [10, 3] and masked.sum(1).tolist() == [30, 9]
    assert not masked[1, 12:].any() and (ids_keep[1][keep_valid[1]] < 12).all()
    assert not masked.gather(1, ids_keep)[keep_valid].any()  # visible patches are not scored

    encoder = DashengEncoder(DashengConfig.from_preset("tiny")).eval()
    decoder = MAEDecoder(64, 256, 252, MAESettings(decoder_dim=32, decoder_heads=2, decoder_depth=1)).eval()
    padding = torch.arange(40) < valid[:, None]

    def predict(mel: torch.Tensor) -> torch.Tensor:
        return decoder(encode_visible(encoder, mel, ids_keep, keep_valid), ids_keep, keep_valid, padding)

    mel = torch.randn(2, 1, 64, 160)
    visible = torch.zeros(2, 40, dtype=torch.bool).scatter(1, ids_keep, keep_valid)
    assert ((~visible) & padding).sum() == masked.sum()
    changed = mel.clone()
    for row, patch in (~visible).nonzero().tolist():  # masked, under filler tokens, padding
        changed[row, :, :, 4 * patch : 4 * patch + 4] += 10.0
    assert not torch.equal(mel, changed)
    assert torch.allclose(predict(mel)[padding], predict(changed)[padding], atol=1e-5)
