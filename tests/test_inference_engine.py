"""The inference engine on the tiny model: batched == alone, caches, sampling, stops, threads."""

from __future__ import annotations

import copy
import threading

import numpy as np
import pytest
import soundfile as sf
import torch

from midashenglm.inference import Engine, Request, SamplingParams
from midashenglm.inference.sampling import TextStream
from midashenglm.processing import num_audio_tokens
from tests.conftest import clip

CAPTION = "Write an audio caption describing the sound"


def conversation(audio, question=CAPTION, system=None):
    part = {"type": "audio", "path": str(audio)} if isinstance(audio, str) else {"type": "audio", "audio": audio,
                                                                              "sampling_rate": 16000}
    messages = [{"role": "system", "content": system}] if system else []
    return [*messages, {"role": "user", "content": [part, {"type": "text", "text": question}]}]


def alone(model, processor, conv, max_new_tokens):
    """Greedy tokens of one request through plain model.generate (the reference)."""
    with torch.inference_mode():
        batch = processor.apply_chat_template(conv, tokenize=True)
        tokens = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)[0].tolist()
    eos = model.generation_config.eos_token_id
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


def record_passes(engine):
    """The rows of each segment of every decoder pass the engine makes, as (rows, new tokens)."""
    passes: list[list[tuple[int, int]]] = []
    forward = engine.model_runner.forward

    def recording(segments):
        passes.append([(s.rows, s.new) for s in segments])
        return forward(segments)

    engine.model_runner.forward = recording
    return passes


@pytest.fixture
def count_encoder(tiny_model):
    """Number of clips each encoder call received."""
    calls: list[int] = []
    handle = tiny_model.audio_encoder.register_forward_hook(
        lambda module, args, output: calls.append(args[0].shape[0]))
    yield calls
    handle.remove()


# Mixed lengths from 0.05 s (padded to 0.2 s) to 35 s: one to four 10.08 s encoder windows.
SECONDS = [0.05, 0.2, 1.3, 4.0, 10.08, 12.5, 35.0]


def test_batched_equals_alone_with_sharing_and_cache(tiny_model, processor, count_encoder):
    waves = [clip(s, seed=i) for i, s in enumerate(SECONDS)]
    convs = [conversation(w) for w in waves]
    # Several questions about two of the clips: their prefixes are shared in the batch.
    convs += [conversation(waves[6], q) for q in ("What is it?", "Is there speech?")]
    convs += [conversation(waves[2], q, system="Be brief.") for q in ("Where?", "Who?", "Why?")]
    requests = [Request(c, SamplingParams(max_new_tokens=12)) for c in convs]

    engine = Engine(tiny_model, processor, max_num_seqs=16)
    results = engine.generate(requests)
    expected = [alone(tiny_model, processor, c, 12) for c in convs]
    assert [r.token_ids for r in results] == expected
    assert all(r.error is None and r.completion_tokens == len(r.token_ids) for r in results)
    # The 35 s clip: caption + two questions; the 1.3 s clip with a system prompt: three.
    assert engine.stats["shared_prefix_rows"] == 6
    # Seven distinct clips (the 0.05 s and 0.2 s clips differ), each encoded once, in
    # encoder batches of similar lengths; the reference runs encode once per request after.
    engine_calls = engine.stats["encoder_calls"]
    assert sum(count_encoder[:engine_calls]) == engine.stats["encoded_clips"] == len(SECONDS)
    assert 1 < engine_calls < len(SECONDS)

    # Unbatched through the engine, with the cache warm, gives the same again.
    single = Engine(tiny_model, processor, max_num_seqs=1, enable_prefix_sharing=False)
    assert [r.token_ids for r in single.generate(requests)] == expected


def test_prefill_pads_little_on_mixed_lengths(tiny_model, processor):
    requests = [Request(conversation(clip(s, seed=i)), SamplingParams(max_new_tokens=3))
                for i, s in enumerate(SECONDS)]
    engine = Engine(tiny_model, processor)
    results = engine.generate(requests)
    assert engine.stats["batches"] == 1
    prompts = [r.prompt_tokens for r in results]
    # One padded prefill would compute 7 x 196 tokens; groups of similar length pad <= 25 %.
    assert engine.stats["prefill_tokens"] <= 1.25 * sum(prompts) < 0.5 * len(prompts) * max(prompts)
    one_by_one = Engine(tiny_model, processor, max_num_seqs=1).generate(requests)
    assert [r.token_ids for r in results] == [r.token_ids for r in one_by_one]


def test_bfloat16_model(tiny_model, processor):
    """bf16 rows in one batch give the tokens each gives alone (greedy: plain bf16
    model.generate; seeded sampling: the same request alone)."""
    model = copy.deepcopy(tiny_model).to(torch.bfloat16)
    convs = [conversation(clip(3.0)), conversation(clip(0.4, seed=3)), conversation(clip(7.0, seed=4))]
    sampled = Request(convs[1], SamplingParams(max_new_tokens=5, temperature=0.8, seed=1, ignore_eos=True))
    requests = [Request(convs[0], SamplingParams(max_new_tokens=5, ignore_eos=True)), sampled,
                Request(convs[2], SamplingParams(max_new_tokens=5, ignore_eos=True))]
    engine = Engine(model, processor)
    batched = engine.generate(requests)
    assert [r.error for r in batched] == [None] * 3
    assert batched[0].token_ids == alone(model, processor, convs[0], 5)
    assert batched[2].token_ids == alone(model, processor, convs[2], 5)
    assert batched[1].token_ids == Engine(model, processor).generate([sampled])[0].token_ids
    assert len(set(map(tuple, (r.token_ids for r in batched)))) == 3  # three different answers


def test_results_report_costs_and_long_audio(tiny_model, processor):
    engine = Engine(tiny_model, processor)
    short, long = engine.generate([Request(conversation(clip(s)), SamplingParams(max_new_tokens=4))
                                   for s in (1.0, 35.0)])
    assert long.audio_tokens == num_audio_tokens(35 * 16000) == 175
    assert short.audio_tokens == num_audio_tokens(16000) == 5
    batch = processor.apply_chat_template(conversation(clip(35.0)), tokenize=True)
    assert long.prompt_tokens == batch["input_ids"].shape[1]
    assert long.audio_seconds == pytest.approx(35.0)
    assert set(long.timings) >= {"encode", "prefill", "first_token", "decode", "total", "queue"}
    assert all(v >= 0 for v in long.timings.values())


def test_context_window_is_checked_and_answers_are_clamped(tiny_model, processor):
    engine = Engine(tiny_model, processor)
    engine.context_window = 100
    fits, too_long = engine.generate([
        Request(conversation(clip(1.0)), SamplingParams(max_new_tokens=500, ignore_eos=True)),
        Request(conversation(clip(35.0)), SamplingParams(max_new_tokens=5)),
    ])
    assert fits.finish_reason == "length" and fits.prompt_tokens + fits.completion_tokens == 100
    assert too_long.finish_reason == "error" and "context window is 100 tokens" in too_long.error
    assert "175 of them audio" in too_long.error


def test_a_bad_request_gets_an_error_and_the_others_go_on(tiny_model, processor, tmp_path):
    corrupt = tmp_path / "corrupt.wav"
    sf.write(corrupt, clip(2.0), 16000)
    corrupt.write_bytes(corrupt.read_bytes()[:200])  # header promises 2 s, holds a few samples
    good = conversation(clip(1.5, seed=3))
    requests = [
        Request(good, SamplingParams(max_new_tokens=6), request_id="good-1"),
        Request(conversation(str(tmp_path / "missing.wav")), request_id="missing"),
        Request(conversation(str(corrupt)), request_id="corrupt"),
        Request(conversation(np.zeros(0, np.float32)), request_id="empty"),
        Request([{"role": "user"}], request_id="no-content"),
        Request(good, SamplingParams(max_new_tokens=6), request_id="good-2"),
    ]
    results = Engine(tiny_model, processor).generate(requests)
    assert [r.request_id for r in results] == [r.request_id for r in requests]
    ok = [r for r in results if r.error is None]
    assert [r.request_id for r in ok] == ["good-1", "good-2"]
    assert ok[0].token_ids == ok[1].token_ids == alone(tiny_model, processor, good, 6)
    errors = {r.request_id: r.error for r in results if r.error is not None}
    assert "missing.wav" in errors["missing"]
    assert "corrupt.wav" in errors["corrupt"] and "truncated" in errors["corrupt"]
    assert "no audio samples" in errors["empty"]
    assert "'role' and 'content'" in errors["no-content"]
    assert all(r.finish_reason == "error" and r.text == "" for r in results if r.error)


def test_five_questions_encode_the_clip_once(tiny_model, processor, count_encoder):
    wave = clip(12.0, seed=5)
    questions = ["What is it?", "Is there speech?", "Which labels describe the sound?",
                 "What's the music instrument?", "Where was it recorded?"]
    requests = [Request(conversation(wave, q), SamplingParams(max_new_tokens=5)) for q in questions]
    engine = Engine(tiny_model, processor)
    first = engine.generate(requests)
    assert count_encoder == [1]
    assert engine.stats["shared_prefix_rows"] == 5
    # Asked again, one at a time: the encoder cache answers, the encoder does not run.
    again = [engine.generate([r])[0] for r in requests]
    assert count_encoder == [1] and engine.stats["encoder_cache_hits"] == 5
    assert [r.token_ids for r in again] == [r.token_ids for r in first]
    # Without the cache every call encodes.
    no_cache = Engine(tiny_model, processor, encoder_cache_items=0)
    no_cache.generate(requests[:1])
    no_cache.generate(requests[:1])
    assert count_encoder == [1, 1, 1]


def test_encoder_cache_is_bounded_lru(tiny_model, processor, count_encoder):
    engine = Engine(tiny_model, processor, encoder_cache_items=2, max_num_seqs=1)
    waves = [clip(1.0, seed=s) for s in range(3)]
    for w in waves:
        engine.generate([Request(conversation(w), SamplingParams(max_new_tokens=1))])
    assert len(engine.encoder_cache) == 2
    engine.generate([Request(conversation(waves[2]), SamplingParams(max_new_tokens=1))])
    assert len(count_encoder) == 3  # the newest clip was still cached
    engine.generate([Request(conversation(waves[0]), SamplingParams(max_new_tokens=1))])
    assert len(count_encoder) == 4  # the oldest one had been evicted


def test_prompt_heads_come_from_the_prefix_cache(tiny_model, processor):
    """The text before the audio (system prompt, user header) is computed once per distinct
    head and reused by later batches; results stay those of each request alone."""
    systems = ["You are a helpful language and speech assistant.", "Be brief.", None]
    convs = [conversation(clip(0.5 + i, seed=i), q, system=systems[i % 3])
             for i, q in enumerate(["What is it?", "Where?", "Who speaks?", "Any music?", "Why?", "How loud?"])]
    requests = [Request(c, SamplingParams(max_new_tokens=6)) for c in convs]
    expected = [alone(tiny_model, processor, c, 6) for c in convs]
    engine = Engine(tiny_model, processor, max_num_seqs=2)
    first = engine.generate(requests[:3])
    # One head computed per system prompt (and one for none: the user header alone).
    assert len(engine.prefix_cache) == 3 and engine.prefix_cache.misses == 3
    assert engine.stats["prefix_cache_hits"] == 0
    second = engine.generate(requests[3:])
    assert engine.prefix_cache.misses == 3  # nothing new to compute
    assert engine.stats["prefix_cache_hits"] == 3
    assert [r.token_ids for r in first + second] == expected
    # Disabled, every batch computes its heads again; results do not change.
    off = Engine(tiny_model, processor, prefix_cache_items=0, max_num_seqs=2)
    assert [r.token_ids for r in off.generate(requests)] == expected
    assert len(off.prefix_cache) == 0 and off.stats["prefix_cache_hits"] == 0
    # Bounded: least recently used heads leave first.
    small = Engine(tiny_model, processor, prefix_cache_items=2, max_num_seqs=1)
    small.generate(requests[:3])
    assert len(small.prefix_cache) == 2
    with pytest.raises(ValueError, match="prefix_cache_items"):
        Engine(tiny_model, processor, prefix_cache_items=-1)


def test_budgets_split_batches_without_changing_results(tiny_model, processor):
    waves = [clip(3.0, seed=s) for s in range(4)]
    requests = [Request(conversation(w), SamplingParams(max_new_tokens=6)) for w in waves]
    slots = processor.apply_chat_template(requests[0].conversation, tokenize=True)["input_ids"].shape[1] + 6
    wide = Engine(tiny_model, processor)
    narrow = Engine(tiny_model, processor, max_batch_audio_seconds=7.0)
    pairs = Engine(tiny_model, processor, max_kv_cache_tokens=2 * slots)  # KV slots of two rows
    singles = Engine(tiny_model, processor, max_kv_cache_tokens=2 * slots - 1)
    expected = [r.token_ids for r in wide.generate(requests)]
    for engine, batches in ((wide, 1), (narrow, 2), (pairs, 2), (singles, 4)):
        assert [r.token_ids for r in engine.generate(requests)] == expected
        assert engine.stats["batches"] == batches + (engine is wide)


def test_max_new_tokens_per_row_and_finished_rows_leave_the_batch(tiny_model, processor):
    engine = Engine(tiny_model, processor)
    passes = record_passes(engine)
    results = engine.generate([
        Request(conversation(clip(1.0)), SamplingParams(max_new_tokens=2, ignore_eos=True)),
        Request(conversation(clip(2.0)), SamplingParams(max_new_tokens=7, ignore_eos=True)),
    ])
    assert [r.completion_tokens for r in results] == [2, 7]
    assert all(r.finish_reason == "length" for r in results)
    # The prompts' common head (chat header up to the audio) once, prefill of the rest with
    # both rows, one step with both, then the short row is gone.
    assert [[rows for rows, _ in p] for p in passes] == [[1], [2], [2], [1], [1], [1], [1], [1]]


def test_waiting_requests_join_the_running_batch(tiny_model, processor):
    """Continuous batching: rows with short answers finish, waiting requests are prefilled and
    merged into the running batch mid-decode, and every request gets its tokens alone."""
    answers = [40, 2, 3, 1, 30, 4, 2, 6, 25]
    convs = [conversation(clip(0.5 + 0.7 * i, seed=i)) for i in range(len(answers))]
    requests = [Request(c, SamplingParams(max_new_tokens=n)) for c, n in zip(convs, answers, strict=True)]
    seeded = SamplingParams(max_new_tokens=12, temperature=0.8, top_p=0.9, seed=5, ignore_eos=True)
    requests.append(Request(conversation(clip(9.0, seed=11)), seeded))
    engine = Engine(tiny_model, processor, max_num_seqs=3)
    passes = record_passes(engine)
    results = engine.generate(requests)
    expected = [alone(tiny_model, processor, c, n) for c, n in zip(convs, answers, strict=True)]
    assert [r.token_ids for r in results[:-1]] == expected
    single = Engine(tiny_model, processor, max_num_seqs=1).generate(requests[-1:])[0]
    assert results[-1].token_ids == single.token_ids and len(single.token_ids) == 12
    assert all(r.finish_reason in ("stop", "length") for r in results)
    # Requests joined a batch that was decoding, which never held more than three rows.
    assert engine.stats["joined_running_batch"] >= 5
    assert engine.stats["batches"] < engine.stats["prefills"]
    assert max(sum(rows for rows, new in p if new == 1) for p in passes) == 3
    # The running rows' step rode along in the newcomers' prefill pass: no pass of its own.
    assert engine.stats["steps_in_prefill"] == engine.stats["prefills"] - engine.stats["batches"] > 0
    fused = [p for p in passes if len(p) == 2]
    assert fused and all(p[0][1] > 1 and p[1][1] == 1 for p in fused)
    # Static batches of three (by clip length) would decode until the longest answer of
    # each batch; joining keeps the batch full and needs fewer steps.
    made = [len(r.token_ids) for r in results]
    static_steps = sum(max(made[i:i + 3]) - 1 for i in range(0, len(made), 3))
    assert engine.stats["decode_steps"] < static_steps


def test_submitted_requests_join_a_running_request(tiny_model, processor):
    long = Request(conversation(clip(0.6, seed=1)), SamplingParams(max_new_tokens=60, ignore_eos=True))
    short = [Request(conversation(clip(1.0 + i, seed=2 + i)), SamplingParams(max_new_tokens=4),
                     request_id=str(i)) for i in range(3)]
    pieces: dict[str, list[str]] = {r.request_id: [] for r in short}
    with Engine(tiny_model, processor, max_num_seqs=2) as engine:
        first = engine.submit(long)
        later = [engine.submit(r, on_text=pieces[r.request_id].append) for r in short]
        results = [f.result(timeout=60) for f in later]
        assert first.result(timeout=60).completion_tokens == 60
    assert [r.token_ids for r in results] == [alone(tiny_model, processor, r.conversation, 4)
                                              for r in short]
    assert all("".join(pieces[r.request_id]) == r.text for r in results)
    assert engine.stats["joined_running_batch"] >= 2


def _fail_on_batched_steps(engine):
    """Every decoder pass fails that holds a decode step of more than one row (as out of
    memory would)."""
    forward = engine.model_runner.forward

    def failing(segments):
        if any(s.new == 1 and s.rows > 1 for s in segments):
            raise RuntimeError("out of memory (simulated)")
        return forward(segments)

    engine.model_runner.forward = failing


def test_a_failing_batch_runs_its_requests_alone(tiny_model, processor):
    convs = [conversation(clip(1.0 + i, seed=i)) for i in range(3)]
    requests = [Request(c, SamplingParams(max_new_tokens=n)) for c, n in zip(convs, (5, 2, 7), strict=True)]
    engine = Engine(tiny_model, processor)
    _fail_on_batched_steps(engine)
    results = engine.generate(requests)
    assert [r.error for r in results] == [None] * 3
    assert [r.token_ids for r in results] == [alone(tiny_model, processor, c, n)
                                              for c, n in zip(convs, (5, 2, 7), strict=True)]
    assert engine.stats["preempted_batches"] == 1 and engine.stats["joined_running_batch"] == 0


def test_eos_stops_a_row_unless_ignored(tiny_model, processor):
    engine = Engine(tiny_model, processor)
    request = Request(conversation(clip(2.0)), SamplingParams(max_new_tokens=12, ignore_eos=True))
    tokens = engine.generate([request])[0].token_ids
    engine.eos_token_ids = frozenset({tokens[3]})
    stop_at = tokens.index(tokens[3]) + 1
    stopped = engine.generate([Request(request.conversation, SamplingParams(max_new_tokens=12))])[0]
    assert stopped.token_ids == tokens[:stop_at] and stopped.finish_reason == "stop"
    assert engine.generate([request])[0].token_ids == tokens


def _first_plain_substring(text: str, start: int) -> str:
    for i in range(start, len(text) - 2):
        piece = text[i:i + 2]
        if piece.isascii() and piece.isprintable() and piece.strip() == piece:
            return piece
    pytest.skip("the random model wrote no plain two-character string")


def test_stop_strings_end_and_are_trimmed_and_streaming_matches(tiny_model, processor):
    engine = Engine(tiny_model, processor)
    conv = conversation(clip(2.5, seed=1))
    full = engine.generate([Request(conv, SamplingParams(max_new_tokens=30, ignore_eos=True))])[0]
    stop = _first_plain_substring(full.text, 4)
    cut = full.text.find(stop)
    sampling = SamplingParams(max_new_tokens=30, ignore_eos=True, stop=("\x00never", stop))
    result = engine.generate([Request(conv, sampling)])[0]
    assert result.text == full.text[:cut]
    assert result.finish_reason == "stop" and result.completion_tokens < 30
    assert result.token_ids == full.token_ids[: result.completion_tokens]

    pieces: list[str] = []
    with engine:
        streamed = engine.submit(Request(conv, sampling), on_text=pieces.append).result(timeout=60)
    assert "".join(pieces) == streamed.text == result.text


def test_seeded_sampling_is_reproducible_in_any_batch(tiny_model, processor):
    engine = Engine(tiny_model, processor)
    conv = conversation(clip(3.0, seed=2))
    seeded = SamplingParams(max_new_tokens=16, temperature=0.9, top_p=0.95, top_k=50, seed=7,
                            ignore_eos=True)
    alone_tokens = engine.generate([Request(conv, seeded)])[0].token_ids
    neighbours = [
        Request(conversation(clip(8.0, seed=4)), SamplingParams(max_new_tokens=9, temperature=1.2, seed=1)),
        Request(conv, seeded),
        Request(conversation(clip(0.5, seed=6)), SamplingParams(max_new_tokens=16)),
    ]
    batched = engine.generate(neighbours)
    assert batched[1].token_ids == alone_tokens
    other_seed = SamplingParams(max_new_tokens=16, temperature=0.9, top_p=0.95, top_k=50, seed=8,
                                ignore_eos=True)
    assert engine.generate([Request(conv, other_seed)])[0].token_ids != alone_tokens
    greedy = engine.generate([Request(conv, SamplingParams(max_new_tokens=16, ignore_eos=True))])[0]
    assert greedy.token_ids != alone_tokens


@pytest.mark.parametrize("params", [
    {"temperature": 1.0, "top_k": 1, "seed": 3},
    {"temperature": 1.5, "top_p": 1e-6, "seed": 3},
])
def test_degenerate_sampling_is_greedy(tiny_model, processor, params):
    engine = Engine(tiny_model, processor)
    conv = conversation(clip(1.7))
    greedy = engine.generate([Request(conv, SamplingParams(max_new_tokens=10, ignore_eos=True))])[0]
    sampled = engine.generate([Request(conv, SamplingParams(max_new_tokens=10, ignore_eos=True, **params))])[0]
    assert sampled.token_ids == greedy.token_ids


def test_submit_from_many_threads(tiny_model, processor):
    engine = Engine(tiny_model, processor, max_num_seqs=4)
    requests = [Request(conversation(clip(0.5 + i, seed=i)), SamplingParams(max_new_tokens=6),
                        request_id=str(i)) for i in range(6)]
    expected = [r.token_ids for r in Engine(tiny_model, processor).generate(requests)]
    futures: dict[int, object] = {}
    streams: dict[int, list[str]] = {i: [] for i in range(6)}

    def client(indices):
        for i in indices:
            futures[i] = engine.submit(requests[i], on_text=streams[i].append)

    threads = [threading.Thread(target=client, args=(range(k, 6, 3),)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results = {i: f.result(timeout=60) for i, f in futures.items()}
    engine.close()
    assert [results[i].token_ids for i in range(6)] == expected
    assert all("".join(streams[i]) == results[i].text for i in range(6))
    assert [results[i].request_id for i in range(6)] == [str(i) for i in range(6)]
    with pytest.raises(RuntimeError, match="closed"):
        engine.submit(requests[0])


def test_submit_reports_bad_audio_without_stopping_the_worker(tiny_model, processor, tmp_path):
    with Engine(tiny_model, processor) as engine:
        bad = engine.submit(Request(conversation(str(tmp_path / "nope.wav"))))
        good = engine.submit(Request(conversation(clip(1.0)), SamplingParams(max_new_tokens=3)))
        assert "nope.wav" in bad.result(timeout=60).error
        assert good.result(timeout=60).completion_tokens == 3


def test_text_stream_never_splits_a_character(tiny_tokenizer):
    text = "héllo wörld, 你好 🎵 ok"
    ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > len(text) // 2  # byte-level pieces: multi-byte characters span tokens
    stream = TextStream(tiny_tokenizer)
    pieces = [stream.push(t) for t in ids]
    assert "".join(pieces) == text == stream.text
    assert all("\ufffd" not in p for p in pieces)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"temperature": -0.1}, "temperature"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_k": -1}, "top_k"),
    ({"stop": ("",)}, "stop"),
    ({"seed": "1"}, "seed"),
])
def test_sampling_params_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)
    assert SamplingParams(stop="x").stop == ("x",)


def test_engine_from_pretrained(tiny_checkpoint, tiny_model, processor):
    engine = Engine.from_pretrained(tiny_checkpoint, device="cpu", max_num_seqs=3)
    assert engine.config.max_num_seqs == 3
    conv = conversation(clip(2.0))
    result = engine.generate([Request(conv, SamplingParams(max_new_tokens=5))])[0]
    assert result.token_ids == alone(tiny_model, processor, conv, 5)
