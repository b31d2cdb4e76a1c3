"""ESD and SalUn-DM on a tiny target: the forgotten concept's prediction moves, masks hold, results cache."""
from __future__ import annotations

import pytest
import torch

from robustbench_peft.errors import UserError
from robustbench_peft.t2i.unlearn_base import ForgetRequest
from test_t2i_helpers import tiny_digits_target
from unlearning.diffusion import ESD, SalUnDM, saliency_masks

FORGET, KEEP = "a handwritten digit three", "a handwritten digit four"


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    target = tiny_digits_target()
    request = ForgetRequest(FORGET, [KEEP], forget_images=torch.rand(8, 1, 8, 8, generator=gen),
                            retain_images=torch.rand(8, 1, 8, 8, generator=gen), retain_prompts=[KEEP] * 8,
                            identity={"test": "tiny"})
    x_t = torch.randn(4, 1, 8, 8, generator=gen)
    return target, request, x_t


def prediction(target, unet, prompt, x_t):
    with torch.no_grad():
        cond = target.encode_prompts([prompt]).expand(len(x_t), -1, -1)
        return unet(x_t, torch.full((len(x_t),), 500), encoder_hidden_states=cond).sample


def test_salun_dm_moves_only_salient_weights(setup):
    target, request, x_t = setup
    method = SalUnDM(fraction=0.3, steps=4, batch_size=4, lr=1e-3, seed=0)
    unet = method.update(target, target.trainable_unet_copy(), request)
    original = dict(target.unet.named_parameters())
    kept_total = sum(int(m.sum()) for m in unet.masks.values())
    total = sum(m.numel() for m in unet.masks.values())
    assert abs(kept_total / total - 0.3) < 0.02
    for name, p in unet.named_parameters():
        mask = unet.masks[name]
        assert torch.equal(p[~mask], original[name][~mask]), name  # bit-identical outside the mask
    moved = sum(int((p[unet.masks[n]] != original[n][unet.masks[n]]).sum()) for n, p in unet.named_parameters())
    assert moved > 0.5 * kept_total
    change = (prediction(target, unet, FORGET, x_t) - prediction(target, target.unet, FORGET, x_t)).abs().mean()
    assert change > 1e-3


def test_saliency_mask_is_global_top_fraction(setup):
    target, request, _ = setup
    masks = saliency_masks(target, target.trainable_unet_copy(), request, 0.5, 4, torch.Generator().manual_seed(0))
    share = sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
    assert 0.49 < share < 0.51


def test_esd_moves_the_erased_prompt_towards_negative_guidance(setup):
    target, request, x_t = setup
    method = ESD(eta=1.0, steps=6, batch_size=4, pool=4, lr=1e-3, params="noxattn", seed=0)
    unet = method.update(target, target.trainable_unet_copy(), request)
    before = prediction(target, target.unet, FORGET, x_t)
    after = prediction(target, unet, FORGET, x_t)
    assert (after - before).abs().mean() > 1e-3
    original = dict(target.unet.named_parameters())
    for name, p in unet.named_parameters():  # ESD-u leaves cross-attention alone
        if ".attn2." in name:
            assert torch.equal(p, original[name]), name


def test_esd_partial_sampling_trains_on_the_models_own_trajectory(setup):
    target, request, x_t = setup
    partial = ESD(eta=1.0, steps=6, batch_size=4, pool=4, lr=1e-3, sampling="partial", seed=0)
    unet = partial.update(target, target.trainable_unet_copy(), request)
    noised = ESD(eta=1.0, steps=6, batch_size=4, pool=4, lr=1e-3, sampling="noised", seed=0).update(target, target.trainable_unet_copy(), request)
    before, after = prediction(target, target.unet, FORGET, x_t), prediction(target, unet, FORGET, x_t)
    assert (after - before).abs().mean() > 1e-3
    assert not torch.equal(after, prediction(target, noised, FORGET, x_t))
    original = dict(target.unet.named_parameters())
    assert all(torch.equal(p, original[n]) for n, p in unet.named_parameters() if ".attn2." in n)
    with pytest.raises(UserError, match="sampling must be one of"):
        ESD(sampling="full")


def test_partial_sample_is_the_start_of_the_full_ddim_run(setup):
    from diffusers import DDIMScheduler

    target, _, _ = setup
    cond = target.encode_prompts([FORGET]).expand(2, -1, -1)
    seeds, guidance = [5, 6], target.default_guidance
    x_0, t_0 = target.partial_sample(cond, seeds, 0)
    sampler = DDIMScheduler.from_config(target.scheduler.config)
    sampler.set_timesteps(target.default_steps)
    assert torch.equal(x_0, target.initial_noise(seeds) * sampler.init_noise_sigma) and t_0 == sampler.timesteps[0]
    x, t = target.partial_sample(cond, seeds, 1)
    assert t == sampler.timesteps[1]
    with torch.no_grad():  # finish the run from step 1 by hand: the same image as sampling in one go
        uncond = target.encode_prompts([""]).expand(2, -1, -1)
        for step in sampler.timesteps[1:]:
            eps_u, eps_c = target.denoise(x, step, uncond), target.denoise(x, step, cond)
            x = sampler.step(eps_u + guidance * (eps_c - eps_u), step, x).prev_sample
    assert torch.allclose(target.x0_to_image(x), target.generate_from_cond(cond, seeds), atol=1e-5)
    with pytest.raises(ValueError):
        target.partial_sample(cond, seeds, target.default_steps)


def test_unlearning_is_cached_by_recipe(setup, tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTBENCH_PEFT_CACHE", str(tmp_path))
    target, request, x_t = setup
    first = SalUnDM(steps=2, batch_size=4, seed=3).unlearn(target, request)
    second = SalUnDM(steps=2, batch_size=4, seed=3).unlearn(target, request)
    assert not first.cached and second.cached and first.sha256 == second.sha256
    assert torch.equal(prediction(target, first.target.unet, FORGET, x_t), prediction(target, second.target.unet, FORGET, x_t))
    assert first.target.tokenizer is target.tokenizer and first.target.unet is not target.unet


def test_salun_dm_defaults_are_the_papers_ddpm_setting():
    from unlearning.diffusion import SalUnDMConfig

    cfg = SalUnDMConfig()
    assert cfg.alpha == 1e-3  # the paper's DDPM retain weight (alpha 0 would forget everything)
    assert (cfg.steps, cfg.lr, cfg.fraction, cfg.grad_clip, cfg.pseudo, cfg.retain_dropout) == (500, 1e-4, 0.5, 1.0, "first", 0.1)


def test_salun_dm_alpha_is_read_from_its_spec():
    from robustbench_peft.registry import T2I_UNLEARNERS, load_plugins
    from unlearning.diffusion_section import make_plugin

    load_plugins()
    assert make_plugin(T2I_UNLEARNERS, "salun-dm", 0).config.alpha == 1e-3
    assert make_plugin(T2I_UNLEARNERS, "salun-dm:alpha=0.01", 0).config.alpha == 0.01


def test_pseudo_first_maps_to_the_first_pseudo_prompt_only(setup):
    target, request, x_t = setup
    two = ForgetRequest(FORGET, [KEEP, "a handwritten digit five"], forget_images=request.forget_images,
                        retain_images=request.retain_images, retain_prompts=request.retain_prompts, identity={"test": "two"})
    one = ForgetRequest(FORGET, [KEEP], forget_images=request.forget_images, retain_images=request.retain_images,
                        retain_prompts=request.retain_prompts, identity={"test": "one"})
    a = SalUnDM(steps=3, batch_size=4, seed=1).update(target, target.trainable_unet_copy(), two)
    b = SalUnDM(steps=3, batch_size=4, seed=1).update(target, target.trainable_unet_copy(), one)
    c = SalUnDM(steps=3, batch_size=4, seed=1, pseudo="random").update(target, target.trainable_unet_copy(), two)
    same = all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert same and not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_digits_task_first_pseudo_prompt_is_the_next_digit():
    from tasks.t2i_digits import digits_t2i_task
    from tasks.t2i_digits_model import digit_prompt

    request = digits_t2i_task(forget_digit=9).forget_request()
    assert request.pseudo_prompts[0] == digit_prompt(0) and digit_prompt(9) not in request.pseudo_prompts


def test_salun_retain_loss_sums_each_samples_pixels_as_the_reference():
    from unlearning.diffusion import retain_loss

    pred, noise = torch.zeros(4, 1, 8, 8), torch.ones(4, 1, 8, 8)
    assert retain_loss(pred, noise).item() == 64.0  # 64 pixels of error 1, averaged over the 4 samples
