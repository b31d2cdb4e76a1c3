"""Concept unlearning for text-to-image targets: ESD and SalUn's diffusion form.

Registered as text-to-image unlearners ``esd`` and ``salun`` (also accepted as
``salun-dm``; its method name, which keys its cached UNets, stays ``salun-dm``).
Both fine-tune only the UNet.

* ESD (Gandikota et al.): the UNet under the erased prompt c is trained to
  follow the frozen original's negatively guided prediction
  eps0(x_t) - eta (eps0(x_t, c) - eps0(x_t)); x_t are noised samples the frozen
  model generates for c, so no data is needed. ``params`` picks ESD-u
  (``noxattn``: everything but cross-attention), ESD-x (``xattn``) or ``all``.
* SalUn-DM (Fan et al.): a saliency mask keeps the top ``fraction`` of UNet
  weights by the magnitude of the forget set's denoising-loss gradient; only
  those weights move. The forget loss pulls the prediction under the forgotten
  prompt to the (detached) prediction under a pseudo prompt (another concept),
  plus ``alpha`` times the usual denoising loss on the retain set. Masked-out
  weights are restored after every step, so they stay bit-identical. Defaults
  follow the paper and its reference DDPM code (Unlearn-Saliency/DDPM: alpha
  1e-3 on a retain loss summed over each sample's pixels, 500 steps, Adam lr
  1e-4, gradient-norm clip 1, 50% mask, one fixed pseudo class, 10%
  empty-prompt dropout in the retain loss); the batch is 16 instead of 128, so
  the default update takes about two minutes on one CPU thread (batch 128
  would take roughly eight times as long, an estimate).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from robustbench_peft.config import option
from robustbench_peft.errors import UserError
from robustbench_peft.registry import register_t2i_unlearner
from robustbench_peft.t2i.target import TextToImageTarget
from robustbench_peft.t2i.unlearn_base import ForgetRequest, T2IUnlearner, T2IUnlearnerConfig, seeded_batches

ESD_PARAM_SETS = ("noxattn", "xattn", "all")


def select_parameters(unet: nn.Module, which: str) -> list[nn.Parameter]:
    """ESD's parameter sets: cross-attention modules are diffusers' ``attn2``."""
    if which not in ESD_PARAM_SETS:
        raise UserError(f"esd: params must be one of {', '.join(ESD_PARAM_SETS)}, got {which!r}")
    chosen = []
    for name, p in unet.named_parameters():
        cross = ".attn2." in name
        keep = which == "all" or (which == "xattn" and cross) or (which == "noxattn" and not cross)
        p.requires_grad_(keep)
        if keep:
            chosen.append(p)
    if not chosen:
        raise UserError(f"esd: the UNet has no parameters in set {which!r}")
    return chosen


def noised(target: TextToImageTarget, x0: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_t, t, noise) for clean samples x0, with seeded noise and uniform timesteps."""
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.randint(target.num_train_timesteps, (x0.shape[0],), generator=gen)
    return target.add_noise(x0, noise, t), t, noise


#: How ESD draws its training points x_t (see :class:`ESD`).
ESD_SAMPLING = ("noised", "partial")


@dataclass(frozen=True)
class ESDConfig(T2IUnlearnerConfig):
    """Options of ``esd``."""

    eta: float = option(1.0, "negative-guidance strength of the target the UNet is trained towards")
    steps: int = option(200, "optimisation steps")
    lr: float = option(1e-5, "Adam learning rate")
    batch_size: int = option(16, "training points per step")
    params: str = option("noxattn", f"which UNet parameters train: {', '.join(ESD_PARAM_SETS)}")
    pool: int = option(64, "generations of the frozen model the training points come from")
    sampling: str = option("noised", f"how training points x_t are drawn: {', '.join(ESD_SAMPLING)}")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.steps < 1 or self.lr <= 0 or self.batch_size < 1 or self.pool < 1:
            raise UserError("esd: steps, batch_size and pool must be >= 1 and lr > 0")
        if self.params not in ESD_PARAM_SETS:
            raise UserError(f"esd: params must be one of {', '.join(ESD_PARAM_SETS)}, got {self.params!r}")
        if self.sampling not in ESD_SAMPLING:
            raise UserError(f"esd: sampling must be one of {', '.join(ESD_SAMPLING)}, got {self.sampling!r}")


#: How SalUn-DM picks the pseudo prompt a forgotten sample is mapped to.
SALUN_PSEUDO = ("first", "random")


@dataclass(frozen=True)
class SalUnDMConfig(T2IUnlearnerConfig):
    """Options of SalUn for diffusion (defaults: the reference DDPM setting, except the batch size)."""

    fraction: float = option(0.5, "share of the UNet's weights updated (the most forget-salient)")
    alpha: float = option(1e-3, "weight of the retain loss (the paper's DDPM setting: 1e-3)")
    steps: int = option(500, "optimisation steps (the reference's n_iters)")
    lr: float = option(1e-4, "Adam learning rate")
    batch_size: int = option(16, "training points per step, forget and retain each (the reference uses 128)")
    grad_clip: float = option(1.0, "clip of the gradient's global norm before masking (0: none)")
    retain_dropout: float = option(0.1, "share of retain samples denoised under the empty prompt (the reference "
                                        "keeps its 10% classifier-free dropout in the retain loss)")
    pseudo: str = option("first", "pseudo prompt per forgotten sample: first (one fixed other concept, as the "
                                  "reference maps class c to c+1) or random (any of the request's)")
    pool: int = option(64, "generations of the frozen model per prompt the losses use")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.fraction <= 1:
            raise UserError("salun-dm: fraction must be in (0, 1]")
        if self.steps < 1 or self.lr <= 0 or self.batch_size < 1 or self.alpha < 0 or self.pool < 1 or self.grad_clip < 0:
            raise UserError("salun-dm: steps, batch_size, pool >= 1, lr > 0, alpha >= 0, grad_clip >= 0")
        if not 0 <= self.retain_dropout < 1:
            raise UserError("salun-dm: retain_dropout must be in [0, 1)")
        if self.pseudo not in SALUN_PSEUDO:
            raise UserError(f"salun-dm: pseudo must be one of {', '.join(SALUN_PSEUDO)}, got {self.pseudo!r}")


@register_t2i_unlearner("esd")
class ESD(T2IUnlearner):
    """ESD: fine-tune the UNet to follow the frozen model's negative guidance away from the erased prompt.

    ``sampling`` picks the training points x_t: "partial" runs the model being
    fine-tuned part way down its own DDIM trajectory for the erased prompt, to a
    random step, as the paper does; "noised" (default, several times cheaper)
    forward-noises ``pool`` generations of the frozen model for that prompt.
    """

    method = "esd"

    config_class = ESDConfig

    def update(self, target, unet, request):
        gen = torch.Generator().manual_seed(self.config.seed)
        frozen = target.unet
        with torch.no_grad():
            cond = target.encode_prompts([request.forget_prompt])
            uncond = target.encode_prompts([""])
        training_points = self._partial_points(target, unet, cond) if self.config.sampling == "partial" else self._noised_points(target, request, gen)
        optimizer = torch.optim.Adam(select_parameters(unet, self.config.params), lr=self.config.lr)
        for idx in seeded_batches(self.config.pool, self.config.batch_size, self.config.steps, gen):
            x_t, t = training_points(len(idx), idx, gen)
            c, u = cond.expand(len(idx), -1, -1), uncond.expand(len(idx), -1, -1)
            with torch.no_grad():
                e_u, e_c = frozen(x_t, t, encoder_hidden_states=u).sample, frozen(x_t, t, encoder_hidden_states=c).sample
                goal = e_u - self.config.eta * (e_c - e_u)
            loss = nn.functional.mse_loss(unet(x_t, t, encoder_hidden_states=c).sample, goal)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return unet.eval().requires_grad_(False)

    def _noised_points(self, target, request, gen):
        """x_t by forward-noising what the frozen model draws for the erased prompt."""
        seeds = torch.randint(2**31 - 1, (self.config.pool,), generator=gen).tolist()
        x0_pool = target.image_to_x0(target.generate(request.forget_prompt, seeds))

        def draw(n, idx, gen):
            x_t, t, _ = noised(target, x0_pool[idx], gen)
            return x_t, t

        return draw

    def _partial_points(self, target, unet, cond):
        """x_t from the current UNet's own DDIM run for the erased prompt, stopped at a random step."""
        current = target.with_unet(unet)

        def draw(n, idx, gen):
            seeds = torch.randint(2**31 - 1, (n,), generator=gen).tolist()
            stop = int(torch.randint(target.default_steps, (1,), generator=gen))
            unet.eval()
            x_t, t = current.partial_sample(cond.expand(n, -1, -1), seeds, stop)
            unet.train()
            return x_t, t.expand(n)

        return draw


def retain_loss(pred: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The reference's denoising loss: squared error summed over each sample's elements, averaged over
    the batch (not a per-element mean). alpha weighs this sum, so alpha = 1e-3 means what it means there;
    the forget loss stays a per-element mean, as in the reference."""
    return (pred - noise).pow(2).flatten(1).sum(1).mean()


def saliency_masks(target: TextToImageTarget, unet: nn.Module, request: ForgetRequest, fraction: float,
                   batch_size: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Top ``fraction`` of weights (globally) by |gradient of the forget denoising loss|, summed over the forget set."""
    x0 = target.image_to_x0(request.forget_images)
    cond = target.encode_prompts([request.forget_prompt])
    unet.zero_grad(set_to_none=True)
    for start in range(0, len(x0), batch_size):
        batch = x0[start:start + batch_size]
        x_t, t, noise = noised(target, batch, gen)
        pred = unet(x_t, t, encoder_hidden_states=cond.expand(len(batch), -1, -1)).sample
        (nn.functional.mse_loss(pred, noise, reduction="sum")).backward()
    grads = {n: p.grad.detach().abs() for n, p in unet.named_parameters() if p.grad is not None}
    flat = torch.cat([g.flatten() for g in grads.values()])
    keep = max(1, int(round(fraction * flat.numel())))
    threshold = torch.topk(flat, keep, sorted=True).values[-1]
    unet.zero_grad(set_to_none=True)
    return {n: g >= threshold for n, g in grads.items()}


@register_t2i_unlearner("salun-dm", description="alias of salun")
@register_t2i_unlearner("salun")
class SalUnDM(T2IUnlearner):
    """SalUn for diffusion: saliency-masked update, forget prompt -> pseudo prompt prediction, + alpha * retain loss."""

    method = "salun-dm"

    config_class = SalUnDMConfig

    def forget_images(self, target: TextToImageTarget, request: ForgetRequest, gen: torch.Generator) -> torch.Tensor:
        """The request's images of the concept, else ``pool`` generations of the original model."""
        if request.forget_images is not None:
            return request.forget_images
        seeds = torch.randint(2**31 - 1, (self.config.pool,), generator=gen).tolist()
        return target.generate(request.forget_prompt, seeds)

    def update(self, target, unet, request):
        gen = torch.Generator().manual_seed(self.config.seed)
        if not request.pseudo_prompts:
            raise UserError("salun-dm needs at least one pseudo prompt (another concept)")
        request = copy.copy(request)
        request.forget_images = self.forget_images(target, request, gen)
        masks = saliency_masks(target, unet, request, self.config.fraction, self.config.batch_size, gen)
        original = {n: p.detach().clone() for n, p in unet.named_parameters()}
        x_f = target.image_to_x0(request.forget_images)
        with torch.no_grad():
            c_f = target.encode_prompts([request.forget_prompt])
            c_pseudo = target.encode_prompts(request.pseudo_prompts)
            x_r = target.image_to_x0(request.retain_images) if request.retain_images is not None else None
            c_r = target.encode_prompts(request.retain_prompts) if x_r is not None else None
            c_empty = target.encode_prompts([""])
        params = [p for n, p in unet.named_parameters() if n in masks]
        optimizer = torch.optim.Adam(params, lr=self.config.lr)
        for idx in seeded_batches(len(x_f), self.config.batch_size, self.config.steps, gen):
            x_t, t, _ = noised(target, x_f[idx], gen)
            pick = (torch.randint(len(request.pseudo_prompts), (len(idx),), generator=gen) if self.config.pseudo == "random"
                    else torch.zeros(len(idx), dtype=torch.long))
            pred = unet(x_t, t, encoder_hidden_states=c_f.expand(len(idx), -1, -1)).sample
            with torch.no_grad():
                pseudo = unet(x_t, t, encoder_hidden_states=c_pseudo[pick]).sample
            loss = nn.functional.mse_loss(pred, pseudo)
            if x_r is not None and self.config.alpha > 0:
                ridx = torch.randint(len(x_r), (self.config.batch_size,), generator=gen)
                xr_t, tr, noise = noised(target, x_r[ridx], gen)
                drop = torch.rand(len(ridx), generator=gen) < self.config.retain_dropout
                cond = torch.where(drop[:, None, None], c_empty.expand(len(ridx), -1, -1), c_r[ridx])
                loss = loss + self.config.alpha * retain_loss(unet(xr_t, tr, encoder_hidden_states=cond).sample, noise)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.config.grad_clip > 0:  # the reference clips the whole gradient, then masks it
                nn.utils.clip_grad_norm_(params, self.config.grad_clip)
            for n, p in unet.named_parameters():
                if p.grad is not None:
                    p.grad.mul_(masks[n])
            optimizer.step()
            with torch.no_grad():  # Adam's moments would still move masked weights: put them back exactly
                for n, p in unet.named_parameters():
                    p.copy_(torch.where(masks[n], p, original[n]))
        unet.masks = masks  # kept for inspection (tests), not saved
        return unet.eval().requires_grad_(False)
