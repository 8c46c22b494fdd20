"""The ``midashenglm`` command line.

User mistakes (a missing folder, a bad config, unreadable audio) print one
``error:`` line and exit with status 2, without a traceback.
"""

from __future__ import annotations

import importlib
import sys

import typer

from midashenglm.errors import UserError, stderr_console
from midashenglm.terminal import markup_text

app = typer.Typer(
    name="midashenglm",
    help="MiDashengLM: audio understanding with a Dasheng encoder, 5 Hz audio tokens and any "
    "causal-LM decoder. Load the published checkpoints, inspect them, create new ones.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err_console = stderr_console()


# Each area of the package adds its commands through a ``register(app)`` function;
# the modules import their heavy dependencies inside the commands, so --help stays fast.
COMMAND_MODULES = [
    "midashenglm.commands",  # info, init: the model itself
    "midashenglm.default_model.commands",  # default-model pack/path/info: the shipped model
    "midashenglm.inference.commands",
    "midashenglm.serve.commands",
    "midashenglm.evaluation.commands",
    "midashenglm.bench.commands",
    "midashenglm.data.commands",
    "midashenglm.training.commands",  # train, finetune, plot, probe
    "midashenglm.curation.commands",  # curate
]


def _register_commands() -> None:
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name and name.startswith(err.name):
                continue  # that area is not part of this installation
            raise
        module.register(app)


def _user_errors() -> tuple[type[BaseException], ...]:
    from midashenglm.audio import AudioError
    from midashenglm.checkpoint import CheckpointError

    return (UserError, AudioError, CheckpointError, FileNotFoundError, ValueError)


def main() -> None:
    from midashenglm.curation.commands import split_ray_option

    try:
        app(args=split_ray_option(sys.argv[1:]))
    except _user_errors() as err:
        # One line, literal: a file name in the message can neither forge lines nor be markup.
        err_console.print(f"[bold red]error:[/] {markup_text(str(err))}", highlight=False)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        # Ctrl-C is the user's choice, not a crash: no traceback (a training run saves first).
        err_console.print("interrupted", highlight=False)
        raise SystemExit(130) from None
    except SystemExit as done:
        # Typer turns Ctrl-C into exit status 130 itself, silently: say why the command ended.
        if done.code == 130 and _caused_by_interrupt(done):
            err_console.print("interrupted", highlight=False)
        raise


def _caused_by_interrupt(error: BaseException | None) -> bool:
    seen = 0
    while error is not None and seen < 10:
        if isinstance(error, KeyboardInterrupt):
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


_register_commands()

if __name__ == "__main__":  # pragma: no cover
    main()
