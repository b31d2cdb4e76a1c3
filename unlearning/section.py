"""The ``unlearning`` report section and suite: every unlearner on every forget scenario.

Importing this module registers the unlearners, the section (:class:`UnlearningSection`:
its run, tables, plot, summary and the ``unlearning`` claim metric) and the
``unlearning`` suite. A suite configures
the section through ``suite.extra["unlearning"]`` (keys of :data:`PRESETS`);
without it, the cheap ``quick`` preset runs (class-wise forgetting, retrain and
SalUn), which is what the default ``digits`` suite can include.

Beside the paper's output metrics, every scenario runs the probes of
:mod:`.probes` (settings ``probes``, a :class:`~.probe_config.ProbeConfig`): a
method they give away is flagged and never named closest to retrain, which the
gap over every metric decides; probes without power make the scenario unreliable.
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

from .checks import HIDING
from .metrics import ALL_GAP_METRICS, GAP_METRICS, avg_gap, evaluate, mean_gap
from .probe_config import ProbeConfig
from .probes import ScenarioProbes, probe_obstacle, probe_scenario
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
    "probes": {},  # options of ProbeConfig: relearning, representation probe, per-example MIA, checks
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
    probes = config["probes"]
    if not isinstance(probes, dict):
        raise UserError(f"{SECTION}: probes must be a group of settings (e.g. --set {SECTION}.probes.shadows=4), got {probes!r}")
    config["probes"] = ProbeConfig.from_options(probes, owner=f"{SECTION}.probes").to_json()
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
    models = {ORIGINAL_LABEL: original}
    for unlearner in unlearners:
        log(f"unlearning ({scenario.kind}): {unlearner.label()}")
        result = unlearner.unlearn(original, task, scenario)
        metrics = evaluate(result.model, task, scenario, seed, steps)
        rows.append(metrics_row(result.label, result.method, metrics, result.seconds, cached=result.cached, sha256=result.sha256, config=result.config, details=result.details))
        models[result.label] = result.model
    reference = next((r for r in rows if r["method"] == REFERENCE_METHOD), None)
    for row in rows:
        row["avg_gap"] = avg_gap(row, reference) if reference is not None else None
        row["rte_vs_retrain"] = row["RTE"] / reference["RTE"] if reference is not None and reference["RTE"] > 0 else None
    probes, skipped = run_probes(scenario, task, models, rows, unlearners, ProbeConfig(**config["probes"]), seed, log)
    data = {**scenario.to_json(task), "rows": rows, **closest(rows, probes is not None), **probe_data(scenario, rows, probes)}
    return {**data, "probes_skipped": skipped} if skipped else data


def run_probes(scenario: ForgetScenario, task: ClassificationTask, models: dict[str, ClassifierTarget], rows: list[dict[str, Any]],
               unlearners: list[Unlearner], config: ProbeConfig, seed: int, log) -> tuple[ScenarioProbes | None, str | None]:
    """Probe every row's model, add the probe fields, the gap over every metric and the flags to the rows;
    returns the probes, or None and why they did not run."""
    if not config.enabled:
        return None, None
    retrain = next((u for u in unlearners if u.name == REFERENCE_METHOD), None)
    reference = next((r for r in rows if r["method"] == REFERENCE_METHOD), None)
    if retrain is None or reference is None:
        return None, f"the probes compare every method with retrain's seeds; add {REFERENCE_METHOD} to the methods"
    obstacle = probe_obstacle(task, scenario, config)
    if obstacle is not None:
        return None, obstacle
    probes = probe_scenario(scenario, task, models, ORIGINAL_LABEL, (reference["label"], retrain), config, seed, log)
    for row in rows:
        row.update(probes.rows[row["label"]])
    for row in rows:
        row["gap_all"] = mean_gap(row, reference, ALL_GAP_METRICS)
        row["flags"] = [] if row["method"] == "original" or probes.hiding[row["label"]].passed else [HIDING]
    return probes, None


def closest(rows: list[dict[str, Any]], probed: bool) -> dict[str, Any]:
    """The approximate methods closest to retrain: by the gap over every metric among those no check
    flags when the probes ran, else by the paper's Avg. Gap (unchecked)."""
    key = "gap_all" if probed else "avg_gap"
    approximate = [r for r in rows if r["method"] not in (REFERENCE_METHOD, "original") and r.get(key) is not None]
    candidates = [r for r in approximate if not r.get("flags")]
    smallest = min((r[key] for r in candidates), default=None)
    best = [r["label"] for r in candidates if smallest is not None and r[key] <= smallest + GAP_TIE]
    return {"closest_by": key, "best_approximate": best, "flagged": [r["label"] for r in approximate if r.get("flags")]}


def probe_data(scenario: ForgetScenario, rows: list[dict[str, Any]], probes: ScenarioProbes | None) -> dict[str, Any]:
    """The scenario's checks (scoped by scenario and row), reliability, retrain's seeds and the MIA's setup.

    The power checks decide reliability; a method's own hiding check flags that method (its row), as a
    failed check marks one defense's run, and leaves the other methods' numbers standing."""
    if probes is None:
        return {"probed": False}
    checks = [{"scope": scenario.kind, **c.to_json()} for c in probes.power]
    checks += [{"scope": f"{scenario.kind}: {r['label']}", **probes.hiding[r["label"]].to_json()} for r in rows if r["method"] != "original"]
    failed = [c for c in probes.power if not c.passed]
    return {
        "probed": True,
        "checks": checks,
        "reliable": not failed,
        "unreliable_reasons": [f"{scenario.kind}: {c.name}: {c.detail}" for c in failed],
        "reference": probes.reference,
        "mia": probes.mia,
    }


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
            if s.get("probed"):
                steps = "never" if r["relearn_steps"] is None else f"{r['relearn_steps']} steps"
                flag = "  FLAGGED: still holds the forget set" if r.get("flags") else ""
                lines.append(f"  {'':<24} per-example MIA AUC {100 * r['MIA_AUC']:5.1f} relearn {steps} probe {100 * r['probe_accuracy']:5.1f} gap (all) {100 * r['gap_all']:.2f}{flag}")
        lines += verdict_lines(s)
    return lines


def verdict_lines(scenario: dict[str, Any]) -> list[str]:
    """The failed power checks, then the closest-to-retrain line (never a flagged method)."""
    lines = [f"  UNRELIABLE: {reason}" for reason in scenario.get("unreliable_reasons", [])]
    lines += [f"  probes skipped: {scenario['probes_skipped']}"] if scenario.get("probes_skipped") else []
    if scenario["best_approximate"]:
        rule = "gap over every metric, among methods the checks do not flag" if scenario["closest_by"] == "gap_all" else "Avg. Gap; probes off, unchecked"
        caveat = "; the checks lack power here, see above" if scenario.get("reliable") is False else ""
        lines.append(f"  closest to retrain ({rule}{caveat}): {', '.join(scenario['best_approximate'])}")
    elif scenario.get("flagged"):
        lines.append("  closest to retrain: none; every approximate method is flagged")
    return lines


def run_unlearning_section(suite: Suite, runner: Runner) -> dict[str, Any]:
    """Unlearn every scenario with every method; metrics, gaps to retrain and PGD robustness."""
    config = section_config(suite)
    task = load_task(suite.task, suite.task_options)
    original = runner.base_target(config["model"], task)
    with torch_threads(config["threads"]):
        unlearners = [build_unlearner(m, config["seed"], config["threads"]) for m in config["methods"]]
        labels = [u.label() for u in unlearners]
        if config["probes"]["enabled"] and len(set(labels)) != len(labels):
            raise UserError(f"{SECTION}: the probes need one row per method label; labels repeat in {', '.join(labels)} "
                            f"(or --set {SECTION}.probes.enabled=false)")
        scenarios = [build_scenario(s, task, config) for s in config["scenarios"]]
        results = [run_scenario(s, task, original, unlearners, config, runner.log) for s in scenarios]
    checks = [c for s in results for c in s.get("checks", [])]
    reasons = [r for s in results for r in s.get("unreliable_reasons", [])]
    return {
        "task": task.name,
        "original": {"spec": original.name, "sha256": original.weights_sha256()},
        "config": config,
        "metrics": METRICS_TEXT,
        "scenarios": results,
        "checks": checks,
        "reliable": not reasons,
        "unreliable_reasons": reasons,
        "summary": summary_lines(results),
    }


METRICS_TEXT = (
    "fractions in [0,1]: UA = 1 - forget accuracy, RA retain accuracy, TA test accuracy (kept classes for class-wise), "
    "MIA = SVC MIA-efficacy on the forget set, RTE seconds, avg_gap = mean |metric - retrain| over UA RA TA MIA (the paper's Avg. Gap); "
    "MIA_AUC / MIA_TPR = per-example likelihood-ratio MIA against retrain on the forget set (0.5 / fpr = as retrain), "
    "relearn_steps = fine-tuning steps until the held-out forget samples are back at the level, relearn_forget / relearn_area = "
    "their accuracy after the probe / averaged over it (retain_relearn_*: fine-tuning on retain data only), probe_accuracy / "
    "probe_confidence = accuracy / mean true-class probability of a few-shot linear probe of the penultimate features on the "
    "forget set, gap_all = mean |metric - retrain| over UA RA TA MIA MIA_AUC "
    "relearn_area retain_relearn_area probe_accuracy; flags = checks the method fails"
)


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
