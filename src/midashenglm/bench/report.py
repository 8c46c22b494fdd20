"""``report.md``, ``report.json`` and the plots of a benchmark run.

The plots follow the paper: time to first token and its MACs against audio length
(Figure 7), samples/s against batch size for 30 s clips (Table 13), plus the mixed
workload, the engine comparison and the achieved fraction of the matmul peak, and the
realistic task mix (samples/s, and decode tokens computed against tokens asked for).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from midashenglm.bench.costs import fmt_bytes, fmt_macs

LABELS = {
    "midashenglm": "MiDashengLM",
    "midashenglm_engine": "MiDashengLM (engine)",
    "baseline": "Baseline (Qwen2.5-Omni-style)",
    "baseline_pad30": "Baseline, padded to 30 s",
}
COLORS = {
    "midashenglm": "#1f77b4",
    "midashenglm_engine": "#17becf",
    "baseline": "#d62728",
    "baseline_pad30": "#ff7f0e",
}


def write_report(report: dict[str, Any], out: Path) -> list[Path]:
    """Write report.json, report.md and the PNG plots into ``out``; returns the files."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "report.json"]
    (out / "report.json").write_text(json.dumps(report, indent=1, default=_jsonable) + "\n")
    plots = write_plots(report, out)
    report = {**report, "plots": [p.name for p in plots]}
    (out / "report.md").write_text(markdown(report))
    return [*written, out / "report.md", *plots]


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    return str(value)


# ------------------------------------------------------------------------- formatting
def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}" if seconds >= 0.1 else f"{seconds * 1000:.1f}"


def _span(time: dict[str, Any]) -> str:
    return f"{_ms(time['median'])} ({_ms(time['min'])}-{_ms(time['max'])})"


def _x(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- markdown
def markdown(report: dict[str, Any]) -> str:
    meta = report["meta"]
    parts = [
        "# MiDashengLM speed report",
        "",
        f"`{meta.get('command', 'midashenglm bench')}`, {meta.get('date', '')}",
        "",
        _meta_table(meta),
        "",
        "**Method.** Random weights (speed does not depend on their values). Each number is "
        "the median of the timed repeats (min-max in brackets) after a warm-up, every repeat "
        "on fresh random audio; timings run end to end from conversations in memory to token "
        "ids (template, audio-token expansion, audio path, decoder). The baseline is a "
        "Qwen2.5-Omni-style audio path (Whisper-large-v3-shaped encoder, 2 s attention chunks, "
        "25 tokens/s) on *the same decoder module* and the same generation loop as MiDashengLM, "
        "so their ratio is the architecture's. 'transformers' is `model.generate` (greedy, "
        "exactly N new tokens); 'engine' is `midashenglm.inference.Engine` with `ignore_eos`.",
        "",
    ]
    summary = headline(report)
    if summary:
        parts += ["## Summary", "", "```", *summary, "```", ""]
    if report.get("skipped_for_time_budget"):
        parts += ["**Skipped (time budget spent):** " + ", ".join(report["skipped_for_time_budget"]), ""]
    comparisons = report.get("comparisons", {})
    parts += _architecture_section(report, comparisons.get("architecture", {}))
    parts += _implementation_section(report, comparisons.get("implementation", {}))
    parts += _hardware_section(report)
    parts += _memory_section(report)
    parts += _analytic_section(report)
    for plot in report.get("plots", []):
        parts += [f"![{plot}]({plot})", ""]
    return "\n".join(parts).rstrip() + "\n"


def _meta_table(meta: dict[str, Any]) -> str:
    machine = meta.get("machine", {})
    rows = [
        ["scale", f"{meta.get('scale')}: {meta.get('scale_note', '')}"],
        ["device, dtype", f"{meta.get('device')}, {meta.get('dtype')}"],
        ["hardware", machine.get("gpu") or machine.get("cpu", "?")],
        ["threads", _threads(meta.get("threads", {}))],
        ["software", f"torch {machine.get('torch')}, transformers {machine.get('transformers')}, "
                     f"Python {machine.get('python')}"],
        ["parameters", ", ".join(f"{k} {v / 1e6:.1f} M" for k, v in meta.get("parameters", {}).items())],
        ["prompt", f"{meta.get('text_tokens')} text tokens around the audio; "
                   f"{meta.get('new_tokens')} new tokens per request (the realistic task mix: "
                   "each task's own prompt and answer length)"],
        ["load average (1, 5, 15 min)", f"start {machine.get('load_average_at_start')}, "
                                        f"end {meta.get('load_average_at_end')}"],
        ["wall time", f"{meta.get('wall_time_s')} s"],
    ]
    return _table(["", ""], rows)


def _threads(info: dict[str, Any]) -> str:
    text = f"{info.get('torch_threads', '?')} intra-op"
    if info.get("cpu_affinity"):
        text += f", pinned to CPU(s) {', '.join(str(c) for c in info['cpu_affinity'])}"
    return text


def _architecture_section(report: dict[str, Any], arch: dict[str, Any]) -> list[str]:
    parts = ["## 1. Architecture: MiDashengLM vs the baseline (same decoder, same loop)", ""]
    if "ttft" in report:
        by = {(r["model"], r["seconds"]): r for r in report["ttft"]}
        ratios = {(r["seconds"], r["against"]): r for r in arch.get("ttft", [])}
        lengths = sorted({r["seconds"] for r in report["ttft"]})
        has_engine = any(m == "midashenglm_engine" for m, _ in by)
        header = ["audio", "MiDashengLM ms", "baseline ms", "ratio (analytic)",
                  "padded-30 s baseline ms", "ratio (analytic)"]
        if has_engine:
            header.append("MiDashengLM engine ms")
        rows = []
        for s in lengths:
            ours, base, pad = by.get(("midashenglm", s)), by.get(("baseline", s)), by.get(("baseline_pad30", s))
            if not (ours and base and pad):
                continue
            r1, r2 = ratios.get((s, "baseline")), ratios.get((s, "baseline_pad30"))
            row = [
                f"{s:g} s",
                _span(ours["time"]),
                _span(base["time"]),
                f"**{_x(r1 and r1['measured_ratio'])}** ({_x(r1 and r1['analytic_ratio'])})",
                _span(pad["time"]),
                f"{_x(r2 and r2['measured_ratio'])} ({_x(r2 and r2['analytic_ratio'])})",
            ]
            if has_engine:
                eng = by.get(("midashenglm_engine", s))
                row.append(_span(eng["time"]) if eng else "-")
            rows.append(row)
        parts += ["**Time to first token**, batch 1 (analytic: ratio of the MACs before the "
                  "first token, for the shapes measured).", "", _table(header, rows), ""]
        if has_engine:
            parts += ["The engine column runs as a service does: its cache of prompt heads (system "
                      "prompt and user header, computed once) is warm, so it prefills only what "
                      "follows them; the model comparison uses transformers for both.", ""]
    if "throughput" in report and not any(r.get("timed") for r in report["throughput"]):
        rows = [[r["model"], r["batch"], r["status"], fmt_bytes(r.get("peak_memory_bytes") or 0)]
                for r in report["throughput"]]
        parts += ["**Peak memory** of one generation per batch size (not timed).", "",
                  _table(["model", "batch", "status", "peak memory above the weights"], rows), ""]
    elif "throughput" in report:
        mem = {(r["model"], r["batch"]): r for r in report["throughput"]}
        rows = []
        for entry in arch.get("throughput_30s", []):
            b = entry["batch"]
            base = entry.get("baseline")
            rows.append([
                b,
                f"{entry['midashenglm']:.3g}",
                f"{base:.3g}" if isinstance(base, float) else (base or "-"),
                f"**{_x(entry.get('ratio'))}**" if entry.get("ratio") else "-",
                fmt_bytes(mem[("midashenglm", b)].get("peak_memory_bytes") or 0),
                fmt_bytes((mem.get(("baseline", b)) or {}).get("peak_memory_bytes") or 0),
            ])
        s = report.get("settings", {})
        parts += [f"**Throughput**, {s.get('clip_seconds', 30):g} s clips, {s.get('new_tokens')} new "
                  "tokens each, EOS ignored (the paper's Table 13), samples/s and peak memory "
                  "above the weights.", "",
                  _table(["batch", "MiDashengLM", "baseline", "speed-up", "peak mem MiDashengLM",
                          "peak mem baseline"], rows), ""]
        if arch.get("best_throughput_ratio"):
            parts += [f"Best throughput of each model (any batch size measured): "
                      f"**{_x(arch['best_throughput_ratio'])}**.", ""]
    if "mixed" in report:
        mixed = report["mixed"]
        rows = []
        for run in mixed["runs"]:
            rows.append([LABELS.get(run["model"], run["model"]), run["description"], run["requests"],
                         f"{run['samples_per_s']:.3g}",
                         f"{run['time']['median']:.2f} ({run['time']['min']:.2f}-{run['time']['max']:.2f})"])
        parts += [f"**Mixed-length workload, fixed answers** ({len(mixed['lengths_s'])} requests, mean "
                  f"{mixed['mean_length_s']:.1f} s, lengths drawn like the paper's Figure 3, "
                  f"{mixed['new_tokens']} new tokens each).", "",
                  _table(["model", "loop", "requests", "samples/s", "seconds"], rows), "",
                  f"Speed-up on this workload (same transformers loop): **{_x(arch.get('mixed_vs_baseline'))}** "
                  f"against the baseline, {_x(arch.get('mixed_vs_baseline_pad30'))} against the "
                  "padded-30 s baseline"
                  + (f"; with the engine for both: {_x(arch['mixed_engine_vs_baseline_engine'])}"
                     if arch.get("mixed_engine_vs_baseline_engine") else "")
                  + (f". Prompt processing alone (1 new token): **{_x(arch['mixed_prompt_only_vs_baseline'])}** "
                     f"against the baseline, {_x(arch.get('mixed_prompt_only_vs_baseline_pad30'))} against "
                     "the padded one" if arch.get("mixed_prompt_only_vs_baseline") else "")
                  + ". The decode steps run the same decoder with nearly the same cost in both "
                    "models, so the more new tokens per request, the closer the ratio gets to 1."
                  + _analytic_note(mixed.get("analytic"), arch.get("mixed_vs_baseline"),
                                   mixed.get("analytic_prompt_only")), ""]
    if "realistic" in report:
        parts += _realistic_architecture(report["realistic"], arch.get("realistic", {}))
    return parts


def _realistic_architecture(real: dict[str, Any], ratios: dict[str, Any]) -> list[str]:
    counts: dict[str, int] = {}
    for r in real["requests"]:
        counts[r["task"]] = counts.get(r["task"], 0) + 1
    tasks = []
    for t in real["tasks"]:
        length = (f"{t['tokens_per_second']:g} per second of audio, +-20 %" if t["tokens_per_second"]
                  else f"{t['answer_tokens'][0]}-{t['answer_tokens'][1]}")
        # A pipe ends a table cell even inside backticks: escape it.
        prompts = " / ".join(f"`{q.splitlines()[0]}`".replace("|", "\\|") for q in t["questions"])
        tasks.append([t["name"], f"{100 * t['share']:.0f} %", counts.get(t["name"], 0), prompts, length,
                      t.get("note", "")])
    rows = []
    for run in real["runs"]:
        rows.append([LABELS.get(run["model"], run["model"]), run["description"], run["requests"],
                     f"{run['samples_per_s']:.3g}",
                     f"{run['time']['median']:.2f} ({run['time']['min']:.2f}-{run['time']['max']:.2f})",
                     f"{run['new_tokens_made']} / {run.get('new_tokens_computed', run['new_tokens_made'])}"])
    answers = [r["new_tokens"] for r in real["requests"]]
    return [
        f"**Realistic task mix** ({len(answers)} requests, clip lengths as above, mean "
        f"{real['mean_length_s']:.1f} s; answers {min(answers)}-{max(answers)} tokens, mean "
        f"{real['mean_new_tokens']:.1f}; EOS ignored, so every request makes exactly its answer length). "
        "The tasks, their share, the paper's prompts and the answer lengths assumed:", "",
        _table(["task", "share", "requests here", "prompt(s)", "answer tokens", "why"], tasks), "",
        _table(["model", "loop", "requests", "samples/s", "seconds", "decode tokens asked / computed"], rows),
        "",
        f"Speed-up on the task mix with the same transformers loop: "
        f"**{_x(ratios.get('transformers_vs_baseline'))}** against the baseline, "
        f"{_x(ratios.get('transformers_vs_baseline_pad30'))} against the padded-30 s baseline; "
        f"with the engine for both: **{_x(ratios.get('engine_vs_baseline'))}** and "
        f"{_x(ratios.get('engine_vs_baseline_pad30'))}. Short answers leave the prompt (audio path and "
        "prefill), which the architecture shrinks, a larger share of the work than 100 tokens do."
        + _analytic_note(real.get("analytic"), ratios.get("transformers_vs_baseline")), "",
    ]


def _analytic_note(analytic: dict[str, Any] | None, measured: float | None,
                   prompt_only: dict[str, Any] | None = None) -> str:
    """What the arithmetic predicts for a workload, and why measurements fall short of it."""
    if not analytic:
        return ""
    ratio = analytic["ratio"]
    text = (f" The arithmetic of this workload (every request's MACs: audio path, prefill, decode) "
            f"predicts {_x(ratio.get('baseline'))} against the baseline and "
            f"{_x(ratio.get('baseline_pad30'))} against the padded one")
    if prompt_only:
        text += (f"; {_x(prompt_only['ratio'].get('baseline'))} and "
                 f"{_x(prompt_only['ratio'].get('baseline_pad30'))} for the prompt alone")
    text += "."
    if measured is not None and measured < 0.9 * ratio.get("baseline", 0):
        text += (" The measured ratio falls below it because a decode step of a few rows reads all the "
                 "decoder's weights for a few tokens, so it takes several times longer per MAC than a "
                 "prefill, and both models pay it alike.")
    return text


def _implementation_section(report: dict[str, Any], impl: dict[str, Any]) -> list[str]:
    parts = ["## 2. Implementation: our engine vs plain transformers (MiDashengLM, mixed lengths)", ""]
    if "mixed" not in report:
        return [*parts, "Not measured in this run (`bench throughput` measures it).", ""]
    if "engine_samples_per_s" not in impl:
        return [*parts, f"Engine: {impl.get('status', 'not measured')}.",
                f"transformers batches vs one at a time: "
                f"{_x(impl.get('transformers_batched_vs_one_at_a_time'))}.", ""]
    batch = report["mixed"]["batch"]
    rows = []
    workloads = [(f"fixed: {report['mixed']['new_tokens']} new tokens each", impl)]
    if impl.get("realistic"):
        workloads.append(("realistic task mix", impl["realistic"]))
    for label, ratios in workloads:
        rows += [[label, f"engine, at most {batch} rows", f"transformers, naive batches of {batch} "
                  "in arrival order", f"**{_x(ratios.get('vs_transformers_batched'))}**"],
                 [label, f"engine, at most {batch} rows", "transformers, one request at a time",
                  f"**{_x(ratios.get('vs_transformers_one_at_a_time'))}**"]]
        if ratios.get("engine_default_vs_transformers_batched"):
            rows.append([label, "engine, default budgets", f"transformers, naive batches of {batch}",
                         f"**{_x(ratios['engine_default_vs_transformers_batched'])}**"])
    note = ("The engine batches continuously: a row that finishes leaves the batch and a waiting "
            "request takes its place at once. A plain batched `generate` runs every row of a batch "
            "until its longest answer is done, and the next batch starts only then; with fixed "
            "answers both do the same decode steps, with the task mix they do not.")
    return [*parts, _table(["workload", "engine", "against", "ratio (samples/s)"], rows), "", note, ""]


def _hardware_section(report: dict[str, Any]) -> list[str]:
    parts = ["## 3. Hardware: achieved vs peak", ""]
    if "efficiency" not in report:
        return [*parts, "Not measured in this run (`bench encoder` measures it).", ""]
    peak = report["peak"]
    rows = []
    for row in report["efficiency"]:
        if row.get("status") != "ok":
            rows.append([LABELS.get(row["model"]), "-", row["batch"], "OOM", "", "", ""])
            continue
        rows.append([
            LABELS.get(row["model"], row["model"]), row["stage"], row["batch"], fmt_macs(row["macs"]),
            _span(row["time"]), f"{row['flops_per_s'] / 1e9:.1f}", f"**{100 * row['fraction_of_peak']:.0f} %**",
        ])
    return [*parts,
            f"Peak measured in this run: {peak['flops_per_s'] / 1e9:.1f} GFLOP/s ({peak['dtype']} "
            f"{peak['size']}x{peak['size']} matmul, best of several). Achieved = 2 x useful MACs / "
            f"median time, {report.get('settings', {}).get('clip_seconds', 30):g} s clips.", "",
            _table(["model", "stage", "batch", "useful MACs", "ms", "GFLOP/s", "of peak"], rows), ""]


def _memory_section(report: dict[str, Any]) -> list[str]:
    memory = report.get("memory")
    if not memory:
        return []
    budget = memory.get("budget_bytes")
    rows = []
    for name, entry in memory["models"].items():
        rows.append([
            LABELS.get(name, name),
            fmt_bytes(entry["weights_bytes"]),
            fmt_bytes(entry["kv_bytes_per_sample"]),
            fmt_bytes(entry["fit_bytes_per_sample"]) if entry.get("fit_bytes_per_sample") else "-",
            entry.get("largest_batch_measured"),
            entry.get("first_oom_batch") or "-",
            entry.get("largest_batch_in_budget", "-"),
        ])
    note = (f"Budget {fmt_bytes(budget)}: largest batch = (budget - weights - fitted intercept) / "
            "fitted bytes per sample, from the peak memory of the measured batch sizes."
            if budget else "No memory budget given (`--memory-budget-gib`).")
    return ["## Memory", "", note, "",
            _table(["model", "weights", "KV per sample (analytic)", "peak per sample (fit)",
                    "largest batch run", "first OOM", "largest batch in budget"], rows), ""]


def _analytic_section(report: dict[str, Any]) -> list[str]:
    analytic = report.get("analytic")
    if not analytic:
        return []
    parts = ["## Analytical cost per request", ""]
    for key, title in (("full_bf16", "Published 7B shapes, bf16 KV cache, 30 text tokens"),
                       ("run", "The shapes measured here")):
        rows = []
        by = {(r["model"], r["seconds"]): r for r in analytic[key]}
        for s in sorted({r["seconds"] for r in analytic[key]}):
            ours, base, pad = by[("midashenglm", s)], by[("baseline", s)], by[("baseline_pad30", s)]
            rows.append([
                f"{s:g} s",
                f"{fmt_macs(ours['encoder'])} / {fmt_macs(base['encoder'])} / {fmt_macs(pad['encoder'])}",
                f"{fmt_macs(ours['projector'])} / {fmt_macs(base['projector'])}",
                f"{ours['prefill_tokens']} / {base['prefill_tokens']}",
                f"{fmt_macs(ours['prefill'])} / {fmt_macs(base['prefill'])}",
                f"{fmt_macs(ours['decode'])} / {fmt_macs(base['decode'])}",
                f"{_x(base['ttft_macs'] / ours['ttft_macs'])} / {_x(pad['ttft_macs'] / ours['ttft_macs'])}",
                f"{fmt_bytes(ours['kv_bytes_per_token'])}",
                f"{fmt_bytes(ours['kv_bytes'])} / {fmt_bytes(base['kv_bytes'])}",
            ])
        parts += [f"**{title}** (MiDashengLM / baseline / padded-30 s baseline).", "",
                  _table(["audio", "encoder MACs", "projector MACs", "prefill tokens", "prefill MACs",
                          "decode MACs", "TTFT MACs ratio", "KV per token", "KV per sample"], rows), ""]
    return parts


# ------------------------------------------------------------------------------ plots
def write_plots(report: dict[str, Any], out: Path) -> list[Path]:
    """PNG plots (matplotlib, Agg backend); none when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    for name, draw in (("ttft.png", _plot_ttft), ("throughput.png", _plot_throughput),
                       ("comparisons.png", _plot_comparisons), ("realistic.png", _plot_realistic)):
        fig = draw(plt, report)
        if fig is None:
            continue
        path = out / name
        fig.savefig(path, dpi=90, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written


def _plot_ttft(plt: Any, report: dict[str, Any]) -> Any:
    if "ttft" not in report:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for model in ("midashenglm", "midashenglm_engine", "baseline", "baseline_pad30"):
        rows = sorted((r for r in report["ttft"] if r["model"] == model), key=lambda r: r["seconds"])
        if not rows:
            continue
        xs = [r["seconds"] for r in rows]
        med = [r["time"]["median"] * 1000 for r in rows]
        err = [[m - r["time"]["min"] * 1000 for m, r in zip(med, rows, strict=True)],
               [r["time"]["max"] * 1000 - m for m, r in zip(med, rows, strict=True)]]
        left.errorbar(xs, med, yerr=err, marker="o", capsize=3, label=LABELS[model], color=COLORS[model])
        if model != "midashenglm_engine":
            right.plot(xs, [r["ttft_macs"] / 1e9 for r in rows], marker="s", label=LABELS[model],
                       color=COLORS[model])
    left.set(xlabel="audio length (s)", ylabel="time to first token (ms)", title="TTFT (measured)")
    right.set(xlabel="audio length (s)", ylabel="GMACs before the first token",
              title="Work before the first token (analytic)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(_subtitle(report), fontsize=9)
    return fig


def _plot_throughput(plt: Any, report: dict[str, Any]) -> Any:
    rows = report.get("throughput")
    if not rows:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    timed = any(r.get("timed", True) for r in rows if r["status"] == "ok")
    for model in ("midashenglm", "baseline"):
        ok = sorted((r for r in rows if r["model"] == model and r["status"] == "ok"), key=lambda r: r["batch"])
        if timed and ok:
            left.plot([r["batch"] for r in ok], [r["samples_per_s"] for r in ok], marker="o",
                      label=LABELS[model], color=COLORS[model])
        if ok and ok[0].get("peak_memory_bytes") is not None:
            right.plot([r["batch"] for r in ok], [(r["peak_memory_bytes"] or 0) / 2**30 for r in ok],
                       marker="o", label=LABELS[model], color=COLORS[model])
        for r in rows:
            if r["model"] == model and r["status"] == "OOM":
                left.annotate("OOM", (r["batch"], 0), color=COLORS[model], ha="center", fontsize=8)
    for entry in report.get("comparisons", {}).get("architecture", {}).get("throughput_30s", []):
        if entry.get("ratio"):
            left.annotate(f"{entry['ratio']:.1f}x", (entry["batch"], entry["midashenglm"]),
                          textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    s = report.get("settings", {})
    left.margins(y=0.15)
    left.set(xscale="log", xlabel="batch size", ylabel="samples / s",
             title=f"Throughput, {s.get('clip_seconds', 30):g} s clips, {s.get('new_tokens')} tokens")
    right.set(xscale="log", xlabel="batch size", ylabel="GiB", title="Peak memory above the weights")
    batches = sorted({r["batch"] for r in rows})
    if not timed:
        left.text(0.5, 0.5, "not timed in this run", ha="center", va="center", transform=left.transAxes)
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(_subtitle(report), fontsize=9)
    return fig


def _plot_comparisons(plt: Any, report: dict[str, Any]) -> Any:
    mixed, eff = report.get("mixed"), report.get("efficiency")
    if not mixed and not eff:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    if mixed and mixed["runs"]:
        names, values, colors = [], [], []
        for run in mixed["runs"]:
            loop = LOOPS.get(run["loop"], run["loop"]).format(batch=mixed["batch"])
            names.append(f"{LABELS.get(run['model'], run['model'])}\n{loop}")
            values.append(run["samples_per_s"])
            colors.append(COLORS.get(run["model"], "gray"))
        ys = list(range(len(values)))[::-1]
        left.barh(ys, values, color=colors)
        left.set_yticks(ys, names, fontsize=7)
        for y, v in zip(ys, values, strict=True):
            left.annotate(f"{v:.3g}", (v, y), xytext=(3, 0), textcoords="offset points",
                          va="center", fontsize=7)
        left.set(xlabel="samples / s",
                 title=f"Mixed lengths, {mixed['new_tokens']} tokens each ({len(mixed['lengths_s'])} "
                       f"requests, mean {mixed['mean_length_s']:.1f} s)")
        left.grid(axis="x", alpha=0.3)
    if eff:
        ok = [r for r in eff if r.get("status") == "ok"]
        labels = [f"{LABELS[r['model']].split(' (')[0]}, {r['stage']}, batch {r['batch']}" for r in ok]
        ys = list(range(len(ok)))[::-1]
        values = [100 * r["fraction_of_peak"] for r in ok]
        right.barh(ys, values, color=[COLORS[r["model"]] for r in ok])
        right.set_yticks(ys, labels, fontsize=7)
        for y, v in zip(ys, values, strict=True):
            right.annotate(f"{v:.0f} %", (v, y), xytext=(3, 0), textcoords="offset points",
                           va="center", fontsize=7)
        right.set(xlabel="% of the matmul peak measured in the same run", title="Achieved vs peak FLOP/s")
        right.grid(axis="x", alpha=0.3)
    fig.suptitle(_subtitle(report), fontsize=9)
    fig.tight_layout()
    return fig


LOOPS = {"transformers_batched": "transformers, batches of {batch}",
         "prompt_only": "prompt only (1 token), batches of {batch}",
         "transformers_one_at_a_time": "transformers, one at a time",
         "engine": "engine, max batch {batch}",
         "engine_default": "engine, default budgets"}


def _plot_realistic(plt: Any, report: dict[str, Any]) -> Any:
    real = report.get("realistic")
    if not real or not real["runs"]:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    runs = real["runs"]
    names = [f"{LABELS.get(r['model'], r['model'])}\n{LOOPS.get(r['loop'], r['loop']).format(batch=real['batch'])}"
             for r in runs]
    colors = [COLORS.get(r["model"], "gray") for r in runs]
    ys = list(range(len(runs)))[::-1]
    values = [r["samples_per_s"] for r in runs]
    left.barh(ys, values, color=colors)
    left.set_yticks(ys, names, fontsize=7)
    for y, v in zip(ys, values, strict=True):
        left.annotate(f"{v:.3g}", (v, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
    left.set(xlabel="samples / s", title=f"Realistic task mix ({len(real['requests'])} requests, "
             f"mean {real['mean_length_s']:.1f} s, mean answer {real['mean_new_tokens']:.0f} tokens)")
    left.grid(axis="x", alpha=0.3)
    per_request = [(r["new_tokens_computed"] / r["requests"], r["new_tokens_made"] / r["requests"]) for r in runs]
    right.barh(ys, [c for c, _ in per_request], color="#cccccc", label="computed (rows x steps)")
    right.barh(ys, [a for _, a in per_request], color=colors, label="asked for")
    right.set_yticks(ys, names, fontsize=7)
    right.set(xlabel="decode tokens per request", title="Decode tokens: asked for vs computed")
    right.legend(fontsize=8)
    right.grid(axis="x", alpha=0.3)
    fig.suptitle(_subtitle(report), fontsize=9)
    fig.tight_layout()
    return fig


def _subtitle(report: dict[str, Any]) -> str:
    meta = report.get("meta", {})
    machine = meta.get("machine", {})
    hw = machine.get("gpu") or machine.get("cpu", "")
    return f"scale {meta.get('scale')}, {meta.get('device')} {meta.get('dtype')}, {hw}, " \
           f"{meta.get('threads', {}).get('torch_threads', '?')} threads"


def headline(report: dict[str, Any]) -> list[str]:
    """The three comparisons in a few lines, for the terminal."""
    comp = report.get("comparisons", {})
    arch, impl, hw = comp.get("architecture", {}), comp.get("implementation", {}), comp.get("hardware", [])
    lines = []
    full = {(r["model"], r["seconds"]): r for r in report.get("analytic", {}).get("full_bf16", [])}
    longest = max((s for _, s in full), default=None)
    if longest is not None:
        ours, base = full[("midashenglm", longest)], full[("baseline", longest)]
        lines.append(
            f"0. analytic, published 7B shapes, {longest:g} s clip: encoder {fmt_macs(ours['encoder'])} vs "
            f"{fmt_macs(base['encoder'])}, prefill {ours['prefill_tokens']} vs {base['prefill_tokens']} "
            f"tokens, KV {fmt_bytes(ours['kv_bytes_per_token'])} per token (bf16), work before the "
            f"first token {base['ttft_macs'] / ours['ttft_macs']:.2f}x"
        )
    if arch.get("ttft"):
        longest = max(r["seconds"] for r in arch["ttft"])
        r = next(x for x in arch["ttft"] if x["seconds"] == longest and x["against"] == "baseline")
        lines.append(f"1. architecture: TTFT at {longest:g} s {r['measured_ratio']:.2f}x lower than the "
                     f"baseline (analytic {r['analytic_ratio']:.2f}x)")
    if arch.get("throughput_30s"):
        best = [e for e in arch["throughput_30s"] if e.get("ratio")]
        if best:
            e = best[-1]
            lines.append(f"   throughput at batch {e['batch']} (30 s clips): {e['ratio']:.2f}x")
    tokens = report.get("mixed", {}).get("new_tokens")
    mixed = report.get("mixed", {})
    if arch.get("mixed_vs_baseline"):
        lines.append(f"   mixed lengths, {tokens} new tokens each: {arch['mixed_vs_baseline']:.2f}x the "
                     f"baseline, {arch.get('mixed_vs_baseline_pad30', math.nan):.2f}x the padded-30 s baseline"
                     + _analytic_brief(mixed.get("analytic")))
    if arch.get("mixed_prompt_only_vs_baseline"):
        lines.append(f"   mixed lengths, prompt processing only (1 new token): "
                     f"{arch['mixed_prompt_only_vs_baseline']:.2f}x the baseline, "
                     f"{arch.get('mixed_prompt_only_vs_baseline_pad30', math.nan):.2f}x the padded one"
                     + _analytic_brief(mixed.get("analytic_prompt_only")))
    real = arch.get("realistic")
    if real:
        answers = [r["new_tokens"] for r in report["realistic"]["requests"]]
        lines.append(
            f"   realistic task mix (answers {min(answers)}-{max(answers)} tokens, mean "
            f"{sum(answers) / len(answers):.1f}): transformers {_nan(real, 'transformers_vs_baseline')} the "
            f"baseline, {_nan(real, 'transformers_vs_baseline_pad30')} the padded-30 s baseline; engine for "
            f"both {_nan(real, 'engine_vs_baseline')} and {_nan(real, 'engine_vs_baseline_pad30')}"
            + _analytic_brief(report["realistic"].get("analytic")))
    if "vs_transformers_batched" in impl:
        lines.append(f"2. implementation, {tokens} tokens each: engine {impl['vs_transformers_batched']:.2f}x "
                     f"transformers batched (same batch size), {_nan(impl, 'vs_transformers_one_at_a_time')} "
                     f"one at a time, {_nan(impl, 'engine_default_vs_transformers_batched')} with its default "
                     "budgets")
    elif impl:
        lines.append(f"2. implementation: {impl.get('status', 'not measured')}")
    real = impl.get("realistic")
    if real and "vs_transformers_batched" in real:
        batch = report["realistic"]["batch"]
        lines.append(f"   implementation, realistic task mix: engine (at most {batch} rows, continuous "
                     f"batching) {real['vs_transformers_batched']:.2f}x transformers batches of {batch}, "
                     f"{_nan(real, 'vs_transformers_one_at_a_time')} one at a time, "
                     f"{_nan(real, 'engine_default_vs_transformers_batched')} with its default budgets")
    if hw:
        best = max(hw, key=lambda r: r["fraction_of_peak"])
        lines.append(f"3. hardware: best {100 * best['fraction_of_peak']:.0f} % of the matmul peak "
                     f"({best['model']} {best['stage']}, batch {best['batch']})")
    return lines


def _analytic_brief(analytic: dict[str, Any] | None) -> str:
    if not analytic:
        return ""
    ratio = analytic["ratio"]
    return f" (analytic {_nan(ratio, 'baseline')} and {_nan(ratio, 'baseline_pad30')})"


def _nan(ratios: dict[str, Any], key: str) -> str:
    value = ratios.get(key)
    return "n/a" if value is None else f"{value:.2f}x"
