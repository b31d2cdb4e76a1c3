"""The built-in suites: ``digits`` (the default, small budgets) and ``full`` (leaderboard budgets)."""

from __future__ import annotations

from .options import PluginSpec
from .registry import register_suite
from .suite import Suite


#: The visual-prompt defenses of the C-AVP paper, side by side with the bare model.
PROMPT_DEFENSES = ("none", "vp", "uavp", "cavp")
#: The paper's ablation: C-AVP without its inter-prompt terms (l1, l2, l3).
CAVP_WITHOUT_TERMS = PluginSpec("cavp", {"terms": "none"})
#: Adversarial fine-tuning (PGD-AT) with every scope that matters on digits:cnn.
ADVFT_SCOPES = ("full", "linear", "lora")


#: A gradient-free attack in every default evaluation: AutoAttack's Square (1,000 queries, a
#: fifth of AutoAttack's budget, to keep the default suite fast) on 32 samples at Linf 0.1. A model
#: whose gradients are useless (shattered, obfuscated) stops PGD and APGD alike but not Square;
#: the check query_not_stronger_than_white_box compares them per sample.
SQUARE_PROBE = PluginSpec("autoattack", {"version": "custom", "attacks": "square", "n_queries": 1000, "n": 32, "eps": 0.1})


def _specs(*names: str, **options: object) -> tuple[PluginSpec, ...]:
    return tuple(PluginSpec(name, dict(options) if name != "none" else {}) for name in names)


def _advft_specs(**options: object) -> tuple[PluginSpec, ...]:
    return tuple(PluginSpec("advft", {"scope": scope, **options}) for scope in ADVFT_SCOPES)


def _robustness_attacks(steps: int, autoattack: dict[str, object], transfer_n: int) -> tuple[PluginSpec, ...]:
    """Cheap first: PGD (adaptive), PGD crafted on the bare base model (non-adaptive /
    downstream transfer; defenses only), AutoAttack (APGD-CE + APGD-T) and transfer from
    the digits surrogate. PGD uses the margin (CW) loss: cross-entropy saturates on
    C-AVP's diagonal log-probabilities and overestimates its robustness."""
    return (
        PluginSpec("pgd", {"norm": "Linf", "steps": steps, "loss": "cw"}),
        PluginSpec("pgd", {"norm": "Linf", "steps": steps, "loss": "cw", "mode": "nonadaptive"}),
        PluginSpec("autoattack", {"version": "custom", "attacks": "apgd-ce+apgd-t", **autoattack}),
        PluginSpec("transfer", {"n": transfer_n}),
    )


@register_suite("digits")
def digits_suite() -> Suite:
    """Default: every capability once on the embedded digits task, at small budgets."""
    return Suite(
        name="digits",
        task="digits",
        models=("digits:cnn",),
        attacks=(
            *_robustness_attacks(steps=10, autoattack={"n_target_classes": 3, "n": 32, "eps": 0.1}, transfer_n=100),
            PluginSpec("pgd", {"norm": "L2", "steps": 10}),
            SQUARE_PROBE,
        ),
        defenses=(
            *_specs(*PROMPT_DEFENSES, epochs=5),
            *_advft_specs(epochs=2),
        ),
        eps={"Linf": [0.05, 0.1, 0.2], "L2": [0.5, 1.0]},
        n=200,
        sections=("unlearning",),
        extra={"unlearning": {"preset": "quick"}},
        description="digits:cnn bare, with VP / U-AVP / C-AVP and full / linear / LoRA PGD-AT, under PGD, "
        "AutoAttack, transfer; quick SalUn vs retrain",
    )


@register_suite("quick")
def quick_suite() -> Suite:
    """The bare digits:cnn under PGD Linf / L2 only: the fastest end-to-end run."""
    return Suite(
        name="quick",
        task="digits",
        models=("digits:cnn",),
        attacks=(PluginSpec("pgd", {"norm": "Linf", "steps": 20}), PluginSpec("pgd", {"norm": "L2", "steps": 20})),
        n=540,
        description="digits:cnn under PGD Linf/L2 at the task's default eps",
    )


@register_suite("prompts")
def prompts_suite() -> Suite:
    """Visual-prompt defenses (none / VP / U-AVP / C-AVP, and C-AVP without its inter-prompt terms) at the
    paper's training length (the plug-ins' defaults: 50 epochs, PGD-10 at step eps/4, SGD 0.1, momentum 0.9,
    cosine decay, batch 256) x clean / PGD / AutoAttack / non-adaptive PGD."""
    return Suite(
        name="prompts",
        task="digits",
        models=("digits:cnn",),
        attacks=_robustness_attacks(steps=20, autoattack={"n": 100, "eps": 0.1}, transfer_n=300)[:3],
        defenses=(*_specs(*PROMPT_DEFENSES), CAVP_WITHOUT_TERMS),
        eps={"Linf": [0.05, 0.1]},
        n=300,
        description="C-AVP vs U-AVP vs VP (and C-AVP without inter-prompt terms) on digits:cnn at the paper's "
        "training length, adaptive (whole pipeline) and non-adaptive attacks",
    )


@register_suite("advft")
def advft_suite() -> Suite:
    """Adversarial fine-tuning (PGD-AT: full / linear / LoRA) vs the bare model, with cost."""
    return Suite(
        name="advft",
        task="digits",
        models=("digits:cnn",),
        attacks=_robustness_attacks(steps=20, autoattack={"n": 100, "eps": 0.1}, transfer_n=300),
        defenses=(PluginSpec("none"), *_advft_specs()),
        eps={"Linf": [0.05, 0.1]},
        n=300,
        description="full / linear / LoRA PGD-AT on digits:cnn: robust accuracy against trainable parameters",
    )


@register_suite("full")
def full_suite() -> Suite:
    """Leaderboard budgets on digits: PGD-100 x5 restarts and standard AutoAttack (Linf and L2) on the
    whole test split, at the task's default eps (Linf 0.05 / 0.1 / 0.2, L2 0.5 / 1 / 2)."""
    return Suite(
        name="full",
        task="digits",
        models=("digits:cnn",),
        attacks=(
            PluginSpec("pgd", {"norm": "Linf", "steps": 100, "restarts": 5}),
            PluginSpec("pgd", {"norm": "Linf", "steps": 100, "restarts": 5, "loss": "dlr"}),
            PluginSpec("pgd", {"norm": "L2", "steps": 100, "restarts": 5}),
            # Standard AutoAttack (APGD-CE, APGD-T, FAB-T, Square; 9 target classes = all of digits' other classes)
            # on every test sample and every eps: the leaderboard ranks by the samples AutoAttack covered.
            PluginSpec("autoattack", {"version": "standard"}),
            PluginSpec("autoattack", {"version": "standard", "norm": "L2"}),
        ),
        description="leaderboard budgets: PGD-100 x5 restarts (CE, DLR; L2) and standard AutoAttack (Linf, L2) on the whole test split",
    )
