"""``midashenglm curate`` end to end: a folder of generated clips -> metadata, captions, QA,
a training manifest; resumable; a flaky LLM endpoint loses nothing; Ray equals local."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import need
from tests.fake_llm_server import FakeLLM, chaos_rule
from tests.training_helpers import cli

SIGNAL_AND_TAGS = ["loudness", "peak", "silence", "bandwidth", "snr", "tempo", "key", "vad",
                   "tags", "music"]


def _espeak(path: Path, text: str, voice: str = "en-us") -> None:
    need(shutil.which("espeak-ng") is not None, "espeak-ng is not installed")
    subprocess.run(["espeak-ng", "-v", voice, "-s", "160", "-w", str(path), text], check=True)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """Speech (two voices), a plucked chord, noise, a corrupt file and a nested folder."""
    folder = tmp_path_factory.mktemp("clips")
    (folder / "speech").mkdir()
    _espeak(folder / "speech" / "man.wav", "The weather today is sunny with a light breeze.")
    _espeak(folder / "speech" / "woman.wav", "Please remember to close the door when you leave.",
            "en-us+f3")
    rate = 16000
    t = np.arange(int(3 * rate)) / rate
    rng = np.random.default_rng(0)
    chord = sum(np.sin(2 * np.pi * f * t) * np.exp(-3 * (t % 0.75)) for f in (261.6, 329.6, 392.0))
    sf.write(folder / "chord.wav", (0.2 * chord).astype(np.float32), rate)
    sf.write(folder / "noise.wav", (0.1 * rng.standard_normal(3 * rate)).astype(np.float32), rate)
    (folder / "broken.wav").write_bytes(b"RIFF not really a wave file")
    return folder


def _config(**overrides):
    from midashenglm.curation.pipeline import CurationConfig

    return CurationConfig(**{"experts": SIGNAL_AND_TAGS, "batch_size": 2, **overrides})


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_offline_folder_to_captions_qa_and_a_training_manifest(clips, tmp_path):
    from midashenglm.curation.pipeline import curate
    from midashenglm.data.manifest import read_training_manifest

    out = tmp_path / "out"
    # Every expert that can run here (Whisper, speakers and gender included).
    report = curate(clips, out, _config(experts=None))
    assert (report.total, report.captioned, report.failed) == (5, 4, 1)
    assert set(report.unavailable) <= {"emotion", "age"}  # no weights offline: said, skipped
    captions = {r["id"]: r for r in _rows(out / "captions.jsonl")}
    errors = _rows(out / "errors.jsonl")
    assert set(captions) | {e["id"] for e in errors} == {
        "broken.wav", "chord.wav", "noise.wav", "speech/man.wav", "speech/woman.wav"}
    assert errors[0]["id"] == "broken.wav" and errors[0]["stage"] == "load"
    assert [r["category"] for r in captions.values()] == [
        "pure music", "pure sound", "pure speech", "pure speech"]
    meta = {r["id"]: r for r in _rows(out / "metadata.jsonl")}
    man = meta["speech/man.wav"]["experts"]
    assert man["asr"]["language"] == "en" and "weather" in man["asr"]["transcript"].lower()
    assert man["gender"]["gender"] == "male"
    assert meta["speech/woman.wav"]["experts"]["gender"]["gender"] == "female"
    assert meta["chord.wav"]["experts"]["key"]["key"] == "C"
    assert set(meta["chord.wav"]["versions"]) >= {"loudness", "tags", "vad", "asr"}
    for r in captions.values():
        assert r["writer"]["grounding"]["ok"] and r["caption"]
        assert len(r["qa"]) == 5 and r["consistency"]["passed"]
    assert "English" in captions["speech/man.wav"]["caption"]
    samples = read_training_manifest(out / "train.jsonl")
    assert len(samples) == 4 * 6  # a caption and five QA pairs per clip
    assert {s.task for s in samples} >= {"caption", "qa/direct perception"}
    assert all(Path(s.audio_parts[0]["path"]).is_file() for s in samples)
    run = json.loads((out / "run.json").read_text())
    assert run["writer"]["name"] == "template" and run["failed"] == 1

    # Resumed: finished clips are not recomputed; only the failed one is tried again.
    before = (out / "metadata.jsonl").read_bytes()
    again = curate(clips, out, _config(experts=None))
    assert (again.done_before, again.processed, again.failed) == (4, 1, 1)
    assert (out / "metadata.jsonl").read_bytes() == before
    assert len(read_training_manifest(out / "train.jsonl")) == 24

    # A stricter threshold filters the finished clips again from their stored scores.
    strict = curate(clips, out, _config(experts=None, threshold=0.99))
    assert strict.processed == 1 and strict.filtered == 4
    assert (out / "train.jsonl").read_text() == ""
    assert not any(r["consistency"]["passed"] for r in _rows(out / "captions.jsonl"))


def test_a_flaky_endpoint_loses_no_clip_and_the_cache_makes_the_rerun_free(clips, tmp_path):
    from midashenglm.curation.pipeline import curate

    cache = tmp_path / "llm.sqlite"
    config = _config(llm_timeout=1.0, llm_retries=2, llm_backoff=0.01, cache=str(cache),
                     llm_concurrency=4)
    # The n-th time a prompt is seen decides: 500, a hang past the timeout, empty or
    # malformed answers, refusals, ungrounded inventions ("solo guitar", "French").
    with FakeLLM(rule=chaos_rule(seed=3), hang=2.0) as server:
        report = curate(clips, tmp_path / "a", _config(**{**config.__dict__, "writer": server.url}))
        first = server.count
        behaviours = {r["behaviour"] for r in server.requests}
        captions = {r["id"]: r for r in _rows(tmp_path / "a" / "captions.jsonl")}
        errors = {r["id"]: r for r in _rows(tmp_path / "a" / "errors.jsonl")}
        assert set(captions) | set(errors) == {
            "broken.wav", "chord.wav", "noise.wav", "speech/man.wav", "speech/woman.wav"}
        assert report.captioned == len(captions) >= 2
        assert {"500", "ungrounded"} <= behaviours
        for r in captions.values():  # grounded, or the template writer's after rejections
            assert r["writer"]["grounding"]["ok"]
            for rejected in r["writer"]["rejected"]:
                assert rejected["unsupported"]
        for r in errors.values():
            assert r["stage"] in ("load", "write") and r["error"]

        # The same clips into a new folder with the same cache: no request is made again
        # for what was answered, and the files are the same.
        curate(clips, tmp_path / "b", _config(**{**config.__dict__, "writer": server.url}))
        repeated = [r for r in server.requests[first:] if r["kind"] != "models"]
        assert all(_prompt_of(r) not in _answered(server.requests[:first]) for r in repeated)
        assert (tmp_path / "b" / "captions.jsonl").read_text() == (
            tmp_path / "a" / "captions.jsonl").read_text()


def _prompt_of(request: dict) -> str:
    return json.dumps(request["messages"], sort_keys=True)


def _answered(requests: list[dict]) -> set[str]:
    return {_prompt_of(r) for r in requests if r["behaviour"] in ("ok", "think", "ungrounded")}


def test_ray_and_local_write_identical_files(clips, tmp_path):
    from midashenglm.curation.pipeline import curate

    need(__import__("importlib").util.find_spec("ray") is not None, "ray is not installed")
    config = _config(experts=SIGNAL_AND_TAGS + ["asr", "gender"])
    curate(clips, tmp_path / "local", config)
    import ray

    try:
        curate(clips, tmp_path / "ray", config, use_ray=True)
    finally:
        ray.shutdown()  # the worker processes go; the rest of the suite gets its CPUs back
    for name in ("metadata.jsonl", "captions.jsonl", "qa.jsonl", "errors.jsonl", "train.jsonl"):
        assert (tmp_path / "ray" / name).read_text() == (tmp_path / "local" / name).read_text(), name


def test_the_command_line(clips, tmp_path):
    out = tmp_path / "out"
    done = cli("curate", str(clips), "--out", str(out), "--experts", "loudness,tags,music",
               "--no-qa", "--consistency", "none", "--shards")
    assert done.stdout.strip().endswith("train.jsonl")
    assert "1 failed" in done.stderr and "clips/s" in done.stderr
    manifest = _rows(out / "shards" / "manifest.jsonl")
    assert len(manifest) == 4 and (out / "shards" / "train-000000.tar").is_file()
    for args, message in [
        (("curate", str(tmp_path / "nowhere"), "--out", str(out)), "no such file"),
        (("curate", str(clips), "--out", str(out), "--experts", "lodness"), "unknown expert"),
        (("curate", str(clips), "--out", str(out), "--writer", "gpt"), "--writer 'gpt'"),
        (("curate", str(clips), "--out", str(out), "--consistency", "bogus"), "consistency"),
        (("curate", str(clips), "--out", str(out), "--tagger", "bogus"), "expert tags cannot run"),
        (("curate", str(clips), "--out", str(out), "--language", "xx"), "no language 'xx'"),
        (("curate", str(clips), "--out", str(clips / "chord.wav")), "a file, not a folder"),
        (("curate", str(clips), "--out", str(tmp_path / "r"), "--ray=127.0.0.1:1"),
         "no Ray cluster answers"),
    ]:
        bad = cli(*args, check=False)
        assert bad.returncode == 2 and message in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "r").exists()  # a refused run writes nothing
