"""A tiny Stable Diffusion pipeline built from configs, saved, loaded through the real path, generated and attacked offline."""
from __future__ import annotations

import gzip
import json
import time

import pytest
import torch

from attacks.unlearndiff import UnlearnDiff
from robustbench_peft.errors import OfflineModelError, UserError
from robustbench_peft.t2i.attack_base import PromptItem
from robustbench_peft.t2i.stable_diffusion import load_stable_diffusion
from test_t2i_helpers import FixedJudge

N_MERGES = 2000  # the first merges of open_clip's shipped CLIP BPE: a real, small CLIP tokenizer


def clip_tokenizer_files(folder):
    """vocab.json + merges.txt in Hugging Face's CLIP layout, from open_clip's shipped BPE merges."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1:1 + N_MERGES]
    vocab = list(bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab] + ["".join(m.split()) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps({w: i for i, w in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return len(vocab)


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.set_num_threads(1)
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("tiny-sd")
    n_vocab = clip_tokenizer_files(root / "tok")
    tokenizer = CLIPTokenizer(str(root / "tok" / "vocab.json"), str(root / "tok" / "merges.txt"), model_max_length=16)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=n_vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                num_attention_heads=4, max_position_embeddings=16,
                                                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                                pad_token_id=tokenizer.pad_token_id))
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                        norm_num_groups=8, sample_size=16)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=DDIMScheduler(num_train_timesteps=1000, clip_sample=False), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(root / "sd")
    return root / "sd"


def test_tiny_sd_loads_generates_and_is_attacked_offline(sd_folder, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    target = load_stable_diffusion(str(sd_folder), steps=2, guidance=2.0)
    images = target.generate("a photo of a church", [3, 3])
    assert images.shape == (2, 3, 16, 16) and images.min() >= 0 and images.max() <= 1
    assert torch.equal(images[0], images[1])  # same seed, same image
    attack = UnlearnDiff(k=2, timesteps=2, inner_steps=2, seed=0)
    result = attack.run(target, PromptItem("a photo of a church", 3, None, 2.0), FixedJudge(False), images[0])
    assert result.steps == 4 and result.image.shape == (3, 16, 16)
    assert result.adv_prompt.endswith("a photo of a church")
    assert len(result.details["tokens"]) == 2
    assert torch.allclose(attack.last_distribution.sum(-1), torch.ones(2), atol=1e-5)


def test_replacement_unet_from_safetensors_and_folder(sd_folder, tmp_path):
    from safetensors.torch import save_file

    base = load_stable_diffusion(str(sd_folder), steps=1)
    state = {k: v + 0.01 for k, v in base.unet.state_dict().items()}
    save_file(state, str(tmp_path / "unet.safetensors"))
    swapped = load_stable_diffusion(str(sd_folder), unet=str(tmp_path / "unet.safetensors"), steps=1)
    name = next(iter(state))
    assert torch.equal(swapped.unet.state_dict()[name], state[name])
    swapped.unet.save_pretrained(tmp_path / "unet_dir")
    again = load_stable_diffusion(str(sd_folder), unet=str(tmp_path / "unet_dir"), steps=1)
    assert torch.equal(again.unet.state_dict()[name], state[name])
    save_file({"bogus": torch.zeros(1)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(UserError, match="does not match"):
        load_stable_diffusion(str(sd_folder), unet=str(tmp_path / "bad.safetensors"))


def test_uncached_hub_id_fails_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(OfflineModelError, match="no-such-org/no-such-sd-model"):
        load_stable_diffusion("no-such-org/no-such-sd-model")
    assert time.perf_counter() - start < 20


def given_unet_options(sd_folder, tmp_path, monkeypatch, prompts_csv: str) -> dict:
    """sd-nudity task options for the tiny pipeline with a user-given unlearned UNet (weights x 0.9), offline."""
    from safetensors.torch import save_file

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("ROBUSTBENCH_PEFT_CACHE", str(tmp_path / "cache"))
    base = load_stable_diffusion(str(sd_folder), steps=1)
    save_file({k: v * 0.9 for k, v in base.unet.state_dict().items()}, str(tmp_path / "unlearned.safetensors"))
    (tmp_path / "prompts.csv").write_text(prompts_csv)
    return {"prompts": str(tmp_path / "prompts.csv"), "model": str(sd_folder), "unet": str(tmp_path / "unlearned.safetensors"), "steps": 2}


def test_sd_nudity_task_with_a_given_unet_through_the_section(sd_folder, tmp_path, monkeypatch):
    pytest.importorskip("nudenet")
    from unlearning.diffusion_section import run_diffusion_section
    from robustbench_peft.suite import Suite

    options = given_unet_options(sd_folder, tmp_path, monkeypatch, "prompt,seed,guidance\na photo of a person,1,3.0\na painting,2,\n")
    suite = Suite(name="t", task="digits", models=(), attacks=(), sections=("diffusion",), extra={"diffusion": {
        "task": "sd-nudity", "task_options": options,
        "unlearners": [], "attacks": ["unlearndiff:k=2,timesteps=1,inner_steps=1"], "grid": 1,
        "filter": False}})  # an untrained pipeline renders no nudity: attack every prompt

    class Quiet:
        def log(self, message):
            pass

    section = run_diffusion_section(suite, Quiet()).data
    assert [(r["unlearner"], r["attack"]) for r in section["rows"]] == [
        ("none (original)", "no_attack"), ("given (unet=)", "no_attack"), ("given (unet=)", "unlearndiff:k=2,timesteps=1,inner_steps=1")]
    assert section["judge"] == "nudenet" and all(r["kept_accuracy"] is None for r in section["rows"])
    attacked = section["rows"][-1]["prompts"]
    assert [p["prompt"] for p in attacked] == ["a photo of a person", "a painting"] and [p["seed"] for p in attacked] == [1, 2]


def test_sd_task_chosen_from_the_cli_with_set(sd_folder, tmp_path, monkeypatch):
    """`eval --suite diffusion --set ...` reaches a Stable Diffusion task without Python."""
    pytest.importorskip("nudenet")
    import json

    from robustbench_peft.cli import main

    options = given_unet_options(sd_folder, tmp_path, monkeypatch, "prompt,seed,guidance\na photo of a person,1,3.0\n")
    out = tmp_path / "run"
    code = main(["eval", "--suite", "diffusion", "--quiet", "--out", str(out), "--set", "diffusion.task=sd-nudity",
                 "--set", f"diffusion.task_options={json.dumps(options)}", "--set", "diffusion.unlearners=[]",
                 "--set", 'diffusion.attacks=["unlearndiff:k=2,timesteps=1,inner_steps=1"]', "--set", "diffusion.grid=1",
                 "--set", "diffusion.filter=false"])
    assert code == 0
    section = json.loads((out / "report.json").read_text())["diffusion"]
    assert section["judge"] == "nudenet"
    assert [(r["unlearner"], r["attack"]) for r in section["rows"]] == [
        ("none (original)", "no_attack"), ("given (unet=)", "no_attack"), ("given (unet=)", "unlearndiff:k=2,timesteps=1,inner_steps=1")]
    assert "nudity" in (out / "report.md").read_text()  # the section's table names the task
