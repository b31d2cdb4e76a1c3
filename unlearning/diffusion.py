"""Concept unlearning for text-to-image targets: ESD and SalUn's diffusion form.

Registered as text-to-image unlearners ``esd`` and ``salun`` (also accepted as
``salun-dm``; its method name, which keys its cached UNets, stays ``salun-dm``).
Both fine-tune only the UNet.

* ESD (Gandikota et al.): the UNet under the erased prompt c is trained to
  follow the frozen original's negatively guided prediction
  eps0(x_t) - eta (eps0(x_t, c) - eps0(x_t)), on points x_t of the fine-tuned
  model's own DDIM run for c, so no data is needed. Defaults follow the
  reference's ESD-u (``train-esd.py``, ``noxattn``): 1000 iterations of batch 1,
  Adam lr 1e-5, eta 1, x_t from a 50-step DDIM run, the UNets' timestep drawn in
  the DDIM step's DDPM bucket. ``params`` picks ESD-u (``noxattn``), ESD-x
  (``xattn``) or ``all``. One deviation: the start guidance (see :class:`ESD`).
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

from robustbench_peft.config import option, require
from robustbench_peft.errors import UserError
from robustbench_peft.registry import register_t2i_unlearner
from robustbench_peft.t2i.target import TextToImageTarget
from robustbench_peft.t2i.unlearn_base import ForgetRequest, T2IUnlearner, T2IUnlearnerConfig, seeded_batches

ESD_PARAM_SETS = ("noxattn", "xattn", "all")

#: What ESD-u (``noxattn``) leaves frozen, in diffusers' names. The reference excludes compvis names
#: starting with ``out.`` (the final norm and conv), containing ``time_embed`` (the timestep MLP) or
#: ``attn2`` (cross-attention); the resnets' ``emb_layers`` (diffusers' ``time_emb_proj``) train.
NOXATTN_FROZEN_PREFIXES = ("conv_norm_out.", "conv_out.", "time_embedding.")
CROSS_ATTENTION = ".attn2."


def select_parameters(unet: nn.Module, which: str) -> list[nn.Parameter]:
    """ESD's parameter sets on a diffusers UNet: ``noxattn`` (ESD-u) all but cross-attention, the
    timestep embedding and the output norm and conv; ``xattn`` (ESD-x) only cross-attention
    (``attn2``); ``all`` everything. The others get ``requires_grad`` off."""
    if which not in ESD_PARAM_SETS:
        raise UserError(f"esd: params must be one of {', '.join(ESD_PARAM_SETS)}, got {which!r}")
    chosen = []
    for name, p in unet.named_parameters():
        cross = CROSS_ATTENTION in name
        keep = (which == "all" or (which == "xattn" and cross)
                or (which == "noxattn" and not cross and not name.startswith(NOXATTN_FROZEN_PREFIXES)))
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


def esd_timestep_bucket(t_enc: int, ddim_steps: int, num_train_timesteps: int = 1000) -> tuple[int, int]:
    """The reference's DDPM bucket [og_num, og_num_lim) of DDIM step ``t_enc``:
    round(t_enc / ddim_steps * T), round((t_enc + 1) / ddim_steps * T), T the training timesteps."""
    return (round(t_enc / ddim_steps * num_train_timesteps), round((t_enc + 1) / ddim_steps * num_train_timesteps))


def esd_ddpm_timestep(t_enc: int, ddim_steps: int, num_train_timesteps: int, gen: torch.Generator) -> int:
    """The timestep the UNets see for DDIM step ``t_enc``: uniform in :func:`esd_timestep_bucket`."""
    low, high = esd_timestep_bucket(t_enc, ddim_steps, num_train_timesteps)
    return int(torch.randint(low, max(high, low + 1), (1,), generator=gen))


def esd_sampling_steps(t_enc: int, ddim_steps: int) -> int:
    """How many of the ``ddim_steps`` DDIM steps the reference runs from noise for ``t_enc``.

    Its ``quick_sample_till_t`` (compvis ``DDIMSampler`` with ``till_T=t_enc``) walks the schedule from
    the noisy end and stops once it has taken the step of index ``t_enc - 1`` (indices count from the
    clean end), so x_t stands two DDIM steps below the bucket of ``t_enc``, and ``t_enc`` 0 and 1 give
    the finished sample. In a diffusers DDIM schedule that is ``ddim_steps + 1 - t_enc`` steps, capped
    at the whole run."""
    return min(ddim_steps, ddim_steps + 1 - t_enc)


@torch.no_grad()
def ddim_sample_till(target: TextToImageTarget, cond: torch.Tensor, seeds: list[int], n: int, guidance: float | None,
                     ddim_steps: int) -> tuple[torch.Tensor, int]:
    """(x, t): the latents after the first ``n`` of ``ddim_steps`` DDIM steps (eta 0) of ``target``'s UNet
    from seeded noise, guided against the empty prompt, and the DDPM step they stand at (0 once ``n`` is
    the whole run: the finished sample)."""
    if n < ddim_steps:
        x, t = target.partial_sample(cond, seeds, n, guidance=guidance, steps=ddim_steps)
        return x, int(t)
    return target.sample_latents(cond, seeds, guidance=guidance, steps=ddim_steps), 0


#: How ESD draws its training points x_t (see :class:`ESD`).
ESD_SAMPLING = ("partial", "noised")

#: Which timestep the UNets see at a training point of ``sampling=partial`` (see :class:`ESD`).
ESD_TIMESTEP = ("bucket", "matched")

#: The reference's start guidance, left out of the default here (see :class:`ESD`).
REFERENCE_START_GUIDANCE = 3.0


@dataclass(frozen=True)
class ESDConfig(T2IUnlearnerConfig):
    """Options of ``esd`` (defaults: the reference's ESD-u, except ``start_guidance``)."""

    eta: float = option(1.0, "negative-guidance strength of the target the UNet is trained towards (the reference's "
                             "negative_guidance)")
    steps: int = option(1000, "optimisation steps (the reference's iterations)")
    lr: float = option(1e-5, "Adam learning rate")
    batch_size: int = option(1, "training points per step (the reference: 1; a larger batch shares one DDIM step)")
    params: str = option("noxattn", f"which UNet parameters train: {', '.join(ESD_PARAM_SETS)} (noxattn, ESD-u: all but "
                                    "cross-attention, time embedding and output norm/conv)")
    sampling: str = option("partial", f"how training points x_t are drawn: {', '.join(ESD_SAMPLING)} (partial: the "
                                      "fine-tuned model's own DDIM run for the erased prompt, as the reference; noised: "
                                      "forward-noised generations of the frozen model)")
    ddim_steps: int = option(50, "DDIM steps of the run partial sampling stops in (the reference: 50)")
    # Deviation: the reference samples at 3.0, where the embedded model's samples collapse.
    start_guidance: float | None = option(None, "guidance of partial sampling's DDIM run; None, a deviation from the "
                                                "reference's 3.0: the model's own sampling guidance (1.5 for the embedded "
                                                "model, a tiny 8x8 UNet whose samples collapse at 3.0: 31.5% judged "
                                                "accuracy vs 100% at 1.5); give 3.0 for the reference's")
    timestep: str = option("bucket", f"the UNets' timestep at a partial-sampling point: {', '.join(ESD_TIMESTEP)} (bucket: "
                                     "drawn in the DDIM step's DDPM bucket, as the reference, which lags x_t's own step by "
                                     "two DDIM steps; matched: the step x_t stands at)")
    pool: int = option(64, "generations of the frozen model the training points come from (sampling=noised only)")

    def __post_init__(self) -> None:
        super().__post_init__()
        require("esd", {
            f"params must be one of {', '.join(ESD_PARAM_SETS)}, got {self.params!r}": self.params in ESD_PARAM_SETS,
            f"sampling must be one of {', '.join(ESD_SAMPLING)}, got {self.sampling!r}": self.sampling in ESD_SAMPLING,
            f"timestep must be one of {', '.join(ESD_TIMESTEP)}, got {self.timestep!r}": self.timestep in ESD_TIMESTEP,
            f"steps must be >= 1, got {self.steps}": self.steps >= 1,
            f"batch_size must be >= 1, got {self.batch_size}": self.batch_size >= 1,
            f"pool must be >= 1, got {self.pool}": self.pool >= 1,
            f"ddim_steps must be >= 1, got {self.ddim_steps}": self.ddim_steps >= 1,
            f"lr must be > 0, got {self.lr}": self.lr > 0,
            f"start_guidance must be > 0 or None (the model's own), got {self.start_guidance}":
                self.start_guidance is None or self.start_guidance > 0,
        })


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

    Defaults are the ESD-u setting of the reference code (rohitgandikota/erasing, compvis
    ``train-esd.py``). Each step draws a DDIM step ``t_enc`` uniformly in [0, ``ddim_steps``) and runs the
    model being fine-tuned (DDIM, eta 0, guidance ``start_guidance``) for the erased prompt c from fresh
    noise the way the reference's ``quick_sample_till_t`` does (:func:`esd_sampling_steps`); the UNets
    see a timestep drawn in the bucket [round(t_enc/ddim_steps*T), round((t_enc+1)/ddim_steps*T)) (T the
    training timesteps); the loss is MSE(eps(x_t, c), eps0(x_t) - eta (eps0(x_t, c) - eps0(x_t))), eps0
    the frozen original under c and the empty prompt.

    As in the reference, that timestep is not the one x_t stands at: x_t is two DDIM steps less noisy
    than its bucket (and ``t_enc`` 0 and 1 train on the finished sample). ``timestep="matched"`` gives the
    UNets x_t's own step instead. ``sampling="noised"`` (not the reference) forward-noises ``pool``
    generations of the frozen model at uniform timesteps, several times cheaper.

    Deviations from the reference:

    * ``start_guidance`` defaults to None, the model's own sampling guidance (``target.default_guidance``,
      1.5 for the embedded model), not 3: the embedded model is a tiny 8x8 pixel-space UNet whose samples
      collapse at guidance 3 (measured once: 31.5% judged accuracy at 3.0 vs 100% at 1.5). Give
      ``start_guidance=3.0`` for the reference's.
    * The run uses the target's full ``ddim_steps`` DDIM schedule (diffusers ``DDIMScheduler`` from the
      model's noise schedule); the reference's compvis sampler drops the schedule's noisiest step
      (``t_start=-1``), so it starts from noise one DDIM step lower, and its finished run ends at
      alphas_cumprod[0] rather than at 1. Its runs stop at the same step of the schedule as here.
    * With ``batch_size`` > 1 (the reference has 1) the batch shares one ``t_enc`` and one timestep.
    """

    method = "esd"

    config_class = ESDConfig

    def update(self, target, unet, request):
        config = self.config
        gen = torch.Generator().manual_seed(config.seed)
        frozen = target.unet
        with torch.no_grad():
            cond = target.encode_prompts([request.forget_prompt])
            uncond = target.encode_prompts([""])
        draw = self._partial_points(target, unet, cond) if config.sampling == "partial" else self._noised_points(target, request, gen)
        optimizer = torch.optim.Adam(select_parameters(unet, config.params), lr=config.lr)
        n = config.batch_size
        c, u = cond.expand(n, -1, -1), uncond.expand(n, -1, -1)
        unet.train()
        for _ in range(config.steps):
            x_t, t = draw(n, gen)
            with torch.no_grad():  # one frozen call for the empty and the erased prompt
                e_u, e_c = frozen(torch.cat([x_t, x_t]), torch.cat([t, t]), encoder_hidden_states=torch.cat([u, c])).sample.chunk(2)
                goal = e_u - config.eta * (e_c - e_u)
            loss = nn.functional.mse_loss(unet(x_t, t, encoder_hidden_states=c).sample, goal)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return unet.eval().requires_grad_(False)

    def start_guidance(self, target: TextToImageTarget) -> float:
        """The guidance of the DDIM runs: ``start_guidance``, else the target's own sampling guidance."""
        return float(target.default_guidance if self.config.start_guidance is None else self.config.start_guidance)

    def _noised_points(self, target, request, gen):
        """x_t by forward-noising what the frozen model draws for the erased prompt."""
        seeds = torch.randint(2**31 - 1, (self.config.pool,), generator=gen).tolist()
        x0_pool = target.image_to_x0(target.generate(request.forget_prompt, seeds))

        def draw(n, gen):
            idx = torch.randint(self.config.pool, (n,), generator=gen)
            x_t, t, _ = noised(target, x0_pool[idx], gen)
            return x_t, t

        return draw

    def _partial_points(self, target, unet, cond):
        """x_t from the current UNet's own DDIM run for the erased prompt, as the reference draws them."""
        ddim_steps, total = self.config.ddim_steps, target.num_train_timesteps
        if ddim_steps > total:
            raise UserError(f"esd: ddim_steps must be at most the model's {total} training timesteps, got {ddim_steps}")
        current = target.with_unet(unet)
        guidance = self.start_guidance(target)

        def draw(n, gen):
            t_enc = int(torch.randint(ddim_steps, (1,), generator=gen))
            t_ddpm = esd_ddpm_timestep(t_enc, ddim_steps, total, gen)
            seeds = torch.randint(2**31 - 1, (n,), generator=gen).tolist()
            unet.eval()
            x_t, t_at = ddim_sample_till(current, cond.expand(n, -1, -1), seeds, esd_sampling_steps(t_enc, ddim_steps),
                                         guidance, ddim_steps)
            unet.train()
            # The reference's pairing: t_enc's bucket, two DDIM steps noisier than x_t ("matched": x_t's own step).
            t = t_ddpm if self.config.timestep == "bucket" else t_at
            return x_t, torch.full((n,), t, dtype=torch.long)

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
