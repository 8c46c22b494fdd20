"""The bytes formulas of midashenglm.bench.traffic, against real tensors on tiny shapes.

Weights: the parameters of the modules a pass runs. Activations: the inputs and outputs
every linear and convolution layer sees (forward hooks). KV cache: the cache's tensors
after the prefill and after each decode step (what the step's attention read).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from midashenglm.bench import costs, traffic
from midashenglm.bench.baseline import OmniAudioEncoder, baseline_audio_config
from midashenglm.modeling.config import DECODER_PRESETS, build_text_config, decoder_config

from .conftest import clip, make_model


class LayerOperands:
    """Sum of input and output elements of every linear/conv layer under ``module``."""

    def __init__(self, module: nn.Module) -> None:
        self.values = 0
        self.handles = [m.register_forward_hook(self.hook) for m in module.modules()
                        if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d)]

    def hook(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        self.values += inputs[0].numel() + output.numel()

    def __enter__(self) -> LayerOperands:
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self.handles:
            h.remove()


def params(*modules: nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


# ----------------------------------------------------------------------------- decoder
def tiny_decoder(preset: str):
    text = dict(DECODER_PRESETS["tiny"])
    if preset == "qwen3":  # no q/k/v biases, per-head q/k norms, GQA 2:1, a head_dim of its own
        text = {**DECODER_PRESETS["qwen3-0.6b"], "hidden_size": 48, "intermediate_size": 96,
                "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                "head_dim": 16, "vocab_size": 300}
    if preset == "llama":  # biases on q, k, v and o
        text = {**DECODER_PRESETS["tiny"], "model_type": "llama", "attention_bias": True}
    config = decoder_config(build_text_config(text))
    torch.manual_seed(0)
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_config(config).eval(), costs.DecoderShape.from_config(config)


@pytest.mark.parametrize("preset", ["tiny", "qwen3", "llama"])
def test_decoder_weights_activations_and_kv_match_real_tensors(preset):
    decoder, shape = tiny_decoder(preset)
    embed = decoder.get_input_embeddings().weight
    tied = decoder.get_output_embeddings().weight is embed
    # Read per pass: every parameter but the embedding table; the LM head in full.
    expected = params(decoder) - embed.numel() + (embed.numel() if tied else 0)
    assert traffic.decoder_weight_values(shape) == expected

    length, steps = 11, 4
    embeds = torch.randn(1, length, shape.hidden)
    with torch.inference_mode(), LayerOperands(decoder) as seen:
        out = decoder(inputs_embeds=embeds, use_cache=True, logits_to_keep=1)
    cache = out.cache
    assert seen.values == traffic.decoder_activation_values(length, shape, logits_tokens=1)["linear"]

    def cache_values(cache) -> int:
        return sum(layer.keys.numel() + layer.values.numel() for layer in cache.layers)

    assert cache_values(cache) == length * traffic.kv_values_per_token(shape)  # written by the prefill
    read = 0
    for _ in range(steps):
        with torch.inference_mode(), LayerOperands(decoder) as seen:
            out = decoder(inputs_embeds=torch.randn(1, 1, shape.hidden), cache=cache, use_cache=True)
        assert seen.values == traffic.decoder_activation_values(1, shape, logits_tokens=1)["linear"]
        cache = out.cache
        read += cache_values(cache)  # the step attends to every position, its own included
    assert read == traffic.decode_kv_read_values(length, steps + 1, shape)


# ---------------------------------------------------------------------------- encoders
@pytest.fixture(scope="module")
def midashenglm(processor):
    return make_model(processor)


@pytest.mark.parametrize("seconds", [3.0, 13.0])  # one window; two, padded to the longer
def test_dasheng_weights_and_activations_match_real_tensors(midashenglm, seconds):
    model = midashenglm
    shape = costs.DashengShape.from_config(model.config.audio_encoder_config)
    hidden = model.config.text_config.hidden_size
    assert traffic.dasheng_weight_values(shape, hidden) == params(model.audio_encoder, model.audio_projector)

    wave = torch.from_numpy(clip(seconds, seed=1))
    with torch.inference_mode(), LayerOperands(model.audio_encoder) as enc, \
            LayerOperands(model.audio_projector) as proj:
        model.encode_audio(wave[None], torch.tensor([len(wave)]))
    executed = traffic.dasheng_activation_values(len(wave), shape, hidden, executed=True)
    assert enc.values + proj.values == executed["linear"]
    ideal = traffic.dasheng_activation_values(len(wave), shape, hidden)
    assert (ideal == executed) == (seconds <= 10.08)


@pytest.fixture(scope="module")
def omni_encoder():
    torch.manual_seed(0)
    config = baseline_audio_config(
        d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=256, output_dim=48
    )
    return OmniAudioEncoder(config).eval()


@pytest.mark.parametrize("seconds", [1.5, 2.5, 7.3])  # one chunk; a partial last chunk
def test_baseline_weights_and_activations_match_real_tensors(omni_encoder, seconds):
    shape = costs.WhisperShape.from_config(omni_encoder.config)
    assert traffic.baseline_weight_values(shape, 48) == params(omni_encoder)

    wave = torch.from_numpy(clip(seconds, seed=2))
    with torch.inference_mode(), LayerOperands(omni_encoder) as seen:
        omni_encoder(wave[None], torch.tensor([len(wave)]))
    assert seen.values == traffic.baseline_activation_values(len(wave), shape, 48, executed=True)["linear"]


def test_roofline_counts_weights_once_per_pass():
    from midashenglm.bench.roofline import Spec, roofline, weight_bytes, workload_work

    shapes = {"dasheng": costs.DASHENG_06B, "whisper": costs.WHISPER_LARGE_V3, "decoder": costs.QWEN25_OMNI_7B}
    specs = [Spec(10.0, 30, 5), Spec(20.0, 30, 9), Spec(5.0, 30, 1)]
    one = workload_work("midashenglm", specs, rows=1, shapes=shapes, bytes_per_value=2)
    two = workload_work("midashenglm", specs, rows=2, shapes=shapes, bytes_per_value=2)
    weights = weight_bytes("midashenglm", **shapes, bytes_per_value=2)
    # 3 requests: 3 audio/prefill passes at 1 row, 2 at 2 rows; 4 + 8 + 0 decode steps: 12 and 6.
    assert (one["audio"]["passes"], two["audio"]["passes"], one["decode"]["passes"], two["decode"]["passes"]) \
        == (3, 2, 12, 6)
    assert one["decode"]["bytes"] - two["decode"]["bytes"] == 6 * weights["decoder"]
    assert one["audio"]["bytes"] - two["audio"]["bytes"] == weights["audio"]
    assert one["decode"]["macs"] == two["decode"]["macs"]
    # A 7B decode step reads ~15 GB of bf16 weights for one token: memory-bound; a prefill
    # of ~80 tokens is compute-bound on a CPU (~3 FLOP per byte) but not on a GPU (~300).
    cpu = roofline(one, flops_per_s=1e11, bytes_per_s=3e10)
    assert cpu["phases"]["decode"]["bound"] == "memory" and cpu["phases"]["prefill"]["bound"] == "compute"
    gpu = roofline(one, flops_per_s=1e15, bytes_per_s=3e12)
    assert gpu["phases"]["decode"]["bound"] == gpu["phases"]["prefill"]["bound"] == "memory"
    assert cpu["seconds"] == pytest.approx(sum(p["seconds"] for p in cpu["phases"].values()))
    assert weights["decoder"] == pytest.approx(2 * 7.07e9, rel=0.02)  # Qwen2.5-7B without its embedding table
