"""``midashenglm bench vllm`` without vLLM: the one-line error when its venv is missing, the
requests both engines get, the alternation, the ratios and the report (from made-up
measurements), the profile summary, and our side's worker process itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf
import torch

from midashenglm.bench import vllm as bv
from midashenglm.bench import vllm_worker
from midashenglm.bench.settings import Settings
from midashenglm.bench.workloads import mixed_lengths, realistic_requests

REPO = Path(__file__).resolve().parents[1]


def test_without_vllm_venv_says_how_to_build_it_and_exits_2(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "midashenglm.cli", "bench", "vllm", "--vllm-python", str(tmp_path / "none/bin/python"),
         "--out", str(tmp_path / "report")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env={**os.environ, "COLUMNS": "300"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "make vllm-env" in lines[0] and "--vllm-python" in lines[0]
    assert not (tmp_path / "report").exists()  # nothing started, nothing written


def test_the_default_vllm_python_is_the_venv_of_the_folder_run_from(tmp_path, monkeypatch):
    python = tmp_path / ".venv-vllm" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\n")
    python.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    assert bv.default_vllm_python() == python
    bv.check_vllm_python(python)  # an executable file passes


def test_workloads_are_the_bench_workloads():
    s = Settings.for_scale("cpu", torch.device("cpu"))
    work = bv.workloads(s)
    assert [w.key for w in work] == ["figure3", "realistic", "batch1", "batch2", "batch4", "batch8", "batch16"]
    fig3, real = work[0], work[1]
    assert list(fig3.seconds) == mixed_lengths(s.mixed_requests, s.seed)
    assert set(fig3.new_tokens) == {s.new_tokens} == {100}
    tasks = realistic_requests(s.realistic_requests, s.seed)
    assert list(real.new_tokens) == [t.new_tokens for t in tasks]
    assert list(real.questions) == [t.question for t in tasks]
    assert list(real.seconds) == mixed_lengths(s.realistic_requests, s.seed)  # the same lengths, other answers
    for w, batch in zip(work[2:], (1, 2, 4, 8, 16), strict=True):
        assert w.seconds == (30.0,) * batch and w.requests == batch
    assert all(w.system for w in work)  # the default system prompt, as every path of the package
    quick = bv.workloads(Settings.for_scale("cpu", torch.device("cpu"), quick=True))
    assert [w.key for w in quick] == ["figure3", "realistic", "batch1", "batch4"]
    assert quick[0].new_tokens == (10,) * 8


def test_ttft_asks_one_token_and_the_clips_are_16_bit_wav(tmp_path):
    w = bv.Workload("w", "w", (0.5, 2.25), ("a?", "b?"), (7, 3), "sys")
    wavs = bv.write_clips(tmp_path, w.seconds, seed=3)
    for path, seconds in zip(wavs, w.seconds, strict=True):
        info = sf.info(path)
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert info.frames == round(seconds * 16000)
    run = bv.requests_for(w, "run", wavs)
    ttft = bv.requests_for(w, "ttft", wavs)
    assert [r["max_tokens"] for r in run] == [7, 3] and [r["max_tokens"] for r in ttft] == [1, 1]
    assert [r["question"] for r in run] == ["a?", "b?"] and {r["system"] for r in ttft} == {"sys"}
    again = bv.write_clips(tmp_path / "again", w.seconds, seed=3)
    assert wavs[1].read_bytes() == again[1].read_bytes()  # a seed gives the same clip


def test_alternate_runs_ours_then_vllm_in_every_round():
    work = [bv.Workload("a", "A", (1.0,), ("q",), (5,), None), bv.Workload("b", "B", (2.0, 3.0), ("q", "q"), (5, 5), None)]
    calls = []

    def call(side, w, kind, r):
        calls.append((w.key, kind, r, side))
        return {"wall_s": 1.0, "output_tokens": 0}

    records = bv.alternate(work, 2, call)
    assert calls[:8] == [("a", "ttft", 0, "ours"), ("a", "ttft", 0, "vllm"), ("a", "ttft", 1, "ours"),
                         ("a", "ttft", 1, "vllm"), ("a", "run", 0, "ours"), ("a", "run", 0, "vllm"),
                         ("a", "run", 1, "ours"), ("a", "run", 1, "vllm")]
    assert len(records) == 16 and records[-1]["requests"] == 2


# ------------------------------------------------------------------- made-up measurements
WORK = [
    bv.Workload("figure3", "Figure 3 lengths", (1.0, 5.0), ("q", "q"), (10, 10), "s"),
    bv.Workload("batch1", "30 s clips, batch 1", (30.0,), ("q",), (10,), "s"),
]
# (workload, kind, side) -> wall times of the rounds
TIMES = {
    ("figure3", "ttft", "ours"): [0.10, 0.11, 0.12], ("figure3", "ttft", "vllm"): [0.20, 0.22, 0.24],
    ("figure3", "run", "ours"): [2.0, 2.2, 1.9], ("figure3", "run", "vllm"): [1.0, 1.1, 0.95],
    ("batch1", "ttft", "ours"): [0.30, 0.30, 0.30], ("batch1", "ttft", "vllm"): [0.33, 0.28, 0.35],
    ("batch1", "run", "ours"): [1.0, 1.0, 1.0], ("batch1", "run", "vllm"): [1.0, 1.0, 1.0],
}


def fake_records(tokens_wrong: bool = False, busy: float = 0.05):
    def call(side, w, kind, r):
        tokens = w.requests if kind == "ttft" else sum(w.new_tokens)
        if tokens_wrong and side == "vllm" and kind == "run" and w.key == "batch1":
            tokens -= 1
        gib = 2**30
        return {"wall_s": TIMES[(w.key, kind, side)][r], "output_tokens": tokens, "prompt_tokens": 50,
                "peak_rss_bytes": (1 if side == "ours" else 4) * gib + r, "rss_before_bytes": gib,
                "pss_after_bytes": (1 if side == "ours" else 2) * gib,
                "other_cores": busy if (side, kind, r) == ("ours", "run", 1) else 0.02}

    return bv.alternate(WORK, 3, call)


def test_summarise_gives_ours_over_vllm_in_speed():
    rows = {r["workload"]: r for r in bv.summarise(WORK, fake_records())}
    fig3, b1 = rows["figure3"], rows["batch1"]
    assert fig3["ttft_ratio"] == pytest.approx(0.22 / 0.11) and fig3["ttft_ratio_min"] == pytest.approx(2.0)
    assert fig3["ttft_verdict"] == "faster"
    assert fig3["throughput_ratio"] == pytest.approx(1.0 / 2.0) and fig3["throughput_verdict"] == "slower"
    assert fig3["ours"]["requests_per_s"] == pytest.approx(2 / 2.0)
    assert fig3["ours"]["output_tokens_per_s"] == pytest.approx(60 / 6.1)
    assert fig3["ours"]["ttft_s"] == {"median": 0.11, "min": 0.10, "max": 0.12}
    assert fig3["memory_ratio"] == pytest.approx((2**30 + 2) / (4 * 2**30 + 2))
    assert b1["ttft_ratio"] == pytest.approx(1.1) and b1["ttft_ratio_min"] == pytest.approx(0.28 / 0.30)
    assert b1["ttft_verdict"] == "unclear"  # the medians say faster, the best rounds slower
    assert b1["throughput_verdict"] == "faster"  # as fast counts
    assert not fig3["flags"] and not b1["flags"]
    flagged = {r["workload"]: r for r in bv.summarise(WORK, fake_records(tokens_wrong=True))}["batch1"]
    assert flagged["flags"] == ["vllm made [9] tokens, 10 asked"]
    loaded = {r["workload"]: r for r in bv.summarise(WORK, fake_records(busy=1.25))}["figure3"]
    assert loaded["ours"]["other_cores"]["max"] == 1.25 and loaded["vllm"]["other_cores"]["max"] == 0.02
    assert loaded["flags"] == ["other processes kept up to 1.2 cores busy during our runs, "
                               "0.0 cores busy during vLLM's runs"]


def test_quiet_wait_keeps_to_its_budget(monkeypatch):
    monkeypatch.setattr(bv, "other_load", lambda window=0.5: 1.0)  # a machine that never quiets down
    wait = bv.QuietWait(per_run=0.05, total=0.12)
    loads = [wait() for _ in range(5)]
    assert loads[0] == 1.0 and 0.1 <= wait.waited < 0.3
    assert loads[-1] is None  # the budget is spent: no more waiting
    assert bv.other_load(0.05) is None or bv.other_load(0.05) >= 0  # the real measurement


def report_of(records, tmp_path, **extra):
    rows = bv.summarise(WORK, records)
    meta = {
        "command": "midashenglm bench vllm", "date": "2026-01-01 00:00:00 UTC", "device": "cpu", "dtype": "float32",
        "scale": "cpu", "scale_note": "widths / 8", "wall_time_s": 12.0, "load_average_at_end": [1.0, 1.0, 1.0],
        "machine": {"cpu": "Test CPU", "cpu_cores_visible": 2, "load_average_at_start": [0.5, 0.5, 0.5]},
        "model": {"encoder": {"embed_dim": 160}, "parameters": {"decoder": 29.8e6},
                  "decoder": {"model_type": "qwen2", "hidden_size": 448, "num_hidden_layers": 7,
                              "num_attention_heads": 7, "num_key_value_heads": 1, "head_dim": 64,
                              "vocab_size": 4752, "rope_theta": 1e6}},
        "ours": {"versions": {"torch": "2.13"}, "torch_threads": 2, "interop_threads": 2, "startup_s": 4.0,
                 "engine": {"max_num_seqs": 32}, "processes": [{"name": "python3", "threads": 7, "cpu_affinity": [0, 1]}]},
        "vllm": {"versions": {"vllm": "0.32.0"}, "startup_s": 40.0, "engine": {"max_num_seqs": 32},
                 "binding_log": ["local_rank=0, core ids=[0]"], "env": {}, "mode": "compiled",
                 "processes": [{"name": "VLLM::Worker", "threads": 40, "cpu_affinity": [0], "OMP_NUM_THREADS": "1"}]},
        "vllm_kwargs": {"dtype": "float32"},
    }
    return {"meta": meta, "settings": {"repeats": 3}, "method": bv.METHOD,
            "workloads": [w.summary() for w in WORK], "rows": rows, "records": records, **extra}


def test_report_md_json_and_plot(tmp_path):
    report = report_of(fake_records(), tmp_path, notes="Ours decodes slower because X.",
                       profiles={"Figure 3 lengths, throughput": {"file": "profile-figure3-run.txt", "wall_s": 2.0,
                                                                   "top": ["aten::addmm 40.0%"]}})
    files = bv.write_report(report, tmp_path / "out")
    assert [f.name for f in files] == ["report.json", "report.png", "report.md"]
    assert (tmp_path / "out" / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["rows"][0]["throughput_verdict"] == "slower" and len(saved["records"]) == 24
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| Figure 3 lengths | **2.00x** (2.00x) | **0.50x** (0.50x) | 0.25 | faster, slower |" in md
    assert "| 30 s clips, batch 1 | **1.10x** (0.93x) | **1.00x** (1.00x) | 0.25 | unclear, faster |" in md
    assert "ours at least as fast on 1 of 2 workloads; slower on: Figure 3 lengths" in md  # throughput
    # TTFT: one workload faster, one unclear: the headline says so instead of "every workload".
    assert ("ours at least as fast on 1 of 2 workloads; unclear (the median and best-run ratios "
            "disagree) on: 30 s clips, batch 1") in md
    assert "| Figure 3 lengths | 110 / 220 | 1 / 2 | 9.84 / 19.7 | 1.00 / 4.00 | 1.00 / 2.00 | - |" in md
    assert "`VLLM::Worker` 40 threads, CPUs [0] (OMP_NUM_THREADS=1)" in md
    assert "## Findings (written after the run)\n\nOurs decodes slower because X." in md
    assert "`profile-figure3-run.txt` (Figure 3 lengths, throughput): aten::addmm 40.0%" in md
    assert "![ours / vLLM](report.png)" in md


def test_profile_tables_and_their_summary(tmp_path):
    class Matmuls:
        def run(self, inputs):
            a = torch.randn(64, 64)
            for _ in range(inputs):
                a = torch.tanh(a @ a)
            return {"output_tokens": inputs}

    path = tmp_path / "profile.txt"
    out = vllm_worker._profiled(Matmuls(), 20, str(path))
    assert out["output_tokens"] == 20 and out["wall_s"] > 0
    text = path.read_text()
    assert "== torch.profiler, by self CPU time ==" in text and "== cProfile, by cumulative time ==" in text
    top = bv.top_operators(path)
    assert top and all(t.split()[1].endswith("%") for t in top)
    assert any(t.startswith(("aten::mm", "aten::tanh")) for t in top)


def test_our_worker_runs_requests_and_is_measured(tmp_path, tiny_checkpoint):
    """Our side's worker process for real (vLLM's is the same file, run by vLLM's Python):
    ready, a run of two requests, its memory, pause and resume, quit."""
    spec = {"model": str(tiny_checkpoint), "device": "cpu", "dtype": "float32", "threads": 1, "max_num_seqs": 4,
            "vllm_kwargs": {}}
    procs = bv.Procs()
    side = bv.Side("ours", Path(sys.executable), spec, tmp_path, {**os.environ, "HF_HUB_OFFLINE": "1"}, procs)
    try:
        side.start()
        info = side.ready(120)
        assert info["ready"] and info["torch_threads"] == 1 and info["engine"]["encoder_cache_items"] == 0
        w = bv.Workload("w", "w", (0.5, 1.5), ("q1", "q2"), (3, 4), None)
        wavs = bv.write_clips(tmp_path / "clips", w.seconds, 0)
        side.pause()
        deadline = time.monotonic() + 10  # a signal is delivered when the process is next scheduled
        while {p.status() for p in side.tree()} != {"stopped"} and time.monotonic() < deadline:
            time.sleep(0.05)
        assert {p.status() for p in side.tree()} == {"stopped"}
        side.resume()
        before = side.reset_peak()
        reply = side.call({"op": "run", "requests": bv.requests_for(w, "run", wavs)}, 120)
        assert reply["output_tokens"] == 7 and reply["wall_s"] > 0 and not reply["errors"]
        assert side.peak_rss() >= before > 0 and side.pss() > 0
        assert side.call({"op": "run", "requests": bv.requests_for(w, "ttft", wavs)}, 120)["output_tokens"] == 2
        with pytest.raises(bv.SideError, match="ours: FileNotFoundError"):
            side.call({"op": "run", "requests": [{**bv.requests_for(w, "run", wavs)[0], "wav": "/none.wav"}]}, 120)
    finally:
        side.stop()
    assert side.proc.poll() is not None and not procs.groups


@pytest.mark.parametrize("theta, warned", [(1e4, True), (1e6, False)])
def test_serve_vllm_script_warns_about_rope_theta(tmp_path, theta, warned):
    """scripts/serve_vllm.sh with a stand-in `vllm` that prints its arguments: the checks on
    the folder run, and a decoder rope_theta other than 1e6 (which vLLM ignores) is warned about."""
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["MiDashengLMModel"],
        "text_config": {"model_type": "qwen2", "rope_parameters": {"rope_theta": theta, "rope_type": "default"}}}))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"audio_token": "<|AUDIO|>", "audio_bos_token": "<|audio_bos|>", "audio_eos_token": "<|audio_eos|>"}))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "vllm").write_text('#!/bin/sh\necho "vllm $*"\n')
    (bin_dir / "vllm").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    env.pop("VLLM_API_KEY", None), env.pop("MIDASHENGLM_API_KEY", None), env.pop("API_KEY", None)
    result = subprocess.run(["bash", str(REPO / "scripts/serve_vllm.sh"), str(folder)], capture_output=True,
                            text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"vllm serve {folder} ") and "--trust-remote-code" in result.stdout
    assert ("rope_theta is 10000" in result.stderr) is warned
    assert "warning" not in result.stderr or warned


def test_the_report_names_the_options_that_change_the_measurement():
    options = {"quick": True, "threads": 1, "repeats": None, "max_num_seqs": 32, "scale": "cpu", "device": "auto",
               "dtype": "auto", "seed": 0, "batch_sizes": (1, 4), "vllm_eager": False, "profile": True,
               "out": Path("docs/bench/vllm"), "quiet_wait": 10.0}
    assert bv.command_options(options) == ["--quick", "--threads 1", "--batch-sizes 1,4", "--vllm-compile", "--profile"]
