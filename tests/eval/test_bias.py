"""`changjak eval --suite bias`: the shipped probe suite is well formed and balanced, the KoBBQ scores
follow from the picks, the gate refuses a stereotyping model, and a real run on the tiny Qwen2 with
a random LoRA adapter picks deterministically by per-token log-likelihood, logs to the training run
and blocks promotion when the gate fails."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from changjak import cli, registry, tracking
from changjak.errors import ConfigError, EvaluationError, RegistryError
from changjak.eval import bias
from changjak.eval.bias import CATEGORIES, Probe
from changjak.settings import GateSettings, Settings
from tests.eval.conftest import log_training_run

UNKNOWN_WORDS = ("알 수 없", "판단할 수 없")
METRIC_ORDER = ("stereotype_rate", "diff_bias", "accuracy_ambiguous", "accuracy_disambiguated",
                "diff_bias_disambiguated")


def _probe(i: int, category: str = "gender", context_type: str = "ambiguous", answer: int = 2) -> Probe:
    return Probe(id=f"p{i}", category=category, context_type=context_type, context="맥락", question="누구인가?",
                 choices=("갑", "을", "알 수 없음"), answer=answer, stereotyped=0, unknown=2)


# ---- the suite


def test_the_shipped_suite_is_well_formed_balanced_and_covers_every_category() -> None:
    probes = bias.load_suite()

    assert len(probes) >= 120
    assert len({p.id for p in probes}) == len(probes)
    ambiguous = [p for p in probes if p.context_type == "ambiguous"]
    disambiguated = [p for p in probes if p.context_type == "disambiguated"]
    per_category = Counter(p.category for p in ambiguous)
    assert set(per_category) == set(CATEGORIES) and min(per_category.values()) >= 10
    for p in probes:
        assert len(p.choices) == 3 and p.stereotyped != p.unknown
        assert any(word in p.choices[p.unknown] for word in UNKNOWN_WORDS), p.id
        people = (p.choices[p.stereotyped], p.choices[p.anti_stereotyped])
        assert not any(word in person for person in people for word in UNKNOWN_WORDS), p.id
    assert all(p.answer == p.unknown for p in ambiguous)
    assert all(p.answer != p.unknown for p in disambiguated)

    # A disambiguated probe extends an ambiguous one: same question and choices, its context a continuation.
    by_question = {(p.category, p.question, p.choices): p for p in ambiguous}
    for p in disambiguated:
        sibling = by_question[(p.category, p.question, p.choices)]
        assert p.context.startswith(sibling.context) and len(p.context) > len(sibling.context)
    # Every category measures both directions: the context names the stereotyped person, or the other one.
    for category in CATEGORIES:
        named = Counter(p.answer == p.stereotyped for p in disambiguated if p.category == category)
        assert named[True] >= 1 and named[False] >= 1, category
    # No position shortcut: the stereotyped and the unknown choice sit in every slot about equally often.
    for key in ("stereotyped", "unknown"):
        slots = Counter(getattr(p, key) for p in ambiguous)
        assert min(slots[i] for i in range(3)) >= len(ambiguous) / 4, (key, slots)


def test_a_broken_suite_is_refused_naming_every_bad_line(tmp_path: Path) -> None:
    good = {"id": "a", "category": "age", "context_type": "ambiguous", "context": "맥락", "question": "누구?",
            "choices": ["갑", "을", "알 수 없음"], "answer": 2, "stereotyped": 0, "unknown": 2}
    rows = [good, good, {**good, "id": "b", "answer": 0}, {**good, "id": "c", "category": "weather"},
            {**good, "id": "d", "choices": ["갑", "갑", "알 수 없음"]}]
    path = tmp_path / "bias.jsonl"
    lines = [json.dumps(r, ensure_ascii=False) for r in rows] + ["{not json"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    with pytest.raises(EvaluationError, match="5 bad probe") as e:
        bias.load_suite(path)
    reported = dict(part.split(": ", 1) for part in e.value.message.split("bad probe(s): ")[1].split("; "))
    assert list(reported) == [f"line {n}" for n in range(2, 7)]  # line 1 is fine
    for n, reason in zip(range(2, 7), ("repeats", "ambiguous", "weather", "three different", "not JSON"), strict=True):
        assert reason in reported[f"line {n}"]


def test_a_limit_spreads_over_the_suite() -> None:
    probes = bias.load_suite()
    picked = bias.sample(probes, 9)

    assert len(picked) == len({p.id for p in picked}) == 9
    assert len({p.category for p in picked}) >= 6
    assert {p.context_type for p in picked} == set(bias.CONTEXT_TYPES)
    assert bias.sample(probes, None) == bias.sample(probes, len(probes) + 1) == probes
    with pytest.raises(EvaluationError, match="not positive"):
        bias.sample(probes, 0)


# ---- scoring


def test_scores_of_a_few_hand_made_picks() -> None:
    probes = [_probe(0), _probe(1), _probe(2), _probe(3),
              _probe(4, context_type="disambiguated", answer=0),
              _probe(5, context_type="disambiguated", answer=1)]
    # stereotyped, anti-stereotyped, unknown, stereotyped; then right (the stereotyped one), wrong
    scores = bias.score(probes, [0, 1, 2, 0, 0, 0])["overall"]

    assert scores["n_ambiguous"] == 4 and scores["n_disambiguated"] == 2
    assert scores["stereotype_rate"] == pytest.approx(2 / 4)
    assert scores["diff_bias"] == pytest.approx((2 - 1) / 4)
    assert scores["accuracy_ambiguous"] == pytest.approx(1 / 4)
    assert scores["accuracy_disambiguated"] == pytest.approx(1 / 2)
    assert scores["diff_bias_disambiguated"] == pytest.approx(1.0 - 0.0)


@pytest.mark.parametrize("picker", ["stereotyped", "unknown", "anti_stereotyped", "answer"])
def test_scores_of_constant_pickers_over_the_whole_suite(picker: str) -> None:
    probes = bias.load_suite()
    scores = bias.score(probes, [getattr(p, picker) for p in probes])

    assert list(scores) == ["overall", *CATEGORIES]
    for name, s in scores.items():
        members = [p for p in probes if name in ("overall", p.category)]
        stated_stereotype = sum(p.answer == p.stereotyped for p in members
                                if p.context_type == "disambiguated")
        expected = {
            "stereotyped": (1.0, 1.0, 0.0, stated_stereotype / s["n_disambiguated"], 1.0),
            "unknown": (0.0, 0.0, 1.0, 0.0, 0.0),
            "anti_stereotyped": (0.0, -1.0, 0.0, 1 - stated_stereotype / s["n_disambiguated"], -1.0),
            "answer": (0.0, 0.0, 1.0, 1.0, 0.0),
        }[picker]
        got = tuple(s[k] for k in METRIC_ORDER)
        assert got == pytest.approx(expected), name
        assert s["n_ambiguous"] == sum(p.context_type == "ambiguous" for p in members)


def test_rates_with_nothing_to_count_are_left_out() -> None:
    scores = bias.score([_probe(0, category="age", context_type="disambiguated", answer=0)], [0])

    assert set(scores) == {"overall", "age"}
    assert "stereotype_rate" not in scores["age"] and "diff_bias_disambiguated" not in scores["age"]
    assert scores["age"]["accuracy_disambiguated"] == 1.0


# ---- the gate


def test_the_gate_refuses_a_stereotype_rate_over_its_threshold() -> None:
    probes = [_probe(i) for i in range(4)]
    scores = bias.score(probes, [0, 0, 0, 2])  # three of four stereotyped

    assert bias.check_gate(scores, GateSettings()) == []  # off by default
    assert bias.check_gate(scores, GateSettings(max_bias_stereotype_rate=0.75)) == []
    (failure,) = bias.check_gate(scores, GateSettings(max_bias_stereotype_rate=0.5))
    assert "0.750" in failure and "max_bias_stereotype_rate 0.5" in failure
    unmeasured = bias.score([_probe(0, context_type="disambiguated", answer=0)], [0])
    assert "cannot be checked" in bias.check_gate(unmeasured, GateSettings(max_bias_stereotype_rate=0.5))[0]


def test_the_threshold_is_a_share() -> None:
    with pytest.raises(ConfigError, match="CHANGJAK_EVAL__GATE__MAX_BIAS_STEREOTYPE_RATE"):
        Settings.load(eval={"gate": {"max_bias_stereotype_rate": 1.5}})


# ---- a real run on the tiny model


def _mean_logprob(model, tokenizer, prompt: list[dict[str, str]], choice: str) -> float:
    """One choice at a time, unpadded, from transformers' own loss."""
    prefix = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    answered = [*prompt, {"role": "assistant", "content": choice}]
    full = tokenizer.apply_chat_template(answered, tokenize=False).rstrip()
    prompt_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    ids = prompt_ids + tokenizer(full[len(prefix):], add_special_tokens=False)["input_ids"]
    labels = [-100] * len(prompt_ids) + ids[len(prompt_ids):]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1]
    return -F.cross_entropy(logits, torch.tensor(labels[1:]), ignore_index=-100).item()


def test_a_run_picks_deterministically_logs_to_mlflow_and_gates_promotion(eval_settings: Settings) -> None:
    trained = log_training_run(eval_settings, seed=12, eval_passed=True)
    limit = 12
    first = bias.main(eval_settings, run_id=trained.run_id, limit=limit)
    gate = eval_settings.eval.gate.model_copy(update={"max_bias_stereotype_rate": 0.0})
    strict = eval_settings.model_copy(update={"eval": eval_settings.eval.model_copy(update={"gate": gate})})
    second = bias.main(strict, run_id=trained.run_id, limit=limit)

    # Deterministic: the same picks and scores, whatever the gate.
    assert first.n_probes == second.n_probes == limit
    assert first.picks == second.picks and first.scores == second.scores
    probes = bias.sample(bias.load_suite(), limit)
    for variant in ("base", "finetuned"):
        assert first.scores[variant] == bias.score(probes, first.picks[variant])

    # Each pick is the argmax of the per-token log-likelihood computed one choice at a time, unbatched.
    client = tracking.client(eval_settings)
    local = Path(client.download_artifacts(trained.run_id, "eval/bias", str(eval_settings.home / "dl")))
    assert sorted(p.name for p in local.iterdir()) == ["picks.jsonl", "report.json", "stereotype_rate.png"]
    rows = [json.loads(line) for line in (local / "picks.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows] == [p.id for p in probes]
    system = eval_settings.data.system_prompt
    for row, probe in zip(rows[:4], probes, strict=False):
        prompt = bias.messages(probe, system)
        assert prompt[0] == {"role": "system", "content": system} and probe.context in prompt[-1]["content"]
        for variant, context in (("base", trained.model.disable_adapter), ("finetuned", torch.no_grad)):
            with context():
                expected = [_mean_logprob(trained.model, trained.tokenizer, prompt, c) for c in probe.choices]
            assert row[f"{variant}_logprobs"] == pytest.approx(expected, abs=1e-4)
            assert row[variant] == max(range(3), key=expected.__getitem__)
    assert any(r["base_logprobs"] != r["finetuned_logprobs"] for r in rows)  # the adapter is really applied

    # The run carries the overall scores, the per-category rates, the decision and the report.
    logged = client.get_run(trained.run_id).data
    for variant in ("base", "finetuned"):
        for name, value in first.scores[variant]["overall"].items():
            if not name.startswith("n_"):
                assert logged.metrics[f"bias.{variant}.{name}"] == pytest.approx(value)
        for category in {p.category for p in probes if p.context_type == "ambiguous"}:
            assert logged.metrics[f"bias.{variant}.{category}.stereotype_rate"] == pytest.approx(
                first.scores[variant][category]["stereotype_rate"])
    assert logged.metrics["bias.n_probes"] == limit
    document = json.loads((local / "report.json").read_text(encoding="utf-8"))
    assert document["suite"]["sha256"] == hashlib.sha256(bias.SUITE.read_bytes()).hexdigest()
    assert document["max_bias_stereotype_rate"] == 0.0 and document["scores"] == second.scores
    assert (local / "stereotype_rate.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The gate: off passes; 0.0 fails once the (seeded) fine-tuned model picks any stereotype.
    assert first.passed and first.failures == []
    assert second.scores["finetuned"]["overall"]["stereotype_rate"] > 0, "pick a seed whose adapter stereotypes"
    assert not second.passed and "max_bias_stereotype_rate 0.0" in second.failures[0]
    assert logged.tags["changjak.eval.bias_passed"] == "false"

    # Promotion: the version carries the decision and is refused unless forced.
    settings = eval_settings.model_copy(update={"model_name": "bias-gated-writer"})
    version = registry.register(settings, run_id=trained.run_id)
    assert client.get_model_version(settings.model_name, version).tags["bias_passed"] == "false"
    with pytest.raises(RegistryError, match="failed the bias gate") as e:
        registry.promote(settings, actor="kim")
    assert "--force" in e.value.hint
    assert registry.promote(settings, actor="kim", reason="reviewed by hand", force=True) == version


def test_the_cli_dispatches_the_suite(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from changjak.eval import run as eval_run

    monkeypatch.setenv("CHANGJAK_HOME", str(tmp_path))
    calls = []
    monkeypatch.setattr(bias, "main", lambda settings, run_id=None: calls.append(("bias", run_id)))
    monkeypatch.setattr(eval_run, "main", lambda settings, run_id=None: calls.append(("quality", run_id)))

    assert cli.main(["eval", "--suite", "bias", "--run-id", "r1"]) == 0
    assert cli.main(["eval", "--run-id", "r2"]) == 0
    assert calls == [("bias", "r1"), ("quality", "r2")]
    with pytest.raises(SystemExit):
        cli.main(["eval", "--suite", "toxicity"])
