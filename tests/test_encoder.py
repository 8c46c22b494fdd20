"""Dasheng encoder: shapes, masks, window flattening, padding invariance, sizes."""

from __future__ import annotations

import torch

from midashenglm.modeling.config import DashengConfig
from midashenglm.modeling.encoder import DashengEncoder
from tests.conftest import clip, padded_batch, randomize_batchnorm

MIXED_SECONDS = [0.2, 0.6, 2.0, 3.999, 10.08, 10.5, 20.16, 35.0]


def _encoder(**overrides) -> DashengEncoder:
    torch.manual_seed(0)
    encoder = DashengEncoder(DashengConfig.from_preset("tiny", **overrides)).eval()
    randomize_batchnorm(encoder.init_bn)
    return encoder


@torch.no_grad()
def test_padding_invariance_mixed_lengths():
    encoder = _encoder()
    waves, batch, lengths = padded_batch(MIXED_SECONDS)
    features, mask = encoder(batch, lengths)
    assert features.shape[:2] == mask.shape
    for i, wave in enumerate(waves):
        alone, alone_mask = encoder(wave[None], lengths[i : i + 1])
        frames = alone.shape[1]
        assert frames == (1 + len(wave) // 160) // 4
        assert torch.equal(mask[i, :frames], alone_mask[0])
        assert (features[i, :frames] - alone[0]).abs().max().item() <= 1e-5
        assert int(mask[i].sum()) == len(wave) // 640


@torch.no_grad()
def test_layerscale_variant_is_padding_invariant_too():
    encoder = _encoder(init_values=0.1)
    assert "blocks.0.ls1.gamma" in encoder.state_dict()
    waves, batch, lengths = padded_batch([1.0, 12.0])
    features, _ = encoder(batch, lengths)
    alone, _ = encoder(waves[0][None], lengths[:1])
    assert (features[0, : alone.shape[1]] - alone[0]).abs().max().item() <= 1e-5


@torch.no_grad()
def test_empty_windows_are_skipped():
    """One 30 s clip plus seven 2 s clips costs 10 windows, not 24."""
    encoder = _encoder()
    seen = []
    hook = encoder.blocks[0].register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    _, batch, lengths = padded_batch([30.0] + [2.0] * 7)
    encoder(batch, lengths)
    assert seen == [3 + 7]
    seen.clear()
    encoder(batch, None)  # without lengths every item is 30 s long
    assert seen == [24]
    hook.remove()


@torch.no_grad()
def test_without_lengths_every_frame_is_audio():
    encoder = _encoder()
    wave = torch.from_numpy(clip(3.0))[None]
    features, mask = encoder(wave)
    assert mask is None
    assert features.shape == (1, (1 + wave.shape[1] // 160) // 4, 64)


def test_lengths_longer_than_input_are_rejected():
    encoder = _encoder()
    try:
        encoder(torch.zeros(1, 16000), torch.tensor([20000]))
    except ValueError as err:
        assert "exceeds" in str(err)
    else:  # pragma: no cover
        raise AssertionError("expected ValueError")


def test_published_encoder_sizes():
    """Parameter counts on the meta device (no memory): the 7B model's encoder is 630,333,568."""
    sizes = {}
    for name in ("base", "0.6B", "1.2B"):
        with torch.device("meta"):
            encoder = DashengEncoder(DashengConfig.from_preset(name))
        sizes[name] = sum(p.numel() for p in encoder.parameters())
    assert sizes["0.6B"] == 630_333_568
    assert 85e6 < sizes["base"] < 87e6
    assert 1.1e9 < sizes["1.2B"] < 1.2e9
