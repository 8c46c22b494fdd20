"""The Qwen2.5-Omni-style baseline: same numbers as transformers' own encoder, same decoder
and generation path as MiDashengLM, 25 audio tokens per second."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import WhisperFeatureExtractor
from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import Qwen2_5OmniAudioEncoder

from midashenglm.bench.baseline import (
    BaselineAudioLM,
    OmniAudioEncoder,
    baseline_audio_config,
    baseline_processor,
    baseline_token_count,
)
from midashenglm.bench.models import build_models, scale_spec
from midashenglm.bench.workloads import (
    FIGURE3_BINS,
    TASKS,
    conversations,
    make_prompt,
    mixed_lengths,
    realistic_requests,
)

from .conftest import clip

LENGTHS = [5000, 16000 * 3 + 123, 16000 * 7]  # 0.3 s (one partial chunk), 3 s, 7 s


@pytest.fixture(scope="module")
def encoders():
    torch.manual_seed(0)
    config = baseline_audio_config(
        d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128, output_dim=48
    )
    ours = OmniAudioEncoder(config).eval()
    config._attn_implementation = "sdpa"
    reference = Qwen2_5OmniAudioEncoder(config).eval()
    missing, unexpected = reference.load_state_dict(ours.state_dict(), strict=False)
    # Qwen's audio bos/eos embedding is not part of the encoder's computation.
    assert missing == ["audio_bos_eos_token.weight"] and unexpected == []
    return ours, reference


@pytest.fixture(scope="module")
def models():
    return build_models("tiny")


def test_front_end_equals_whisper_feature_extractor(encoders):
    ours, _ = encoders
    extractor = WhisperFeatureExtractor(feature_size=128)
    for i, n in enumerate(LENGTHS):
        wave = clip(n / 16000, seed=i)
        expected = extractor(wave, sampling_rate=16000, padding="longest", return_tensors="pt")
        mel, frames = ours.front_end(torch.from_numpy(wave)[None], torch.tensor([n]))
        assert int(frames[0]) == n // 160 == expected["input_features"].shape[-1]
        torch.testing.assert_close(mel[0], expected["input_features"][0], atol=1e-5, rtol=0)


def test_padded_batch_equals_transformers_encoder_per_clip(encoders):
    ours, reference = encoders
    waves = [torch.from_numpy(clip(n / 16000, seed=i)) for i, n in enumerate(LENGTHS)]
    batch = torch.zeros(len(waves), max(LENGTHS))
    for i, w in enumerate(waves):
        batch[i, : len(w)] = w
    with torch.inference_mode():
        outputs = ours(batch, torch.tensor(LENGTHS))
        for wave, out in zip(waves, outputs, strict=True):
            mel, frames = ours.front_end(wave[None], torch.tensor([len(wave)]))
            expected = reference(mel[0], feature_lens=frames).last_hidden_state
            assert out.shape == expected.shape == (baseline_token_count(len(wave)), 48)
            torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_baseline_shares_the_decoder_and_runs_midashenglm_generate(models):
    model, baseline = models.midashenglm, models.baseline
    assert baseline.decoder is model.decoder
    assert isinstance(baseline, type(model))
    assert type(baseline).generate is type(model).generate
    assert type(baseline).embed is type(model).embed

    prompt = make_prompt(models.processor, 30)
    convs = conversations(prompt, [1.0, 2.5], seed=3)
    ours = models.processor(conversations=convs)
    theirs = models.baseline_processor(conversations=convs)
    audio_ours = int((ours["input_ids"] == models.processor.audio_token_id).sum())
    audio_theirs = int((theirs["input_ids"] == models.processor.audio_token_id).sum())
    assert (audio_ours, audio_theirs) == (5 + 12, 25 + 62)  # 5 vs 25 tokens per second
    # Same prompt text around the audio: each row holds the same text tokens for both.
    for batch in (ours, theirs):
        audio_rows = (batch["input_ids"] == models.processor.audio_token_id).sum(-1)
        text_rows = batch["attention_mask"].sum(-1) - audio_rows
        assert text_rows.tolist() == [prompt.text_tokens] * 2
    with torch.inference_mode():
        embeds = baseline.encode_audio(theirs["input_values"], theirs["audio_length"])
        assert [e.shape[0] for e in embeds] == [25, 62]
        tokens = baseline.generate(**theirs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert tokens.shape == (2, 4)


def test_padding_to_30_s_costs_compute_but_not_decoder_tokens(models):
    base, padded = models.baseline, models.baseline_pad30
    assert padded.audio_encoder is base.audio_encoder and padded.pad_to_seconds == 30.0
    wave = torch.from_numpy(clip(4.5, seed=5))
    length = torch.tensor([len(wave)])
    with torch.inference_mode():
        plain = base.encode_audio(wave[None], length)[0]
        long = padded.encode_audio(wave[None], length)[0]
    assert plain.shape == long.shape == (baseline_token_count(len(wave)), plain.shape[1])
    # Attention never crosses a 2 s chunk, so the whole chunks before the clip's end are
    # unchanged by the silence after it (2 s = 50 tokens after the pool).
    torch.testing.assert_close(plain[:100], long[:100], atol=1e-5, rtol=1e-5)


def test_baseline_processor_counts_25_tokens_per_second(processor):
    proc = baseline_processor(processor)
    for n in (3200, 16000, 16161, 160_000, 480_000):
        assert proc.num_audio_tokens(n) == baseline_token_count(n)
    assert proc.num_audio_tokens(480_000) == 750 and processor.num_audio_tokens(480_000) == 150


def test_output_dim_must_match_the_decoder(models):
    config = baseline_audio_config(d_model=64, encoder_layers=1, encoder_attention_heads=4,
                                   encoder_ffn_dim=64, output_dim=7)
    with pytest.raises(ValueError, match="output_dim 7 must equal the decoder hidden size 64"):
        BaselineAudioLM(models.midashenglm.config, config, decoder=models.midashenglm.decoder)


def test_scale_specs_and_workloads():
    cpu = scale_spec("cpu").shapes()
    assert cpu["dasheng"].embed_dim == cpu["whisper"].d_model == 160
    assert (cpu["dasheng"].depth, cpu["whisper"].layers, cpu["decoder"].layers) == (8, 8, 7)
    assert cpu["decoder"].heads // cpu["decoder"].kv_heads == 7  # GQA as 28:4
    with pytest.raises(ValueError, match="unknown scale"):
        scale_spec("huge")

    lengths = mixed_lengths(2000, seed=0)
    assert lengths == mixed_lengths(2000, seed=0)
    lo, hi = FIGURE3_BINS[0][0], FIGURE3_BINS[-1][1]
    assert all(lo <= s <= hi for s in lengths)
    share_1_to_10 = np.mean([1.0 <= s <= 10.0 for s in lengths])
    assert 0.7 < share_1_to_10 < 0.85  # "the majority of samples are between 1 and 10 s"

    # The realistic task mix: the same clip lengths, tasks by their shares, answer lengths
    # in each task's range (ASR: 3 tokens per second of speech, +-20 %).
    requests = realistic_requests(2000, seed=0)
    assert requests == realistic_requests(2000, seed=0)
    assert [r.seconds for r in requests] == lengths
    tasks = {t.name: t for t in TASKS}
    for task in TASKS:
        share = np.mean([r.task == task.name for r in requests])
        assert abs(share - task.share) < 0.04
    for r in requests:
        task = tasks[r.task]
        assert r.question in task.questions
        if task.tokens_per_second:
            assert 0.8 * 3 * r.seconds - 1 <= r.new_tokens <= max(2, 1.2 * 3 * r.seconds + 1)
        else:
            assert task.answer_tokens[0] <= r.new_tokens <= task.answer_tokens[1]
    assert 10 < np.mean([r.new_tokens for r in requests]) < 30


def test_prompt_has_the_requested_text_tokens(models):
    for target in (20, 30, 45):
        prompt = make_prompt(models.processor, target)
        assert abs(prompt.text_tokens - target) <= 1
        batch = models.processor(conversations=[prompt.conversation(clip(2.0))])
        assert batch["input_ids"].shape[1] == prompt.text_tokens + 10


def test_engine_runs_the_baseline_when_installed(models):
    from midashenglm.bench.suite import engine_available

    if not engine_available():
        pytest.skip("midashenglm.inference.engine is not installed")
    from midashenglm.inference import Engine, Request, SamplingParams

    engine = Engine(models.baseline, models.baseline_processor, max_num_seqs=4, encoder_cache_items=0)
    prompt = make_prompt(models.processor, 30)
    params = SamplingParams(max_new_tokens=3, ignore_eos=True)
    results = engine.generate([Request(c, params) for c in conversations(prompt, [1.0, 3.0], seed=1)])
    assert [r.error for r in results] == [None, None]
    assert [r.audio_tokens for r in results] == [25, 75]
    assert [r.completion_tokens for r in results] == [3, 3]
