"""``midashenglm bench``: a real run of the command on tiny shapes, its report and plots,
and clear errors for bad options."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def bench(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "midashenglm.cli", "bench", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
    )


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    result = bench(
        "all", "--scale", "tiny", "--quick", "--threads", "1", "--out", str(out),
        "--lengths", "1,3", "--batch-sizes", "1,2", "--mixed-requests", "4", "--mixed-batch", "2",
        "--new-tokens", "3", "--repeats", "1", "--warmup", "1",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (out / "stdout.txt").write_text(result.stdout + result.stderr)
    return out


def test_help_lists_every_command():
    result = bench("--help")
    assert result.returncode == 0
    for command in ("ttft", "throughput", "encoder", "memory", "all"):
        assert command in result.stdout
    assert "baseline" in result.stdout


def test_all_prints_the_three_comparisons(report_dir):
    printed = (report_dir / "stdout.txt").read_text()
    assert "1. architecture: TTFT at 3 s, MiDashengLM vs the baseline:" in printed
    assert "(min " in printed and "roofline " in printed  # ratio of minimums and the roofline's beside it
    assert "2. implementation" in printed
    assert "realistic task mix (answers" in printed
    assert "implementation, realistic task mix: engine (at most 2 rows, continuous batching)" in printed
    assert "3. hardware:" in printed


def test_report_json_holds_every_section(report_dir):
    from midashenglm.bench.compare import compare, find

    report = json.loads((report_dir / "report.json").read_text())
    assert report["meta"]["scale"] == "tiny" and report["meta"]["threads"]["torch_threads"] == 1
    assert report["meta"]["text_tokens"] == 30
    # Both limits, measured at the start and at the end; the better kept.
    peak = report["peak"]
    assert peak["flops_per_s"] > 0 and peak["bytes_per_s"] > 0 and len(peak["measurements"]) == 2
    assert peak["flops_per_s"] == max(m["matmul"]["flops_per_s"] for m in peak["measurements"])
    models = {(r["model"], r["loop"], r["seconds"]) for r in report["ttft"]}
    assert {("midashenglm", "transformers", 1.0), ("baseline", "transformers", 3.0),
            ("baseline_pad30", "transformers", 3.0), ("midashenglm", "engine", 3.0)} <= models
    for row in report["ttft"]:
        assert row["time"]["min"] <= row["time"]["median"] <= row["time"]["max"]
        assert set(row["work"]) >= {"audio", "prefill"} and row["work"]["prefill"]["bytes"] > 0
    assert [(r["model"], r["batch"]) for r in report["throughput"]] == [
        ("midashenglm", 1), ("baseline", 1), ("midashenglm", 2), ("baseline", 2)]
    assert all(r["samples_per_s"] > 0 for r in report["throughput"])
    assert {r["stage"] for r in report["efficiency"]} == {"audio path", "prefill"}
    # Every run made exactly the tokens asked for: same work on every side of a ratio.
    for run in report["mixed"]["runs"]:
        per_request = 1 if run["loop"] == "prompt_only" else 3
        assert run["new_tokens_made"] == run["requests"] * per_request
    # The realistic task mix: the engine makes exactly the tokens each request asked for;
    # transformers batches compute every row up to the batch's longest answer.
    real = report["realistic"]
    asked = sum(r["new_tokens"] for r in real["requests"])
    loops = {(r["model"], r["loop"]) for r in real["runs"]}
    assert {(m, "transformers_batched") for m in ("midashenglm", "baseline", "baseline_pad30")} <= loops
    assert {(m, "engine") for m in ("midashenglm", "baseline", "baseline_pad30")} <= loops
    assert {("midashenglm", "transformers_one_at_a_time"), ("midashenglm", "engine_default")} <= loops
    for run in real["runs"]:
        assert run["rows"] >= 1 and run["work"]["decode"]["passes"] >= 1
        if run["loop"] == "transformers_one_at_a_time":
            continue
        assert run["new_tokens_made"] == asked
        if run["loop"].startswith("engine"):
            assert run["new_tokens_computed"] == asked
        else:
            assert run["new_tokens_computed"] >= asked
    # The comparisons are a pure function of the records: the same rows again.
    rows = report["comparisons"]
    assert json.loads(json.dumps(compare(report))) == rows
    for section, group, count in (("ttft", "architecture", 4), ("ttft", "implementation", 2),
                                  ("throughput", "architecture", 2), ("mixed", "architecture", 5),
                                  ("mixed", "implementation", 4), ("realistic", "architecture", 4),
                                  ("realistic", "implementation", 4), ("efficiency", "hardware", 8)):
        assert len(find(rows, section, group)) == count, (section, group)
    for row in rows:
        if row["section"] in ("efficiency", "limits"):
            continue
        assert row["ratio_median"] and row["ratio_min"] and row["roofline_ratio"]
        assert row["status"] in ("ok", "check", "unstable", "measurement problem")
        for s in (row["a"], row["b"]):
            assert s["roofline_s"] > 0 and s["distance"] == pytest.approx(s["median_s"] / s["roofline_s"])
    for row in find(rows, "ttft", "architecture"):
        assert row["analytic_ratio"] > 1
    (target,) = find(rows, "realistic", "implementation", loop="engine", against="transformers_batched")
    assert target["target"] == 2.0 and target["met"] in (True, False, None)
    memory = report["memory"]["models"]
    assert memory["baseline"]["kv_bytes_per_sample"] > memory["midashenglm"]["kv_bytes_per_sample"]


def test_report_md_and_plots(report_dir):
    from PIL import Image

    text = (report_dir / "report.md").read_text()
    for heading in ("## 1. Architecture", "## 2. Implementation", "## 3. Hardware", "## Memory",
                    "## Analytical cost per request"):
        assert heading in text
    for column in ("ratio of medians", "ratio of minimums", "roofline", "A: distance from the limit", "target"):
        assert column in text
    assert "memory bandwidth" in text and "Weights read per pass" in text
    assert "180 / 780" in text  # the paper's 30 s prefill tokens, in the analytic table
    assert "**Realistic task mix**" in text and "Transcribe the speech into text <\\|en\\|>" in text
    for name in ("ttft.png", "throughput.png", "comparisons.png", "realistic.png"):
        path = report_dir / name
        assert path.stat().st_size < 300_000
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size[0] > 400
        assert f"]({name})" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ttft", "--scale", "huge"], "--scale 'huge'"),
        (["throughput", "--batch-sizes", "0,2"], "--batch-sizes"),
        (["ttft", "--lengths", "one"], "--lengths"),
        (["all", "--scale", "full", "--device", "cpu"], "needs a CUDA GPU"),
    ],
)
def test_bad_options_give_one_error_line(args, message):
    result = bench(*args, "--scale", "tiny") if "--scale" not in args else bench(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_peak_memory_and_timer_measure_what_happens():
    import torch

    from midashenglm.bench.measure import PeakMemory, Side, time_interleaved
    from midashenglm.bench.peak import matmul_peak, memory_bandwidth

    device = torch.device("cpu")
    if not PeakMemory.cpu_supported():
        pytest.skip("no /proc/self/clear_refs: the CPU peak is not measurable here")
    with PeakMemory(device) as small:
        torch.ones(1024)
    with PeakMemory(device) as big:
        block = torch.ones(64 * 2**20)  # 256 MiB, touched
        del block
    assert big.peak_bytes >= 250 * 2**20 > small.peak_bytes

    seen = []
    result = time_interleaved([Side("a", seen.append, lambda i: i)], device=device, warmup=2, repeats=3)["a"]
    assert seen == [10_000, 10_001, 0, 1, 2]  # warm-up inputs first, then fresh ones per repeat
    stats = result.stats
    assert stats.min <= stats.median <= stats.max and len(stats.times) == 3
    peak = matmul_peak(device, torch.float32, sizes=(128,), budget_s=0.05)
    assert peak.flops_per_s > 1e8 and peak.size == 128
    bandwidth = memory_bandwidth(device, torch.float32, size_bytes=2**24, budget_s=0.05)
    assert bandwidth.size_bytes == 2**24 and bandwidth.bytes_per_s == max(bandwidth.read_bytes_per_s,
                                                                          bandwidth.copy_bytes_per_s) > 1e8
