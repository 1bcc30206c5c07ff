"""The promotion gate: may a fine-tuned model replace its base? Every threshold in
``settings.eval.gate`` must hold; each one that does not becomes a line saying which and by how much.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from changjak.errors import EvaluationError

if TYPE_CHECKING:
    from changjak.settings import GateSettings

REQUIRED = ("perplexity", "rougeL", "chrf")


@dataclass(frozen=True)
class GateResult:
    passed: bool
    failures: list[str] = field(default_factory=list)


def check(base: dict[str, float], finetuned: dict[str, float], gate: GateSettings, *,
          rouge_l_gain_se: float = 0.0) -> GateResult:
    """Compare the fine-tuned scores with the base's and with the absolute floors.

    ``rouge_l_gain_se`` is the paired standard error of the ROUGE-L gain; with ``gate.rouge_l_gain_z``
    the gain is allowed that many standard errors of slack before it fails.
    """
    for name, scores in (("base", base), ("finetuned", finetuned)):
        missing = [key for key in REQUIRED if key not in scores]
        if missing:
            raise EvaluationError(f"the {name} scores lack {', '.join(missing)}",
                                  hint="pass the dicts that changjak.eval.run computes")
    failures = []

    ratio = finetuned["perplexity"] / base["perplexity"] if base["perplexity"] > 0 else math.inf
    if not ratio <= gate.max_perplexity_ratio:  # also catches NaN
        failures.append(f"perplexity {finetuned['perplexity']:.3f} is {ratio:.3f}x the base's "
                        f"{base['perplexity']:.3f} (max_perplexity_ratio {gate.max_perplexity_ratio})")
    if not finetuned["rougeL"] >= gate.min_rouge_l:
        failures.append(f"ROUGE-L {finetuned['rougeL']:.4f} < min_rouge_l {gate.min_rouge_l}")
    if not finetuned["chrf"] >= gate.min_chrf:
        failures.append(f"chrF {finetuned['chrf']:.2f} < min_chrf {gate.min_chrf}")
    # ROUGE-L lies in [0, 1], so a gain is never below -1: the default -1 never fails.
    gain = finetuned["rougeL"] - base["rougeL"]
    slack = gate.rouge_l_gain_z * rouge_l_gain_se
    if not gain + slack >= gate.min_rouge_l_gain:
        noise = f" + {gate.rouge_l_gain_z} x SE {rouge_l_gain_se:.4f}" if slack else ""
        failures.append(f"ROUGE-L gain {gain:+.4f}{noise} (fine-tuned {finetuned['rougeL']:.4f} - base "
                        f"{base['rougeL']:.4f}) < min_rouge_l_gain {gate.min_rouge_l_gain}")
    return GateResult(passed=not failures, failures=failures)
