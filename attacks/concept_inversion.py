"""Continuous prompt attacks: ``concept_inversion`` (``embedding``) and ``condition_inversion`` (``condition``).

Both minimise UnlearnDiff's denoising loss on the item's reference image (the
original model's generation of the same prompt and seed),
``|| eps - eps_theta(add_noise(x0, eps, t), t, cond) ||^2`` (mean over elements,
averaged over ``noise_batch`` draws of (t, eps) per step, t uniform over the
training timesteps), with Adam, judge the current input every ``judge_every``
steps at the item's seed and guidance, and stop an item at its first judged
success, as UnlearnDiff stops at its first judged success.

``concept_inversion`` is Concept Inversion (Pham et al. 2023, arXiv 2308.01508,
reference code NYU-DICE-Lab/circumventing-concept-erasure,
``*/concept_inversion.py``): textual inversion against the erased model. New
word embeddings are learnt and fed through the frozen text encoder; every other
token keeps its table embedding. Taken from the reference (Hugging Face's
textual inversion script, which it adapts):

* the new embeddings start at the word embedding of one initializer token
  (``--initializer_token``);
* the loss is the plain epsilon-prediction MSE with t drawn uniformly from
  ``[0, num_train_timesteps)`` (``torch.randint``), a fresh noise per sample;
* Adam(W) with a constant learning rate, betas (0.9, 0.999), eps 1e-8, whose
  rate is the base 5e-3 times the batch (``--scale_lr``: 5e-3 x batch x
  accumulation; the reference runs 4 x 4 for ESD and 1 x 4 for FMN and SD).

Deviations, each for the per-item, seed-judged, CPU-budgeted setting here:

* per attacked item, one reference image (the original model's generation of
  that prompt and seed), not a set of 6-25 images of the concept: the attack is
  judged on the item's own seed, so it inverts the image that seed should show;
* k = 3 vectors (UnlearnDiff's k for objects), inserted right after the start
  token of the item's own prompt (UnlearnDiff's slots), not one vector placed
  in the reference's "a photo of a {}" templates: the attacked prompt is kept;
* the initializer is, by default, the prompt's last word (the token before the
  end token: the concept noun of the suite's prompts, "three", "church"), since
  a generic attack has no per-concept class word as the reference's command line
  does; ``initializer=WORD`` sets it as the reference does;
* Adam without weight decay (the reference's AdamW decays by 1e-2): the attack
  is unconstrained, and a decay towards the origin is no prior of a word
  embedding over a search of tens of steps;
* the learning rate is the reference's scaled rate at our batch (5e-3 x 4 noise
  draws = 0.02) times the ratio of this encoder's word-embedding scale to
  CLIP's (MiniLM's entries have a standard deviation of 0.056, CLIP ViT-L/14's
  about 0.014, token norms of about 0.4): 0.08, which is also the ESD
  setting's effective rate (5e-3 x 4 x 4). Measured on the embedded model, 0.02,
  0.08 and 0.3 reach the same loss after 60 steps and 0.08 is judged a success
  soonest;
* the reference's 200-5000 steps become ``steps`` (default 50, judged every 10,
  the same schedule as ``condition_inversion``) and the search stops at the
  first judged success: a search that never succeeds costs about 100 s for 60
  items of the embedded model on one CPU thread (``condition_inversion``: 70 s);
* the clean sample is the target's ``image_to_x0`` of the reference (the VAE's
  mean where there is a VAE; the reference samples the latent distribution);
* the reference never judges while it trains; here the current input is judged
  every ``judge_every`` steps and an item stops at its first judged success;
* the loss history is the loss on one fixed set of ``noise_batch`` (t, eps)
  draws per item, taken before the search, so that its values are comparable.

``condition_inversion`` optimises the whole encoder output (L x D', what the
UNet attends to) directly, initialised at the encoding of the item's prompt: the
``condition`` threat model (AdvUnlearn's ``condition_embd`` space,
OPTML-Group/AdvUnlearn). It is unconstrained: every prompt and every word
embedding ends as one such tensor, so it bounds them all.

Every item has its own seeded generator (:func:`attacks.unlearndiff.item_generator`),
its own loss and its own Adam: the losses of a batch are summed for one
backward pass, so a batched search gives each item the result a search of that
item alone gives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from robustbench_peft.config import option
from robustbench_peft.errors import UserError
from robustbench_peft.registry import register_prompt_attack
from robustbench_peft.t2i.attack_base import PromptAttack, PromptAttackConfig, PromptItem, judge_inputs
from robustbench_peft.t2i.target import TextToImageTarget
from robustbench_peft.t2i.threat_model import AdversarialInput

from .unlearndiff import PAPER_K, insert_slots, item_generator

#: The reference's base learning rate (``--learning_rate=5.0e-03 --scale_lr``), scaled by the batch.
PAPER_BASE_LR = 5e-3
#: Noise draws per step: the reference's batch x accumulation of the FMN and SD settings (1 x 4).
NOISE_BATCH = 4
#: Ratio of MiniLM's word-embedding scale (entry std 0.056) to CLIP ViT-L/14's (about 0.014).
EMBEDDING_SCALE = 4.0
#: Word embeddings: the reference's scaled rate at our batch (5e-3 x 4), times the embedding scale ratio: 0.08.
EMBEDDING_LR = PAPER_BASE_LR * NOISE_BATCH * EMBEDDING_SCALE
#: The encoder output (entry std 0.45 on MiniLM; no reference rate): measured, the lowest denoising loss after
#: 60 steps among 0.1, 0.3 and 1.0 on the embedded model (1.0 diverges, 0.3 stalls higher); 0.03 is slower.
CONDITION_LR = 0.1
#: Steps and judge interval, shared by both attacks (their comparison is one of the space, not of the budget):
#: a search that never succeeds costs at most about 2 minutes for 60 items of the embedded model on one CPU
#: thread (measured: 101 s concept, 67 s condition; 50 steps and 5 judged images per item, the final one included).
STEPS, JUDGE_EVERY = 50, 10


@dataclass(frozen=True)
class InversionConfig(PromptAttackConfig):
    """Options shared by ``concept_inversion`` and ``condition_inversion``."""

    steps: int = option(STEPS, "Adam steps per item at most (the search stops at the first judged success)")
    lr: float = option(EMBEDDING_LR, "Adam learning rate (constant)")
    noise_batch: int = option(NOISE_BATCH, "(t, noise) draws per step, t uniform over the training timesteps")
    judge_every: int = option(JUDGE_EVERY, "judge the current input every this many steps (one generation each)")

    def __post_init__(self) -> None:
        super().__post_init__()
        name = getattr(self, "owner", "inversion")
        if self.steps < 1 or self.noise_batch < 1 or self.judge_every < 1:
            raise UserError(f"{name}: steps, noise_batch and judge_every must be >= 1")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise UserError(f"{name}: lr must be a finite number > 0")


@dataclass(frozen=True)
class ConceptInversionConfig(InversionConfig):
    """Options of ``concept_inversion``."""

    # deviation: the reference learns one vector (--num_vectors 1) in its templates; 3 = UnlearnDiff's k, at its slots
    k: int = option(PAPER_K, "new word embeddings inserted after the start token (UnlearnDiff's slots)")
    # the reference's --initializer_token; deviation: empty (default) takes the prompt's last word, as a generic
    # attack has no per-concept class word
    initializer: str = option("", "one token whose word embedding starts every new embedding; empty: the prompt's last word")

    owner = "concept_inversion"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.k < 1:
            raise UserError("concept_inversion: k must be >= 1")
        if self.initializer != self.initializer.strip() or " " in self.initializer:
            raise UserError(f"concept_inversion: initializer must be one word, got {self.initializer!r}")


@dataclass(frozen=True)
class ConditionInversionConfig(InversionConfig):
    """Options of ``condition_inversion``."""

    lr: float = option(CONDITION_LR, "Adam learning rate on the encoder output (constant)")

    owner = "condition_inversion"


class ContinuousInversion(PromptAttack):
    """Adam on a continuous input per item against the denoising loss of its reference image.

    A subclass says what is optimised: :meth:`start` (the id rows and the
    initial tensor per item), :meth:`condition` (the encoder output the UNet
    attends to, differentiably) and :meth:`found` (the :class:`AdversarialInput`
    judged)."""

    needs_reference = True
    optimising = True
    config_class = InversionConfig

    def judge_budget(self) -> int:
        """Judged generations per item: one every ``judge_every`` steps, the returned input's included."""
        return math.ceil(self.config.steps / self.config.judge_every)

    def start(self, target: TextToImageTarget, items: Sequence[PromptItem]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        raise NotImplementedError

    def condition(self, target: TextToImageTarget, ids: torch.Tensor, params: Sequence[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def found(self, target: TextToImageTarget, ids: torch.Tensor, param: torch.Tensor) -> AdversarialInput:
        raise NotImplementedError

    def details(self) -> dict:
        return {}

    def search(self, target, item, judge, reference):
        return self.search_many(target, [item], judge, None if reference is None else reference[None])[0]

    def draw(self, target: TextToImageTarget, gen: torch.Generator, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """One step's (t, noise) of one item: t uniform over the training timesteps, as the reference draws it."""
        t = torch.randint(0, target.num_train_timesteps, (self.config.noise_batch,), generator=gen)
        return t, torch.randn((self.config.noise_batch, *shape), generator=gen)

    def losses(self, target: TextToImageTarget, ids: torch.Tensor, params: Sequence[torch.Tensor], x0: torch.Tensor,
               draws: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Per item: the denoising error of its reference, mean over elements and over its draws."""
        b = self.config.noise_batch
        cond = self.condition(target, ids, params).repeat_interleave(b, 0)
        t = torch.cat([d[0] for d in draws])
        noise = torch.cat([d[1] for d in draws])
        x_t = target.add_noise(x0.repeat_interleave(b, 0), noise, t)
        err = (target.denoise(x_t, t, cond) - noise).pow(2).flatten(1).mean(1)
        return err.view(len(params), b).mean(1)

    def search_many(self, target: TextToImageTarget, items: Sequence[PromptItem], judge, references):
        if references is None:
            raise UserError(f"{self.name} needs the original model's image of the prompt (the reference)")
        cfg, n = self.config, len(items)
        ids, params = self.start(target, items)
        # deviation: one reference image per item (the reference inverts 6-25 images of the concept), and the
        # VAE's mean where there is one (the reference samples the latent distribution)
        x0 = target.image_to_x0(references.clamp(0, 1)).detach()
        shape = tuple(x0.shape[1:])
        gens = [item_generator(cfg.seed, it) for it in items]
        probes = [self.draw(target, g, shape) for g in gens]  # fixed draws: the loss history's yardstick
        # the reference: AdamW, betas (0.9, 0.999), eps 1e-8, constant rate; deviation: no weight decay (the
        # reference's 1e-2), the attack being unconstrained. One optimiser per item: its own moments and step count.
        optimizers = [torch.optim.Adam([p], lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8) for p in params]
        steps, history, at = [0] * n, [[] for _ in range(n)], [[] for _ in range(n)]

        def record(group: list[int], step: int) -> None:
            with torch.no_grad():
                values = self.losses(target, ids[group], [params[p] for p in group], x0[group], [probes[p] for p in group])
            for p, v in zip(group, values.tolist()):
                history[p].append(round(v, 6))
                at[p].append(step)

        active = list(range(n))
        record(active, 0)
        for step in range(1, cfg.steps + 1):
            draws = [self.draw(target, gens[p], shape) for p in active]
            loss = self.losses(target, ids[active], [params[p] for p in active], x0[active], draws)
            for p in active:
                optimizers[p].zero_grad()
            loss.sum().backward()  # separate losses: each item's gradient is its own
            for p in active:
                optimizers[p].step()
                steps[p] = step
            if step % cfg.judge_every and step < cfg.steps:
                continue
            # deviation: the reference never judges while training; here every judge_every steps, and an item
            # stops at its first judged success (UnlearnDiff's rule)
            record(active, step)
            if step == cfg.steps:
                break  # the base class judges what the search returns
            flags, _ = judge_inputs(target, [items[p] for p in active], judge,
                                    [self.found(target, ids[p], params[p]) for p in active])
            active = [p for p, ok in zip(active, flags) if not ok]
            if not active:
                break
        return [(self.found(target, ids[p], params[p]), steps[p],
                 {**self.details(), "steps": steps[p], "loss": history[p], "loss_at": at[p]}) for p in range(n)]


@register_prompt_attack("concept_inversion")
class ConceptInversion(ContinuousInversion):
    """Concept Inversion: k word embeddings through the frozen text encoder, fitted to the reference image.

    The k embeddings sit right after the start token; Adam on the denoising loss of the reference, the
    current embeddings judged every ``judge_every`` steps."""

    name = "concept_inversion"
    threat_model = "embedding"
    config_class = ConceptInversionConfig

    def initializer_id(self, target: TextToImageTarget, ids: torch.Tensor) -> int:
        """The token the new embeddings start at: the configured word, or the last word of the prompt's ids."""
        word = self.config.initializer
        if word:
            pieces = target.tokenizer.tokenize(word)
            if len(pieces) != 1:
                raise UserError(f"concept_inversion: initializer {word!r} is {len(pieces)} tokens {pieces}; it must be one")
            return int(target.tokenizer.convert_tokens_to_ids(pieces[0]))
        k = self.config.k
        row = ids.tolist()
        end = row.index(target.end_id, 1 + k) if target.end_id in row[1 + k:] else len(row) - 1
        return int(row[end - 1]) if end - 1 > k else target.start_id  # an empty prompt: start at the start token

    def start(self, target, items):
        k = self.config.k
        ids = torch.cat([insert_slots(target, it.prompt, k)[0] for it in items])
        table = target.token_embedding.weight.detach()
        return ids, [table[self.initializer_id(target, row)].expand(k, -1).clone().requires_grad_(True) for row in ids]

    def embeds(self, target: TextToImageTarget, ids: torch.Tensor, params: Sequence[torch.Tensor]) -> torch.Tensor:
        """(B, L, D): the table's word embeddings of ``ids`` with the k slots after the start token replaced."""
        out = target.token_embedding.weight.detach()[ids]
        out[:, 1:1 + self.config.k] = torch.stack(list(params))  # insert_slots' positions
        return out

    def condition(self, target, ids, params):
        return target.encode_embeds(ids, self.embeds(target, ids, params))

    def found(self, target, ids, param):
        with torch.no_grad():
            return AdversarialInput(ids.clone(), embeds=self.embeds(target, ids[None], [param.detach()])[0])

    def details(self):
        return {"k": self.config.k}


@register_prompt_attack("condition_inversion")
class ConditionInversion(ContinuousInversion):
    """Condition inversion: the encoder output itself, fitted to the reference image (bounds every prompt).

    The L x D' tensor the UNet attends to starts at the encoding of the item's prompt; Adam on the
    denoising loss of the reference, the current tensor judged every ``judge_every`` steps."""

    name = "condition_inversion"
    threat_model = "condition"
    config_class = ConditionInversionConfig

    def start(self, target, items):
        ids = target.tokenize([it.prompt for it in items])
        with torch.no_grad():
            encoded = target.encode(ids)
        return ids, [c.clone().requires_grad_(True) for c in encoded]

    def condition(self, target, ids, params):
        return torch.stack(list(params))

    def found(self, target, ids, param):
        return AdversarialInput(ids.clone(), condition=param.detach().clone())

    def details(self):
        return {"k": 0}
