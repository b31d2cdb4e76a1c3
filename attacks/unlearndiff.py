"""Prompt attacks on text-to-image targets: ``no_attack``, ``unlearndiff``, ``random_tokens``.

UnlearnDiff (Zhang et al., arXiv 2310.11868) turns the unlearned model into its
own diffusion classifier: it searches k tokens, inserted right after the start
token, that minimise the denoising error of a target image showing the erased
concept (the original model's generation of the same prompt and seed). The
setting follows the authors' reference code (OPTML-Group/Diffusion-MU-Attack,
``text_grad``):

* each token is a distribution over the candidate vocabulary, initialised
  uniform; the forward pass samples one token per slot from it (one-hot, fed to
  the text encoder as ``one_hot @ word embeddings``), the backward pass hands the
  gradient straight through, clipped to [-1, 1] (hardtanh);
* Adam (lr 0.01, weight decay 0.1) on the distributions, each step followed by
  a Euclidean projection back onto the simplex;
* 50 timesteps evenly spaced over the training schedule (10, 30, ..., 990),
  visited in increasing order, 40 steps each with one fresh noise draw per step;
* after each timestep the most likely tokens are judged (the image generated
  from those exact ids at the prompt's seed) and the search stops at the first
  success: the judge budget is one generation per timestep.

Candidate tokens are the whole vocabulary minus the tokenizer's special tokens
and its never-trained placeholders (:meth:`TextToImageTarget.reserved_ids`).
``random_tokens`` draws k candidates uniformly, one judged draw per trial; give
it as many trials as UnlearnDiff has timesteps for an equal judge budget.
Both batch all prompts of a model into one run; each prompt keeps its own
seeded generator and its own loss, so the result per prompt is the one a search
of that prompt alone would give.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from robustbench_peft.config import option
from robustbench_peft.errors import UserError
from robustbench_peft.registry import register_prompt_attack
from robustbench_peft.t2i.attack_base import PromptAttack, PromptAttackConfig, PromptItem, judge_ids
from robustbench_peft.t2i.target import TextToImageTarget

from .simplex import project_simplex

#: The reference schedule: 50 timesteps x 40 optimisation steps, Adam lr 0.01 (weight decay 0.1), k = 3 for objects.
PAPER_TIMESTEPS, PAPER_INNER_STEPS, PAPER_LR, PAPER_WEIGHT_DECAY, PAPER_K = 50, 40, 0.01, 0.1, 3


def candidate_ids(target: TextToImageTarget, exclude: set[int] | None = None) -> torch.Tensor:
    """Every vocabulary id an adversarial token may take: all but special and reserved tokens."""
    banned = target.special_ids | target.reserved_ids | (exclude or set())
    return torch.tensor([i for i in range(target.vocab_size) if i not in banned], dtype=torch.long)


def insert_slots(target: TextToImageTarget, prompt: str, k: int) -> tuple[torch.Tensor, list[int]]:
    """Ids of ``prompt`` with k slots right after the start token, and the slot positions.

    The slots hold a placeholder (the first candidate id) until a token is chosen;
    the rest of the prompt, its end token and the padding shift right by k.
    """
    ids = target.tokenize([prompt])[0].tolist()
    end = ids.index(target.end_id, 1) if target.end_id in ids[1:] else len(ids) - 1
    real = ids[: end + 1]
    if len(real) + k > len(ids):
        raise UserError(f"prompt {prompt!r} has {len(real)} tokens; {k} adversarial tokens do not fit in {len(ids)}")
    placeholder = int(candidate_ids(target)[0])
    out = real[:1] + [placeholder] * k + real[1:]
    out += [target.pad_id] * (len(ids) - len(out))
    return torch.tensor([out], dtype=torch.long), list(range(1, 1 + k))


def timestep_schedule(num_train_timesteps: int, n: int) -> list[int]:
    """n timesteps evenly spaced over the training schedule, mid-interval, ascending (the reference's)."""
    if n > num_train_timesteps:
        raise UserError(f"unlearndiff: {n} timesteps exceed the model's {num_train_timesteps} training timesteps")
    stride = num_train_timesteps // n
    return list(range(stride // 2, num_train_timesteps, stride))[:n]


def item_generator(seed: int, item: PromptItem) -> torch.Generator:
    """The generator of one prompt's random choices: the attack's seed with the prompt's own."""
    return torch.Generator().manual_seed(seed * 1_000_003 + item.seed)


class StraightThroughGather(torch.autograd.Function):
    """``one_hot(picks) @ E`` with the reference's straight-through gradient: d/d weights = hardtanh(grad @ E^T).

    The forward gathers the picked rows of ``E`` (the same numbers as the one-hot product, without a dense
    product over the whole vocabulary); the backward is the one-hot product's own gradient, passed straight
    through the sampling and clipped to [-1, 1] as the reference's ``STERandSelect`` does, for every prompt's
    slots in one matrix product.
    """

    @staticmethod
    def forward(ctx, weights: torch.Tensor, table: torch.Tensor, picks: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(table)
        ctx.shape = weights.shape
        return table[picks]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (table,) = ctx.saved_tensors
        flat = torch.nn.functional.hardtanh(grad.reshape(-1, grad.shape[-1]) @ table.T)
        return flat.reshape(ctx.shape), None, None


def sampled_token_embeddings(weights: torch.Tensor, table: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """For each prompt p (``weights[p]``: k distributions over the rows of ``table``), one token sampled per slot with
    the prompt's own generator; their embeddings (P, k, D), with the straight-through gradient of
    :class:`StraightThroughGather`."""
    picks = torch.stack([torch.multinomial(w.detach(), 1, generator=g)[:, 0] for w, g in zip(weights, generators)])
    return StraightThroughGather.apply(weights, table, picks)


@dataclass(frozen=True)
class RandomTokensConfig(PromptAttackConfig):
    """Options of ``random_tokens``."""

    k: int = option(PAPER_K, "adversarial tokens inserted at UnlearnDiff's position")
    trials: int = option(PAPER_TIMESTEPS, "seeded random draws, each judged (the judge budget; UnlearnDiff judges once per timestep)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.k < 1 or self.trials < 1:
            raise UserError("random_tokens: k and trials must be at least 1")


@dataclass(frozen=True)
class UnlearnDiffConfig(PromptAttackConfig):
    """Options of ``unlearndiff`` (defaults: the reference code's setting)."""

    k: int = option(PAPER_K, "adversarial tokens optimised after the start token (3 for objects, 5 for nudity)")
    timesteps: int = option(PAPER_TIMESTEPS, "outer steps: one diffusion timestep each, judged after each")
    inner_steps: int = option(PAPER_INNER_STEPS, "Adam steps on the relaxed tokens per timestep")
    lr: float = option(PAPER_LR, "Adam learning rate on the relaxed tokens")
    weight_decay: float = option(PAPER_WEIGHT_DECAY, "Adam weight decay on the relaxed tokens")
    noise_batch: int = option(1, "fresh noise draws per optimisation step (the reference draws one)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.k < 1 or self.timesteps < 1 or self.inner_steps < 1 or self.lr <= 0 or self.noise_batch < 1:
            raise UserError("unlearndiff: k, timesteps, inner_steps, noise_batch must be >= 1 and lr > 0")
        if self.weight_decay < 0:
            raise UserError("unlearndiff: weight_decay must be >= 0")


@register_prompt_attack("no_attack")
class NoAttack(PromptAttack):
    """The plain prompt, judged as is: its success rate is the pre-attack ASR."""

    name = "no_attack"

    config_class = PromptAttackConfig

    def search(self, target, item, judge, reference):
        return item.prompt, 0, {"k": 0}


@register_prompt_attack("random_tokens")
class RandomTokens(PromptAttack):
    """Baseline: k uniformly drawn candidate tokens at UnlearnDiff's position; one judged draw per trial."""

    name = "random_tokens"
    random_baseline = True

    config_class = RandomTokensConfig

    def judge_budget(self) -> int:
        return self.config.trials

    def search(self, target, item, judge, reference):
        return self.search_many(target, [item], judge, None)[0]

    def search_many(self, target, items, judge, references):
        k = self.config.k
        pool = candidate_ids(target)
        rows = [insert_slots(target, it.prompt, k) for it in items]
        ids = torch.cat([r[0] for r in rows])
        slots = rows[0][1]
        gens = [item_generator(self.config.seed, it) for it in items]
        steps = [self.config.trials] * len(items)
        active = list(range(len(items)))
        for trial in range(1, self.config.trials + 1):
            for p in active:
                ids[p, slots] = pool[torch.randint(len(pool), (k,), generator=gens[p])]
            flags, _ = judge_ids(target, [items[p] for p in active], judge, ids[active])
            for p, ok in zip(list(active), flags):
                if ok:
                    steps[p] = trial
                    active.remove(p)
            if not active:
                break
        return [(ids[p].clone(), steps[p], {"k": k, "tokens": ids[p, slots].tolist()}) for p in range(len(items))]


@register_prompt_attack("unlearndiff")
class UnlearnDiff(PromptAttack):
    """UnlearnDiff: k relaxed tokens, sampled one-hot with a clipped straight-through gradient, Adam +
    simplex projection, judged after each timestep."""

    name = "unlearndiff"
    needs_reference = True
    optimising = True

    config_class = UnlearnDiffConfig

    def judge_budget(self) -> int:
        return self.config.timesteps

    def search(self, target, item, judge, reference):
        return self.search_many(target, [item], judge, None if reference is None else reference[None])[0]

    def search_many(self, target: TextToImageTarget, items: Sequence[PromptItem], judge, references):
        if references is None:
            raise UserError("unlearndiff needs the original model's image of the prompt (the reference)")
        cfg, n = self.config, len(items)
        pool = candidate_ids(target)
        table = target.token_embedding.weight.detach()
        candidates = table[pool]  # (C, D): the rows a relaxed token mixes
        rows = [insert_slots(target, it.prompt, cfg.k) for it in items]
        ids = torch.cat([r[0] for r in rows])
        slots = rows[0][1]
        base = table[ids]  # (n, L, D): the fixed tokens' word embeddings
        x0 = target.image_to_x0(references.clamp(0, 1)).detach()
        gens = [item_generator(cfg.seed, it) for it in items]
        weights = torch.full((n, cfg.k, len(pool)), 1.0 / len(pool)).requires_grad_(True)
        with torch.no_grad():
            weights.copy_(project_simplex(weights))
        optimizer = torch.optim.Adam([weights], lr=cfg.lr, weight_decay=cfg.weight_decay)
        steps, history = [0] * n, [[] for _ in range(n)]
        active = list(range(n))
        for t in timestep_schedule(target.num_train_timesteps, cfg.timesteps):
            tt = torch.full((len(active) * cfg.noise_batch,), t, dtype=torch.long)
            for _ in range(cfg.inner_steps):
                embeds = base[active].clone()
                embeds[:, slots] = sampled_token_embeddings(weights[active], candidates, [gens[p] for p in active])
                cond = target.encode_embeds(ids[active], embeds).repeat_interleave(cfg.noise_batch, 0)
                noise = torch.cat([torch.randn((cfg.noise_batch, *x0.shape[1:]), generator=gens[p]) for p in active])
                x_t = target.add_noise(x0[active].repeat_interleave(cfg.noise_batch, 0), noise, tt)
                err = (target.denoise(x_t, tt, cond) - noise).pow(2).flatten(1).mean(1)
                per_prompt = err.view(len(active), cfg.noise_batch).mean(1)
                optimizer.zero_grad()
                per_prompt.sum().backward()  # separate losses: each prompt's gradient is its own
                optimizer.step()
                with torch.no_grad():
                    weights[active] = project_simplex(weights[active])
                for j, p in enumerate(active):
                    steps[p] += 1
            with torch.no_grad():
                for j, p in enumerate(active):
                    ids[p, slots] = pool[weights[p].argmax(-1)]
                    history[p].append(round(float(per_prompt[j]), 5))
            flags, _ = judge_ids(target, [items[p] for p in active], judge, ids[active])
            active = [p for p, ok in zip(active, flags) if not ok]
            if not active:
                break
        self.last_distribution = weights.detach().clone()  # the relaxed tokens where the search stopped
        return [(ids[p].clone(), steps[p], {"k": cfg.k, "tokens": ids[p, slots].tolist(), "loss": history[p]}) for p in range(n)]
