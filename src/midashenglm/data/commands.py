"""``midashenglm data pack`` and ``midashenglm data stats``: shards and what a manifest holds.

Heavy imports happen inside the commands, so ``midashenglm --help`` stays fast.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Annotated, Any

import typer

from midashenglm.terminal import markup_text, quote_name

data_app = typer.Typer(
    help="Training data: pack a manifest's clips into WebDataset tar shards (durations measured, "
    "corrupt files reported and skipped), and summarise a manifest (hours per dataset and task, "
    "a length histogram). Formats: docs/data.md.",
    no_args_is_help=True,
    add_completion=False,
)

MAX_LISTED = 20  # skipped files listed on the terminal (all of them go to skipped.jsonl)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")


@data_app.command("pack")
def pack_command(
    manifest: Annotated[Path, typer.Argument(help="Training manifest (.jsonl or .csv).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the shards and their "
                                      "manifest.jsonl (must not hold shards yet).")],
    shard_size: Annotated[int, typer.Option(min=1, help="Samples per shard at most.")] = 1000,
    workers: Annotated[int, typer.Option(min=1, help="Threads decoding clips in parallel.")] = 4,
) -> None:
    """Write train-000000.tar, ... (original audio bytes + a JSON row per sample) and
    manifest.jsonl pointing into them, with every clip decoded once to measure it.

    Unreadable clips are listed with their reason (and in skipped.jsonl); their samples are
    left out.
    """
    from rich.console import Console

    from midashenglm import jsonl
    from midashenglm.data.manifest import read_training_manifest
    from midashenglm.data.shards import check_out_dir, pack
    from midashenglm.progress import ProgressBar

    samples = read_training_manifest(manifest, measure_missing=False)
    check_out_dir(out)
    skipped = 0

    def advance(_: Any, reason: str | None) -> None:
        nonlocal skipped
        skipped += reason is not None
        bar.advance(1, f"{skipped} skipped" if skipped else None)

    with ProgressBar(len(samples), "packing") as bar:
        report = pack(samples, out, shard_size=shard_size, workers=workers, progress=advance)
    if report.skipped:
        with (out / "skipped.jsonl").open("w", encoding="utf-8") as fh:
            jsonl.append_rows(fh, ({"source": s, "reason": r} for s, r in report.skipped))
    console = Console()
    rows = [("samples packed", f"{report.packed:,}"), ("audio", f"{report.seconds / 3600:.3f} h"),
            ("shards", f"{len(report.shards)}"), ("skipped", f"{len(report.skipped):,}"),
            ("manifest", quote_name(report.manifest))]
    console.print(_table("pack", ("", ""), rows, header=False))
    for source, reason in report.skipped[:MAX_LISTED]:
        console.print(f"  skipped {markup_text(source)}: {markup_text(reason)}", highlight=False,
                      soft_wrap=True)
    if report.skipped:
        more = len(report.skipped) - MAX_LISTED
        console.print(f"  {f'... and {more} more; ' if more > 0 else ''}all skipped samples: "
                      f"{markup_text(quote_name(out / 'skipped.jsonl'))}", highlight=False, soft_wrap=True)


@data_app.command("synth")
def synth_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for clips/ and manifest.jsonl "
                                      "(a rerun continues a corpus where it stopped).")],
    split: Annotated[str, typer.Option(
        help="'train' or 'heldout': disjoint sentences, voices, sound files and melodies.")
    ] = "train",
    hours: Annotated[float | None, typer.Option(min=0.001, help="Hours of audio to make.")
                     ] = None,
    clips: Annotated[int | None, typer.Option(min=1, help="Or a number of clips.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the corpus (clip i is made from seed and "
                                      "i alone).")] = 0,
) -> None:
    """Make a general-audio corpus with known truth: clips of 2-12 s in the six categories
    (pure/mixed speech, sound, music), from espeak-ng, flite and real recorded speech, sound
    effects and DSP sounds, and MIDI music rendered with fluidsynth, with controlled
    mixtures, reverberation, band limits, clipping and noise. The truth of every clip is in
    manifest.jsonl (docs/data.md)."""
    from midashenglm.data.synth.corpus import synthesize
    from midashenglm.errors import UserError
    from midashenglm.progress import ProgressBar

    if split not in ("train", "heldout"):
        raise UserError(f"--split {split!r}: 'train' or 'heldout'")
    state = {"seconds": 0.0}

    def advance(row: dict[str, Any]) -> None:
        state["seconds"] += row["duration"]
        bar.advance(row["duration"] / 3600 if hours else 1,
                    f"{state['seconds'] / 3600:.2f} h made")

    with ProgressBar(hours if hours else clips, "synthesizing" + (" (hours)" if hours else "")
                     ) as bar:
        manifest = synthesize(out, split=split, hours=hours, clips=clips, seed=seed,
                              progress=advance)
    print(quote_name(manifest))


@data_app.command("tasks")
def tasks_command(
    corpora: Annotated[list[Path], typer.Argument(
        help="Corpus folders of `midashenglm data synth` (or their manifest.jsonl).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The .jsonl file to write (audio "
                                      "paths relative to its folder).")],
    tasks: Annotated[str | None, typer.Option(
        help="Comma-separated tasks (default: all): transcription, gender, language, sound, "
        "instrument, instrument-family, tempo, key, category, reverberant, band-limited, "
        "clipped, noisy.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="'train': training-manifest rows; "
                                     "'eval': rows for `midashenglm run` + `evaluate`.")] = "train",
    per_clip: Annotated[int | None, typer.Option(
        min=1, help="At most N items per clip, drawn at random (default: every task the "
        "truth defines).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the --per-clip draw.")] = 0,
) -> None:
    """Turn the known truth of synth corpora into questions with their answers: training
    samples (--format train) or evaluation items (--format eval), one fixed prompt per task
    (docs/data.md). Prints the items per task."""
    from collections import Counter

    from rich.console import Console

    from midashenglm.data.synth.tasks import FORMATS, TASKS, corpus_items, select_tasks, write_items
    from midashenglm.errors import UserError

    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: choose {' or '.join(FORMATS)}")
    items = corpus_items(corpora, select_tasks(tasks), per_clip=per_clip, seed=seed)
    if not items:
        raise UserError("no items: the corpora hold no clip that the chosen tasks can ask about")
    path = write_items(items, out, fmt)
    counts = Counter(item.task for item in items)
    rows = [(markup_text(name), TASKS[name].metric, f"{counts[name]:,}") for name in TASKS
            if counts[name]]
    rows.append(("all", "", f"{len(items):,}"))
    console = Console(stderr=True)
    console.print(_table(f"{fmt} items", ("task", "metric", "items"), rows))
    console.print(f"wrote {markup_text(quote_name(path))}", highlight=False)


@data_app.command("stats")
def stats_command(
    manifest: Annotated[Path, typer.Argument(help="Training manifest (.jsonl or .csv).")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write a histogram of sample "
                                             "durations to this PNG.")] = None,
) -> None:
    """Samples and hours per dataset and task; durations missing from the manifest are read
    from the file headers (unreadable clips are counted as unmeasured)."""
    from rich.console import Console

    from midashenglm.data.manifest import read_training_manifest

    samples = read_training_manifest(manifest)
    groups: dict[tuple[str, str], list[float]] = defaultdict(list)
    unmeasured = 0
    for sample in samples:
        groups[sample.dataset, sample.task].append(sample.duration or 0.0)
        unmeasured += sample.duration is None
    total = sum(sum(v) for v in groups.values()) or 1.0
    rows = [(markup_text(d), markup_text(t), f"{len(v):,}", f"{sum(v) / 3600:.3f}",
             f"{sum(v) / len(v):.1f}", f"{100 * sum(v) / total:.1f} %")
            for (d, t), v in sorted(groups.items())]
    rows.append(("all", "", f"{len(samples):,}", f"{total / 3600:.3f}",
                 f"{total / len(samples):.1f}", "100 %"))
    console = Console()
    console.print(_table(markup_text(str(manifest)),
                         ("dataset", "task", "samples", "hours", "mean s", "share of hours"), rows))
    if unmeasured:
        console.print(f"{unmeasured} sample(s) have unreadable audio (counted as 0 s)", highlight=False,
                      soft_wrap=True)
    if out is not None:
        _histogram([s.duration for s in samples if s.duration is not None], out)
        console.print(f"wrote {markup_text(quote_name(out))}", highlight=False)


def _table(title: str, columns: tuple[str, ...], rows: list[tuple[str, ...]], header: bool = True
           ) -> Any:
    from rich.table import Table

    table = Table(title=title, show_header=header)
    for k, name in enumerate(columns):
        table.add_column(name, justify="left" if k < 2 else "right")
    for row in rows:
        table.add_row(*row)
    return table


def _histogram(durations: list[float], path: Path) -> None:
    """Samples per 1-second duration bin (the paper's Figure 3 view), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 3.5))
    top = max(1, int(np.ceil(max(durations, default=1.0))))
    ax.hist(durations, bins=np.arange(0, top + 1), color="#4c72b0")
    ax.set_xlabel("sample duration (s)")
    ax.set_ylabel("samples")
    ax.set_title(f"{len(durations):,} samples, {sum(durations) / 3600:.2f} h")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
