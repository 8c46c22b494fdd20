"""Pretrained parts of a new model: a Dasheng encoder, a text decoder, and the model built from them.

``midashenglm init --encoder-weights/--decoder-weights`` assembles the alignment stage's
starting point with these; :mod:`midashenglm.default_model` rebuilds the shipped default
model on the same path (its base decoder from an installed GGUF, the special tokens added
the same way). Heavy imports (torch, transformers) happen inside the functions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from midashenglm.errors import UserError
from midashenglm.terminal import quote_name


def is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # e.g. a name longer than the file system allows
        return False


def one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


@dataclass
class Pretrained:
    """A pretrained part of a new model: its config, its tensors (the part's own key names)."""

    source: str  # what the summary line names
    tensors: Callable[[], Iterator[tuple[str, Any]]]
    config: Any = None  # the encoder's DashengConfig
    text_config: dict[str, Any] = field(default_factory=dict)  # the decoder's
    tokenizer: Any = None
    tied: bool = False  # the decoder's lm_head is its input embedding (may be absent from the files)


def pretrained_encoder(spec: str) -> Pretrained:
    """--encoder-weights: an original Dasheng .pt, or a MiDashengLM checkpoint's audio_encoder.*."""
    from midashenglm.checkpoint import CheckpointError, load_dasheng_checkpoint
    from midashenglm.modeling.weights import (
        load_config,
        normalize_key,
        resolve_checkpoint,
        weight_files,
    )

    path = Path(spec).expanduser()
    if path.suffix == ".pt" or is_file(path):
        if not is_file(path):
            raise UserError(f"--encoder-weights {quote_name(path)}: no such file")
        try:
            encoder = load_dasheng_checkpoint(path)
        except CheckpointError as err:
            raise UserError(f"--encoder-weights {one_line(err)}") from None
        state = encoder.state_dict()
        return Pretrained(str(spec), lambda: iter(state.items()), config=encoder.config)
    try:
        folder = resolve_checkpoint(spec)
        config = load_config(folder).audio_encoder_config
        files = weight_files(folder)
    except CheckpointError as err:
        raise UserError(f"--encoder-weights {one_line(err)}") from None

    def own_name(key: str) -> str | None:
        name = normalize_key(key)  # init_bn.1.* -> init_bn.*, stored front-end constants dropped
        if name is None or not name.startswith("audio_encoder."):
            return None
        return name.removeprefix("audio_encoder.")

    if next(_read_tensors(files, own_name, names_only=True), None) is None:
        raise UserError(f"--encoder-weights {quote_name(folder)}: holds no audio_encoder.* weights")
    return Pretrained(str(spec), lambda: _read_tensors(files, own_name), config=config)


def pretrained_decoder(
    spec: str | None,
    gguf: str | None,
    dtype: Any,
    *,
    want_tokenizer: bool,
    expect: tuple[str, dict[str, Any]] | None,
) -> Pretrained:
    """--decoder-weights (+ --decoder-gguf): a transformers causal LM, or Qwen2.5-Omni's thinker.

    ``expect``: an explicit --decoder, checked against the config before any weight is read
    (a GGUF's config comes with its weights).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, PretrainedConfig

    def check(text_config: dict[str, Any]) -> None:
        if expect is not None:
            check_agrees(expect[0], expect[1], text_config, f"--decoder-weights {spec}")

    if spec is None:  # --decoder-gguf PATH alone: the folder is the file's
        if gguf is None or not is_file(Path(gguf)):
            raise UserError(
                f"--decoder-gguf {gguf}: no such file; or give --decoder-weights, the folder or Hub id holding it"
            )
        spec, gguf = str(Path(gguf).parent), Path(gguf).name
    elif gguf is None and spec.endswith(".gguf") and is_file(Path(spec)):
        spec, gguf = str(Path(spec).parent), Path(spec).name
    from midashenglm.modeling.weights import _looks_local

    if _looks_local(spec) and not Path(spec).expanduser().exists():
        raise UserError(f"--decoder-weights {quote_name(spec)}: no such folder")
    if gguf is not None and Path(spec).is_dir() and not is_file(Path(spec) / gguf):
        raise UserError(f"--decoder-gguf {gguf}: no such file in {quote_name(spec)}")
    option = f"--decoder-weights {spec}" + (f" --decoder-gguf {gguf}" if gguf else "")
    kwargs: dict[str, Any] = {"gguf_file": gguf} if gguf else {}
    if gguf is None:  # the config says what it is (a GGUF's would be parsed twice)
        try:
            raw, _ = PretrainedConfig.get_config_dict(spec)
        except (OSError, ValueError) as err:
            raise UserError(f"{option}: cannot read its config.json ({one_line(err)})") from None
        if raw.get("model_type") in ("midashenglm", "miaudiollm"):
            raise UserError(
                f"{option}: a MiDashengLM checkpoint, not a text decoder (it can be --encoder-weights)"
            )
        if raw.get("model_type") == "qwen2_5_omni":
            omni = _omni_text_config(raw, option)
            check(omni)
            return _omni_thinker(spec, omni, option, want_tokenizer=want_tokenizer)
        check(raw)
    try:
        if gguf:  # dequantised: a plain causal LM whatever kernels transformers has for packed blocks
            from transformers import GgufConfig

            model_kwargs = {**kwargs, "quantization_config": GgufConfig(gguf_file=gguf, dequantize=True)}
        else:
            model_kwargs = kwargs
        llm = AutoModelForCausalLM.from_pretrained(spec, dtype=dtype, **model_kwargs)
        tok = AutoTokenizer.from_pretrained(spec, **kwargs) if want_tokenizer else None
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
        raise UserError(
            f"{option}: cannot load it as a transformers causal LM ({one_line(err)})"
        ) from None
    text_config = _clean_text_config(llm.config.to_dict())
    check(text_config)
    state = llm.state_dict()
    source = f"{spec} ({gguf})" if gguf else spec
    tied = bool(getattr(llm.config, "tie_word_embeddings", False))
    return Pretrained(
        source, lambda: iter(state.items()), text_config=text_config, tokenizer=tok, tied=tied
    )


def _omni_text_config(raw: dict[str, Any], option: str) -> dict[str, Any]:
    """The text config of a Qwen2.5-Omni config.json (``thinker_config.text_config``)."""
    thinker = raw.get("thinker_config") or {}
    text = dict(thinker.get("text_config") or {})
    if not text.get("hidden_size"):
        raise UserError(f"{option}: a Qwen2.5-Omni config without thinker_config.text_config")
    text.setdefault("model_type", "qwen2_5_omni_text")
    for holder in (thinker, raw):  # older configs keep the flag a level up
        if "tie_word_embeddings" not in text and "tie_word_embeddings" in holder:
            text["tie_word_embeddings"] = holder["tie_word_embeddings"]
    return _clean_text_config(text)


def _omni_thinker(spec: str, text: dict[str, Any], option: str, *, want_tokenizer: bool) -> Pretrained:
    """Qwen2.5-Omni: its thinker's text model (``thinker.model.*``, ``thinker.lm_head.*``) is a
    Qwen2 causal LM; the audio and vision towers, the talker and token2wav are not read."""
    from transformers import AutoTokenizer, PretrainedConfig

    from midashenglm.checkpoint import CheckpointError
    from midashenglm.modeling.weights import resolve_checkpoint, weight_files

    try:
        folder = resolve_checkpoint(spec)
        files = weight_files(folder)
    except CheckpointError as err:
        raise UserError(f"{option}: {one_line(err)}") from None

    def own_name(key: str) -> str | None:
        if not key.startswith(("thinker.model.", "thinker.lm_head.")):
            return None  # the audio and vision towers, the talker, token2wav
        return key.removeprefix("thinker.")

    tok = None
    if want_tokenizer:  # a neutral config: AutoTokenizer would parse the Omni config.json itself
        tok = AutoTokenizer.from_pretrained(str(folder), config=PretrainedConfig())
    return Pretrained(
        f"{spec} (Qwen2.5-Omni thinker)",
        lambda: _read_tensors(files, own_name),
        text_config=text,
        tokenizer=tok,
        tied=bool(text.get("tie_word_embeddings", False)),
    )


def _clean_text_config(data: dict[str, Any]) -> dict[str, Any]:
    """A loaded model's config as a text_config: without where it came from and how it was stored."""
    dropped = {"_name_or_path", "_model_name_or_path", "transformers_version", "dtype", "torch_dtype",
               "quantization_config", "architectures", "id2label", "label2id"}
    return {k: v for k, v in data.items() if k not in dropped}


def _read_tensors(files: list[Path], own_name: Callable[[str], str | None], *,
                  names_only: bool = False) -> Iterator[tuple[str, Any]]:
    """(own name, tensor) of the stored keys that ``own_name`` maps; other tensors are not read."""
    from midashenglm.modeling.weights import iter_tensors, open_safetensors

    for file in files:
        if file.suffix != ".safetensors":
            yield from ((n, t) for k, t in iter_tensors([file]) if (n := own_name(k)) is not None)
            continue
        with open_safetensors(file) as shard:
            for key in shard.keys():  # noqa: SIM118 - safe_open is not a dict
                name = own_name(key)
                if name is not None:
                    yield name, None if names_only else shard.get_tensor(key)


def check_agrees(given: str, explicit: dict[str, Any], actual: dict[str, Any], source: str) -> None:
    """An explicit --encoder/--decoder must describe the shape the weights have (the keys both state)."""
    from midashenglm.modeling.config import _QWEN2_ALIASES

    def norm(key: str, value: Any) -> Any:
        return "qwen2" if key == "model_type" and value in _QWEN2_ALIASES else value

    keys = ("model_type", "embed_dim", "depth", "num_heads", "hidden_size", "intermediate_size",
            "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size")
    differ = [f"{k} {explicit[k]} vs {actual[k]}" for k in keys
              if k in explicit and k in actual and norm(k, explicit[k]) != norm(k, actual[k])]
    if differ:
        raise UserError(
            f"{given} disagrees with {source} ({', '.join(differ)}): leave {given.split()[0]} out"
        )


def add_chat_tokens(tokenizer: Any) -> list[str]:
    """Add the ChatML and audio special tokens the processor needs and the tokenizer lacks."""
    from midashenglm.processing import (
        AUDIO_BOS_TOKEN,
        AUDIO_EOS_TOKEN,
        AUDIO_TOKEN,
        IM_END,
        IM_START,
    )

    vocab = tokenizer.get_vocab()
    needed = (IM_START, IM_END, AUDIO_BOS_TOKEN, AUDIO_TOKEN, AUDIO_EOS_TOKEN)
    missing = [t for t in needed if t not in vocab]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    return missing


def assemble_model(
    config: Any, enc: Pretrained | None, dec: Pretrained | None, *, seed: int, dtype: Any, vocab: int,
    mean_resizing: bool = True,
) -> Any:
    """The model of ``config``: pretrained parts copied in (every key checked), the rest random.

    A pretrained decoder whose embedding has fewer than ``vocab`` rows (the tokenizer's
    length, tokens added) is resized (transformers: new rows drawn around the mean of the
    old; ``mean_resizing=False`` when the caller overwrites the new rows anyway).
    """
    import torch

    from midashenglm.checkpoint import CheckpointError
    from midashenglm.modeling.encoder import DashengEncoder
    from midashenglm.modeling.model import MiDashengLM
    from midashenglm.modeling.projector import AudioProjector
    from midashenglm.modeling.weights import load_state

    torch.manual_seed(seed)
    if dec is None:
        model = MiDashengLM(config)  # random everywhere, as without pretrained parts
    else:  # no random decoder to throw away: allocate once, fill part by part
        model = MiDashengLM.build_empty(config, dtype, "cpu")
        enc_config = config.audio_encoder_config
        if enc is None:
            model.audio_encoder.load_state_dict(DashengEncoder(enc_config).state_dict())
        projector = AudioProjector(
            enc_config.embed_dim, config.text_config.hidden_size, config.subsample_factor
        )
        model.audio_projector.load_state_dict(projector.state_dict())
    parts = ((enc, model.audio_encoder, "--encoder-weights"), (dec, model.decoder, "--decoder-weights"))
    for part, module, option in parts:
        if part is None:
            continue
        optional = {"lm_head.weight"} if part.tied else set()
        try:
            load_state(module, part.tensors(), source=f"{option} {part.source}", optional=optional)
        except CheckpointError as err:
            raise UserError(one_line(err)) from None
    if dec is not None and dec.tied:
        model.decoder.tie_weights()
    if vocab > config.text_config.vocab_size:
        model.decoder.resize_token_embeddings(vocab, mean_resizing=mean_resizing)
        model.config.text_config.vocab_size = vocab
    return model
