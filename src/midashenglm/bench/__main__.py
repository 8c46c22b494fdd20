"""``python -m midashenglm.bench ...``: the bench commands alone, without the other areas
of the command line (what scripts/bench_gpu.sh runs on a bare GPU image)."""

from __future__ import annotations

from midashenglm.bench.commands import bench_app


def main() -> None:
    from midashenglm.audio import AudioError
    from midashenglm.checkpoint import CheckpointError
    from midashenglm.errors import UserError, stderr_console

    try:
        bench_app()
    except (UserError, AudioError, CheckpointError, FileNotFoundError, ValueError) as err:
        stderr_console().print(f"[bold red]error:[/] {err}", highlight=False)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
