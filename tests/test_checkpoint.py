"""The published layout: names, sharding, variants, errors, bit-identical round trips."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from midashenglm import MiDashengLM
from midashenglm.checkpoint import (
    CheckpointError,
    load_dasheng_checkpoint,
    load_pretrained,
    save_pretrained,
)
from tests.conftest import clip

OFFICIAL_TOP_LEVEL = {"architectures", "audio_encoder_config", "audio_token_id", "dtype",
                      "model_type", "subsample_factor", "text_config"}
OFFICIAL_ENCODER_FIELDS = {
    "embed_dim", "outputdim", "patch_size", "patch_stride", "input_channels", "target_length",
    "depth", "num_heads", "mlp_ratio", "qkv_bias", "init_values", "drop_rate", "attn_drop_rate",
    "f_min", "f_max", "center", "win_length", "hop_length", "sample_rate", "n_fft", "n_mels",
}


def _batch(processor):
    conversation = [{"role": "user", "content": [
        {"type": "audio", "audio": clip(3.0)}, {"type": "text", "text": "What is it?"},
    ]}]
    return processor(conversations=[conversation])


def _all_tensors(folder):
    out = {}
    for file in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(file)))
    return out


def test_save_load_is_bit_identical(tiny_model, tiny_checkpoint, processor):
    again = MiDashengLM.from_pretrained(tiny_checkpoint)
    for (name, a), (name_b, b) in zip(tiny_model.state_dict().items(), again.state_dict().items(), strict=True):
        assert name == name_b and torch.equal(a, b), name
    batch = _batch(processor)
    with torch.no_grad():
        assert torch.equal(tiny_model(**batch).logits, again(**batch).logits)
    assert again.generation_config.eos_token_id == tiny_model.generation_config.eos_token_id


def test_key_names_and_config_fields_are_the_official_ones(tiny_checkpoint):
    keys = set(_all_tensors(tiny_checkpoint))
    prefixes = {k.split(".")[0] for k in keys}
    assert prefixes == {"audio_encoder", "audio_projector", "decoder"}
    for key in ("audio_encoder.init_bn.weight", "audio_encoder.init_bn.running_var",
                "audio_encoder.patch_embed.proj.weight", "audio_encoder.time_pos_embed",
                "audio_encoder.freq_pos_embed", "audio_encoder.blocks.1.attn.qkv.bias",
                "audio_encoder.blocks.0.mlp.fc2.weight", "audio_encoder.norm.weight",
                "audio_projector.net.0.weight", "audio_projector.net.2.bias",
                "decoder.model.embed_tokens.weight", "decoder.model.layers.0.self_attn.q_proj.weight",
                "decoder.lm_head.weight"):
        assert key in keys, key
    assert not [k for k in keys if "front_end" in k or ".ls1." in k]
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    assert set(config) == OFFICIAL_TOP_LEVEL
    assert config["model_type"] == "midashenglm"
    assert config["architectures"] == ["MiDashengLMModel"]
    assert config["subsample_factor"] == 5
    assert OFFICIAL_ENCODER_FIELDS <= set(config["audio_encoder_config"])
    assert config["audio_encoder_config"]["patch_size"] == [64, 4]
    assert config["audio_encoder_config"]["target_length"] == 1008
    assert (tiny_checkpoint / "generation_config.json").is_file()
    assert (tiny_checkpoint / "tokenizer.json").is_file()


def test_sharded_checkpoint_with_index(tmp_path, tiny_model, processor):
    save_pretrained(tiny_model, tmp_path, max_shard_size="100KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(tmp_path.glob("model-*-of-*.safetensors"))
    assert len(shards) > 2
    assert set(index["weight_map"].values()) == {s.name for s in shards}
    total = sum(t.numel() * t.element_size() for t in _all_tensors(tmp_path).values())
    assert index["metadata"]["total_size"] == total
    again = load_pretrained(tmp_path)
    batch = _batch(processor)
    with torch.no_grad():
        assert torch.equal(tiny_model(**batch).logits, again(**batch).logits)


def _rewrite(folder, edit):
    """Apply ``edit(tensors) -> tensors`` to a single-file checkpoint."""
    file = folder / "model.safetensors"
    save_file(edit(load_file(str(file))), str(file), metadata={"format": "pt"})


def _copy(tiny_model, tmp_path):
    save_pretrained(tiny_model, tmp_path)
    return tmp_path


def test_dasheng_style_batchnorm_keys_and_stored_frontend_buffers(tmp_path, tiny_model, processor):
    from midashenglm.modeling.frontend import mel_filterbank

    folder = _copy(tiny_model, tmp_path)

    def edit(tensors):
        for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            tensors[f"audio_encoder.init_bn.1.{name}"] = tensors.pop(f"audio_encoder.init_bn.{name}")
        # stored constants, even rounded through bf16 as some uploads have them
        tensors["audio_encoder.front_end.0.mel_scale.fb"] = mel_filterbank().bfloat16().float()
        tensors["audio_encoder.front_end.0.spectrogram.window"] = torch.hann_window(512).bfloat16().float()
        return tensors

    _rewrite(folder, edit)
    again = load_pretrained(folder)
    batch = _batch(processor)
    with torch.no_grad():
        assert torch.equal(tiny_model(**batch).logits, again(**batch).logits)


def test_early_model_type_is_accepted(tmp_path, tiny_model):
    folder = _copy(tiny_model, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "miaudiollm"
    (folder / "config.json").write_text(json.dumps(config))
    again = load_pretrained(folder)
    for name, tensor in tiny_model.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[name]), name


def test_wrong_model_type_is_named(tmp_path, tiny_model):
    folder = _copy(tiny_model, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "llama"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="model_type 'llama' is not a MiDashengLM"):
        load_pretrained(folder)


def test_missing_unexpected_and_misshapen_keys_are_listed(tmp_path, tiny_model):
    folder = _copy(tiny_model, tmp_path)

    def edit(tensors):
        del tensors["audio_projector.net.2.bias"]
        tensors["audio_encoder.extra.weight"] = torch.zeros(3)
        tensors["audio_encoder.norm.weight"] = torch.zeros(7)
        return tensors

    _rewrite(folder, edit)
    with pytest.raises(CheckpointError) as info:
        load_pretrained(folder)
    message = str(info.value)
    assert "1 missing keys:\n    audio_projector.net.2.bias" in message
    assert "1 unexpected keys:\n    audio_encoder.extra.weight" in message
    assert "audio_encoder.norm.weight: checkpoint (7,) vs model (64,)" in message


def test_pickle_weights_refused_unless_allowed(tmp_path, tiny_model, processor):
    folder = _copy(tiny_model, tmp_path)
    state = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="allow_pickle=True"):
        load_pretrained(folder)
    again = load_pretrained(folder, allow_pickle=True)
    batch = _batch(processor)
    with torch.no_grad():
        assert torch.equal(tiny_model(**batch).logits, again(**batch).logits)


def test_missing_folder_and_missing_shard(tmp_path, tiny_model):
    with pytest.raises(CheckpointError, match="no such checkpoint folder"):
        load_pretrained(tmp_path / "absent")
    save_pretrained(tiny_model, tmp_path / "ck", max_shard_size="100KB")
    next((tmp_path / "ck").glob("model-00002-*.safetensors")).unlink()
    with pytest.raises(CheckpointError, match="shard\\(s\\) missing: model-00002"):
        load_pretrained(tmp_path / "ck")


def test_load_in_bf16_keeps_frontend_fp32(tiny_model, tiny_checkpoint, processor):
    # Loading builds the model under a bf16 default dtype: the front end must not follow it.
    model = load_pretrained(tiny_checkpoint, dtype=torch.bfloat16)
    assert model.decoder.model.embed_tokens.weight.dtype == torch.bfloat16
    assert model.audio_encoder.patch_embed.proj.weight.dtype == torch.bfloat16
    window, filterbank = model.audio_encoder.front_end.constants(torch.device("cpu"))
    assert window.dtype == filterbank.dtype == torch.float32
    wave = torch.from_numpy(clip(2.0))[None]
    with torch.no_grad():
        mel = model.audio_encoder.front_end(wave)
        assert mel.dtype == torch.float32
        assert torch.equal(mel, tiny_model.audio_encoder.front_end(wave))  # bit for bit the fp32 one
        batch = _batch(processor)
        logits, reference = model(**batch).logits, tiny_model(**batch).logits
    assert logits.dtype == torch.bfloat16
    assert (logits[:, -1].float() - reference[:, -1]).abs().max() <= 0.03 * reference[:, -1].abs().max()


def test_save_in_bf16_records_dtype_and_auto_loads_it(tmp_path, tiny_model):
    save_pretrained(tiny_model, tmp_path, dtype=torch.bfloat16)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    assert load_pretrained(tmp_path).audio_projector.net[0].weight.dtype == torch.bfloat16
    assert load_pretrained(tmp_path, dtype="float32").audio_projector.net[0].weight.dtype == torch.float32


def test_original_dasheng_checkpoint_loads_into_the_encoder(tmp_path, tiny_model):
    from midashenglm.modeling.frontend import mel_filterbank

    encoder = tiny_model.audio_encoder
    state = {k: v.clone() for k, v in encoder.state_dict().items()}
    for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        state[f"init_bn.1.{name}"] = state.pop(f"init_bn.{name}")
    state["front_end.0.mel_scale.fb"] = mel_filterbank()
    state["front_end.0.spectrogram.window"] = torch.hann_window(512)
    config = {"embed_dim": 64, "depth": 2, "num_heads": 4, "hop_size": 160, "win_size": 512,
              "target_length": 1008, "patch_size": [64, 4], "patch_stride": [64, 4], "pooling": "mean"}
    torch.save({"model": state, "config": config}, tmp_path / "dasheng_tiny.pt")
    loaded = load_dasheng_checkpoint(tmp_path / "dasheng_tiny.pt")
    wave = torch.from_numpy(clip(2.0))[None]
    with torch.no_grad():
        assert torch.equal(loaded(wave)[0], encoder(wave)[0])
    torch.save({"weights": state}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="expected a dict with 'model'"):
        load_dasheng_checkpoint(tmp_path / "bad.pt")


def test_uncached_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="Hub download failed"):
        load_pretrained("someone-unknown/not-a-cached-model")


@pytest.mark.parametrize(("encoder", "decoder", "low", "high"), [
    ("0.6B", "qwen2.5-omni-7b", 8.2e9, 8.4e9),
    ("base", "qwen3-0.6b", 0.6e9, 0.75e9),
])
def test_real_size_presets_build(encoder, decoder, low, high):
    """The published shapes, built on the meta device (no memory, no time)."""
    from midashenglm.modeling.config import DECODER_PRESETS, DashengConfig, MiDashengLMConfig

    config = MiDashengLMConfig(
        audio_encoder_config=DashengConfig.from_preset(encoder).to_dict(),
        text_config=DECODER_PRESETS[decoder],
        audio_token_id=151646,
    )
    with torch.device("meta"):
        model = MiDashengLM(config)
    total = sum(p.numel() for p in model.parameters())
    assert low < total < high
    assert sum(p.numel() for p in model.audio_projector.parameters()) == (
        config.audio_encoder_config.embed_dim * 5 * config.text_config.hidden_size
        + config.text_config.hidden_size * (config.text_config.hidden_size + 2)
    )
    if decoder == "qwen2.5-omni-7b":
        assert type(model.decoder).__name__ == "Qwen2ForCausalLM"
        assert model.decoder.config.num_key_value_heads == 4


def test_load_model_gives_a_matching_model_and_processor(tiny_model, tiny_checkpoint, processor):
    from midashenglm.checkpoint import load_model

    model, loaded_processor = load_model(tiny_checkpoint, device="cpu")
    assert model.device.type == "cpu" and model.dtype == torch.float32 and not model.training
    assert loaded_processor.audio_token_id == model.config.audio_token_id == processor.audio_token_id
    batch = _batch(loaded_processor)
    assert torch.equal(batch["input_ids"], _batch(processor)["input_ids"])
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, tiny_model(**batch).logits)


def test_resolve_dtype():
    from midashenglm.checkpoint import resolve_dtype
    from midashenglm.modeling.config import MiDashengLMConfig

    assert resolve_dtype(torch.float16) is torch.float16
    assert resolve_dtype("bfloat16") is torch.bfloat16
    assert resolve_dtype("torch.float16") is torch.float16
    assert resolve_dtype(None) is torch.float32
    assert resolve_dtype("auto") is torch.float32  # no config: nothing stored
    config = MiDashengLMConfig()
    config.dtype = "bfloat16"
    assert resolve_dtype("auto", config) is torch.bfloat16
    assert resolve_dtype(None, config) is torch.float32  # None is float32, not the stored one
    with pytest.raises(ValueError, match="unknown dtype 'float17'"):
        resolve_dtype("float17")
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("Tensor")  # a torch attribute, but not a dtype


def test_the_layers_keep_the_public_names():
    """Moved names are the same objects wherever they were imported from before."""
    import midashenglm
    from midashenglm import checkpoint, processing
    from midashenglm.modeling import geometry, weights

    for name in ("CheckpointError", "read_json_file", "resolve_checkpoint", "load_config",
                 "weight_files", "iter_tensors", "load_state", "normalize_key", "resolve_dtype"):
        assert getattr(checkpoint, name) is getattr(weights, name), name
    assert not hasattr(checkpoint, "_resolve_dtype")
    assert processing.num_audio_tokens is geometry.num_audio_tokens is midashenglm.num_audio_tokens
    assert processing.MIN_AUDIO_SAMPLES == geometry.MIN_AUDIO_SAMPLES == 3200
    assert processing.read_json_file is weights.read_json_file
