"""Training-mode encoder: BatchNorm over valid frames only, fp32 front end under autocast,
backward through the encoder, gradient checkpointing that changes nothing but memory."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from midashenglm.modeling.config import DashengConfig
from midashenglm.modeling.encoder import DashengEncoder
from tests.conftest import clip, make_model, padded_batch, randomize_batchnorm

SECONDS = [0.3, 1.7, 0.9, 2.5]


def _encoder() -> DashengEncoder:
    torch.manual_seed(0)
    encoder = DashengEncoder(DashengConfig.from_preset("tiny"))
    randomize_batchnorm(encoder.init_bn)
    return encoder.train()


def _stats(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor, int]:
    return bn.running_mean.clone(), bn.running_var.clone(), int(bn.num_batches_tracked)


def test_batchnorm_uses_valid_frames_only():
    waves, batch, lengths = padded_batch(SECONDS)
    padded = _encoder()
    reference = nn.BatchNorm1d(64, momentum=0.01).train()
    reference.load_state_dict(padded.init_bn.state_dict())
    for step in range(2):  # twice: the second update starts from moved statistics
        # A padded batch, and each clip's own frames concatenated into one unpadded row.
        out = padded.log_mel(batch, lengths)[:, 0]
        with torch.no_grad():
            frames = [padded.front_end(w[None])[0] for w in waves]
        joined = torch.cat(frames, dim=-1)[None]  # (1, n_mels, all valid frames)
        counts = [f.shape[-1] for f in frames]
        assert counts == [1 + len(w) // 160 for w in waves]
        expected = reference(joined)[0]
        # Same running statistics as nn.BatchNorm on the unpadded frames.
        got = padded.init_bn
        assert torch.allclose(got.running_mean, reference.running_mean, rtol=1e-6, atol=1e-6)
        assert torch.allclose(got.running_var, reference.running_var, rtol=1e-6, atol=1e-6)
        assert int(got.num_batches_tracked) == int(reference.num_batches_tracked) == step + 1
        # Same normalised values on every valid frame.
        start = 0
        for i, n in enumerate(counts):
            assert (out[i, :, :n] - expected[:, start : start + n]).abs().max() <= 1e-5
            start += n


def test_padding_moves_neither_statistics_nor_valid_outputs():
    waves, batch, lengths = padded_batch(SECONDS)
    tight, wide = _encoder(), _encoder()
    extra = torch.cat([batch, torch.randn(len(waves), 4000)], dim=1)  # longer padding, not zeros
    out_tight = tight.log_mel(batch, lengths)
    out_wide = wide.log_mel(extra, lengths)
    (mean_t, var_t, n_t), (mean_w, var_w, n_w) = _stats(tight.init_bn), _stats(wide.init_bn)
    assert torch.allclose(mean_t, mean_w, rtol=1e-6, atol=1e-6) and n_t == n_w == 1
    assert torch.allclose(var_t, var_w, rtol=1e-6, atol=1e-6)
    for i, w in enumerate(waves):
        n = 1 + len(w) // 160
        assert (out_tight[i, ..., :n] - out_wide[i, ..., :n]).abs().max() <= 1e-5


def test_eval_mode_uses_running_statistics_unchanged():
    _, batch, lengths = padded_batch(SECONDS)
    encoder = _encoder().eval()
    before = _stats(encoder.init_bn)
    out = encoder.log_mel(batch, lengths)
    bn = encoder.init_bn
    mel = encoder.front_end(batch, lengths)
    expected = torch.nn.functional.batch_norm(mel, bn.running_mean, bn.running_var, bn.weight, bn.bias,
                                              training=False, eps=bn.eps)
    assert torch.equal(out[:, 0], expected)
    after = _stats(encoder.init_bn)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1]) and before[2] == after[2]


def test_front_end_stays_fp32_under_bf16_autocast_and_backward_works():
    _, batch, lengths = padded_batch(SECONDS)
    encoder = _encoder()
    dtypes = {}

    def seen(name):
        def hook(module, args, out):
            dtypes[name] = out.dtype  # returns None: the output is left as it is

        return hook

    front = encoder.front_end.register_forward_hook(seen("front_end"))
    qkv = encoder.blocks[0].attn.qkv.register_forward_hook(seen("qkv"))
    log_mel = encoder.log_mel

    def recorded_log_mel(*args):
        out = log_mel(*args)
        dtypes["log_mel"] = out.dtype
        return out

    encoder.log_mel = recorded_log_mel  # type: ignore[method-assign]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features, mask = encoder(batch, lengths)
    front.remove(), qkv.remove()
    assert dtypes == {"front_end": torch.float32, "log_mel": torch.float32, "qkv": torch.bfloat16}
    loss = features[mask].float().square().mean()
    loss.backward()
    grads = {name: p.grad for name, p in encoder.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), [
        n for n, g in grads.items() if g is None
    ]
    assert grads["init_bn.weight"].abs().sum() > 0 and grads["blocks.0.attn.qkv.weight"].abs().sum() > 0


def _loss_and_grads(model, inputs, *, checkpointing: bool):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers 5 renames the API; both names work
        if checkpointing:
            model.gradient_checkpointing_enable()
        else:
            model.gradient_checkpointing_disable()
    assert model.audio_encoder.gradient_checkpointing is checkpointing
    calls = []
    # A pre-hook: the recompute stops early, once the last saved tensor is rebuilt.
    hook = model.audio_encoder.blocks[0].register_forward_pre_hook(lambda *a: calls.append(1))
    model.train()
    model.zero_grad()
    loss = model(**inputs).loss
    loss.backward()
    hook.remove()
    # Checkpointed blocks run again in the backward pass.
    assert len(calls) == (2 if checkpointing else 1)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, _stats(model.audio_encoder.init_bn)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(processor):
    model = make_model(processor)
    conversations = [
        [{"role": "user", "content": [{"type": "audio", "audio": clip(s, seed=i), "sampling_rate": 16000},
                                      {"type": "text", "text": "What is it?"}]},
         {"role": "assistant", "content": f"a tone number {i}"}]
        for i, s in enumerate([1.2, 2.6])
    ]
    inputs = processor(conversations=conversations, labels=True, add_generation_prompt=False,
                       return_tensors="pt", padding=True)
    plain = _loss_and_grads(copy.deepcopy(model), inputs, checkpointing=False)
    ckpt = _loss_and_grads(copy.deepcopy(model), inputs, checkpointing=True)
    assert torch.allclose(plain[0], ckpt[0], atol=1e-6, rtol=0)
    assert plain[1].keys() == ckpt[1].keys()
    assert any(n.startswith("audio_encoder.blocks.") for n in plain[1])
    for name, grad in plain[1].items():
        assert torch.allclose(grad, ckpt[1][name], atol=1e-6, rtol=1e-5), name
    # BatchNorm updated once per step, not again by the recompute.
    assert torch.equal(plain[2][0], ckpt[2][0]) and torch.equal(plain[2][1], ckpt[2][1])
    assert plain[2][2] == ckpt[2][2] == 1
    # Disabling switches the encoder back.
    _loss_and_grads(model, inputs, checkpointing=True)
    _loss_and_grads(model, inputs, checkpointing=False)
