"""Lp threat models in pixel space: distances, projection, random starts, ascent steps.

Every attack's output passes through :func:`project` and :func:`broken_rules`, so a
bug inside one attack cannot produce an input outside the threat model. The
evaluation PGD and the training-time adversaries (adversarial fine-tuning,
adversarial prompts) take their steps with :func:`pgd_step` and start from
:func:`random_start`: one geometry for crafting at training and at test time.
"""

from __future__ import annotations

import math
import numbers
import re
from typing import Any, Iterable, Mapping

import torch

from .config import parse_number
from .errors import UserError

NORMS = ("Linf", "L2")
#: Slack for float round-off when checking ||x_adv - x|| <= eps.
TOLERANCE = 1e-6
#: Any spelling of a threat model (``linf``, ``LINF``) -> its canonical name.
_NORM_NAMES = {name.lower(): name for name in NORMS}
#: Between the values of one eps list: ``,`` (``--eps 0.1,0.2``) or ``+`` (plug-in options, whose
#: own separator is ``,``), except the ``+`` of an exponent (``1e+3``).
_EPS_SEPARATOR = re.compile(r",|(?<![eE])\+")
#: The key of an eps list for every threat model the attacks use.
EVERY_NORM = "*"


def check_norm(norm: Any) -> str:
    """The canonical name of a threat model written in any case (``linf`` -> ``Linf``), so
    eps keys, attack options and reports all use one spelling."""
    canonical = _NORM_NAMES.get(norm.strip().lower()) if isinstance(norm, str) else None
    if canonical is None:
        raise UserError(f"unknown threat model {norm!r}; use one of {', '.join(NORMS)} (any case)")
    return canonical


def eps_value(raw: Any) -> float:
    """One eps: a number, or text such as ``0.03`` or ``8/255`` (the ecosystem's notation)."""
    try:
        if isinstance(raw, bool):
            raise TypeError
        eps = parse_number(raw) if isinstance(raw, str) else float(raw)
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"eps must be a number such as 0.03 or 8/255, got {raw!r}") from None
    if not math.isfinite(eps) or eps <= 0:
        raise UserError(f"eps must be a positive finite number, got {raw!r}")
    return eps


def validate_eps(eps_list: Any) -> list[float]:
    """An eps list in any notation -> positive finite floats, deduplicated, in the caller's order.

    Takes a number (``0.1``), text (``"8/255"``, ``"0.1,0.2"``, ``"4/255+8/255"``) or a
    sequence of numbers and number texts: every place that accepts eps reads it here."""
    if isinstance(eps_list, str):
        items: list[Any] = [v for v in _EPS_SEPARATOR.split(eps_list) if v.strip()]
    elif isinstance(eps_list, numbers.Real):
        items = [eps_list]
    elif isinstance(eps_list, Iterable) and not isinstance(eps_list, Mapping):
        items = list(eps_list)
    else:
        raise UserError(f"eps must be a number, text such as 8/255 or a list of them, got {eps_list!r}")
    values: list[float] = []
    for raw in items:
        eps = eps_value(raw)
        if eps not in values:
            values.append(eps)
    if not values:
        raise UserError("at least one eps value is needed")
    return values


def parse_eps_text(text: str) -> dict[str, list[float]]:
    """``"Linf:8/255"`` -> {"Linf": [0.031...]}; ``"0.1,0.2"`` -> {"*": [0.1, 0.2]} (every threat model)."""
    norm, sep, values = str(text).partition(":")
    if not sep:
        return {EVERY_NORM: validate_eps(text)}
    return {check_norm(norm): validate_eps(values)}


def eps_by_norm(value: Any, norms: Iterable[str]) -> dict[str, list[float]] | None:
    """eps in any notation -> {threat model: eps list}; None stays None (the task's defaults).

    ``value`` is a number, a list, text (``"8/255"``, ``"L2:0.5,1"``) or a dict from threat
    model (any case; ``"*"`` for all) to any of those. A list for every threat model applies
    to each of ``norms`` (the ones the attacks use); named threat models take precedence."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        given = {(EVERY_NORM if key == EVERY_NORM else check_norm(key)): validate_eps(values) for key, values in value.items()}
    elif isinstance(value, str):
        given = parse_eps_text(value)
    else:
        given = {EVERY_NORM: validate_eps(value)}
    every = given.pop(EVERY_NORM, None)
    if every is None:
        return given
    return {**{check_norm(norm): list(every) for norm in norms}, **given}


def whole_box_eps(norm: str, eps: float, input_shape: Iterable[int]) -> str | None:
    """Why ``eps`` allows every image of the [0,1] box (None when it does not): an eps in
    0-255 pixel units (``8`` for ``8/255``) makes every model score 0% without a word."""
    norm = check_norm(norm)
    dimension = math.prod(int(s) for s in input_shape)
    diameter = 1.0 if norm == "Linf" else math.sqrt(dimension)
    if eps < diameter:
        return None
    where = "pixels lie in [0,1]" if norm == "Linf" else f"the [0,1] box of {dimension} values has L2 diameter {diameter:g}"
    hint = f"; did you mean {eps:g}/255? (eps is in [0,1] pixel units)" if eps > 1 else ""
    return f"{norm} eps={eps:g} allows every image ({where}), so no model can be robust there{hint}"


def distance(x: torch.Tensor, x_adv: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample ||x_adv - x|| in the given norm."""
    delta = (x_adv - x).flatten(1)
    if norm == "Linf":
        return delta.abs().amax(1) if delta.shape[1] else delta.new_zeros(len(delta))
    return delta.norm(p=2, dim=1)


def project(x: torch.Tensor, x_adv: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Nearest point (up to Lp scaling) of the eps-ball around x, then clipped to [0,1].

    Clipping after the ball projection never increases the distance, since every
    coordinate moves towards x (x itself lies in [0,1]).
    """
    delta = x_adv - x
    if norm == "Linf":
        delta = delta.clamp(-eps, eps)
    else:
        norms = delta.flatten(1).norm(p=2, dim=1).clamp_min(1e-12)
        delta = delta * _per_sample((eps / norms).clamp(max=1.0), x)
    return (x + delta).clamp(0.0, 1.0)


def random_start(x: torch.Tensor, eps: float, norm: str, generator: torch.Generator) -> torch.Tensor:
    """A uniformly random point of the eps-ball around x (clipped to [0,1])."""
    if norm == "Linf":
        noise = (torch.rand(x.shape, generator=generator) * 2 - 1) * eps
    else:
        direction = torch.randn(x.shape, generator=generator)
        direction = direction / _per_sample(direction.flatten(1).norm(dim=1).clamp_min(1e-12), x)
        radius = torch.rand(len(x), generator=generator).pow(1.0 / max(1, x[0].numel())) * eps
        noise = direction * _per_sample(radius, x)
    return (x + noise.to(x.device, x.dtype)).clamp(0.0, 1.0)


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-sample values shaped to broadcast over ``like``'s non-batch dimensions."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def ascent_step(grad: torch.Tensor, alpha: float | torch.Tensor, norm: str) -> torch.Tensor:
    """The steepest-ascent step of length ``alpha`` (a number or per-sample values) in the norm."""
    if norm == "Linf":
        return alpha * grad.sign()
    return alpha * grad / _per_sample(grad.flatten(1).norm(dim=1).clamp_min(1e-12), grad)


def pgd_step(x: torch.Tensor, x_adv: torch.Tensor, grad: torch.Tensor, alpha: float | torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """One PGD step: ascend along ``grad`` from ``x_adv``, project onto the eps-ball of ``x`` and [0,1]."""
    return project(x, x_adv + ascent_step(grad, alpha, norm), eps, norm)


def broken_rules(x: torch.Tensor, x_adv: torch.Tensor, eps: float, norm: str) -> dict[str, torch.Tensor]:
    """Per rule of the contract (finite, in [0,1], in the eps-ball), a per-sample mask of the
    inputs that break it; ``any`` over the masks marks the invalid samples."""
    finite = torch.isfinite(x_adv.flatten(1)).all(1)
    in_box = ((x_adv >= 0) & (x_adv <= 1)).flatten(1).all(1)
    in_ball = distance(x, torch.nan_to_num(x_adv), norm) <= eps + TOLERANCE
    return {"not_finite": ~finite, "outside_0_1": ~in_box, "outside_ball": ~in_ball}
