"""``midashenglm plot RUN_DIR``: loss and lr curves from metrics.jsonl."""

from __future__ import annotations

import json

import pytest

from midashenglm.errors import UserError
from midashenglm.training.plot import plot_run, read_curves


def write_metrics(run_dir, steps=40):
    rows = []
    for step in range(1, steps + 1):
        rows.append({"step": step, "loss": 5.0 / step ** 0.5, "lr": 1e-4 * min(1.0, step / 10), "grad_norm": 1.0,
                     "samples_per_s": 3.0, "audio_seconds_per_s": 30.0, "tokens_per_s": 900.0,
                     "padding_fraction": 0.1, "memory_mib": 512, "epoch": step / steps, "time": 1.0 * step,
                     "a_key_from_the_future": [1, 2]})
        if step % 10 == 0:
            rows.append({"step": step, "val_loss": 6.0 / step ** 0.5})
    text = "".join(json.dumps(row) + "\n" for row in rows) + '{"step": 41, "loss": 0.'  # torn last line
    (run_dir / "metrics.jsonl").write_text(text)


def test_plot_draws_a_png(tmp_path):
    import matplotlib.image

    write_metrics(tmp_path)
    out = plot_run(tmp_path)
    assert out == tmp_path / "curves.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(out)
    assert image.shape == (720, 960, 4)  # 8 x 6 inches at 120 dpi, RGBA
    assert image[..., :3].std() > 0.05  # something was drawn

    other = plot_run(tmp_path, tmp_path / "plots" / "run.png")
    assert other == tmp_path / "plots" / "run.png" and other.stat().st_size > 1000


def test_curves_skip_torn_lines_and_odd_values(tmp_path):
    write_metrics(tmp_path, steps=20)
    with (tmp_path / "metrics.jsonl").open("a") as fh:
        fh.write("\n" + json.dumps({"step": 5, "loss": 9.0}) + "\n")  # a resumed run logged step 5 again
        fh.write(json.dumps({"step": 21, "loss": None, "lr": "high"}) + "\n")
        fh.write('{"step": 22, "loss": NaN}\n')
    curves = read_curves(tmp_path / "metrics.jsonl")
    assert [s for s, _ in curves["loss"]] == list(range(1, 21))
    assert dict(curves["loss"])[5] == 9.0
    assert curves["val_loss"] == [(10.0, 6.0 / 10 ** 0.5), (20.0, 6.0 / 20 ** 0.5)]
    assert len(curves["lr"]) == 20


def test_missing_or_empty_metrics_name_the_file(tmp_path):
    with pytest.raises(UserError, match="metrics.jsonl: no such file"):
        plot_run(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "time": 0.5}\n{"step": 2, "lo')
    with pytest.raises(UserError, match=r"metrics\.jsonl: no rows"):
        plot_run(tmp_path)
    assert not (tmp_path / "curves.png").exists()
