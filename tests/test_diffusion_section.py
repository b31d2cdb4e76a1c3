"""The diffusion report section end to end on a tiny target: rows, pre-ASR / ASR, kept accuracy, grid, tables."""
from __future__ import annotations

import torch

from unlearning.diffusion_section import DiffusionSection, section_tables
from robustbench_peft.registry import SUITES, T2I_TASKS
from robustbench_peft.suite import Suite
from robustbench_peft.t2i.attack_base import PromptItem
from robustbench_peft.t2i.task import T2IConceptTask
from robustbench_peft.t2i.unlearn_base import ForgetRequest
from test_t2i_helpers import tiny_digits_target


class BrightJudge:
    """Concept present when the image is brighter than ``level`` on average (deterministic, model-free)."""

    name = "bright"

    def present(self, images, concept):
        return images.flatten(1).mean(1) > 0.5


def tiny_task() -> T2IConceptTask:
    """A two-prompt task on the tiny target, shaped like digits-t2i."""
    target = tiny_digits_target()
    gen = torch.Generator().manual_seed(0)
    request = ForgetRequest("a handwritten digit three", ["a handwritten digit four"], forget_images=torch.rand(4, 1, 8, 8, generator=gen),
                            retain_images=torch.rand(4, 1, 8, 8, generator=gen), retain_prompts=["a handwritten digit four"] * 4,
                            identity={"test": "section"})
    return T2IConceptTask(name="tiny-t2i", description="tiny test task", load_model=lambda: target, make_judge=BrightJudge,
                          attacked=[PromptItem("a handwritten digit three", s, 3) for s in (1, 2)],
                          kept=[PromptItem("a handwritten digit four", s, 4) for s in (1, 2)], forget_request=lambda: request)


class QuietRunner:
    def log(self, message: str) -> None:
        pass


def test_section_reports_pre_asr_asr_kept_accuracy_and_grid(monkeypatch, tmp_path):
    monkeypatch.setenv("ROBUSTBENCH_PEFT_CACHE", str(tmp_path))
    T2I_TASKS.get("digits-t2i")  # loads the plug-ins before the test entry is added
    monkeypatch.setitem(T2I_TASKS._entries, "tiny-t2i", T2I_TASKS._entries["digits-t2i"].__class__("task", "tiny-t2i", tiny_task, "tiny"))
    suite = Suite(name="t", task="digits", models=(), attacks=(), sections=("diffusion",), extra={"diffusion": {
        "task": "tiny-t2i", "task_options": {}, "unlearners": ["esd:steps=2,pool=2,batch_size=2", "salun-dm:steps=2,batch_size=2"],
        "attacks": ["unlearndiff:k=2,timesteps=1,inner_steps=2", "random_tokens:k=2,trials=1"], "grid": 2}})
    result = DiffusionSection().run(suite, QuietRunner())
    section = {**result.data, "html": DiffusionSection().html(result.data, result.files)}  # the grid as the page renders it
    rows = section["rows"]
    assert [(r["unlearner"], r["attack"]) for r in rows] == [("none (original)", "no_attack")] + [
        (u, a) for u in ("esd:steps=2,pool=2,batch_size=2", "salun-dm:steps=2,batch_size=2")
        for a in ("no_attack", "unlearndiff:k=2,timesteps=1,inner_steps=2", "random_tokens:k=2,trials=1")]
    for r in rows:
        assert r["asr"] >= r["pre_asr"]  # ASR includes the prompts the plain generation already breaks
        assert r["kept_accuracy"] is not None and len(r["prompts"]) == 2
    assert section["html"].count("data:image/png;base64,") == 2 * 3 * 2
    titles = [t[0] for t in section_tables(section)]
    worst_title, per_attack, checks_title = titles
    assert "worst case per threat model" in worst_title and "sanity checks" in checks_title
    title, header, table = section_tables(section)[1]
    assert "pre-ASR %" in header and "ASR %" in header and "95% interval" in header and len(table) == len(rows)
    assert any("pre-ASR" in line for line in section["summary"])
    assert any("worst case per threat model" in line for line in section["summary"])
    worst = section["worst_case"]
    assert [(w["unlearner"], w["threat_model"]) for w in worst] == [
        (u, "text") for u in ("esd:steps=2,pool=2,batch_size=2", "salun-dm:steps=2,batch_size=2")]
    for w in worst:
        assert w["n"] == 2 and w["ci95"][0] <= (w["rate"] or 0) <= w["ci95"][1]
        own = [r for r in rows if r["unlearner"] == w["unlearner"]]
        assert w["rate"] >= max(r["asr"] for r in own)  # the union is never below one attack's ASR
    assert {c["name"] for c in section["checks"]} >= {"judge_recognises_the_concept", "attack_steers_the_original",
                                                      "optimised_not_beaten_by_random_tokens", "stronger_threat_model_not_beaten"}


class OriginalSeedsJudge:
    """Concept present exactly in the original model's images of the given seeds (so the filter's choice is known).

    Images match up to float noise: a batch of another size or another thread count changes the last bits."""

    name = "original-seeds"

    def __init__(self, target, prompt: str, seeds: tuple[int, ...]) -> None:
        self.images = target.generate(prompt, list(seeds))

    def present(self, images, concept):
        return torch.tensor([any(torch.allclose(im, ref, atol=1e-4) for ref in self.images) for im in images])


def test_prompts_the_original_does_not_render_are_dropped(monkeypatch, tmp_path):
    monkeypatch.setenv("ROBUSTBENCH_PEFT_CACHE", str(tmp_path))
    target = tiny_digits_target()
    prompt = "a handwritten digit three"
    judge = OriginalSeedsJudge(target, prompt, (1, 3))
    task = T2IConceptTask(name="tiny-filter", description="filter", load_model=lambda: target, make_judge=lambda: judge,
                          attacked=[PromptItem(prompt, s, 3) for s in (1, 2, 3)], kept=[],
                          forget_request=tiny_task().forget_request)
    T2I_TASKS.get("digits-t2i")
    monkeypatch.setitem(T2I_TASKS._entries, "tiny-filter", T2I_TASKS._entries["digits-t2i"].__class__("task", "tiny-filter", lambda: task, "tiny"))
    suite = Suite(name="t", task="digits", models=(), attacks=(), sections=("diffusion",), extra={"diffusion": {
        "task": "tiny-filter", "task_options": {}, "unlearners": ["esd:steps=1,pool=2,batch_size=2"],
        "attacks": ["random_tokens:k=1,trials=1"], "grid": 0}})
    data = DiffusionSection().run(suite, QuietRunner()).data
    assert data["attacked_prompts"] == {"candidates": 3, "kept": 2, "dropped": 1, "dropped_seeds": [2],
                                        "dropped_items": [[prompt, 2]]}
    original, *unlearned = data["rows"]
    assert original["n_prompts"] == 3 and original["pre_asr"] == 2 / 3  # the original row: every candidate
    assert unlearned and all([p["seed"] for p in r["prompts"]] == [1, 3] for r in unlearned)  # only rendered prompts
    assert data["original_model"]["judged_accuracy"] == 2 / 3


class NothingJudge:
    """Finds the concept in no image: a broken model or judge."""

    name = "nothing"

    def present(self, images, concept):
        return torch.zeros(len(images), dtype=torch.bool)


def test_an_original_that_renders_no_attacked_prompt_is_an_error(monkeypatch, tmp_path):
    """With nothing rendered there is nothing to unlearn: the section stops with a clear error, not ASR 0."""
    import pytest

    from robustbench_peft.errors import UserError

    monkeypatch.setenv("ROBUSTBENCH_PEFT_CACHE", str(tmp_path))
    target = tiny_digits_target()
    task = T2IConceptTask(name="tiny-none", description="none", load_model=lambda: target, make_judge=NothingJudge,
                          attacked=[PromptItem("a handwritten digit three", s, 3) for s in (1, 2)], kept=[],
                          forget_request=tiny_task().forget_request)
    monkeypatch.setitem(T2I_TASKS._entries, "tiny-none", T2I_TASKS._entries["digits-t2i"].__class__("task", "tiny-none", lambda: task, "tiny"))
    suite = Suite(name="t", task="digits", models=(), attacks=(), sections=("diffusion",), extra={"diffusion": {
        "task": "tiny-none", "task_options": {}, "unlearners": [], "attacks": ["random_tokens:k=1,trials=1"], "grid": 0}})
    with pytest.raises(UserError, match="renders none of the 2 attacked prompts"):
        DiffusionSection().run(suite, QuietRunner())


def test_rendered_filter_needs_one_result_per_item():
    import pytest

    from robustbench_peft.t2i.evaluate import rendered_filter

    with pytest.raises(ValueError):
        rendered_filter([PromptItem("p", 1, 3)], [])


def test_diffusion_suite_runs_only_its_section():
    suite = SUITES.create("diffusion")
    assert suite.sections == ("diffusion",) and suite.models == () and suite.attacks == ()


def test_attack_subsets_cover_the_seeds_as_well_as_the_prompt_forms():
    from unlearning.diffusion_section import spread

    forms, seeds = [f"form {f}" for f in range(16)], [10, 11, 12, 13]
    items = [PromptItem(form, s, 3) for form in forms for s in seeds]  # listed form by form, as digits-t2i lists them
    for most in (2, 4, 8, 16):
        picks = spread(items, most)
        assert len(picks) == len(set(picks)) == most
        assert len({items[i].prompt for i in picks}) == most  # one prompt form per pick
        assert len({items[i].seed for i in picks}) == min(most, len(seeds))  # and the seeds in turn
    assert spread(items, None) == spread(items, 64) == list(range(64))
    assert spread([PromptItem("a", 1, 3)] * 5, 2) == [0, 2]  # one seed only: the windows' first items
