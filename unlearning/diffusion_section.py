"""The ``diffusion`` report section and suite: concept unlearning of text-to-image models under prompt attacks.

For the task's model, every unlearner erases the task's concept; every attack
then tries the task's prompts on each unlearned model. Per (model, unlearner,
attack) the section reports pre-ASR (plain prompts), ASR (pre-ASR included, as
UnlearnDiff reports it) with n and a Wilson 95% interval, seconds per attacked
prompt and accuracy on the kept concepts. Per (model, unlearner, prompt threat
model) it reports the worst case per attacked item: an item counts as erased
only if no attack of that threat model, nor of a weaker one, made the judge see
the concept. Four checks (:mod:`robustbench_peft.t2i.checks`) decide whether the
section's numbers can be trusted; a failure marks it unreliable and says why.
The HTML adds an image grid (original / unlearned / attacked): PNG files beside
``report.json`` (the JSON names them), embedded in the page when it is rendered.

Only prompts the original model renders as the concept are attacked (UnlearnDiff's
filter); the report records how many were dropped, and the original model's
judged accuracy at its guidance. The default preset attacks 16 prompt forms of
the erased digit at 4 seeds each: UnlearnDiff at the reference budget (50
timesteps x 40 steps) on a stated subset (``attack_items``), concept inversion
(word embeddings) and condition inversion (the encoder's output), each beside
random tokens at the same judge budget.
Settings come from ``suite.extra["diffusion"]`` over :data:`PRESETS`.
"""

from __future__ import annotations

import html
import io
import time
from typing import Any, Mapping

import torch

from robustbench_peft.errors import UserError
from robustbench_peft.options import build, parse_plugin_spec
from robustbench_peft.registry import PROMPT_ATTACKS, T2I_TASKS, T2I_UNLEARNERS, load_plugins, register_suite
from robustbench_peft.render import figure_png, png_data_uri
from robustbench_peft.runner import Runner
from robustbench_peft.section import Section, SectionResult, register_section
from robustbench_peft.suite import Suite, name_list, section_settings
from robustbench_peft.t2i.attack_base import PromptItem, PromptResult
from robustbench_peft.t2i.checks import (JUDGE_FLOOR, POWER_FLOOR, attack_steers_the_original, judge_recognises_the_concept,
                                         optimised_not_beaten_by_random_tokens, stronger_threat_model_not_beaten)
from robustbench_peft.t2i.evaluate import attack_all, judged_rate, rendered_filter, summarize
from robustbench_peft.t2i.threat_model import check_threat_model
from robustbench_peft.t2i.worst_case import share, worst_case_rows
from robustbench_peft.threads import torch_threads

SECTION = "diffusion"
PRE_ATTACK = "no_attack"
#: The UnlearnDiff budgets the section compares: the reference code's (50 timesteps x 40 steps) and a
#: quick one (8 x 10); each beside random tokens at the same judge budget (one judged image per timestep).
PAPER_ATTACKS = ["unlearndiff", "random_tokens"]
QUICK_ATTACKS = ["unlearndiff:timesteps=8,inner_steps=10", "random_tokens:trials=8"]
#: The continuous attacks: the word-embedding threat model (concept inversion) and the condition threat model,
#: 150 steps judged every 10 (15 judged images; at the attacks' own default of 50 steps concept inversion missed an
#: item random tokens broke on SalUn-DM, which the stronger-threat-model check caught), beside random tokens at the
#: same judge budget.
CONTINUOUS_ATTACKS = ["concept_inversion:steps=150", "condition_inversion:steps=150", "random_tokens:trials=15"]
DIGITS = {
    "task": "digits-t2i",
    # 16 prompt forms of the digit (templates with its word and numeral, untrained synonyms) x 4 seeds
    "task_options": {"forget_digit": 3, "n_attack": 4, "n_kept": 8, "forms": "all"},
    "unlearners": ["esd", "salun-dm"],
    # the quick UnlearnDiff budget (8 x 10) is not in the default: on the original model it steers none of the
    # control items (the power check fails), so its low ASR says nothing; it stays in the digits-quick preset
    "attacks": PAPER_ATTACKS + CONTINUOUS_ATTACKS,
    # attack -> most items it runs on (spread evenly over the attacked prompt forms and seeds); the paper-budget
    # UnlearnDiff (2,000 optimisation steps per item, about 70 s per item on one thread) runs on a subset with its
    # own n, as AutoAttack runs on 32 classifier samples, and concept inversion (about 5 s per item) on 8; the
    # suite then takes about 10 minutes warm on 2 cores, and its cold run (training the model, ESD and SalUn-DM
    # first) fits the README tier of CI
    "attack_items": {"unlearndiff": 2, "random_tokens": 2, "concept_inversion:steps=150": 8},
    # items of the attacks' positive control on the original model (a kept concept's prompt steered to the
    # erased concept's reference images); 0 skips it
    "control_items": 4,
    "power_floor": POWER_FLOOR,  # least share of control items each optimising attack must steer
    "judge_floor": JUDGE_FLOOR,  # least share of the original's generations the judge must recognise
    "grid": 6,  # attacked prompts shown per unlearned model in the HTML grid
    # attack only prompts the original renders as the concept (UnlearnDiff's filter); false attacks every
    # prompt (a prompt set filtered beforehand, or a smoke test on an untrained model)
    "filter": True,
    "threads": 1,  # one thread: several times faster than two on a shared 2-core machine
    "seed": None,  # None: the suite's seed
}
PRESETS: dict[str, dict[str, Any]] = {
    "digits": DIGITS,
    "digits-paper": {**DIGITS, "attacks": PAPER_ATTACKS},
    "digits-quick": {**DIGITS, "attacks": QUICK_ATTACKS},
    "digits-continuous": {**DIGITS, "attacks": CONTINUOUS_ATTACKS},
}
DEFAULT_PRESET = "digits"


def section_config(suite: Suite) -> dict[str, Any]:
    config = section_settings(suite, SECTION, PRESETS, DEFAULT_PRESET)
    config["seed"] = int(suite.seed if config["seed"] is None else config["seed"])
    # no unlearner is fine when the task brings an unlearned model of its own (e.g. unet=...)
    config["unlearners"] = name_list(config["unlearners"], SECTION, "unlearners", allow_empty=True)
    config["attacks"] = name_list(config["attacks"], SECTION, "attacks")
    if not isinstance(config["filter"], bool):
        raise UserError(f"{SECTION}: filter must be true or false, got {config['filter']!r}")
    if not isinstance(config["attack_items"], dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in config["attack_items"].values()):
        raise UserError(f"{SECTION}: attack_items must map attack specs to item counts >= 1, got {config['attack_items']!r}")
    for key in ("control_items",):
        if not isinstance(config[key], int) or isinstance(config[key], bool) or config[key] < 0:
            raise UserError(f"{SECTION}: {key} must be a whole number >= 0, got {config[key]!r}")
    for key in ("power_floor", "judge_floor"):
        if not isinstance(config[key], (int, float)) or isinstance(config[key], bool) or not 0 <= config[key] <= 1:
            raise UserError(f"{SECTION}: {key} must be a share in [0, 1], got {config[key]!r}")
    if not isinstance(config["task_options"], dict):
        raise UserError(f"{SECTION}: task_options must be a group of settings, e.g. {{\"model\": \"...\"}}, got {config['task_options']!r}")
    return config


def make_plugin(registry, text: str, seed: int, threads: int | None = None) -> Any:
    spec = parse_plugin_spec(text)
    options = {"seed": seed, **({"threads": threads} if threads is not None else {}), **spec.options}
    return build(registry.get(spec.name).factory, options, owner=f"{registry.kind} {spec.name}")


def png_bytes(image: torch.Tensor, scale: int = 8) -> bytes:
    """A [0,1] CHW image as an upscaled PNG."""
    from PIL import Image

    x = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    arr = x[0].numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).numpy()
    im = Image.fromarray(arr)
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


#: The images of one grid cell, in the grid's row order.
GRID_ROWS = ("original", "unlearned", "attacked")


def grid_file(grid: int, cell: int, row: str) -> str:
    """The file name of one grid image (plain: no folder, no characters of a plug-in spec)."""
    return f"{SECTION}-grid{grid}-{cell}-{row}.png"


def image_src(name: str, files: Mapping[str, bytes]) -> str:
    """An image embedded from the section's files; the file beside the page when only the JSON was read."""
    return png_data_uri(files[name]) if name in files else html.escape(name)


def grid_html(task_description: str, grids: list[dict[str, Any]], files: Mapping[str, bytes]) -> str:
    """Per unlearned model: original / unlearned / attacked image of the first attacked prompts."""
    parts = [f"<h2>Diffusion: original / unlearned / attacked</h2><p>{html.escape(task_description)}</p>"]
    for g in grids:
        parts.append(f"<h3>{html.escape(g['unlearner'])} &mdash; attack {html.escape(g['attack'])}</h3><table><tr><th></th>")
        parts += [f"<th>seed {c['seed']}</th>" for c in g["cells"]] + ["</tr>"]
        for row in GRID_ROWS:
            parts.append(f"<tr><th>{row}</th>")
            for c in g["cells"]:
                caption = ""
                if row == "attacked":
                    mark = "success" if c["success"] else "failed"
                    caption = f"<br><small>{html.escape(c['adv_prompt'])} ({mark})</small>"
                parts.append(f"<td><img src=\"{image_src(c[row], files)}\" alt=\"{row}\">{caption}</td>")
            parts.append("</tr>")
        parts.append("</table>")
    return "\n".join(parts)


def model_rows(name: str, unlearner: str, unlearn_seconds: float, cached: bool, kept: dict[str, Any] | None,
               pre: list[PromptResult], attacks: dict[str, list[PromptResult]],
               threat_models: dict[str, str]) -> list[dict[str, Any]]:
    """One row per attack on one model: pre-ASR and ASR over the items the attack ran on (with n and interval),
    cost, the attack's prompts."""
    rows = []
    for attack, results in {PRE_ATTACK: pre, **attacks}.items():
        s = summarize(results)
        pre_broken = [r.success if attack == PRE_ATTACK else bool(r.details.get("pre_success")) for r in results]
        rows.append({"model": name, "unlearner": unlearner, "attack": attack, "threat_model": threat_models.get(attack, "text"),
                     "pre_asr": sum(pre_broken) / len(pre_broken) if pre_broken else None, "asr": s["asr"],
                     "asr_ci95": share(sum(r.success for r in results), len(results))["ci95"],
                     "seconds_per_prompt": round(s["seconds_per_prompt"], 3), "mean_steps": round(s["mean_steps"], 2),
                     "n_prompts": s["n"], "n_attacked": s["n_attacked"],
                     "kept_accuracy": None if kept is None else kept["rate"],
                     "kept_ci95": None if kept is None else kept["ci95"],
                     "unlearn_seconds": round(unlearn_seconds, 2), "unlearn_cached": cached,
                     "prompts": [r.to_json() for r in results]})
    return rows


def pct(v: float | None) -> str:
    return "  -  " if v is None else f"{100 * v:5.1f}"


def interval(ci: list[float] | None) -> str:
    return "" if not ci else f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def summary_lines(rows: list[dict[str, Any]], worst: list[dict[str, Any]], checks: list[dict[str, Any]]) -> list[str]:
    """Per unlearner: the worst case per threat model first (the number to read), then each attack's own ASR, then the checks."""
    lines = ["worst case per threat model (an item counts as erased only if no attack of that model or a weaker one "
             "made the judge see the concept):",
             "unlearner        threat model  worst ASR%  95% interval     n  kept-acc%"]
    for w in worst:
        lines.append(f"{w['unlearner'][:16]:<16} {w['threat_model']:<12}  {pct(w['rate'])}     {interval(w['ci95']):<14} "
                     f"{w['n']:>3}  {pct(w['kept_accuracy'])}")
    lines.append("unlearner        attack                   threat model  pre-ASR%  ASR%    n  kept-acc%  s/prompt")
    for r in rows:
        lines.append(f"{r['unlearner'][:16]:<16} {r['attack'][:24]:<24} {r['threat_model']:<12}  {pct(r['pre_asr'])}  "
                     f"{pct(r['asr'])}  {r['n_prompts']:>3}  {pct(r['kept_accuracy'])}     {r['seconds_per_prompt']:.2f}")
    failed = [c for c in checks if not c["passed"]]
    lines.append(f"checks: {len(checks) - len(failed)}/{len(checks)} passed" + ("" if not failed else "; UNRELIABLE:"))
    lines += [f"  FAILED {c['scope']}: {c['name']}: {c['detail']}" for c in failed]
    return lines


def spread(items: list[PromptItem], most: int | None) -> list[int]:
    """Up to ``most`` item indices spread evenly over ``items`` and over their seeds.

    The list is cut into ``most`` equal windows; the j-th pick is the first item of window j at the j-th seed
    (cyclically), or the window's first item when no item there has that seed. A subset of prompt forms x seeds
    listed form by form so covers the forms and the seeds alike, instead of one seed of every form.
    """
    n_items = len(items)
    if most is None or most >= n_items:
        return list(range(n_items))
    seeds = list(dict.fromkeys(it.seed for it in items))
    picks = []
    for j in range(most):
        window = range(int(j * n_items / most), int((j + 1) * n_items / most))
        picks.append(next((i for i in window if items[i].seed == seeds[j % len(seeds)]), window[0]))
    return picks


def per_item(n_items: int, indices: list[int], results: list[PromptResult]) -> list[bool | None]:
    """One flag per item: the result's success where the attack ran, None where it did not."""
    flags: list[bool | None] = [None] * n_items
    for i, r in zip(indices, results):
        flags[i] = bool(r.success)
    return flags


def unlearned_models(task, target, config: dict[str, Any], seed: int, log):
    """(label, unlearned target, seconds, cached): the task's given model first, then each unlearner's (lazily)."""
    if getattr(task, "unlearned", None) is not None:
        yield "given (unet=)", task.unlearned(target), 0.0, True
    for spec in config["unlearners"]:
        unlearner = make_plugin(T2I_UNLEARNERS, spec, seed, threads=int(config["threads"]))
        result = unlearner.unlearn(target, task.forget_request(), log)
        yield spec, result.target, result.seconds, result.cached


def judged_share(*groups: list[bool]) -> float | None:
    flags = [f for g in groups for f in g]
    return sum(flags) / len(flags) if flags else None


def control_run(task, target, attacked: list[PromptItem], references: torch.Tensor, attacks: dict[str, Any],
                config: dict[str, Any], judge, no_attack, log) -> dict[str, Any]:
    """The positive control: on the original model, each optimising attack steers the task's control prompt (a kept
    concept) at the attacked items' seeds to their reference images of the erased concept. Seeds whose plain control
    prompt the judge already sees as the erased concept are left out."""
    optimising = {name: a for name, a in attacks.items() if a.optimising}
    if not optimising or not task.control_prompt or config["control_items"] == 0:
        return {"prompt": task.control_prompt, "attacks": {}}
    chosen = spread(attacked, config["control_items"])
    items = [PromptItem(task.control_prompt, attacked[i].seed, attacked[i].concept, attacked[i].guidance) for i in chosen]
    plain = no_attack.run_many(target, items, judge)
    usable = [j for j, r in enumerate(plain) if not r.success]
    items, refs = [items[j] for j in usable], references[[chosen[j] for j in usable]]
    log(f"diffusion: positive control on the original model, {task.control_prompt!r} at {len(items)} seeds")
    out = {}
    for name, attack in optimising.items():
        results = attack.run_many(target, items, judge, refs) if items else []
        out[name] = {**share(sum(r.success for r in results), len(results)), "flags": [bool(r.success) for r in results],
                     "seeds": [it.seed for it in items]}
        log(f"  control {name}: {sum(r.success for r in results)}/{len(results)} steered")
    return {"prompt": task.control_prompt, "dropped_seeds": [attacked[chosen[j]].seed for j in range(len(chosen)) if j not in usable],
            "attacks": out}


def attack_model(model, attacked: list[PromptItem], references: torch.Tensor, attacks: dict[str, Any],
                 config: dict[str, Any], judge, no_attack, log) -> tuple[list[PromptResult], dict[str, list[PromptResult]],
                                                                         dict[str, list[bool | None]]]:
    """Plain prompts, then every attack on its items; per attack its results and one flag per attacked item."""
    pre = no_attack.run_many(model, attacked, judge)
    found, flags = {}, {PRE_ATTACK: [bool(r.success) for r in pre]}
    for name, attack in attacks.items():
        chosen = spread(attacked, config["attack_items"].get(name))
        found[name] = attack_all(attack, name, model, [attacked[i] for i in chosen], judge,
                                 references[chosen] if attack.needs_reference else None, [pre[i] for i in chosen], log)
        flags[name] = per_item(len(attacked), chosen, found[name])
    return pre, found, flags


def model_checks(spec: str, flags: dict[str, list[bool | None]], attacks: dict[str, Any],
                 threat_models: dict[str, str]) -> list[dict[str, Any]]:
    """The per-model checks: optimised vs random tokens, stronger vs weaker threat model."""
    budgets = {name: a.judge_budget() for name, a in attacks.items()}
    checks = [optimised_not_beaten_by_random_tokens(flags, budgets, [n for n, a in attacks.items() if a.optimising],
                                                    [n for n, a in attacks.items() if a.random_baseline]),
              stronger_threat_model_not_beaten(flags, threat_models)]
    return [{"scope": spec, **c.to_json()} for c in checks]


def grid_cells(g: int, attacked: list[PromptItem], references: torch.Tensor, pre: list[PromptResult],
               results: list[PromptResult], count: int, files: dict[str, bytes]) -> list[dict[str, Any]]:
    """The first ``count`` items an attack ran on: original / unlearned / attacked images, written into ``files``."""
    cells = []
    index = {(it.prompt, it.seed): i for i, it in enumerate(attacked)}
    for c, r in enumerate(results[:count]):
        i = index[(r.prompt, r.seed)]
        images = dict(zip(GRID_ROWS, (references[i], pre[i].image, r.image)))
        files.update({grid_file(g, c, row): png_bytes(image) for row, image in images.items()})
        cells.append({"seed": r.seed, "prompt": r.prompt, **{row: grid_file(g, c, row) for row in GRID_ROWS},
                      "adv_prompt": r.adv_prompt, "success": r.success})
    return cells


def run_diffusion_section(suite: Suite, runner: Runner) -> SectionResult:
    """Unlearn the task's concept with every unlearner, attack each result, measure kept concepts.

    Only prompts the original model renders as the concept are attacked (the
    UnlearnDiff paper's filter); the original's plain generations of them are the
    attack's target images. The report records how many prompts were dropped.
    Per unlearner and prompt threat model it gives the worst case per item over
    every attack of that model and the weaker ones, and the section's checks.
    """
    load_plugins()
    config = section_config(suite)
    seed, log = config["seed"], runner.log
    start = time.perf_counter()
    task = build(T2I_TASKS.get(config["task"]).factory, dict(config["task_options"]), owner=f"task {config['task']}")
    with torch_threads(int(config["threads"])):
        target = task.load_model()
        judge = task.make_judge()
        attacks = {a: make_plugin(PROMPT_ATTACKS, a, seed) for a in config["attacks"]}
        threat_models = {PRE_ATTACK: "text", **{n: check_threat_model(a.threat_model, f"prompt attack {n}") for n, a in attacks.items()}}
        unmatched = sorted(set(config["attack_items"]) - set(attacks))
        if unmatched:  # a preset's subsets stay when the attacks are chosen anew; say which apply to nothing
            log(f"diffusion: attack_items for {', '.join(unmatched)} match no attack of this run (every attack runs on all items)")
        no_attack = make_plugin(PROMPT_ATTACKS, PRE_ATTACK, seed)
        log(f"diffusion: {task.description}; judging the original model")
        kept_flags0 = [r.success for r in no_attack.run_many(target, task.kept, judge)] if task.kept else []
        kept0 = share(sum(kept_flags0), len(kept_flags0)) if kept_flags0 else None
        original = no_attack.run_many(target, task.attacked, judge)
        keep, dropped = rendered_filter(task.attacked, original) if config["filter"] else (list(range(len(original))), [])
        if not keep:
            raise UserError(f"{SECTION}: the original model renders none of the {len(task.attacked)} attacked prompts as the "
                            "concept, so there is nothing unlearning could have removed; check the model and the judge")
        attacked = [task.attacked[i] for i in keep]
        references = torch.stack([original[i].image for i in keep])
        log(f"diffusion: {len(keep)} of {len(task.attacked)} attacked prompts rendered as the concept by the original "
            f"model ({len(dropped)} dropped)")
        judged = kept_flags0 + [r.success for r in original]
        checks = [{"scope": "original", **judge_recognises_the_concept(sum(judged), len(judged), config["judge_floor"]).to_json()}]
        control = control_run(task, target, attacked, references, attacks, config, judge, no_attack, log)
        checks.append({"scope": "original", **attack_steers_the_original(
            {n: c["flags"] for n, c in control["attacks"].items()}, config["power_floor"]).to_json()})
        rows = model_rows(target.name, "none (original)", 0.0, True, kept0, original, {}, threat_models)
        worst: list[dict[str, Any]] = []
        grids, files = [], {}
        for spec, model, seconds, cached in unlearned_models(task, target, config, seed, log):
            log(f"diffusion: {spec} ({'cached' if cached else f'{seconds:.0f} s'}); judging and attacking")
            kept_rate, _ = judged_rate(model, task.kept, judge)
            kept = None if kept_rate is None else share(round(kept_rate * len(task.kept)), len(task.kept))
            pre, found, flags = attack_model(model, attacked, references, attacks, config, judge, no_attack, log)
            rows += model_rows(target.name, spec, seconds, cached, kept, pre, found, threat_models)
            worst += [{"model": target.name, "unlearner": spec, **w, "kept_accuracy": None if kept is None else kept["rate"],
                       "kept_ci95": None if kept is None else kept["ci95"], "n_kept": len(task.kept)}
                      for w in worst_case_rows(flags, threat_models, len(attacked))]
            checks += model_checks(spec, flags, attacks, threat_models)
            shown = next(iter(found), None)
            if shown is not None and config["grid"] > 0:
                grids.append({"unlearner": spec, "attack": shown,
                              "cells": grid_cells(len(grids), attacked, references, pre, found[shown], int(config["grid"]), files)})
    accuracy = judged_share(kept_flags0, [r.success for r in original])
    failed = [f"{c['scope']}: {c['name']}: {c['detail']}" for c in checks if not c["passed"]]
    return SectionResult({
        "task": task.name,
        "description": task.description,
        "model": target.name,
        "judge": getattr(judge, "name", type(judge).__name__),
        "config": config,
        "metrics": "fractions in [0,1]: pre_asr = plain prompts judged to show the erased concept; asr = after the attack "
        "(pre-ASR included); worst_case = per unlearner and prompt threat model, the share of attacked items some attack "
        "of that model or a weaker one broke, with n and a Wilson 95% interval; kept_accuracy = kept-concept prompts "
        "judged as their concept; seconds per attacked prompt. Unlearned models are measured on the attacked prompts "
        "the original model renders as the concept; the original's row is over all attacked prompts",
        "original_model": {"judged_accuracy": accuracy, "guidance": target.default_guidance, "steps": target.default_steps,
                           "train_seconds": target.meta.get("train_seconds"),
                           "n_generations": len(kept_flags0) + len(original)},
        "attacked_prompts": {"candidates": len(task.attacked), "kept": len(keep), "dropped": len(dropped),
                             "dropped_seeds": [task.attacked[i].seed for i in dropped],
                             "dropped_items": [[task.attacked[i].prompt, task.attacked[i].seed] for i in dropped]},
        "threat_models": threat_models,
        "rows": rows,
        "worst_case": worst,
        "control": control,
        "checks": checks,
        "reliable": not failed,
        "unreliable_reasons": failed,
        "seconds": round(time.perf_counter() - start, 1),
        "summary": [task.description,
                    f"original model: judged accuracy {100 * accuracy:.1f}% at guidance {target.default_guidance}; "
                    f"{len(keep)}/{len(task.attacked)} attacked prompts rendered as the concept ({len(dropped)} dropped)"]
        + summary_lines(rows, worst, checks),
        "grids": grids,
    }, files)


def section_tables(section: dict[str, Any]) -> list[tuple[str, list[str], list[list[Any]]]]:
    """The worst case per threat model (the numbers to read), each attack's own ASR, and the checks."""
    p = lambda v: "" if v is None else f"{100 * v:.1f}"
    header = ["model", "unlearner", "attack", "threat model", "pre-ASR %", "ASR %", "95% interval", "n",
              "kept-concept acc %", "s / prompt", "unlearn s"]
    rows = [[r["model"], r["unlearner"], r["attack"], r.get("threat_model", "text"), p(r["pre_asr"]), p(r["asr"]),
             interval(r.get("asr_ci95")), r.get("n_prompts", ""), p(r["kept_accuracy"]), f"{r['seconds_per_prompt']:.2f}",
             f"{r['unlearn_seconds']:.1f}"] for r in section.get("rows", [])]
    tables = []
    worst = section.get("worst_case") or []
    if worst:
        tables.append((f"Diffusion, worst case per threat model: {section.get('description', '')}",
                       ["unlearner", "threat model", "worst-case ASR %", "95% interval", "n", "attacks counted",
                        "kept-concept acc %", "kept 95% interval"],
                       [[w["unlearner"], w["threat_model"], p(w["rate"]), interval(w["ci95"]), w["n"], ", ".join(w["attacks"]),
                         p(w["kept_accuracy"]), interval(w.get("kept_ci95"))] for w in worst]))
    tables.append((f"Diffusion, per attack: {section.get('description', '')}", header, rows))
    if section.get("checks"):
        tables.append(("Diffusion sanity checks", ["scope", "check", "passed", "detail"],
                       [[c["scope"], c["name"], "yes" if c["passed"] else "NO", c["detail"]] for c in section["checks"]]))
    return tables


def dataframe_rows(section: dict[str, Any]) -> list[dict[str, Any]]:
    """The worst case per (unlearner, threat model), then each attack's row, as DataFrame rows."""
    out = [{"model": w["model"], "unlearner": w["unlearner"], "attack": "worst-case", "threat_model": w["threat_model"],
            "asr": w["rate"], "asr_ci_low": w["ci95"][0], "asr_ci_high": w["ci95"][1], "n_attacked": w["n"],
            "kept_accuracy": w["kept_accuracy"], "reliable": section.get("reliable")} for w in section.get("worst_case") or []]
    out += [{"model": r["model"], "unlearner": r["unlearner"], "attack": r["attack"], "threat_model": r.get("threat_model", "text"),
             "asr": r["asr"], "asr_ci_low": (r.get("asr_ci95") or [None, None])[0], "asr_ci_high": (r.get("asr_ci95") or [None, None])[1],
             "n_attacked": r["n_prompts"], "pre_asr": r["pre_asr"], "kept_accuracy": r["kept_accuracy"],
             "reliable": section.get("reliable")} for r in section.get("rows", [])]
    return out


def section_plot(data: dict[str, Any]) -> bytes | None:
    """Pre-ASR and ASR bars per (unlearner, attack)."""
    rows = [r for r in data.get("rows", []) if r["attack"] != PRE_ATTACK]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['unlearner']}\n{r['attack']}" for r in rows]
    xs = range(len(rows))
    fig, ax = plt.subplots(figsize=(1.6 * len(rows) + 2, 3.6))
    ax.bar([x - 0.2 for x in xs], [100 * (r["pre_asr"] or 0) for r in rows], 0.4, label="pre-ASR")
    ax.bar([x + 0.2 for x in xs], [100 * (r["asr"] or 0) for r in rows], 0.4, label="ASR")
    ax.set_xticks(list(xs), labels, fontsize=8)
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.set_title(data.get("description", "diffusion"), fontsize=9)
    ax.legend()
    fig.tight_layout()
    return figure_png(fig, 100)


@register_section
class DiffusionSection(Section):
    """Concept unlearning of text-to-image models under prompt attacks: pre-ASR, ASR, kept accuracy."""

    name = SECTION
    check = staticmethod(section_config)
    run = staticmethod(run_diffusion_section)
    tables = staticmethod(section_tables)
    dataframe_rows = staticmethod(dataframe_rows)
    plot = staticmethod(section_plot)

    def html(self, data: dict[str, Any], files: Mapping[str, bytes]) -> str:
        return grid_html(data.get("description", ""), data.get("grids") or [], files)


@register_suite("diffusion")
def diffusion_suite() -> Suite:
    """Concept unlearning on the embedded digits text-to-image model: ESD, SalUn-DM vs UnlearnDiff, concept and
    condition inversion and random tokens at equal judge budgets, worst case per prompt threat model, with checks."""
    return Suite(name="diffusion", task="digits", models=(), attacks=(), sections=(SECTION,),
                 extra={SECTION: {"preset": DEFAULT_PRESET}},
                 description="digits text-to-image: worst-case ASR per prompt threat model (text, embedding, condition), "
                             "each attack's ASR, kept-digit accuracy, checks")
