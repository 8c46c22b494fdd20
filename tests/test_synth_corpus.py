"""``midashenglm data synth``: balanced categories, truth in the manifest, the same corpus from
the same seed, and an interrupted run continued."""

from __future__ import annotations

import json
import shutil

import soundfile as sf

from tests.conftest import need
from tests.training_helpers import cli


def _need_sources() -> None:
    for tool in ("espeak-ng", "fluidsynth", "flite"):
        need(shutil.which(tool) is not None, f"{tool} is not installed (make system-deps)")


def test_a_corpus_holds_every_category_with_its_truth_and_repeats(tmp_path):
    from midashenglm.data.synth.corpus import CATEGORIES, read_truth, synthesize

    _need_sources()
    manifest = synthesize(tmp_path / "a", split="train", clips=12, seed=3)
    rows = read_truth(manifest)
    assert [r["category"] for r in rows] == list(CATEGORIES) * 2
    for r in rows:
        info = sf.info(tmp_path / "a" / r["audio"])
        assert info.samplerate == 16000 and abs(info.duration - r["duration"]) < 1e-3
        assert 1.0 <= r["duration"] <= 12.0
        kind = r["category"].split()[1]
        assert r[kind] is not None  # the main event's truth
        assert (r["background"] is not None) == r["category"].startswith("mixed")
        assert set(r["acoustics"]) == {"rt60_s", "bandwidth_hz", "clipped", "noise"}
    speech = [r["speech"] for r in rows if r["speech"]]
    assert all(s["text"] and s["language"] and s["gender"] in ("male", "female") for s in speech)
    music = [r["music"] for r in rows if r["music"]]
    assert all(m["source"] for m in music)

    # The same seed makes the same corpus; a run cut short continues to the same end.
    lines = manifest.read_text().splitlines()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "manifest.jsonl").write_text("\n".join(lines[:5]) + "\n")
    shutil.copytree(tmp_path / "a" / "clips", tmp_path / "b" / "clips")
    again = synthesize(tmp_path / "b", split="train", clips=12, seed=3)
    assert again.read_text() == manifest.read_text()
    first = read_truth(manifest)[7]
    assert (tmp_path / "b" / first["audio"]).read_bytes() == (
        tmp_path / "a" / first["audio"]).read_bytes()


def test_the_command(tmp_path):
    _need_sources()
    done = cli("data", "synth", "--out", str(tmp_path / "c"), "--clips", "3", "--split",
               "heldout")
    assert done.stdout.strip().endswith("manifest.jsonl")
    rows = [json.loads(x) for x in (tmp_path / "c" / "manifest.jsonl").read_text().splitlines()]
    assert [r["split"] for r in rows] == ["heldout"] * 3
    bad = cli("data", "synth", "--out", str(tmp_path / "d"), check=False)
    assert bad.returncode == 2 and "hours or as a number of clips" in bad.stderr
