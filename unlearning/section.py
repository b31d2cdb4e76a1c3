"""The ``unlearning`` report section and suite: every unlearner on every forget scenario.

Importing this module registers the unlearners, the section (:class:`UnlearningSection`:
its run, tables, plot, summary and the ``unlearning`` claim metric) and the
``unlearning`` suite. A suite configures
the section through ``suite.extra["unlearning"]`` (keys of :data:`PRESETS`);
without it, the cheap ``quick`` preset runs (class-wise forgetting, retrain and
SalUn), which is what the default ``digits`` suite can include.
"""

from __future__ import annotations

import inspect
from typing import Any

from robustbench_peft.errors import UserError
from robustbench_peft.options import build, parse_plugin_spec
from robustbench_peft.registry import UNLEARNERS, register_suite
from robustbench_peft.report import Report
from robustbench_peft.runner import Runner, load_task
from robustbench_peft.section import Section, SectionResult, register_section
from robustbench_peft.suite import Suite, name_list, section_settings
from robustbench_peft.targets import ClassifierTarget
from robustbench_peft.task import ClassificationTask
from robustbench_peft.threads import torch_threads
from robustbench_peft.unlearner import Unlearner

from .metrics import GAP_METRICS, avg_gap, evaluate
from .scenarios import SCENARIOS, ForgetScenario, make_scenario
from .view import section_plot, section_tables

SECTION = "unlearning"
DEFAULT_MODEL = "digits:cnn"
REFERENCE_METHOD = "retrain"
ORIGINAL_LABEL = "original (no unlearning)"
#: Gaps closer than this count as a tie for the smallest one.
GAP_TIE = 1e-9

_COMMON = {
    "forget_class": 0,  # class-wise scenario: the class to forget
    "fraction": 0.1,  # random scenario: fraction of the training split to forget
    "seed": None,  # None: the suite's seed
    "model": None,  # None: the suite's first model, else digits:cnn
    "pgd_steps": 20,  # PGD-Linf steps for robust accuracy at the task's middle eps (0 skips it)
    "threads": 1,  # torch threads while unlearning and measuring (0 keeps torch's setting)
}
PRESETS: dict[str, dict[str, Any]] = {
    "full": {"methods": ["retrain", "ft", "ga", "rl", "l1sparse", "salun"], "scenarios": ["class", "random"], **_COMMON},
    "quick": {"methods": ["retrain", "salun"], "scenarios": ["class"], **_COMMON},
}
DEFAULT_PRESET = "quick"


def section_config(suite: Suite) -> dict[str, Any]:
    """The section's settings: a preset overlaid by ``suite.extra["unlearning"]``."""
    config = section_settings(suite, SECTION, PRESETS, DEFAULT_PRESET)
    config["methods"] = name_list(config["methods"], SECTION, "methods")
    config["scenarios"] = name_list(config["scenarios"], SECTION, "scenarios")
    config["seed"] = int(suite.seed if config["seed"] is None else config["seed"])
    config["model"] = config["model"] or (suite.models[0] if suite.models else DEFAULT_MODEL)
    return config


def build_unlearner(text: str, seed: int, threads: int) -> Unlearner:
    """``"salun:fraction=0.3"`` -> a SalUn instance, seeded by the suite unless the spec sets a seed."""
    spec = parse_plugin_spec(text)
    options = {"seed": seed, "threads": threads, **spec.options}
    return build(UNLEARNERS.get(spec.name).factory, options, owner=f"unlearner {spec.name}")


def build_scenario(text: str, task: ClassificationTask, config: dict[str, Any]) -> ForgetScenario:
    """``"class"`` or ``"random:fraction=0.2"``; unset options come from the section's config."""
    spec = parse_plugin_spec(text)
    if spec.name not in SCENARIOS:
        raise UserError(f"unlearning: unknown scenario {spec.name!r}; choose one of: {', '.join(SCENARIOS)}")
    params = inspect.signature(SCENARIOS[spec.name]).parameters
    defaults = {k: config[k] for k in params if k in config and k not in ("task", "seed")}
    return make_scenario(spec.name, task, seed=config["seed"], **{**defaults, **spec.options})


def metrics_row(label: str, method: str, metrics: dict[str, Any], seconds: float, **extra: Any) -> dict[str, Any]:
    return {"label": label, "method": method, **metrics, "RTE": round(float(seconds), 4), **extra}


def run_scenario(scenario: ForgetScenario, task: ClassificationTask, original: ClassifierTarget, unlearners: list[Unlearner], config: dict[str, Any], log) -> dict[str, Any]:
    seed, steps = config["seed"], config["pgd_steps"]
    rows = [metrics_row(ORIGINAL_LABEL, "original", evaluate(original, task, scenario, seed, steps), 0.0, cached=True, sha256=original.weights_sha256(), config={})]
    for unlearner in unlearners:
        log(f"unlearning ({scenario.kind}): {unlearner.label()}")
        result = unlearner.unlearn(original, task, scenario)
        metrics = evaluate(result.model, task, scenario, seed, steps)
        rows.append(metrics_row(result.label, result.method, metrics, result.seconds, cached=result.cached, sha256=result.sha256, config=result.config, details=result.details))
    reference = next((r for r in rows if r["method"] == REFERENCE_METHOD), None)
    for row in rows:
        row["avg_gap"] = avg_gap(row, reference) if reference is not None else None
        row["rte_vs_retrain"] = row["RTE"] / reference["RTE"] if reference is not None and reference["RTE"] > 0 else None
    approximate = [r for r in rows if r["method"] not in (REFERENCE_METHOD, "original") and r["avg_gap"] is not None]
    smallest = min((r["avg_gap"] for r in approximate), default=None)
    best = [r["label"] for r in approximate if smallest is not None and r["avg_gap"] <= smallest + GAP_TIE]
    return {**scenario.to_json(task), "rows": rows, "best_approximate": best}


def summary_lines(scenarios: list[dict[str, Any]]) -> list[str]:
    """A few lines per scenario for the terminal summary."""
    lines = []
    for s in scenarios:
        lines.append(s["description"])
        for r in s["rows"]:
            gap = "" if r["avg_gap"] is None else f" gap {100 * r['avg_gap']:.2f}"
            metrics = " ".join(f"{k} {100 * r[k]:5.1f}" for k in GAP_METRICS)
            ratio = "" if r["rte_vs_retrain"] is None or r["method"] in (REFERENCE_METHOD, "original") else f" ({100 * r['rte_vs_retrain']:.0f}% of retrain)"
            lines.append(f"  {r['label'][:24]:<24} {metrics}{gap} RTE {r['RTE']:.1f}s{ratio}")
        if s["best_approximate"]:
            lines.append(f"  smallest Avg. Gap to retrain among approximate methods: {', '.join(s['best_approximate'])}")
    return lines


def run_unlearning_section(suite: Suite, runner: Runner) -> dict[str, Any]:
    """Unlearn every scenario with every method; metrics, gaps to retrain and PGD robustness."""
    config = section_config(suite)
    task = load_task(suite.task, suite.task_options)
    original = runner.base_target(config["model"], task)
    with torch_threads(config["threads"]):
        unlearners = [build_unlearner(m, config["seed"], config["threads"]) for m in config["methods"]]
        scenarios = [build_scenario(s, task, config) for s in config["scenarios"]]
        results = [run_scenario(s, task, original, unlearners, config, runner.log) for s in scenarios]
    return {
        "task": task.name,
        "original": {"spec": original.name, "sha256": original.weights_sha256()},
        "config": config,
        "metrics": "fractions in [0,1]: UA = 1 - forget accuracy, RA retain accuracy, TA test accuracy (kept classes for class-wise), "
        "MIA = SVC MIA-efficacy on the forget set, RTE seconds, avg_gap = mean |metric - retrain| over UA RA TA MIA",
        "scenarios": results,
        "summary": summary_lines(results),
    }


def metric_value(data: dict[str, Any], claim: Any) -> float:
    """A value of the section for a claim: ``key`` (UA, RA, TA, MIA, avg_gap, ...) of ``method`` in ``scenario``
    (``method`` defaults to the claim's unlearner)."""
    if not isinstance(data, dict) or not data.get("scenarios"):
        raise UserError("the report has no unlearning section")
    metric = claim.metric
    scenarios = data["scenarios"]
    if "scenario" in metric:
        scenarios = [s for s in scenarios if s["kind"] == metric["scenario"]]
    if len(scenarios) != 1:
        raise UserError(f"the metric must name one scenario; the report has: {', '.join(s['kind'] for s in data['scenarios'])}")
    unlearner = claim.evaluation.get("unlearner")
    method = metric.get("method") or (_spec_name(unlearner) if unlearner else None)
    rows = [r for r in scenarios[0]["rows"] if method in (r["method"], r["label"])]
    if not rows:
        raise UserError(f"no row for method {method!r}; rows: {', '.join(r['label'] for r in scenarios[0]['rows'])}")
    key = metric.get("key")
    if key is None or rows[0].get(key) is None:
        known = ", ".join(k for k, v in rows[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool))
        raise UserError(f"metric key {key!r} has no value in row {rows[0]['label']!r}; numeric keys: {known}")
    return float(rows[0][key])


def _spec_name(value: Any) -> str:
    """The plug-in name of a claim's spec: ``"salun:fraction=0.5"`` or ``{"name": "salun", ...}``."""
    return value["name"] if isinstance(value, dict) else parse_plugin_spec(value).name


@register_section
class UnlearningSection(Section):
    """Classifier unlearning: every unlearner on every forget scenario, gaps to retrain."""

    name = SECTION
    check = staticmethod(section_config)
    tables = staticmethod(section_tables)

    def run(self, suite: Suite, runner: Runner) -> SectionResult:
        return SectionResult(run_unlearning_section(suite, runner))

    def plot(self, data: dict[str, Any]) -> bytes | None:
        return section_plot(Report(runs=[], environment={}, suite={}, created="", sections={SECTION: data}))

    def claim_metrics(self) -> dict[str, Any]:
        return {SECTION: metric_value}


@register_suite("unlearning")
def unlearning_suite() -> Suite:
    """SalUn vs retrain, FT, GA, RL, l1-sparse on digits: class-wise and random 10% forgetting."""
    return Suite(
        name="unlearning",
        task="digits",
        models=(),
        attacks=(),
        sections=(SECTION,),
        extra={SECTION: {"preset": "full", **PRESETS["full"]}},
        description="classifier unlearning on digits:cnn: UA, RA, TA, MIA-efficacy, RTE, Avg. Gap, PGD robustness",
    )
