"""The ``digits-t2i`` task: erase one digit of the embedded text-to-image model, judged by ``digits:cnn``.

Attacked prompts are the erased digit's canonical prompt at seeded starting
noises (the section attacks those the original model renders as the digit);
kept prompts are the nine other digits'. The forget request carries the
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
from .t2i_digits_model import DIGIT_WORDS, digit_prompt, load_digits_t2i


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
def digits_t2i_task(forget_digit: int = 3, n_attack: int = 12, n_kept: int = 8, seed: int = 0) -> T2IConceptTask:
    """Embedded text-to-image digits: erase one digit's prompt; attack it; keep the other nine."""
    if not 0 <= forget_digit <= 9:
        raise UserError(f"digits-t2i: forget_digit must be 0-9, got {forget_digit}")
    kept_digits = [d for d in range(10) if d != forget_digit]
    attack_seeds = seed_range(10_000 + 1000 * seed, n_attack)
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
        attacked=[PromptItem(digit_prompt(forget_digit), s, forget_digit) for s in attack_seeds],
        kept=[PromptItem(digit_prompt(d), s, d) for d in kept_digits for s in kept_seeds],
        forget_request=request,
        options={"forget_digit": forget_digit, "n_attack": n_attack, "n_kept": n_kept, "seed": seed},
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
    acc = judged_accuracy(model, list(range(10)), list(range(1000, 1020)))
    print("judged accuracy per digit:", {k: round(v, 3) for k, v in acc.items()},
          "mean", round(sum(acc.values()) / len(acc), 3))
