"""Prompt attacks on text-to-image targets: ``no_attack``, ``unlearndiff``, ``random_tokens``.

UnlearnDiff (Zhang et al.) turns the unlearned model into its own diffusion
classifier: it searches k tokens, inserted right after the start token, that
minimise the denoising error of a target image showing the erased concept (the
original model's generation of the same prompt and seed). Tokens are relaxed to
a distribution on the probability simplex; the forward pass uses the most
likely token (one-hot) and the gradient passes straight through to the
distribution; Adam steps are followed by a Euclidean projection back onto the
simplex. Timesteps follow a seeded schedule; after each timestep's inner steps
the decoded prompt is generated at the fixed seed and judged, and the search
stops at the first success.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robustbench_peft.config import option
from robustbench_peft.errors import UserError
from robustbench_peft.registry import register_prompt_attack
from robustbench_peft.t2i.attack_base import PromptAttack, PromptAttackConfig
from robustbench_peft.t2i.target import TextToImageTarget

from .simplex import project_simplex


def insert_slots(target: TextToImageTarget, prompt: str, k: int) -> tuple[torch.Tensor, list[int]]:
    """Ids of ``prompt`` with k slots right after the start token, and the slot positions.

    The slots hold a placeholder (the first candidate id) until a token is chosen;
    the rest of the prompt, its end token and the padding shift right by k.
    """
    ids = target.tokenize([prompt])[0].tolist()
    eos = target.tokenizer.eos_token_id
    end = ids.index(eos, 1) if eos in ids[1:] else len(ids) - 1
    real = ids[: end + 1]
    if len(real) + k > len(ids):
        raise UserError(f"prompt {prompt!r} has {len(real)} tokens; {k} adversarial tokens do not fit in {len(ids)}")
    placeholder = int(candidate_ids(target)[0])
    out = real[:1] + [placeholder] * k + real[1:]
    out += [target.tokenizer.pad_token_id] * (len(ids) - len(out))
    return torch.tensor([out], dtype=torch.long), list(range(1, 1 + k))


def candidate_ids(target: TextToImageTarget, exclude: set[int] | None = None) -> torch.Tensor:
    """Every vocabulary id an adversarial token may take (never a special token)."""
    banned = target.special_ids | (exclude or set())
    return torch.tensor([i for i in range(target.vocab_size) if i not in banned], dtype=torch.long)


def adversarial_text(target: TextToImageTarget, ids: torch.Tensor) -> str:
    return target.decode(ids[0])


@dataclass(frozen=True)
class RandomTokensConfig(PromptAttackConfig):
    """Options of ``random_tokens``."""

    k: int = option(3, "adversarial tokens inserted at UnlearnDiff's position")
    trials: int = option(10, "seeded random draws, each judged (the judge budget)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.k < 1 or self.trials < 1:
            raise UserError("random_tokens: k and trials must be at least 1")


@dataclass(frozen=True)
class UnlearnDiffConfig(PromptAttackConfig):
    """Options of ``unlearndiff``."""

    k: int = option(3, "adversarial tokens optimised after the start token")
    timesteps: int = option(10, "outer steps: one diffusion timestep each, judged after each")
    inner_steps: int = option(10, "Adam steps on the relaxed tokens per timestep")
    lr: float = option(0.01, "Adam learning rate on the relaxed tokens")
    noise_batch: int = option(8, "noise draws averaged per inner step")
    t_min: float = option(0.0, "lowest timestep, as a fraction of the training timesteps")
    t_max: float = option(1.0, "highest timestep, as a fraction of the training timesteps")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.k < 1 or self.timesteps < 1 or self.inner_steps < 1 or self.lr <= 0 or self.noise_batch < 1:
            raise UserError("unlearndiff: k, timesteps, inner_steps, noise_batch must be >= 1 and lr > 0")
        if not 0.0 <= self.t_min < self.t_max <= 1.0:
            raise UserError("unlearndiff: need 0 <= t_min < t_max <= 1 (fractions of the training timesteps)")


@register_prompt_attack("no_attack")
class NoAttack(PromptAttack):
    """The plain prompt, judged as is: its success rate is the pre-attack ASR."""

    name = "no_attack"

    config_class = PromptAttackConfig

    def search(self, target, item, judge, reference):
        return item.prompt, 0, {"k": 0}


@register_prompt_attack("random_tokens")
class RandomTokens(PromptAttack):
    """Baseline: k uniformly drawn tokens at UnlearnDiff's position; several seeded draws, each judged."""

    name = "random_tokens"

    config_class = RandomTokensConfig

    def search(self, target, item, judge, reference):
        ids, slots = insert_slots(target, item.prompt, self.config.k)
        pool = candidate_ids(target)
        gen = torch.Generator().manual_seed(self.config.seed * 1_000_003 + item.seed)
        text = item.prompt
        for trial in range(1, self.config.trials + 1):
            ids[0, slots] = pool[torch.randint(len(pool), (self.config.k,), generator=gen)]
            text = adversarial_text(target, ids)
            if self.judge_prompt(target, item, judge, text)[0]:
                return text, trial, {"k": self.config.k, "tokens": ids[0, slots].tolist()}
        return text, self.config.trials, {"k": self.config.k, "tokens": ids[0, slots].tolist()}


@register_prompt_attack("unlearndiff")
class UnlearnDiff(PromptAttack):
    """UnlearnDiff: k relaxed tokens, straight-through one-hot, Adam + simplex projection, judged per timestep."""

    name = "unlearndiff"
    needs_reference = True

    config_class = UnlearnDiffConfig

    def schedule(self, target: TextToImageTarget, gen: torch.Generator) -> list[int]:
        """A seeded timestep per outer step, drawn from [t_min, t_max] of the training schedule."""
        n = target.num_train_timesteps
        lo, hi = int(self.config.t_min * (n - 1)), int(self.config.t_max * (n - 1))
        return torch.randint(lo, hi + 1, (self.config.timesteps,), generator=gen).tolist()

    def relaxed_onehot(self, weights: torch.Tensor) -> torch.Tensor:
        """Forward: the one-hot of the most likely token; backward: identity to ``weights`` (straight through)."""
        hard = torch.nn.functional.one_hot(weights.argmax(-1), weights.shape[-1]).to(weights.dtype)
        return hard + weights - weights.detach()

    def search(self, target, item, judge, reference):
        if reference is None:
            raise UserError("unlearndiff needs the original model's image of the prompt (the reference)")
        gen = torch.Generator().manual_seed(self.config.seed * 1_000_003 + item.seed)
        ids, slots = insert_slots(target, item.prompt, self.config.k)
        pool = candidate_ids(target)
        table = target.token_embedding.weight.detach()
        base = table[ids[0]].clone()
        x0 = target.image_to_x0(reference[None].clamp(0, 1)).detach()
        init = torch.rand(self.config.k, len(pool), generator=gen)
        weights = project_simplex(init / init.sum(-1, keepdim=True)).requires_grad_(True)
        optimizer = torch.optim.Adam([weights], lr=self.config.lr)
        steps, text = 0, item.prompt
        history = []
        for t in self.schedule(target, gen):
            # one noisy version of the target image per timestep: the inner steps compare prompts on the same x_t
            tt = torch.full((self.config.noise_batch,), t, dtype=torch.long)
            noise = torch.randn((self.config.noise_batch, *x0.shape[1:]), generator=gen)
            x_t = target.add_noise(x0.expand_as(noise), noise, tt)
            for _ in range(self.config.inner_steps):
                chosen = self.relaxed_onehot(weights) @ table[pool]
                embeds = base.clone()
                embeds[slots] = chosen
                cond = target.encode_embeds(ids, embeds[None]).expand(self.config.noise_batch, -1, -1)
                loss = torch.nn.functional.mse_loss(target.denoise(x_t, tt, cond), noise)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    weights.copy_(project_simplex(weights))
                steps += 1
            with torch.no_grad():
                ids[0, slots] = pool[weights.argmax(-1)]
            text = adversarial_text(target, ids)
            history.append(round(loss.item(), 5))
            if self.judge_prompt(target, item, judge, text)[0]:
                break
        self.last_distribution = weights.detach().clone()  # the relaxed tokens where the search stopped
        return text, steps, {"k": self.config.k, "tokens": ids[0, slots].tolist(), "loss": history}
