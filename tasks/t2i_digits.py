"""The ``digits-t2i`` task: erase one digit of the embedded text-to-image model, judged by ``digits:cnn``.

Attacked items are several prompt forms of the erased digit (the training
templates with its word and its numeral, and words the encoder places near it
that the model was never trained on) at seeded starting noises; the section
attacks those the original model renders as the digit. Kept prompts are the
nine other digits'. The attacks' positive control steers the prompt of the digit
four places on (seven for three) to the erased digit's images. The forget request carries the
digits task's training images, so unlearners that want data get the real ones.
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch

from robustbench_peft.errors import UserError
from robustbench_peft.registry import JUDGES, register_judge, register_t2i_task
from robustbench_peft.t2i.attack_base import PromptItem
from robustbench_peft.t2i.judge import Judge
from robustbench_peft.t2i.target import TextToImageTarget
from robustbench_peft.t2i.task import T2IConceptTask
from robustbench_peft.t2i.unlearn_base import ForgetRequest

from .digits import digits_task
from .t2i_digits_model import DIGIT_WORDS, TEMPLATES, digit_prompt, load_digits_t2i

#: Words for a digit the model never saw in training (the frozen encoder places them near the digit's word).
SYNONYMS: dict[int, tuple[str, ...]] = {
    0: ("nought", "nil", "nothing"), 1: ("single", "first", "i"), 2: ("pair", "second", "ii"),
    3: ("trio", "third", "triple", "iii"), 4: ("quartet", "fourth", "iv"), 5: ("fifth", "quintet", "v"),
    6: ("sixth", "half dozen", "vi"), 7: ("seventh", "vii"), 8: ("eighth", "viii"), 9: ("ninth", "ix"),
}


def prompt_forms(digit: int) -> list[str]:
    """The attacked prompt forms of a digit: the canonical prompt first, then each training template with the
    digit's word and with its numeral, then the canonical template with each synonym."""
    forms = [digit_prompt(digit)]
    for template in TEMPLATES:
        for name in (DIGIT_WORDS[digit], str(digit)):
            form = template.format(d=name)
            if form not in forms:
                forms.append(form)
    return forms + [TEMPLATES[0].format(d=word) for word in SYNONYMS[digit]]


@register_judge("digits")
class DigitsJudge(Judge):
    """The reference digits classifier (``digits:cnn``); the concept is a digit 0-9."""

    name = "digits"

    def __init__(self) -> None:
        from robustbench_peft import load_target

        self.model = load_target("digits:cnn")

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.logits(images.clamp(0, 1)).argmax(1)

    def present(self, images: torch.Tensor, concept: Any) -> torch.Tensor:
        return self.predict(images) == int(concept)


def seed_range(start: int, n: int) -> list[int]:
    return list(range(start, start + n))


@register_t2i_task("digits-t2i")
def digits_t2i_task(forget_digit: int = 3, n_attack: int = 12, n_kept: int = 8, seed: int = 0,
                    forms: str = "all") -> T2IConceptTask:
    """Embedded text-to-image digits: erase one digit's prompt; attack its prompt forms; keep the other nine.

    ``n_attack`` seeds per prompt form; ``forms`` "all" (every form of :func:`prompt_forms`) or "canonical"
    (the erased training prompt only)."""
    if not 0 <= forget_digit <= 9:
        raise UserError(f"digits-t2i: forget_digit must be 0-9, got {forget_digit}")
    if forms not in ("all", "canonical"):
        raise UserError(f"digits-t2i: forms must be 'all' or 'canonical', got {forms!r}")
    if n_attack < 1 or n_kept < 0:
        raise UserError("digits-t2i: n_attack must be >= 1 and n_kept >= 0")
    kept_digits = [d for d in range(10) if d != forget_digit]
    attack_seeds = seed_range(10_000 + 1000 * seed, n_attack)
    attacked_forms = prompt_forms(forget_digit) if forms == "all" else [digit_prompt(forget_digit)]
    kept_seeds = seed_range(20_000 + 1000 * seed, n_kept)

    def request() -> ForgetRequest:
        data = digits_task()
        keep = data.y_train != forget_digit
        return ForgetRequest(
            forget_prompt=digit_prompt(forget_digit),
            # the first pseudo concept is the next digit, as SalUn's reference maps class c to c + 1
            pseudo_prompts=[digit_prompt((forget_digit + j) % 10) for j in range(1, 10)],
            forget_images=data.x_train[data.y_train == forget_digit],
            retain_images=data.x_train[keep],
            retain_prompts=[digit_prompt(int(y)) for y in data.y_train[keep]],
            identity={"task": "digits", **data.recipe(), "forget_digit": forget_digit},
        )

    return T2IConceptTask(
        name="digits-t2i",
        description=f"embedded digits text-to-image model, erase digit {forget_digit} ({DIGIT_WORDS[forget_digit]!r})",
        load_model=load_digits_t2i,
        make_judge=lambda: JUDGES.create("digits"),
        attacked=[PromptItem(form, s, forget_digit) for form in attacked_forms for s in attack_seeds],
        kept=[PromptItem(digit_prompt(d), s, d) for d in kept_digits for s in kept_seeds],
        forget_request=request,
        options={"forget_digit": forget_digit, "n_attack": n_attack, "n_kept": n_kept, "seed": seed, "forms": forms},
        control_prompt=digit_prompt((forget_digit + 4) % 10),
    )


def judged_accuracy(target: TextToImageTarget, digits: list[int], seeds: list[int], judge: DigitsJudge | None = None,
                    guidance: float | None = None) -> dict[int, float]:
    """Share of generations per digit prompt that the digits classifier judges as that digit."""
    judge = judge or DigitsJudge()
    out = {}
    for d in digits:
        images = target.generate(digit_prompt(d), seeds, guidance=guidance)
        out[d] = float((judge.predict(images) == d).float().mean())
    return out


if __name__ == "__main__":  # python -m tasks.t2i_digits: train the embedded model (if needed) and measure it
    torch.set_num_threads(int(os.environ.get("ROBUSTBENCH_PEFT_T2I_THREADS", 1)))
    t0 = time.perf_counter()
    model = load_digits_t2i()
    print(f"ready in {time.perf_counter() - t0:.1f} s; meta {model.meta}")
    from tasks import t2i_digits  # the registered module, not __main__ (whose judge would register twice)

    acc = t2i_digits.judged_accuracy(model, list(range(10)), list(range(1000, 1020)))
    print("judged accuracy per digit:", {k: round(v, 3) for k, v in acc.items()},
          "mean", round(sum(acc.values()) / len(acc), 3))
