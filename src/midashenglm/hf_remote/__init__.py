"""The processor remote code that checkpoints carry, for ``transformers.AutoProcessor``.

A saved checkpoint holds :data:`REMOTE_CODE_FILE` (``processing_midashenglm.py``, the file
name of the published checkpoints; its source is the file beside this one) and ``auto_map``
entries pointing at it in ``processor_config.json``, ``preprocessor_config.json`` and
``tokenizer_config.json``, so that ``AutoProcessor.from_pretrained(folder,
trust_remote_code=True)`` (what vLLM runs) gets a processor. This package's own loader
never imports any of it: these functions read and copy files as bytes.

A checkpoint that came with remote code of its own (a published one) keeps it:
:func:`read_published` captures its files and configs as stored, and
:func:`write_published` writes them back unchanged instead of the package's.

Nothing here imports transformers or the rest of the package.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REMOTE_CODE_FILE = "processing_midashenglm.py"
PROCESSOR_CLASS = "MiDashengLMProcessor"
AUTO_MAP = {"AutoProcessor": f"{Path(REMOTE_CODE_FILE).stem}.{PROCESSOR_CLASS}"}
# The first line of the package's own remote code: a file that starts with it is replaced by
# the current version on save; any other is a checkpoint's own code and is kept.
OWN_MARKER = b"# midashenglm-remote-code:"

PROCESSOR_CONFIG = "processor_config.json"
PREPROCESSOR_CONFIG = "preprocessor_config.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
_CONFIGS = (PROCESSOR_CONFIG, PREPROCESSOR_CONFIG, TOKENIZER_CONFIG)
_TOKENIZER_FIELDS = ("auto_map", "processor_class")
_RELATIVE_IMPORT = re.compile(rb"^\s*from\s+\.(\w*)\s+import\s+([\w, ]+)", re.MULTILINE)


def source_path() -> Path:
    """The package's own ``processing_midashenglm.py``."""
    return Path(__file__).with_name(REMOTE_CODE_FILE)


def is_own(content: bytes) -> bool:
    """Whether a ``processing_midashenglm.py`` is (any version of) the package's own."""
    return content.startswith(OWN_MARKER)


@dataclass(frozen=True)
class PublishedCode:
    """A checkpoint's own processor remote code, as stored (read, never imported)."""

    files: dict[str, bytes]  # the .py files its auto_map needs, by name
    configs: dict[str, bytes]  # processor_config.json / preprocessor_config.json, verbatim
    tokenizer_fields: dict[str, Any] = field(default_factory=dict)  # tokenizer_config.json's


def read_published(folder: str | os.PathLike | None) -> PublishedCode | None:
    """The remote code of ``folder`` when it is not the package's own, else ``None``.

    A folder has remote code of its own when a config maps ``AutoProcessor`` to a module
    that is in the folder and does not start with :data:`OWN_MARKER`, or to another
    repository (``repo--module.Class``). Without such an entry, or when the module file is
    absent, the package's code is written on save.
    """
    if folder is None or not Path(folder).is_dir():
        return None
    folder = Path(folder)
    raw: dict[str, bytes] = {}
    data: dict[str, dict[str, Any]] = {}
    for name in _CONFIGS:
        path = folder / name
        if path.is_file():
            raw[name] = path.read_bytes()
            try:
                loaded = json.loads(raw[name])
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(loaded, dict):
                data[name] = loaded
    maps = [d["auto_map"] for d in data.values() if isinstance(d.get("auto_map"), dict)]
    targets = [m["AutoProcessor"] for m in maps if isinstance(m.get("AutoProcessor"), str)]
    if not targets:
        return None
    foreign = False
    for target in targets:
        if "--" in target:  # code in another repository: nothing to copy, keep the map
            foreign = True
            continue
        file = _module_file(folder, target)
        if file is not None and not is_own(file.read_bytes()):
            foreign = True
    if not foreign:
        return None
    references = [v for m in maps for value in m.values()
                  for v in (value if isinstance(value, list | tuple) else [value])
                  if isinstance(v, str) and "--" not in v]
    files: dict[str, bytes] = {}
    pending = [f for f in (_module_file(folder, ref) for ref in references) if f is not None]
    own_file = folder / REMOTE_CODE_FILE
    if own_file.is_file():
        pending.append(own_file)
    while pending:  # the modules the auto_map names, and what they import relatively
        file = pending.pop()
        if not file.resolve().is_relative_to(folder.resolve()):
            continue  # a reference outside the folder (an absolute path) is not its code
        name = file.resolve().relative_to(folder.resolve()).as_posix()
        if name in files:
            continue
        files[name] = file.read_bytes()
        for module, names in _RELATIVE_IMPORT.findall(files[name]):
            candidates = [module] if module else [n.strip() for n in names.split(b",")]
            for candidate in candidates:
                path = file.parent / (candidate.decode() + ".py")
                if candidate and path.is_file():
                    pending.append(path)
    configs = {name: raw[name] for name in (PROCESSOR_CONFIG, PREPROCESSOR_CONFIG) if name in raw}
    tokenizer = data.get(TOKENIZER_CONFIG, {})
    fields = {k: tokenizer[k] for k in _TOKENIZER_FIELDS if k in tokenizer}
    return PublishedCode(files=files, configs=configs, tokenizer_fields=fields)


def _module_file(folder: Path, reference: str) -> Path | None:
    """The file of ``module.Class`` (or ``package.module.Class``) in ``folder``, if there."""
    module = reference.rpartition(".")[0]
    if not module:
        return None
    path = folder.joinpath(*module.split(".")).with_suffix(".py")
    return path if path.is_file() else None


def write_own(directory: str | os.PathLike, processor_config: dict[str, Any],
              preprocessor_config: dict[str, Any]) -> None:
    """The package's remote code and the three configs' entries for it, in ``directory``
    (where the tokenizer is saved already)."""
    directory = Path(directory)
    (directory / REMOTE_CODE_FILE).write_bytes(source_path().read_bytes())
    registration = {"auto_map": dict(AUTO_MAP), "processor_class": PROCESSOR_CLASS}
    (directory / PROCESSOR_CONFIG).write_text(
        json.dumps({**registration, **processor_config}, indent=2) + "\n")
    (directory / PREPROCESSOR_CONFIG).write_text(
        json.dumps({**preprocessor_config, **registration}, indent=2) + "\n")
    _set_tokenizer_fields(directory, registration)


def write_published(directory: str | os.PathLike, code: PublishedCode,
                    preprocessor_config: dict[str, Any]) -> None:
    """A checkpoint's own remote code and configs, as they were, in ``directory``.

    ``preprocessor_config`` (the feature extractor's description) is written when the
    checkpoint had no ``preprocessor_config.json`` of its own.
    """
    directory = Path(directory)
    for name, content in code.files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    for name in (PROCESSOR_CONFIG, PREPROCESSOR_CONFIG):
        path = directory / name
        if name in code.configs:
            path.write_bytes(code.configs[name])
        elif name == PREPROCESSOR_CONFIG:
            path.write_text(json.dumps(preprocessor_config, indent=2) + "\n")
        else:
            path.unlink(missing_ok=True)  # one left by an earlier save would point elsewhere
    _set_tokenizer_fields(directory, code.tokenizer_fields)


def _set_tokenizer_fields(directory: Path, fields: dict[str, Any]) -> None:
    """``auto_map`` and ``processor_class`` of the saved ``tokenizer_config.json``: exactly
    ``fields`` (absent keys removed)."""
    path = directory / TOKENIZER_CONFIG
    if not path.is_file():
        return
    data = json.loads(path.read_text(encoding="utf-8"))
    for key in _TOKENIZER_FIELDS:
        if key in fields:
            data[key] = fields[key]
        else:
            data.pop(key, None)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
