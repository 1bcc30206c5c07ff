"""The training curve: loss and learning rate against the optimizer step, as one PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def training_curve(log_history: list[dict[str, Any]], path: Path) -> Path:
    """Plot the Trainer's ``state.log_history`` (entries with ``loss`` and ``learning_rate``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = [e for e in log_history if "loss" in e and "step" in e]
    steps = [e["step"] for e in entries]
    fig, loss_ax = plt.subplots(figsize=(7, 4), dpi=100)
    loss_ax.plot(steps, [e["loss"] for e in entries], color="tab:blue", marker=".", label="train loss")
    loss_ax.set_xlabel("optimizer step")
    loss_ax.set_ylabel("loss", color="tab:blue")
    lr_ax = loss_ax.twinx()
    lr_ax.plot(steps, [e.get("learning_rate", 0.0) for e in entries], color="tab:orange", label="learning rate")
    lr_ax.set_ylabel("learning rate", color="tab:orange")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    loss_ax.set_title("changjak LoRA fine-tune")
    loss_ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
