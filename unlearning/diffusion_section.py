"""The ``diffusion`` report section and suite: concept unlearning of text-to-image models under prompt attacks.

For the task's model, every unlearner erases the task's concept; every attack
then tries the task's prompts on each unlearned model. Per (model, unlearner,
attack) the section reports pre-ASR (plain prompts), ASR (pre-ASR included, as
UnlearnDiff reports it), seconds per attacked prompt and accuracy on the kept
concepts, plus an image grid (original / unlearned / attacked) in the HTML. The
grid's images are PNG files beside ``report.json`` (the JSON names them) and are
embedded in the HTML page when it is rendered.
Only prompts the original model renders as the concept are attacked (UnlearnDiff's
filter); the report records how many were dropped, and the original model's
judged accuracy at its guidance. The default preset runs UnlearnDiff at the
reference budget (50 timesteps x 40 steps) and at a quick one (8 x 10), each
beside random tokens at the same judge budget.
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
from robustbench_peft.t2i.attack_base import PromptResult
from robustbench_peft.t2i.evaluate import attack_all, judged_rate, rendered_filter, summarize
from robustbench_peft.threads import torch_threads

SECTION = "diffusion"
PRE_ATTACK = "no_attack"
#: The UnlearnDiff budgets the section compares: the reference code's (50 timesteps x 40 steps) and a
#: quick one (8 x 10); each beside random tokens at the same judge budget (one judged image per timestep).
PAPER_ATTACKS = ["unlearndiff", "random_tokens"]
QUICK_ATTACKS = ["unlearndiff:timesteps=8,inner_steps=10", "random_tokens:trials=8"]
DIGITS = {
    "task": "digits-t2i",
    "task_options": {"forget_digit": 3, "n_attack": 10, "n_kept": 8},
    "unlearners": ["esd", "salun-dm"],
    "attacks": PAPER_ATTACKS + QUICK_ATTACKS,
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


def model_rows(name: str, unlearner: str, unlearn_seconds: float, cached: bool, kept: float | None,
               pre: list[PromptResult], attacks: dict[str, list[PromptResult]]) -> list[dict[str, Any]]:
    pre_asr = summarize(pre)["asr"]
    rows = []
    for attack, results in {PRE_ATTACK: pre, **attacks}.items():
        s = summarize(results)
        rows.append({"model": name, "unlearner": unlearner, "attack": attack, "pre_asr": pre_asr, "asr": s["asr"],
                     "seconds_per_prompt": round(s["seconds_per_prompt"], 3), "mean_steps": round(s["mean_steps"], 2),
                     "n_prompts": s["n"], "n_attacked": s["n_attacked"], "kept_accuracy": kept,
                     "unlearn_seconds": round(unlearn_seconds, 2), "unlearn_cached": cached,
                     "prompts": [r.to_json() for r in results]})
    return rows


def summary_lines(rows: list[dict[str, Any]]) -> list[str]:
    pct = lambda v: "  -  " if v is None else f"{100 * v:5.1f}"
    lines = ["unlearner        attack                   pre-ASR%  ASR%  kept-acc%  s/prompt"]
    for r in rows:
        lines.append(f"{r['unlearner'][:16]:<16} {r['attack'][:24]:<24} {pct(r['pre_asr'])}  {pct(r['asr'])}  "
                     f"{pct(r['kept_accuracy'])}     {r['seconds_per_prompt']:.2f}")
    return lines


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


def run_diffusion_section(suite: Suite, runner: Runner) -> SectionResult:
    """Unlearn the task's concept with every unlearner, attack each result, measure kept concepts.

    Only prompts the original model renders as the concept are attacked (the
    UnlearnDiff paper's filter); the original's plain generations of them are the
    attack's target images. The report records how many prompts were dropped.
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
        no_attack = make_plugin(PROMPT_ATTACKS, PRE_ATTACK, seed)
        log(f"diffusion: {task.description}; judging the original model")
        kept_flags0 = [r.success for r in no_attack.run_many(target, task.kept, judge)] if task.kept else []
        kept0 = judged_share(kept_flags0)
        original = no_attack.run_many(target, task.attacked, judge)
        keep, dropped = rendered_filter(task.attacked, original) if config["filter"] else (list(range(len(original))), [])
        if not keep:
            raise UserError(f"{SECTION}: the original model renders none of the {len(task.attacked)} attacked prompts as the "
                            "concept, so there is nothing unlearning could have removed; check the model and the judge")
        attacked = [task.attacked[i] for i in keep]
        pre0 = [original[i] for i in keep]
        references = torch.stack([r.image for r in pre0])
        log(f"diffusion: {len(keep)} of {len(task.attacked)} attacked prompts rendered as the concept by the original "
            f"model ({len(dropped)} dropped)")
        rows = model_rows(target.name, "none (original)", 0.0, True, kept0, original, {})
        grids, files = [], {}
        for spec, model, seconds, cached in unlearned_models(task, target, config, seed, log):
            log(f"diffusion: {spec} ({'cached' if cached else f'{seconds:.0f} s'}); judging and attacking")
            kept, _ = judged_rate(model, task.kept, judge)
            pre = no_attack.run_many(model, attacked, judge)
            found = {name: attack_all(a, name, model, attacked, judge, references, pre, log) for name, a in attacks.items()}
            rows += model_rows(target.name, spec, seconds, cached, kept, pre, found)
            shown = next(iter(found), None)
            if shown is not None and config["grid"] > 0:
                g = len(grids)
                cells = []
                for i, it in enumerate(attacked[: int(config["grid"])]):
                    images = dict(zip(GRID_ROWS, (references[i], pre[i].image, found[shown][i].image)))
                    files.update({grid_file(g, i, row): png_bytes(image) for row, image in images.items()})
                    cells.append({"seed": it.seed, **{row: grid_file(g, i, row) for row in GRID_ROWS},
                                  "adv_prompt": found[shown][i].adv_prompt, "success": found[shown][i].success})
                grids.append({"unlearner": spec, "attack": shown, "cells": cells})
    accuracy = judged_share(kept_flags0, [r.success for r in original])
    return SectionResult({
        "task": task.name,
        "description": task.description,
        "model": target.name,
        "judge": getattr(judge, "name", type(judge).__name__),
        "config": config,
        "metrics": "fractions in [0,1]: pre_asr = plain prompts judged to show the erased concept; asr = after the attack "
        "(pre-ASR included); kept_accuracy = kept-concept prompts judged as their concept; seconds per attacked prompt. "
        "Unlearned models are measured on the attacked prompts the original model renders as the concept; the "
        "original's row is over all attacked prompts",
        "original_model": {"judged_accuracy": accuracy, "guidance": target.default_guidance, "steps": target.default_steps,
                           "train_seconds": target.meta.get("train_seconds"),
                           "n_generations": len(kept_flags0) + len(original)},
        "attacked_prompts": {"candidates": len(task.attacked), "kept": len(keep), "dropped": len(dropped),
                             "dropped_seeds": [task.attacked[i].seed for i in dropped]},
        "rows": rows,
        "seconds": round(time.perf_counter() - start, 1),
        "summary": [task.description,
                    f"original model: judged accuracy {100 * accuracy:.1f}% at guidance {target.default_guidance}; "
                    f"{len(keep)}/{len(task.attacked)} attacked prompts rendered as the concept ({len(dropped)} dropped)"]
        + summary_lines(rows),
        "grids": grids,
    }, files)


def section_tables(section: dict[str, Any]) -> list[tuple[str, list[str], list[list[Any]]]]:
    pct = lambda v: "" if v is None else f"{100 * v:.1f}"
    header = ["model", "unlearner", "attack", "pre-ASR %", "ASR %", "kept-concept acc %", "s / prompt", "unlearn s"]
    rows = [[r["model"], r["unlearner"], r["attack"], pct(r["pre_asr"]), pct(r["asr"]), pct(r["kept_accuracy"]),
             f"{r['seconds_per_prompt']:.2f}", f"{r['unlearn_seconds']:.1f}"] for r in section.get("rows", [])]
    return [(f"Diffusion: {section.get('description', '')}", header, rows)]


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
    plot = staticmethod(section_plot)

    def html(self, data: dict[str, Any], files: Mapping[str, bytes]) -> str:
        return grid_html(data.get("description", ""), data.get("grids") or [], files)


@register_suite("diffusion")
def diffusion_suite() -> Suite:
    """Concept unlearning on the embedded digits text-to-image model: ESD, SalUn-DM vs UnlearnDiff (paper and quick
    budgets) and random tokens at equal judge budgets."""
    return Suite(name="diffusion", task="digits", models=(), attacks=(), sections=(SECTION,),
                 extra={SECTION: {"preset": DEFAULT_PRESET}},
                 description="digits text-to-image: pre-ASR, UnlearnDiff ASR, random-token ASR, kept-digit accuracy")
