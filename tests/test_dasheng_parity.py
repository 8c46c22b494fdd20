"""Parity with the reference ``dasheng`` package, from a checked-in fixture.

``tests/fixtures/dasheng_parity/`` was written by
``scripts/dasheng_parity.py --save-fixture`` (reference: dasheng 0.0.9 in
``.venv-dasheng``, see docs/dasheng-parity.md): a tiny original-format Dasheng
dump ``dasheng_ref.pt`` ({"model", "config"}, ``init_bn.1.*`` and torchaudio's
``front_end.0.*`` buffers), and the reference's output for every clip run alone.
The clips are regenerated from a seed by the script's integer-hash generator.

Parity: our output for item i of a mixed-length padded batch equals the
reference run on item i alone, on the valid frames and on all T_i frames.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from midashenglm.checkpoint import load_dasheng_checkpoint

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "dasheng_parity"
TOLERANCE = 1e-5


def _parity_script():
    spec = importlib.util.spec_from_file_location(
        "_dasheng_parity_script", REPO / "scripts" / "dasheng_parity.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fixture():
    info = json.loads((FIXTURE / "inputs.json").read_text())
    script = _parity_script()
    assert info["generator"] == script.GENERATOR
    waves = script.make_inputs(info["lengths"], info["seed"])
    for i, (wave, (total, total_abs)) in enumerate(zip(waves, info["checksums"], strict=True)):
        assert len(wave) == info["lengths"][i]
        assert np.isclose(wave.astype(np.float64).sum(), total, rtol=0, atol=1e-6), i
        assert np.isclose(np.abs(wave).astype(np.float64).sum(), total_abs, rtol=1e-9), i
    with np.load(FIXTURE / "reference_outputs.npz") as data:
        outputs = [torch.from_numpy(data[f"item_{i}"]) for i in range(len(waves))]
    return info, waves, outputs


@pytest.fixture(scope="module")
def encoder():
    return load_dasheng_checkpoint(FIXTURE / "dasheng_ref.pt")


def test_fixture_is_small_and_mixed(fixture):
    info, _, outputs = fixture
    assert sum(f.stat().st_size for f in FIXTURE.iterdir()) < 2_000_000
    lengths = info["lengths"]
    # A clip with one frame more than it has audio frames, and clips across windows.
    assert any(n % 640 >= 480 for n in lengths)
    assert any(n > 161280 for n in lengths) and any(n < 161280 for n in lengths)
    for n, out in zip(lengths, outputs, strict=True):
        assert out.shape == ((1 + n // 160) // 4, info["embed_dim"])


def test_loads_original_dump_with_its_batchnorm_stats(encoder):
    state = torch.load(FIXTURE / "dasheng_ref.pt", map_location="cpu", weights_only=True)["model"]
    assert "init_bn.1.running_mean" in state and "front_end.0.mel_scale.fb" in state
    bn = encoder.init_bn
    for name in ("running_mean", "running_var", "weight", "bias", "num_batches_tracked"):
        assert torch.equal(getattr(bn, name), state[f"init_bn.1.{name}"]), name
    # Not BatchNorm's defaults: the statistics really come from the file.
    assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
    assert not torch.allclose(bn.weight, torch.ones_like(bn.weight))
    assert not torch.allclose(bn.bias, torch.zeros_like(bn.bias))
    assert int(bn.num_batches_tracked) != 0
    assert encoder.config.embed_dim == 64 and encoder.config.depth == 2
    assert encoder.config.num_heads == 4


@torch.no_grad()
def test_mixed_batch_matches_reference_per_item(fixture, encoder):
    info, waves, outputs = fixture
    lengths = torch.tensor(info["lengths"])
    batch = torch.zeros(len(waves), int(lengths.max()))
    for i, wave in enumerate(waves):
        batch[i, : len(wave)] = torch.from_numpy(wave)
    features, mask = encoder(batch, lengths)
    assert features.dtype == torch.float32
    for i, (n, ref) in enumerate(zip(info["lengths"], outputs, strict=True)):
        total, valid = (1 + n // 160) // 4, n // 640
        assert int(mask[i].sum()) == valid and bool(mask[i, :valid].all())
        diff = (features[i, :total] - ref).abs()
        assert float(diff[:valid].max()) <= TOLERANCE, (i, float(diff[:valid].max()))
        assert float(diff.max()) <= TOLERANCE, (i, float(diff.max()))
