"""``midashenglm evaluate``, and the hook where the benchmark runner and report add theirs."""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path
from typing import Annotated

import typer

from midashenglm.errors import UserError

# Modules of other parts of the evaluation suite that add commands when present.
EXTRA_COMMAND_MODULES = ("midashenglm.evaluation.runner", "midashenglm.evaluation.report")


def register(app: typer.Typer) -> None:
    _register_evaluate(app)
    for name in EXTRA_COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name and name.startswith(err.name):
                continue  # not part of this installation yet
            raise
        module.register_commands(app)


def _format_value(metric: str, value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:.4f} ({100 * value:.2f} %)"


def _register_evaluate(app: typer.Typer) -> None:
    @app.command("evaluate")
    def evaluate(
        files: Annotated[list[Path], typer.Argument(
            help="Result files in the official JSONL format (one JSON object per line with "
                 "dataset_name, model_output and the reference: text, label or answer).")],
        metric: Annotated[str | None, typer.Option(
            help="Metric to use instead of the dataset's own: wer, cer, accuracy, "
                 "gender_accuracy, map, qa_accuracy, fense, date, mecat, bleu, meteor, "
                 "rouge_l, cider_d, spice, spider.")] = None,
        lang: Annotated[str | None, typer.Option(
            help="WER: language of rows that name none (no 'lang' field, no <|xx|> tag "
                 "in the prompt), e.g. en, zh, yue, th.")] = None,
        model_name: Annotated[str | None, typer.Option(
            help="mAP: split outputs by this model's rule instead of each row's "
                 "model_name (MiDashengLM ';', Qwen ';' or ',', Kimi ',').")] = None,
        sbert_model: Annotated[str | None, typer.Option(
            help="FENSE/DATE: Sentence-BERT folder or cached Hub name "
                 "[default: paraphrase-TinyBERT-L6-v2, or $MIDASHENGLM_SBERT_MODEL].")] = None,
        echecker: Annotated[str | None, typer.Option(
            help="FENSE/DATE: fluency-error detector .ckpt file or name looked up in "
                 "$FENSE_DATA [default: echecker_clotho_audiocaps_base, or "
                 "$MIDASHENGLM_ECHECKER]; 'none' turns the penalty off.")] = None,
        echecker_tokenizer: Annotated[str | None, typer.Option(
            help="FENSE/DATE: tokenizer folder of the error detector [default: the "
                 "checkpoint's model_type, bert-base-uncased, from the HF cache].")] = None,
        mecat_metric: Annotated[str, typer.Option(
            help="MECAT: score each group with 'date' (MECAT's metric) or 'fense'.")] = "date",
        device: Annotated[str, typer.Option(help="FENSE/DATE: torch device.")] = "cpu",
        batch_size: Annotated[int, typer.Option(help="FENSE/DATE: batch size.")] = 32,
        as_json: Annotated[bool, typer.Option(
            "--json", help="Print one JSON object per file: file, dataset, metric, value "
                           "(a fraction), count, skipped, skipped_reasons.")] = False,
        details: Annotated[bool, typer.Option(
            help="Add each metric's details (per-category values, unpenalised FENSE...).")
        ] = False,
        max_problems: Annotated[int, typer.Option(
            help="How many unscored lines to list per file (all are counted).")] = 10,
    ) -> None:
        """Score result files with the paper's metrics and print a table (or JSON lines).

        The metric comes from each file's dataset_name (LibriSpeech -> WER, NSynth ->
        accuracy, FSD50K -> mAP, MuChoMusic -> closed-QA accuracy, AudioCaps -> FENSE...)
        unless --metric is given. Lines that cannot be scored (invalid JSON, missing or
        empty fields) are listed on stderr as FILE:LINE: reason and counted as skipped.
        Values are fractions: 0.0372 is 3.72 % WER.
        """
        from rich.console import Console
        from rich.table import Table

        from midashenglm.evaluation.scoring import score_file

        out, err = Console(), Console(stderr=True, soft_wrap=True)
        options = {
            "lang": lang, "model_name": model_name, "sbert_model": sbert_model,
            "echecker_model": echecker, "echecker_tokenizer": echecker_tokenizer,
            "mecat_metric": mecat_metric, "device": device, "batch_size": batch_size,
        }
        results, failed = [], 0
        for path in files:
            try:
                with err.status(f"scoring {path}"):
                    result = score_file(path, metric, **options)
            except (UserError, FileNotFoundError, ValueError) as error:
                where = "" if str(path) in str(error) else f"{path}: "
                err.print(f"[bold red]error:[/] {where}{error}", highlight=False)
                failed += 1
                continue
            for problem in result.problems[:max_problems]:
                err.print(f"[yellow]skipped[/] {problem}", highlight=False)
            if len(result.problems) > max_problems:
                err.print(f"[yellow]skipped[/] {path}: ... and "
                          f"{len(result.problems) - max_problems} more", highlight=False)
            for note in result.empty_outputs[:max_problems]:
                err.print(f"[yellow]empty output, scored as a wrong answer[/] {note}",
                          highlight=False)
            results.append(result)
            if as_json:
                print(json.dumps(result.to_json(details=details), ensure_ascii=False),
                      flush=True)

        if not as_json and results:
            table = Table(title="Evaluation")
            for column in ("file", "dataset", "metric", "value", "count", "skipped"):
                table.add_column(column, justify="right" if column in (
                    "value", "count", "skipped") else "left")
            for r in results:
                table.add_row(Path(r.file).name, r.dataset or "-", r.metric,
                              _format_value(r.metric, r.value), str(r.count), str(r.skipped))
            out.print(table)
            if details:
                for r in results:
                    out.print(f"[bold]{r.file}[/] {r.metric} details:", highlight=False)
                    out.print_json(json.dumps(r.details, default=str))
        if failed:
            raise typer.Exit(2)
