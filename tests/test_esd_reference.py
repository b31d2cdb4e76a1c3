"""ESD follows the ESD-u setting of the reference code (rohitgandikota/erasing, compvis train-esd.py):
its defaults, its parameter set, its DDIM-step timestep buckets and its training points drawn from the
model being fine-tuned."""
from __future__ import annotations

import copy

import pytest
import torch

import unlearning.diffusion as diffusion
from robustbench_peft.errors import UserError
from robustbench_peft.t2i.target import TextToImageTarget
from robustbench_peft.t2i.unlearn_base import ForgetRequest
from test_t2i_helpers import tiny_digits_target
from unlearning.diffusion import (ESD, ESDConfig, ddim_sample_till, esd_ddpm_timestep, esd_sampling_steps,
                                  esd_timestep_bucket, select_parameters)

FORGET, KEEP = "a handwritten digit three", "a handwritten digit four"
FROZEN_BY_ESD_U = ("conv_norm_out.", "conv_out.", "time_embedding.")


@pytest.fixture(scope="module")
def target():
    torch.set_num_threads(1)
    return tiny_digits_target()


@pytest.fixture(scope="module")
def forget():
    return ForgetRequest(FORGET, [KEEP], identity={"test": "esd-reference"})


def test_defaults_are_the_references_esd_u(target):
    cfg = ESDConfig()
    assert (cfg.steps, cfg.batch_size, cfg.lr, cfg.eta) == (1000, 1, 1e-5, 1.0)
    assert (cfg.params, cfg.sampling, cfg.ddim_steps, cfg.timestep) == ("noxattn", "partial", 50, "bucket")
    assert cfg.start_guidance is None  # the stated deviation: the model's own guidance, not the reference's 3
    assert ESD().start_guidance(target) == target.default_guidance
    assert ESD(start_guidance=3.0).start_guidance(target) == diffusion.REFERENCE_START_GUIDANCE == 3.0
    assert ESDConfig.from_options({"start_guidance": "none"}, "esd").start_guidance is None
    assert ESDConfig.from_options({"start_guidance": "3"}, "esd").start_guidance == 3.0


@pytest.mark.parametrize("options, message", [
    ({"steps": 0}, "steps must be >= 1"),
    ({"batch_size": 0}, "batch_size must be >= 1"),
    ({"ddim_steps": 0}, "ddim_steps must be >= 1"),
    ({"pool": 0}, "pool must be >= 1"),
    ({"lr": 0.0}, "lr must be > 0"),
    ({"start_guidance": 0.0}, "start_guidance must be > 0 or None"),
    ({"start_guidance": -3.0}, "start_guidance must be > 0 or None"),
    ({"params": "full"}, "params must be one of noxattn, xattn, all"),
    ({"sampling": "ddim"}, "sampling must be one of partial, noised"),
    ({"timestep": "ddim"}, "timestep must be one of bucket, matched"),
])
def test_bad_options_are_user_errors(options, message):
    with pytest.raises(UserError, match=f"^esd: .*{message}"):
        ESD(**options)


def test_ddim_steps_beyond_the_training_timesteps_is_a_user_error(target, forget):
    with pytest.raises(UserError, match="ddim_steps must be at most the model's 1000 training timesteps"):
        ESD(ddim_steps=1001, steps=1).update(target, target.trainable_unet_copy(), forget)


def test_noxattn_is_the_references_set_in_diffusers_names(target):
    unet = target.trainable_unet_copy()
    names = {p: n for n, p in unet.named_parameters()}
    chosen = {names[p] for p in select_parameters(unet, "noxattn")}
    expected = {n for n in names.values() if not n.startswith(FROZEN_BY_ESD_U) and ".attn2." not in n}
    assert chosen == expected
    assert {n for n, p in unet.named_parameters() if p.requires_grad} == expected
    assert "conv_in.weight" in chosen and "conv_in.bias" in chosen
    assert any(n.endswith("resnets.0.norm1.weight") for n in chosen)  # every norm but the last trains
    assert any(".transformer_blocks.0.norm2." in n for n in chosen)  # the norm before cross-attention too
    assert any(".time_emb_proj." in n for n in chosen)  # compvis emb_layers: not time_embed
    assert any(n.startswith("conv_out.") for n in names.values()) and any(".attn2." in n for n in names.values())
    xattn = {names[p] for p in select_parameters(unet, "xattn")}
    assert xattn == {n for n in names.values() if ".attn2." in n}
    assert {names[p] for p in select_parameters(unet, "all")} == set(names.values())


def test_the_ddpm_timestep_lies_in_its_ddim_steps_bucket():
    gen = torch.Generator().manual_seed(0)
    covered = []
    for s in range(50):
        low, high = esd_timestep_bucket(s, 50, 1000)
        assert (low, high) == (round(s / 50 * 1000), round((s + 1) / 50 * 1000)) == (20 * s, 20 * s + 20)
        draws = {esd_ddpm_timestep(s, 50, 1000, gen) for _ in range(40)}
        assert all(low <= t < high for t in draws) and len(draws) > 1
        covered.extend(range(low, high))
    assert covered == list(range(1000))  # the buckets tile the training timesteps
    assert [esd_timestep_bucket(s, 3, 1000) for s in range(3)] == [(0, 333), (333, 667), (667, 1000)]


def compvis_stop_timestep(t_enc: int, ddim_steps: int = 50, total: int = 1000) -> int:
    """Where the reference's quick_sample_till_t(t_enc) ends: compvis DDIMSampler.sample with t_start=-1
    and till_T=t_enc, walked as its ddim_sampling loop does; returns the DDPM step whose alpha the last
    x_prev carries (make_ddim_sampling_parameters' alphas_prev)."""
    ddim_timesteps = [t + 1 for t in range(0, total, total // ddim_steps)]  # make_ddim_timesteps, "uniform"
    alphas_prev_step = [0] + ddim_timesteps[:-1]
    timesteps = ddim_timesteps[:-1]  # timesteps[:t_start] with t_start=-1
    total_steps, end = len(timesteps), None
    for i, _ in enumerate(reversed(timesteps)):
        index = total_steps - i - 1
        end = alphas_prev_step[index]
        if index + 1 == t_enc:
            break
    return end


def test_the_run_stops_where_the_references_quick_sample_till_t_does():
    from diffusers import DDIMScheduler

    sampler = DDIMScheduler(num_train_timesteps=1000, steps_offset=1)  # Stable Diffusion's offset, as compvis
    sampler.set_timesteps(50)
    for t_enc in range(50):
        n = esd_sampling_steps(t_enc, 50)
        assert n == min(50, 51 - t_enc)
        here = int(sampler.timesteps[n]) if n < 50 else 0  # a finished run: compvis stops at alphas_cumprod[0]
        assert here == compvis_stop_timestep(t_enc), t_enc
        if t_enc >= 2:  # two DDIM steps below its bucket
            assert here == esd_timestep_bucket(t_enc, 50)[0] - 40 + 1


def test_ddim_sample_till_is_the_start_of_the_models_own_run(target):
    cond = target.encode_prompts([FORGET]).expand(2, -1, -1)
    seeds = [3, 4]
    x, t = ddim_sample_till(target, cond, seeds, 7, 1.5, 10)
    x_ref, t_ref = target.partial_sample(cond, seeds, 7, guidance=1.5, steps=10)
    assert torch.equal(x, x_ref) and t == int(t_ref)
    x, t = ddim_sample_till(target, cond, seeds, 10, 1.5, 10)
    assert t == 0
    assert torch.allclose(target.x0_to_image(x), target.generate_from_cond(cond, seeds, 1.5, 10), atol=1e-6)


class Spies:
    """Records what an ESD update samples with and which timesteps its UNets are called with."""

    def __init__(self, monkeypatch, target, unet):
        self.samples, self.buckets, self.trained_t, self.frozen_t = [], [], [], []
        real_sample, real_timestep = TextToImageTarget.partial_sample, diffusion.esd_ddpm_timestep

        def partial_sample(this, cond, seeds, stop, guidance=None, steps=None):
            x, t = real_sample(this, cond, seeds, stop, guidance=guidance, steps=steps)
            self.samples.append({"unet": this.unet, "stop": stop, "steps": steps, "guidance": guidance, "t": int(t)})
            return x, t

        def esd_ddpm_timestep(t_enc, ddim_steps, total, gen):
            t = real_timestep(t_enc, ddim_steps, total, gen)
            self.buckets.append((t_enc, ddim_steps, total, t))
            return t

        monkeypatch.setattr(TextToImageTarget, "partial_sample", partial_sample)
        monkeypatch.setattr(diffusion, "esd_ddpm_timestep", esd_ddpm_timestep)

        def record(into):
            def hook(_module, args, kwargs):
                if into is self.frozen_t or torch.is_grad_enabled():  # the trained UNet's loss call, not its sampling
                    into.append(args[1].tolist())
            return hook

        self.handles = [unet.register_forward_pre_hook(record(self.trained_t), with_kwargs=True),
                        target.unet.register_forward_pre_hook(record(self.frozen_t), with_kwargs=True)]

    def close(self):
        for h in self.handles:
            h.remove()


@pytest.mark.parametrize("start_guidance", [None, 3.0])
def test_training_points_come_from_the_finetuned_models_run_at_the_bucket_timestep(target, forget, monkeypatch, start_guidance):
    unet = target.trainable_unet_copy()
    spies = Spies(monkeypatch, target, unet)
    try:
        trained = ESD(steps=5, lr=1e-3, seed=1, start_guidance=start_guidance).update(target, unet, forget)
    finally:
        spies.close()
    assert trained is unet
    assert len(spies.buckets) == len(spies.trained_t) == len(spies.frozen_t) == 5
    guidance = target.default_guidance if start_guidance is None else start_guidance
    for (t_enc, ddim_steps, total, t), sample, trained_t, frozen_t in zip(spies.buckets, spies.samples, spies.trained_t, spies.frozen_t):
        assert ddim_steps == 50 and total == target.num_train_timesteps and 0 <= t_enc < 50
        assert sample["unet"] is unet and sample["unet"] is not target.unet  # the model being fine-tuned samples
        assert sample["steps"] == 50 and sample["guidance"] == guidance
        assert sample["stop"] == min(esd_sampling_steps(t_enc, 50), 49)  # a finished run takes its last step after
        low, high = esd_timestep_bucket(t_enc, 50, total)
        assert trained_t == [t] and frozen_t == [t, t] and low <= t < high


def test_matched_timestep_is_the_step_the_point_stands_at(target, forget, monkeypatch):
    unet = target.trainable_unet_copy()
    spies = Spies(monkeypatch, target, unet)
    try:
        ESD(steps=4, lr=1e-3, seed=2, batch_size=2, timestep="matched").update(target, unet, forget)
    finally:
        spies.close()
    assert len(spies.trained_t) == 4
    for (t_enc, *_), sample, trained_t in zip(spies.buckets, spies.samples, spies.trained_t):
        finished = esd_sampling_steps(t_enc, 50) == 50
        assert trained_t == [0 if finished else sample["t"]] * 2  # the batch shares its DDIM step


def prompt_sensitive(target):
    """The tiny target with its cross-attention outputs scaled up: a random UNet barely tells prompts
    apart, so the negative-guidance target would sit next to the erased prompt's prediction."""
    unet = copy.deepcopy(target.unet)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if ".attn2.to_out.0.weight" in name:
                p.mul_(10)
    return target.with_unet(unet)


def reference_points(target):
    """Points like ESD's: the frozen model's own runs for the erased prompt, at their buckets' timesteps."""
    cond, xs, ts = target.encode_prompts([FORGET]).expand(3, -1, -1), [], []
    for k, t_enc in enumerate([3, 10, 20, 30, 40, 48]):
        xs.append(ddim_sample_till(target, cond, [100 + 3 * k + i for i in range(3)], esd_sampling_steps(t_enc, 50), 1.5, 50)[0])
        ts.append(torch.full((3,), esd_timestep_bucket(t_enc, 50)[0] + 10))
    return torch.cat(xs), torch.cat(ts)


def test_a_few_steps_move_the_erased_prompt_towards_the_negative_guidance_target(target, forget):
    target = prompt_sensitive(target)
    x, t = reference_points(target)
    with torch.no_grad():
        c, u = (target.encode_prompts([p]).expand(len(x), -1, -1) for p in (FORGET, ""))
        e_u, e_c = target.unet(x, t, encoder_hidden_states=u).sample, target.unet(x, t, encoder_hidden_states=c).sample
        goal = e_u - 1.0 * (e_c - e_u)
    unet = ESD(steps=8, lr=3e-4, batch_size=4, seed=0).update(target, target.trainable_unet_copy(), forget)
    with torch.no_grad():
        after = unet(x, t, encoder_hidden_states=c).sample
    moved, wanted = (after - e_c).flatten(), (goal - e_c).flatten()
    assert float(moved @ wanted) / float(moved.norm() * wanted.norm()) > 0.3  # towards the target ...
    assert (after - goal).pow(2).mean() < 0.8 * (e_c - goal).pow(2).mean()  # ... and closer to it
    original = dict(target.unet.named_parameters())
    for name, p in unet.named_parameters():  # ESD-u: what the reference freezes stays bit-identical, the rest moves
        frozen = name.startswith(FROZEN_BY_ESD_U) or ".attn2." in name
        assert torch.equal(p, original[name]) == frozen, name
