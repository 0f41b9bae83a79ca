"""Loss, validation loss, learning rate and gradient norm of a run against steps and against tokens (PNG)."""

from __future__ import annotations

from pathlib import Path

from megatron_llm.runs.run_summary import read_run


def plot_run(run_dir: Path, output: Path):
    """Write the figure to `output` and return it: rows loss (with val loss), lr, grad norm; columns steps,
    tokens."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = read_run(run_dir)
    seq = int(run.config.get("data", {}).get("seq_length") or 0)
    fig, axes = plt.subplots(3, 2, figsize=(11, 9), sharex="col")
    for col, (xlabel, x_of) in enumerate((("step", lambda r: r["step"]),
                                          ("tokens", lambda r: r.get("consumed_samples", 0) * seq))):
        for row, (key, label) in enumerate((("loss", "loss"), ("lr", "learning rate"), ("grad_norm", "grad norm"))):
            ax = axes[row][col]
            points = [(x_of(r), r[key]) for r in run.steps if r.get(key) is not None]
            ax.plot([p[0] for p in points], [p[1] for p in points], label=label)
            if key == "loss" and run.validation:
                ax.plot([x_of(r) for r in run.validation], [r["val_loss"] for r in run.validation], "o-",
                        label="val loss")
            ax.set_ylabel(label)
            ax.grid(True, alpha=0.3)
            if row == 0:
                ax.legend()
            if row == 2:
                ax.set_xlabel(xlabel)
    fig.suptitle(str(run_dir))
    fig.tight_layout()
    fig.savefig(output, dpi=80)
    plt.close(fig)
    return fig
