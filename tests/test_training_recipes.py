"""The three stages end to end on a tiny model (CPU, fp32): align -> pretrain -> sft.

Each stage trains from a manifest made here, its loss falls, its export loads with
``from_pretrained`` and generates; pretrain takes the aligned encoder (with its BatchNorm
statistics) and puts LoRA on q_proj/v_proj only, sft on every linear decoder layer. The
probe separates encoders: the aligned one beats the random-weight one it started from.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from midashenglm.training.recipe import Recipe
from tests.training_helpers import metric_rows, train_config, write_caption_manifest, write_clips

FAST = ("data.max_batch_size=4", "checkpoint.every_steps=0")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return write_caption_manifest(tmp_path_factory.mktemp("pulses"), n=64)


@pytest.fixture(scope="module")
def random_init(tmp_path_factory, processor) -> Path:
    """A random-weight model as ``midashenglm init`` writes it (BatchNorm at its defaults)."""
    from tests.conftest import make_model

    model = make_model(processor, seed=0)
    model.audio_encoder.init_bn.reset_parameters()
    model.audio_encoder.init_bn.reset_running_stats()
    path = tmp_path_factory.mktemp("random-init")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def aligned(tmp_path_factory, random_init, manifest) -> Path:
    run = tmp_path_factory.mktemp("align")
    cfg = train_config("align", run, random_init, manifest, "training.max_steps=80",
                       "optimizer.lr=3e-3", "data.max_batch_size=8", "checkpoint.every_steps=0")
    assert Recipe(cfg, progress=False).run() == run / "model"
    return run


def _loads_and_generates(folder: Path) -> None:
    """The export loads as the published layout (processor too) and generates."""
    from midashenglm.modeling.model import MiDashengLM
    from midashenglm.processing import MiDashengLMProcessor

    model, processor = MiDashengLM.from_pretrained(folder), MiDashengLMProcessor.from_pretrained(folder)
    assert not any("lora" in k or "base_layer" in k for k in model.state_dict())
    conv = [{"role": "user", "content": [
        {"type": "audio", "audio": torch.zeros(16000).numpy(), "sampling_rate": 16000},
        {"type": "text", "text": "Write an audio caption describing the sound"}]}]
    batch = processor.apply_chat_template(conv, tokenize=True, add_generation_prompt=True)
    tokens = model.generate(**batch, max_new_tokens=4, do_sample=False)
    assert 1 <= tokens.shape[1] <= 4


def test_align_loss_falls_and_export_generates(aligned):
    losses = list(metric_rows(aligned).values())
    assert len(losses) == 80
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5, losses
    _loads_and_generates(aligned / "model")
    # The checkpoint of the last step holds the full trained model (align trains everything).
    state = torch.load(aligned / "checkpoints" / "step-00000080" / "model.pt", weights_only=True)
    assert "audio_encoder.init_bn.running_mean" in state
    assert any(k.startswith("decoder.") for k in state)


def test_pretrain_takes_aligned_encoder_and_puts_lora_on_q_v(aligned, tiny_checkpoint, manifest,
                                                             tmp_path, capfd):
    from midashenglm.modeling.model import MiDashengLM

    cfg = train_config("pretrain", tmp_path, tiny_checkpoint, manifest, "training.max_steps=3",
                       f"model.encoder_from={aligned / 'model'}", *FAST)
    recipe = Recipe(cfg, progress=False)
    recipe.setup()
    err = capfd.readouterr().err
    layers = recipe.model.decoder.get_base_model().config.num_hidden_layers
    assert f"LoRA adapters on {2 * layers} modules: q_proj x{layers}, v_proj x{layers}" in err
    assert "decoder 0/" in err and "audio_encoder " in err
    aligned_model = MiDashengLM.from_pretrained(aligned / "model")
    for key, value in aligned_model.audio_encoder.state_dict().items():
        assert torch.equal(recipe.model.audio_encoder.state_dict()[key], value), key
    trainable = {n.split(".")[0] for n, p in recipe.model.named_parameters() if p.requires_grad}
    assert trainable == {"audio_encoder", "audio_projector", "decoder"}  # decoder: adapters only
    assert all(".lora_" in n for n, p in recipe.model.decoder.named_parameters() if p.requires_grad)
    out = recipe.train()
    recipe.log.close()
    losses = list(metric_rows(tmp_path).values())
    assert losses[-1] < losses[0], losses
    _loads_and_generates(out)  # adapters merged: the published layout


def test_sft_puts_lora_on_every_linear_decoder_layer(tiny_checkpoint, manifest, tmp_path, capfd):
    # A corrupt clip among the samples, a validation set, TensorBoard on.
    corrupt = manifest.parent / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    rows = manifest.read_text().splitlines()[:6]
    rows.append(json.dumps({"id": "broken", "audio": "corrupt.wav", "prompt": "p", "answer": "a",
                            "duration": 1.0}))
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(rows) + "\n")
    validation = tmp_path / "validation.jsonl"
    validation.write_text("\n".join(manifest.read_text().splitlines()[6:10]) + "\n")
    for row_file in (train, validation):  # relative audio paths: point them at the clips
        text = row_file.read_text().replace('"audio": "', f'"audio": "{manifest.parent}/')
        row_file.write_text(text)
    cfg = train_config("sft", tmp_path / "run", tiny_checkpoint, train, "training.max_steps=3",
                       f"data.validation={validation}", "validation.every_steps=3",
                       "logging.tensorboard=true", "data.max_batch_size=7", "checkpoint.every_steps=0")
    recipe = Recipe(cfg, progress=False)
    recipe.setup()
    err = capfd.readouterr().err
    from midashenglm.modeling.model import MiDashengLM

    decoder = MiDashengLM.from_pretrained(tiny_checkpoint).decoder  # before peft wrapped it
    linear = {name.rsplit(".", 1)[-1] for name, m in decoder.named_modules()
              if isinstance(m, torch.nn.Linear) and name != "lm_head"}
    assert linear == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    from midashenglm.training.lora import lora_targets

    layers = decoder.config.num_hidden_layers
    assert lora_targets(recipe.model) == {name: layers for name in linear}
    assert f"LoRA adapters on {len(linear) * layers} modules" in err
    out = recipe.train()
    recipe.log.close()
    run = tmp_path / "run"
    losses = list(metric_rows(run).values())
    assert losses[-1] < losses[0], losses
    _loads_and_generates(out)
    skipped = [json.loads(line) for line in (run / "skipped.jsonl").read_text().splitlines()]
    assert {r["id"] for r in skipped} == {"broken"} and len(skipped) == 3  # once per step: it is re-drawn
    assert skipped[0]["source"] == f"{train}:7"
    assert set(metric_rows(run, "skipped").values()) == {1}  # counted in every step's metrics
    assert set(metric_rows(run, "val_loss")) == {3}
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))


def test_probe_scores_the_aligned_encoder_above_the_random_one(aligned, random_init, tmp_path):
    from midashenglm.training.probe import ProbeRow, load_encoder, run_probe

    # Held-out clips (another seed): the class is the pulse rate, which the captions named.
    rows = [ProbeRow(str(path), kind) for path, kind, _ in write_clips(tmp_path, 300, seed=7)]
    random_weights = run_probe(load_encoder(random_init), rows, "pulse rate", epochs=60)
    trained = run_probe(load_encoder(aligned / "model"), rows, "pulse rate", epochs=60)
    assert trained.test_rows == random_weights.test_rows  # the same split
    # Measured over three random inits: random 0.80-0.92, aligned 0.95-0.98 (300 clips, 60 held out).
    assert trained.score > random_weights.score + 0.02, (trained.score, random_weights.score)
    assert trained.score >= 0.9


def test_answer_loss_equals_transformers_loss_with_logits_only_at_answers(processor, tiny_model):
    from midashenglm.training.recipe import answer_loss
    from tests.conftest import clip

    def audio(seconds, seed):
        return {"type": "audio", "audio": clip(seconds, seed), "sampling_rate": 16000}

    two_turns = [{"role": "user", "content": [audio(1.0, 0), {"type": "text", "text": "hi"}]},
                 {"role": "assistant", "content": "a dog barks"},
                 {"role": "user", "content": [audio(2.0, 1), {"type": "text", "text": "and?"}]},
                 {"role": "assistant", "content": "a cat"}]
    one_turn = [{"role": "user", "content": [audio(3.0, 2), {"type": "text", "text": "hello there"}]},
                {"role": "assistant", "content": "rain on a roof, loud"}]
    batch = dict(processor(conversations=[two_turns, one_turn], labels=True, return_tensors="pt",
                           padding=True, add_generation_prompt=False))
    n = int((batch["labels"] != -100).sum())
    expected = tiny_model(**batch, num_items_in_batch=n).loss * n
    seen = []
    hook = tiny_model.decoder.lm_head.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
    try:
        got = answer_loss(tiny_model, batch)
    finally:
        hook.remove()
    assert float(got) == pytest.approx(float(expected), rel=1e-6)
    keep = int((batch["labels"][:, 1:] != -100).any(0).sum())
    assert seen == [keep] and keep < batch["input_ids"].shape[1] / 2


def test_a_run_folder_is_not_reused_and_all_bad_data_is_an_error(tiny_checkpoint, manifest, tmp_path):
    from midashenglm.errors import UserError

    run = tmp_path / "run"
    Recipe(train_config("sft", run, tiny_checkpoint, manifest, "training.max_steps=1"), progress=False).run()
    with pytest.raises(UserError, match="pass --resume to continue it"):
        Recipe(train_config("sft", run, tiny_checkpoint, manifest, "training.max_steps=1"), progress=False).run()
    with pytest.raises(UserError, match="is the starting model.checkpoint"):
        Recipe(train_config("sft", tmp_path / "other", tiny_checkpoint, manifest,
                            f"export_dir={tiny_checkpoint}"), progress=False).run()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps({"audio": f"missing{i}.wav", "answer": "x", "duration": 1.0}) + "\n"
                           for i in range(3)))
    with pytest.raises(UserError, match="no sample could be used"):
        Recipe(train_config("sft", tmp_path / "bad-run", tiny_checkpoint, bad, "training.max_steps=2"),
               progress=False).run()
    assert not (tmp_path / "bad-run" / "model").exists()
