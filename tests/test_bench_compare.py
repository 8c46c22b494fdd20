"""The comparisons are a pure function of the measurement records: checked on hand-made
records (no model, no timing), and the interleaved timer that produces them."""

from __future__ import annotations

import pytest
import torch

from midashenglm.bench.compare import compare, find, problems
from midashenglm.bench.measure import Side, time_interleaved
from midashenglm.bench.report import distance, headline, markdown

PEAK = {"flops_per_s": 1e9, "bytes_per_s": 1e9, "size": 1024, "dtype": "float32", "bandwidth_size_bytes": 2**28}


def timed(times: list[float]) -> dict:
    ordered = sorted(times)
    return {"median": ordered[len(ordered) // 2], "min": ordered[0], "max": ordered[-1], "times": times}


def work(macs: float = 0, nbytes: float = 0, phase: str = "prefill") -> dict:
    return {phase: {"macs": int(macs), "bytes": int(nbytes)}}


def rec(model: str, loop: str, times: list[float], *, requests: int = 1, macs: float = 1e7, nbytes: float = 1e6,
        **fields) -> dict:
    return {"model": model, "loop": loop, "requests": requests, "status": "ok", "time": timed(times),
            "work": work(macs, nbytes), **fields}


def ttft_records(ours: list[float], base: list[float], **kw) -> list[dict]:
    return [rec("midashenglm", "transformers", ours, seconds=2.0, macs=1e7),
            rec("baseline", "transformers", base, seconds=2.0, macs=kw.get("base_macs", 2e7))]


def test_ratio_of_medians_and_of_minimums_with_the_arithmetic_beside_them():
    rows = compare({"peak": PEAK, "ttft": ttft_records([0.10, 0.11, 0.12], [0.20, 0.24, 0.22])})
    (row,) = find(rows, "ttft", "architecture", b_model="baseline")
    assert row["ratio_median"] == pytest.approx(0.22 / 0.11)
    assert row["ratio_min"] == pytest.approx(0.20 / 0.10)
    assert row["analytic_ratio"] == pytest.approx(2.0)
    # Roofline: 2e7 FLOP at 1e9 FLOP/s = 20 ms (compute-bound: 1 MB at 1 GB/s is 1 ms).
    assert row["a"]["roofline_s"] == pytest.approx(0.02)
    assert row["a"]["distance"] == pytest.approx(0.11 / 0.02)
    assert row["a"]["limited_by"] == "prefill compute"
    assert row["roofline_ratio"] == pytest.approx(2.0)
    assert row["status"] == "ok" and row["flags"] == [] and row["met"] is None


def test_a_load_burst_on_one_side_is_flagged_not_reported_as_a_speed_up():
    # The 15.7x-instead-of-2x case: the baseline's median caught a burst of load.
    rows = compare({"peak": PEAK, "ttft": ttft_records([0.10, 0.10, 0.11], [0.21, 1.60, 1.70])})
    (row,) = find(rows, "ttft", "architecture", b_model="baseline")
    assert row["ratio_median"] == pytest.approx(16.0)
    assert row["ratio_min"] == pytest.approx(2.1)  # the best runs still agree with the arithmetic
    assert row["status"] == "unstable"
    assert any("unstable" in f for f in row["flags"])
    assert problems(rows) == [row]


def test_a_ratio_far_from_the_arithmetic_is_flagged_for_a_check():
    # The 0.72x-instead-of-3.8x case, steady on both sides: not noise, so worth a look.
    rows = compare({"peak": PEAK, "ttft": ttft_records([0.10, 0.10, 0.10], [0.072, 0.072, 0.072])})
    (row,) = find(rows, "ttft", "architecture", b_model="baseline")
    assert row["ratio_min"] == pytest.approx(0.72)
    assert row["status"] == "check" and "away from the arithmetic" in row["flags"][0]


def test_faster_than_the_roofline_is_a_measurement_problem_not_a_number():
    # 1e9 MACs = 2 GFLOP at 1 GFLOP/s: no run can take under 2 s.
    records = {"peak": PEAK, "ttft": [rec("midashenglm", "transformers", [1.0, 1.0], seconds=1.0, macs=1e9),
                                      rec("baseline", "transformers", [3.0, 3.0], seconds=1.0, macs=1e9)]}
    (row,) = find(compare(records), "ttft", "architecture")
    assert row["status"] == "measurement problem"
    assert row["a"]["distance_min"] == pytest.approx(0.5)
    assert "measurement problem" in distance(row["a"]) and "0.5" not in distance(row["a"])
    assert distance(row["b"]) == "1.50x (prefill compute)"


def test_achieved_above_the_peak_is_a_measurement_problem_not_a_number():
    efficiency = [
        {"model": "midashenglm", "stage": "audio path", "batch": 1, "requests": 1, "status": "ok",
         "macs": int(1e9), "time": timed([1.0, 1.2]), "work": work(1e9, 0, "audio")},  # 2 GFLOP/s > peak
        {"model": "baseline", "stage": "audio path", "batch": 1, "requests": 1, "status": "ok",
         "macs": int(1e9), "time": timed([4.0, 5.0]), "work": work(1e9, 0, "audio")},  # 50 %
    ]
    rows = compare({"peak": PEAK, "efficiency": efficiency})
    ours, base = find(rows, "efficiency", model="midashenglm"), find(rows, "efficiency", model="baseline")
    assert ours[0]["status"] == "measurement problem" and ours[0]["fraction_of_peak"] is None
    assert base[0]["status"] == "ok" and base[0]["fraction_of_peak"] == pytest.approx(0.5)
    report = {"meta": {}, "peak": {**PEAK, "measurements": []}, "efficiency": efficiency, "comparisons": rows}
    text = markdown(report)
    assert "200 %" not in text and "measurement problem" in text and "**50 %**" in text
    assert any("3. hardware: best 50 %" in line and "measurement problem in 1 row" in line
               for line in headline(report))


def test_targets_are_met_only_when_both_ratios_say_so():
    def mixed(base: list[float]) -> dict:
        return {"new_tokens": 100, "runs": [
            rec("midashenglm", "transformers_batched", [1.0, 1.0, 1.0], requests=8),
            rec("baseline", "transformers_batched", base, requests=8)]}

    for base, met in (([3.2, 3.3, 3.4], True), ([2.0, 2.1, 2.2], False), ([2.9, 3.1, 3.1], None)):
        (row,) = find(compare({"mixed": mixed(base)}), "mixed", "architecture")
        assert row["target"] == 3.0 and row["met"] is met, base
        assert "roofline_s" not in row["a"]  # no limits measured: no roofline, no distance


def test_requests_per_side_and_missing_sides():
    runs = [rec("midashenglm", "engine", [2.0], requests=16),
            rec("midashenglm", "transformers_one_at_a_time", [4.0], requests=4),
            {"model": "midashenglm", "loop": "transformers_batched", "status": "skipped"}]
    rows = compare({"realistic": {"runs": runs}})
    (one,) = find(rows, "realistic", "implementation", against="transformers_one_at_a_time")
    assert one["ratio_median"] == pytest.approx((4.0 / 4) / (2.0 / 16))  # per request
    (batched,) = find(rows, "realistic", "implementation", against="transformers_batched", loop="engine")
    assert batched["ratio_median"] is None and batched["flags"] == ["B skipped"] and batched["met"] is None


def test_throughput_rows_and_an_oom_baseline():
    records = [
        {**rec("midashenglm", "transformers", [2.0, 2.0], requests=4), "batch": 4, "timed": True},
        {**rec("baseline", "transformers", [4.0, 4.0], requests=4), "batch": 4, "timed": True},
        {**rec("midashenglm", "transformers", [3.0, 3.0], requests=16), "batch": 16, "timed": True},
        {"model": "baseline", "loop": "transformers", "batch": 16, "status": "OOM"},
    ]
    rows = compare({"throughput": records})
    four, sixteen = find(rows, "throughput", batch=4)[0], find(rows, "throughput", batch=16)[0]
    assert four["ratio_median"] == pytest.approx(2.0) and four["paper"] == pytest.approx(2.42 / 1.21)
    assert sixteen["ratio_median"] is None and sixteen["flags"] == ["B OOM"]
    assert compare({"throughput": [{**r, "timed": False} for r in records]}) == []  # memory only


def test_limits_that_moved_during_the_run_are_flagged():
    def limits(flops: float, bw: float) -> dict:
        return {"matmul": {"flops_per_s": flops, "size": 1024, "dtype": "float32", "seconds_per_matmul": 1.0},
                "bandwidth": {"bytes_per_s": bw, "read_bytes_per_s": bw, "copy_bytes_per_s": bw,
                              "size_bytes": 2**28}, "time": 0.0}

    from midashenglm.bench.peak import combine

    peak = combine(limits(1e11, 2e10), limits(5e10, 2.1e10))
    assert peak["flops_per_s"] == 1e11 and peak["bytes_per_s"] == 2.1e10
    (row,) = find(compare({"peak": peak}), "limits")
    assert row["status"] == "unstable" and "matmul" in row["flags"][0]
    assert find(compare({"peak": combine(limits(1e11, 2e10), limits(0.95e11, 2e10))}), "limits") == []


def test_sides_are_timed_alternately_and_an_oom_side_drops_out():
    calls: list[tuple[str, int]] = []

    def run(name: str):
        def fn(i: int) -> dict:
            calls.append((name, i))
            if name == "C" and i == 1:
                raise torch.OutOfMemoryError("CUDA out of memory")
            return {"asked": i}
        return fn

    sides = [Side(n, run(n), lambda i: i) for n in ("A", "B", "C")]
    results = time_interleaved(sides, device=torch.device("cpu"), warmup=1, repeats=3)
    assert calls == [("A", 10_000), ("B", 10_000), ("C", 10_000),  # warm-up, interleaved too
                     ("A", 0), ("B", 0), ("C", 0), ("A", 1), ("B", 1), ("C", 1), ("A", 2), ("B", 2)]
    assert len(results["A"].times) == len(results["B"].times) == 3 and results["A"].output == {"asked": 2}
    assert results["C"].status == "OOM" and len(results["C"].times) == 1
