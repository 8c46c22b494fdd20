"""The engine's shared decoder passes against each decoder's own transformers forward."""

from __future__ import annotations

import pytest
import torch

from midashenglm.inference import Engine, Request, SamplingParams
from midashenglm.inference.kv_cache import make_kv_cache
from midashenglm.inference.segment_runner import Segment, SegmentRunner, forward_segments
from tests.conftest import clip, make_model
from tests.test_inference_engine import alone, conversation, record_passes
from tests.test_model import QWEN3_TINY

LLAMA_TINY = {
    "model_type": "llama", "vocab_size": 512, "hidden_size": 64, "intermediate_size": 128,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 1,
    "max_position_embeddings": 1024, "attention_bias": True, "rms_norm_eps": 1e-5,
}
MISTRAL_TINY = {**LLAMA_TINY, "model_type": "mistral", "attention_bias": False, "sliding_window": None,
                "num_key_value_heads": 2}
DECODERS = {"qwen2": None, "qwen3": QWEN3_TINY, "llama": LLAMA_TINY, "mistral": MISTRAL_TINY}


@pytest.fixture(params=sorted(DECODERS))
def family_model(request, processor):
    return make_model(processor, DECODERS[request.param], seed=3)


def _prompts(decoder, rows: list[int], seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded random prompts of the given lengths: embeddings, 2-D mask, positions."""
    generator = torch.Generator().manual_seed(seed)
    width = max(rows)
    ids = torch.randint(0, decoder.config.vocab_size, (len(rows), width), generator=generator)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, n in enumerate(rows):
        mask[i, width - n:] = 1
    return decoder.get_input_embeddings()(ids), mask, (mask.cumsum(-1) - 1).clamp_min(0)


@torch.inference_mode()
def test_one_pass_equals_separate_transformers_forwards(family_model):
    """A running batch's decode step and a new batch's prefill in one pass give the logits and
    KV caches of two separate transformers forwards."""
    decoder = family_model.decoder
    assert SegmentRunner.supports(decoder)
    runner = SegmentRunner(decoder)
    old_embeds, old_mask, old_pos = _prompts(decoder, [9, 5, 7], seed=0)
    caches = {}
    for name, which in (("ours", runner), ("transformers", None)):
        cache = make_kv_cache(decoder.config, 32)
        (first,) = forward_segments(decoder, which, [Segment(old_embeds, old_pos, old_mask, cache)])
        caches[name] = (cache, first)
    torch.testing.assert_close(caches["ours"][1], caches["transformers"][1], atol=1e-5, rtol=1e-5)

    step_ids = caches["transformers"][1].argmax(-1, keepdim=True)
    step_mask = torch.cat([old_mask, torch.ones(3, 1, dtype=torch.long)], dim=-1)
    new_embeds, new_mask, new_pos = _prompts(decoder, [4, 11], seed=1)
    results = {}
    for name, which in (("ours", runner), ("transformers", None)):
        cache = caches[name][0]
        fresh = make_kv_cache(decoder.config, 16)
        segments = [Segment(decoder.get_input_embeddings()(step_ids), old_pos[:, -1:] + 1, step_mask, cache),
                    Segment(new_embeds, new_pos, new_mask, fresh)]
        results[name] = (forward_segments(decoder, which, segments), cache, fresh)
    for ours, theirs in zip(results["ours"][0], results["transformers"][0], strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    for index in (1, 2):
        ours, theirs = results["ours"][index], results["transformers"][index]
        for a, b in zip(ours.layers, theirs.layers, strict=True):
            # Padding columns hold whatever a padded query computed: compare real columns.
            torch.testing.assert_close(a.keys[..., -4:, :], b.keys[..., -4:, :], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(a.values[..., -4:, :], b.values[..., -4:, :], atol=1e-5, rtol=1e-5)


@torch.inference_mode()
def test_weight_first_products_for_few_rows(family_model):
    """Decode steps of up to 8 rows may multiply ``W @ x.T`` (faster on some CPUs): the same
    logits as the transformers forward, either way; more rows take the usual path."""
    decoder = family_model.decoder
    embeds, mask, positions = _prompts(decoder, [6, 3, 5, 6], seed=2)
    ids = torch.tensor([[7], [8], [9], [10]])
    step_mask = torch.cat([mask, torch.ones(4, 1, dtype=torch.long)], dim=-1)
    logits = {}
    for name, runner in (("transformers", None), ("usual", SegmentRunner(decoder, weight_first=False)),
                         ("weight first", SegmentRunner(decoder, weight_first=True))):
        cache = make_kv_cache(decoder.config, 16)
        forward_segments(decoder, runner, [Segment(embeds, positions, mask, cache)])
        (logits[name],) = forward_segments(decoder, runner, [
            Segment(decoder.get_input_embeddings()(ids), positions[:, -1:] + 1, step_mask, cache)])
    for name in ("usual", "weight first"):
        torch.testing.assert_close(logits[name], logits["transformers"], atol=1e-5, rtol=1e-5)
    runner = SegmentRunner(decoder, weight_first=True)
    layer = decoder.model.layers[0].mlp.gate_proj
    for rows in (1, 8, 9):
        x = torch.randn(rows, layer.in_features)
        torch.testing.assert_close(runner._linear(layer, x), layer(x), atol=1e-5, rtol=1e-5)
    assert SegmentRunner(decoder).weight_first in (True, False)  # measured on this machine


def test_engine_on_each_family_equals_alone(family_model, processor):
    """Requests joining a running batch (their prefill carrying its decode step) still get the
    tokens of each request run alone, whatever the decoder family."""
    answers = [12, 2, 3, 9, 1, 6]
    convs = [conversation(clip(0.4 + 0.9 * i, seed=i)) for i in range(len(answers))]
    requests = [Request(c, SamplingParams(max_new_tokens=n, ignore_eos=True)) for c, n in zip(convs, answers, strict=True)]
    engine = Engine(family_model, processor, max_num_seqs=2)
    passes = record_passes(engine)
    results = engine.generate(requests)
    assert [r.token_ids for r in results] == [alone(family_model, processor, c, n)[:n] for c, n in
                                              zip(convs, answers, strict=True)]
    assert engine.stats["steps_in_prefill"] >= 3 and any(len(p) == 2 for p in passes)
    # The same with decode steps multiplied weight first (what a CPU that favours it runs).
    other = Engine(family_model, processor, max_num_seqs=2)
    other.model_runner.segment_runner.weight_first = not engine.model_runner.segment_runner.weight_first
    assert [r.token_ids for r in other.generate(requests)] == [r.token_ids for r in results]


def test_decoders_outside_the_family_run_their_own_forward(processor):
    model = make_model(processor, {**LLAMA_TINY, "model_type": "qwen2", "use_sliding_window": True,
                                   "sliding_window": 4, "max_window_layers": 0,
                                   "layer_types": ["sliding_attention"] * 2})
    assert not SegmentRunner.supports(model.decoder)
    engine = Engine(model, processor)
    assert engine.model_runner.segment_runner is None
    conv = conversation(clip(1.5))
    (result,) = engine.generate([Request(conv, SamplingParams(max_new_tokens=4, ignore_eos=True))])
    assert result.token_ids == alone(model, processor, conv, 4)[:4]


def test_newcomers_sharing_a_clip_join_with_the_running_step(tiny_model, processor):
    """Two questions about one clip join a running row together: their shared prefix, their
    own suffixes and the running row's step all come out as each request alone."""
    long, short = clip(9.0, seed=1), clip(0.7, seed=2)
    convs = [conversation(long), conversation(clip(8.0, seed=3)), conversation(clip(7.0, seed=4)),
             conversation(short, "What is it?"), conversation(short, "Is there speech?")]
    answers = [15, 2, 2, 6, 5]
    requests = [Request(c, SamplingParams(max_new_tokens=n, ignore_eos=True)) for c, n in
                zip(convs, answers, strict=True)]
    engine = Engine(tiny_model, processor, max_num_seqs=3)
    passes = record_passes(engine)
    results = engine.generate(requests)
    assert [r.token_ids for r in results] == [alone(tiny_model, processor, c, n)[:n] for c, n in
                                              zip(convs, answers, strict=True)]
    assert engine.stats["shared_prefix_rows"] == 2 and engine.stats["steps_in_prefill"] == 1
    # The joining pass: the shared prefix (one unit) with the running row's step beside it.
    assert [(1, 1)] in [p[1:] for p in passes if len(p) == 2]


@pytest.mark.parametrize("after_writing", [False, True])
def test_a_failing_join_pass_loses_no_request(tiny_model, processor, after_writing):
    """A pass that joins newcomers and steps the running rows fails (as out of memory would),
    before or after writing the running rows' KV cache: every request still gets the tokens
    it gets alone (the running rows start over alone if their cache was touched)."""
    answers = [9, 2, 5, 4]
    convs = [conversation(clip(3.0 - 0.5 * i, seed=i)) for i in range(len(answers))]
    requests = [Request(c, SamplingParams(max_new_tokens=n, ignore_eos=True)) for c, n in
                zip(convs, answers, strict=True)]
    engine = Engine(tiny_model, processor, max_num_seqs=2)
    forward, failed = engine.model_runner.forward, []

    def failing(segments):
        if len(segments) == 2 and not failed:
            failed.append(True)
            if after_writing:
                forward(segments)
            raise RuntimeError("out of memory (simulated)")
        return forward(segments)

    engine.model_runner.forward = failing
    results = engine.generate(requests)
    assert failed and all(r.error is None for r in results)
    assert [r.token_ids for r in results] == [alone(tiny_model, processor, c, n)[:n] for c, n in
                                              zip(convs, answers, strict=True)]
    assert engine.stats["preempted_batches"] == 1
