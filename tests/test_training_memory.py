"""``train --dry-run`` estimate: parameter counts, optimiser states, sharding, activations."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from midashenglm.errors import UserError
from midashenglm.modeling.config import DECODER_PRESETS, DashengConfig, MiDashengLMConfig
from midashenglm.modeling.model import MiDashengLM
from midashenglm.training.memory import estimate_memory, format_table, parameter_table

SMALL_DECODER = {
    "model_type": "qwen2", "vocab_size": 512, "hidden_size": 128, "intermediate_size": 384,
    "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
    "max_position_embeddings": 4096, "tie_word_embeddings": False,
}


def build(encoder: dict, decoder: dict, dtype=torch.float32, device="cpu") -> MiDashengLM:
    config = MiDashengLMConfig(audio_encoder_config=DashengConfig(**encoder).to_dict(),
                               text_config=decoder, audio_token_id=5)
    torch.manual_seed(0)
    return MiDashengLM.build_empty(config, dtype, device) if device == "meta" else MiDashengLM(config).to(dtype)


def add_lora(model: MiDashengLM, targets, dropout: float = 0.0) -> MiDashengLM:
    from peft import LoraConfig, get_peft_model

    model.decoder = get_peft_model(model.decoder, LoraConfig(r=8, lora_alpha=32, lora_dropout=dropout,
                                                             target_modules=targets))
    return model


@pytest.fixture(scope="module")
def big():
    """The 7B layout (Dasheng-0.6B + Qwen2.5-Omni-7B decoder) on the meta device."""
    start = time.perf_counter()
    model = build(DashengConfig.from_preset("0.6B").to_dict(), DECODER_PRESETS["qwen2.5-omni-7b"],
                  torch.bfloat16, "meta")
    assert time.perf_counter() - start < 5
    return model


def components(model):
    out = {}
    for name in ("audio_encoder", "audio_projector", "decoder"):
        params = [(n, p) for n, p in getattr(model, name).named_parameters() if ".lora_" not in f".{n}"]
        out[name] = (sum(p.numel() for _, p in params), sum(p.numel() for _, p in params if p.requires_grad))
    lora = [p for n, p in model.named_parameters() if ".lora_" in n]
    if lora:
        out["lora"] = (sum(p.numel() for p in lora), sum(p.numel() for p in lora if p.requires_grad))
    return out


@pytest.mark.parametrize("lora", [False, True])
def test_parameter_counts_are_those_of_each_component(lora):
    model = build({"embed_dim": 64, "depth": 2, "num_heads": 4}, DECODER_PRESETS["tiny"])
    if lora:
        add_lora(model, ["q_proj", "v_proj"])
    est = estimate_memory(model, micro_batch_tokens=64)
    got = {name: (c.total, c.trainable) for name, c in est.parameters.items()}
    assert got == components(model)
    assert est.total_parameters == sum(p.numel() for p in model.parameters())
    assert est.trainable_parameters == sum(p.numel() for p in model.parameters() if p.requires_grad)
    if lora:
        assert got["decoder"][1] == 0 and got["lora"][0] == got["lora"][1] > 0
        # r x (in + out) per adapted projection: q 64->64, v 64->32 (2 KV heads of 16), 2 layers.
        assert got["lora"][0] == 2 * 8 * ((64 + 64) + (64 + 32))


def test_optimizer_states_are_what_the_optimizers_allocate():
    bnb = pytest.importorskip("bitsandbytes")
    model = build({"embed_dim": 64, "depth": 2, "num_heads": 4}, DECODER_PRESETS["tiny"])
    params = list(model.parameters())
    for name, cls in [("adamw8bit", bnb.optim.AdamW8bit), ("adamw", torch.optim.AdamW)]:
        optimizer = cls(params, lr=1e-3)
        for p in params:
            p.grad = torch.ones_like(p)
        optimizer.step()
        allocated = sum(v.numel() * v.element_size() for state in optimizer.state.values()
                        for k, v in state.items() if torch.is_tensor(v) and k.startswith(("state", "absmax", "exp_")))
        assert estimate_memory(model, micro_batch_tokens=8, optimizer=name).gpu(1).items["optimizer"] == allocated


def test_bytes_per_parameter_follow_the_rules_of_thumb(big):
    n = big.num_parameters()
    fp32 = estimate_memory(big, micro_batch_tokens=8, optimizer="adamw", precision="fp32").gpu(1).items
    # Full fine-tuning with fp32 weights and torch AdamW: 4 + 4 + 8 = 16 bytes per parameter.
    assert fp32["optimizer"] == 8 * n
    assert (fp32["weights"] + fp32["gradients"] + fp32["optimizer"]) / n == pytest.approx(16, rel=1e-6)
    bf16 = estimate_memory(big, micro_batch_tokens=8, optimizer="adamw8bit").gpu(1).items
    assert bf16["optimizer"] / n == pytest.approx(2 + 8 / 256, rel=1e-3)  # 2 bytes + 2 fp32 absmax / 256
    assert bf16["weights"] / n == pytest.approx(2, rel=1e-6) and bf16["gradients"] == 2 * n


def test_fsdp_shards_weights_gradients_and_optimizer_exactly(big):
    buffers = sum(b.numel() * b.element_size() for b in big.buffers())
    fsdp = estimate_memory(big, world_sizes=(1, 8), strategy="fsdp", micro_batch_tokens=2048)
    one, eight = fsdp.gpu(1).items, fsdp.gpu(8).items
    assert eight["gradients"] == one["gradients"] / 8
    assert eight["optimizer"] == one["optimizer"] / 8
    assert eight["weights"] - buffers == pytest.approx((one["weights"] - buffers) / 8, rel=1e-12)
    for item in ("encoder_activations", "decoder_activations", "logits"):
        assert eight[item] == one[item] > 0
    assert one["communication"] == 0 < eight["communication"]
    ddp = estimate_memory(big, world_sizes=(1, 8), strategy="ddp", micro_batch_tokens=2048)
    assert ddp.gpu(8).items["gradients"] == ddp.gpu(1).items["gradients"] == one["gradients"]
    assert ddp.gpu(8).items["communication"] == one["gradients"]  # DDP's buckets: one more copy


def test_checkpointing_lowers_activations(big):
    plain, ckpt = (estimate_memory(big, micro_batch_tokens=4096, micro_batch_audio_seconds=300,
                                   gradient_checkpointing=c).gpu(1).items for c in (False, True))
    assert ckpt["decoder_activations"] < plain["decoder_activations"] / 5
    assert ckpt["encoder_activations"] < plain["encoder_activations"] / 5
    assert ckpt["logits"] == plain["logits"]


def test_worked_examples_of_the_docs(big):
    full = estimate_memory(big, world_sizes=(1, 8), strategy="fsdp", micro_batch_tokens=4096,
                           micro_batch_audio_seconds=320, sequence_length=128)
    assert full.fits(80) == {1: False, 8: True}

    from peft import LoraConfig, get_peft_model

    model = build(DashengConfig.from_preset("0.6B").to_dict(), DECODER_PRESETS["qwen2.5-omni-7b"],
                  torch.bfloat16, "meta")
    model.decoder = get_peft_model(model.decoder, LoraConfig(r=8, lora_alpha=32, lora_dropout=0.1,
                                                             target_modules="all-linear"))
    start = time.perf_counter()
    sft = estimate_memory(model, micro_batch_tokens=1024, micro_batch_audio_seconds=80, sequence_length=128,
                          gradient_checkpointing=True)
    assert time.perf_counter() - start < 3
    assert sft.parameters["lora"].trainable == 20_185_088
    assert sft.trainable_parameters == 20_185_088 + 630_333_568 + 35_789_824  # + encoder, projector
    assert sft.fits(24) == {1: True}
    plain = estimate_memory(model, micro_batch_tokens=1024, micro_batch_audio_seconds=80, sequence_length=128)
    assert not plain.gpu(1).fits(24)
    row = json.loads(json.dumps(sft.to_dict()))
    assert row["per_gpu_bytes"]["1"]["total"] == round(sft.gpu(1).total)
    assert row["parameters"]["lora"] == {"total": 20_185_088, "trainable": 20_185_088}


def saved_tensor_bytes(model, fn) -> int:
    """Bytes of the distinct non-parameter tensors autograd keeps for backward while ``fn`` runs."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_activation_formulas_match_what_autograd_keeps(dtype):
    """The per-token formulas against a real forward (CPU, no autocast), encoder and decoder."""
    model = build({"embed_dim": 64, "depth": 3, "num_heads": 4}, SMALL_DECODER, dtype).train()
    rows, length = 2, 256
    ids = torch.randint(10, 500, (rows, length))
    mask = torch.ones(rows, length, dtype=torch.long)
    mask[0, :40] = 0  # padding: transformers passes SDPA a mask, as in training
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    decoder = saved_tensor_bytes(model, lambda: model.decoder.model(inputs_embeds=embeds, attention_mask=mask))
    wav = torch.randn(2, 16000 * 12, dtype=dtype)
    lengths = torch.tensor([16000 * 12, 16000 * 7])
    encoder = saved_tensor_bytes(model, lambda: model.audio_projector(model.audio_encoder(wav, lengths)[0]))
    est = estimate_memory(model, micro_batch_tokens=rows * length, sequence_length=length,
                          micro_batch_audio_seconds=24, autocast=False).gpu(1).items
    assert est["decoder_activations"] == pytest.approx(decoder, rel=0.10)
    assert est["encoder_activations"] == pytest.approx(encoder, rel=0.15)


def test_lora_dropout_adds_activations():
    model = build({"embed_dim": 64, "depth": 2, "num_heads": 4}, SMALL_DECODER)
    base = estimate_memory(model, micro_batch_tokens=512, autocast=False).gpu(1).items["decoder_activations"]
    add_lora(model, ["q_proj", "v_proj"], dropout=0.1)
    with_lora = estimate_memory(model, micro_batch_tokens=512, autocast=False).gpu(1).items["decoder_activations"]
    # Per layer and token: two dropped-out fp32 inputs (4 bytes + 1-byte mask) and two rank-8 outputs.
    assert with_lora - base == 512 * 3 * (2 * 128 * 5 + 2 * 8 * 4)


def test_tables_and_errors(big):
    from rich.console import Console

    est = estimate_memory(big, world_sizes=(8, 1), strategy="fsdp", micro_batch_tokens=1024)
    console = Console(record=True, width=120)
    console.print(parameter_table(est))
    console.print(format_table(est, gpu_gib=80))
    text = console.export_text()
    assert "1 GPU" in text and "8 GPUs" in text and "fits 80 GiB" in text and "8,281,739,904" in text
    for kwargs in ({"optimizer": "sgd"}, {"strategy": "zero3"}, {"precision": "int8"}, {"world_sizes": (0,)}):
        with pytest.raises(UserError):
            estimate_memory(big, micro_batch_tokens=8, **kwargs)


def test_train_dry_run_prints_parameters_and_memory_of_the_7b_stages(tmp_path):
    """`train --dry-run` on the paper-scale configs: built from config.json alone (no weights)."""
    from typer.testing import CliRunner

    from midashenglm.cli import app

    config = MiDashengLMConfig(audio_encoder_config=DashengConfig.from_preset("0.6B").to_dict(),
                               text_config=DECODER_PRESETS["qwen2.5-omni-7b"], audio_token_id=151646)
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
    root = Path(__file__).resolve().parents[1]
    for stage, expect in (("align", "8,281,739,904"), ("sft", "LoRA adapters")):
        done = CliRunner().invoke(app, ["train", str(root / "configs" / f"{stage}.yaml"),
                                        f"model.checkpoint={tmp_path}", "data.train=unused.jsonl",
                                        "--dry-run", "--gpus", "8"], env={"COLUMNS": "160"})
        assert done.exit_code == 0, done.output
        assert expect in done.output and "fits 80 GiB" in done.output and "8 GPUs" in done.output
