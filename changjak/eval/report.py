"""What an evaluation leaves behind: the report, the samples, a table and a chart.

    eval/report.json     scores of base and fine-tuned, the gate's decision, the eval settings
    eval/samples.jsonl   prompt, reference, base output, fine-tuned output per test record
    eval/report.md       the comparison as a Markdown table (what a reviewer reads)
    eval/comparison.png  grouped bars, base vs fine-tuned, one panel per scale
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from changjak.eval.gate import GateResult

if TYPE_CHECKING:
    from rich.table import Table

# name -> (label, higher is better)
METRICS: dict[str, tuple[str, bool]] = {
    "perplexity": ("perplexity", False),
    "rouge1": ("ROUGE-1", True),
    "rouge2": ("ROUGE-2", True),
    "rougeL": ("ROUGE-L", True),
    "bleu": ("BLEU", True),
    "chrf": ("chrF", True),
}
# Panels of the chart: metrics that share a scale.
PANELS = ((("rouge1", "rouge2", "rougeL"), "F1 (0-1)"), (("bleu", "chrf"), "score (0-100)"),
          (("perplexity",), "lower is better"))


@dataclass(frozen=True)
class EvalReport:
    run_id: str
    base: dict[str, float]
    finetuned: dict[str, float]
    gate: GateResult
    n_samples: int
    rouge_l_gain_se: float = 0.0  # paired standard error of the fine-tuned minus base ROUGE-L


def write(report: EvalReport, samples: list[dict[str, Any]], eval_settings: dict[str, Any],
          out_dir: Path) -> Path:
    """Write the four files into ``out_dir`` (created) and return it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    document = {**asdict(report), "eval_settings": eval_settings}
    (out_dir / "report.json").write_text(json.dumps(document, ensure_ascii=False, indent=2) + "\n",
                                         encoding="utf-8")
    with (out_dir / "samples.jsonl").open("w", encoding="utf-8") as f:
        for sample in samples:
            f.write(json.dumps(sample, ensure_ascii=False) + "\n")
    (out_dir / "report.md").write_text(markdown(report), encoding="utf-8")
    comparison_chart(report, out_dir / "comparison.png")
    return out_dir


def _rows(report: EvalReport):
    for name, (label, higher_is_better) in METRICS.items():
        base, tuned = report.base[name], report.finetuned[name]
        better = tuned > base if higher_is_better else tuned < base
        yield label, base, tuned, tuned - base, better


def markdown(report: EvalReport) -> str:
    lines = [f"# Evaluation of run `{report.run_id}`", "",
             f"{report.n_samples} test records, greedy decoding.", "",
             "| metric | base | fine-tuned | Δ |", "|---|---:|---:|---:|"]
    lines += [f"| {label} | {base:.4f} | {tuned:.4f} | {delta:+.4f} |" for label, base, tuned, delta, _ in
              _rows(report)]
    lines += ["", f"ROUGE-L gain {report.finetuned['rougeL'] - report.base['rougeL']:+.4f} "
              f"± {report.rouge_l_gain_se:.4f} (paired standard error).", ""]
    lines += [f"**Gate: {'passed' if report.gate.passed else 'failed'}**", ""]
    lines += [f"- {failure}" for failure in report.gate.failures]
    return "\n".join(lines).rstrip() + "\n"


def table(report: EvalReport) -> Table:
    from rich.table import Table

    verdict = "[green]passed" if report.gate.passed else "[red]failed"
    result = Table(title=f"base vs fine-tuned on {report.n_samples} test records (gate {verdict}[/])")
    for column in ("metric", "base", "fine-tuned", "Δ"):
        result.add_column(column, justify="left" if column == "metric" else "right")
    for label, base, tuned, delta, better in _rows(report):
        colour = "green" if better else "red" if delta else "white"
        result.add_row(label, f"{base:.4f}", f"{tuned:.4f}", f"[{colour}]{delta:+.4f}[/]")
    return result


def comparison_chart(report: EvalReport, path: Path) -> Path:
    """Grouped bars, base vs fine-tuned, one panel per metric scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(11, 3.8), dpi=100,
                             gridspec_kw={"width_ratios": [len(names) for names, _ in PANELS]})
    width = 0.38
    for ax, (names, ylabel) in zip(axes, PANELS, strict=True):
        xs = range(len(names))
        for offset, (label, scores, colour) in zip((-width / 2, width / 2), (
                ("base", report.base, "tab:gray"), ("fine-tuned", report.finetuned, "tab:blue")), strict=True):
            values = [scores[name] if math.isfinite(scores[name]) else math.nan for name in names]  # inf: no bar
            bars = ax.bar([x + offset for x in xs], values, width, label=label, color=colour)
            ax.bar_label(bars, fmt="%.3g", fontsize=8)
        ax.set_xticks(list(xs), [METRICS[name][0] for name in names])
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
        ax.margins(y=0.15)  # room for the value labels
    fig.legend(*axes[0].get_legend_handles_labels(), loc="upper right", ncols=2, frameon=False)
    fig.suptitle(f"changjak eval: run {report.run_id[:12]}, {report.n_samples} records", x=0.02, ha="left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
