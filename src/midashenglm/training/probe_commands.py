"""``midashenglm probe``: score a frozen encoder on a labelled manifest (docs/probe.md).

Heavy imports (torch, the encoder, sklearn) happen inside the command, so ``--help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from midashenglm.cli_options import DeviceOption
from midashenglm.errors import UserError, stderr_console
from midashenglm.terminal import markup_text, quote_name

KIND_CHOICES = ("classification", "multilabel", "regression")
POOLING_CHOICES = ("mean", "frame")


def register(app: typer.Typer) -> None:
    app.command("probe")(probe)


def probe(
    encoder: Annotated[str, typer.Option(
        "--encoder", "-e", show_default=False,
        help="A MiDashengLM checkpoint folder (or Hub id in the local cache; only its audio_encoder.* "
        "weights are read) or an original Dasheng .pt file.")],
    data: Annotated[Path, typer.Option(
        "--data", "-d", show_default=False,
        help="A .jsonl or .csv manifest with columns 'audio' (paths relative to the manifest's folder) "
        "and 'label' (a class name; a list, or 'a;b' in a CSV, for multilabel; a number for regression).")],
    task: Annotated[str | None, typer.Option(
        help="Name of the task in the report. Default: the manifest's file name without suffix.",
        show_default=False)] = None,
    kind: Annotated[str | None, typer.Option(
        help="classification, multilabel or regression. Default: multilabel if every label is a "
        "list, regression if every one is a JSON number, else classification.", show_default=False)] = None,
    pooling: Annotated[str, typer.Option(
        help="mean: one embedding per clip (the mean of its valid frames); frame: the MLP learns "
        "from every frame with its clip's label, a clip's prediction is the mean over its frames.")] = "mean",
    epochs: Annotated[int, typer.Option(help="Training epochs of the MLP (fixed; the last epoch is scored).")] = 100,
    lr: Annotated[float, typer.Option(help="AdamW learning rate of the MLP.")] = 1e-3,
    hidden: Annotated[int, typer.Option(help="Width of the MLP's one hidden layer.")] = 256,
    batch_size: Annotated[int, typer.Option(help="MLP training mini-batch (clips, or frames with --pooling frame).")] = 64,
    seed: Annotated[int, typer.Option(help="Seed of the split, the MLP's initial weights and its batch order.")] = 0,
    split: Annotated[str | None, typer.Option(
        help="A manifest column holding train or test for every row: a fixed split instead of the "
        "seeded random one.", show_default=False)] = None,
    test_fraction: Annotated[float, typer.Option(
        "--test-fraction", "--val-fraction",
        help="Held-out share of the clips for the seeded random split (stratified by class for "
        "classification); the metric is reported on it.")] = 0.2,
    device: DeviceOption = "auto",
    dtype: Annotated[str, typer.Option(
        help="float32, bfloat16 or float16: the encoder's weights while embedding (the mel front end "
        "always runs in float32; the MLP trains in float32 on the CPU).")] = "float32",
    batch_seconds: Annotated[float, typer.Option(
        help="Encoder batches hold at most this many seconds of padded audio (bounds its memory).")] = 300.0,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print one JSON object (score, baseline, counts, skipped clips, settings) instead of a table.")] = False,
) -> None:
    """Train a small MLP on frozen encoder embeddings of a labelled manifest and report the
    task's metric (X-Ares style, the paper's Table 5): accuracy, mAP or R².

    The split depends only on the labels and --seed, so two encoders probed with the same
    manifest and seed are scored on the same clips. Unreadable clips are skipped and counted.
    """

    from midashenglm import jsonl
    from midashenglm.modeling.weights import resolve_device, resolve_dtype
    from midashenglm.progress import ProgressBar
    from midashenglm.training.probe import load_encoder, read_probe_manifest, run_probe

    if kind is not None and kind not in KIND_CHOICES:
        raise UserError(f"--kind must be one of {', '.join(KIND_CHOICES)}, got {kind!r}")
    if pooling not in POOLING_CHOICES:
        raise UserError(f"--pooling must be one of {', '.join(POOLING_CHOICES)}, got {pooling!r}")
    if dtype == "auto":
        raise UserError("--dtype: pass float32, bfloat16 or float16")
    torch_dtype = resolve_dtype(dtype)
    rows = read_probe_manifest(data, split_column=split)
    target = resolve_device(device)
    model = load_encoder(encoder, device=target, dtype=torch_dtype)
    task = task or data.stem
    with ProgressBar(len(rows), f"embedding {task}", transient=True) as bar:
        result = run_probe(model, rows, task, kind, pooling=pooling, epochs=epochs, lr=lr, hidden=hidden,
                           batch_size=batch_size, seed=seed, test_fraction=test_fraction,
                           batch_seconds=batch_seconds, progress=bar.advance)
    result.settings.update(encoder=str(encoder), data=str(data), device=str(target), dtype=dtype)

    console = stderr_console()
    if result.skipped:
        shown = result.skipped[:3]
        console.print(f"warning: skipped {len(result.skipped)} of {len(rows)} clips (unreadable): "
                      + "; ".join(markup_text(s) for s in shown)
                      + (" ..." if len(result.skipped) > len(shown) else ""), highlight=False)
    if as_json:
        jsonl.print_line(result.to_dict())
        return
    _print_table(result, encoder, data)


def _print_table(result: Any, encoder: str, data: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    # Two columns, one fact per row: stays readable in a narrow terminal.
    table = Table(title=f"probe: {markup_text(result.task)}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    table.add_row(result.metric, f"{result.score:.4f}")
    table.add_row("baseline", f"{result.baseline:.4f} (ignores the audio)")
    for name, value in result.details.items():
        if name != "scored_classes":
            table.add_row(name, f"{value:.4f}")
    table.add_row("kind", f"{result.kind}, {len(result.classes)} classes" if result.classes else result.kind)
    table.add_row("clips", f"{result.train_clips} train, {result.test_clips} test, {len(result.skipped)} skipped")
    table.add_row("pooling", f"{result.pooling} (embed_dim {result.embed_dim})")
    table.add_row("encoder", markup_text(quote_name(encoder)))
    table.add_row("data", markup_text(quote_name(data)))
    Console().print(table)
