"""The embedded model's training, Hugging Face save/load round trip and cache completeness check (tiny recipe)."""
from __future__ import annotations

import torch

from tasks.t2i_digits_model import (REQUIRED_FILES, DigitsT2IRecipe, digit_prompt, is_complete, load_digits_t2i, model_dir,
                                    training_prompts, vocabulary)

TINY = DigitsT2IRecipe(steps=2, batch_size=8, channels=(8, 16), text_hidden=32, text_layers=1, seed=5)


def test_tiny_training_saves_hf_folders_and_reloads(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTBENCH_PEFT_CACHE", str(tmp_path))
    logs: list[str] = []
    first = load_digits_t2i(TINY, log=logs.append)
    folder = model_dir(TINY)
    assert is_complete(folder) and any("training" in line for line in logs)
    again = load_digits_t2i(TINY, log=logs.append)  # from the cache: no training
    assert sum("training" in line for line in logs) == 1
    for a, b in zip(first.unet.state_dict().values(), again.unet.state_dict().values()):
        assert torch.equal(a, b)
    ids = again.tokenize([digit_prompt(3)])
    assert again.decode(ids[0]) == digit_prompt(3)
    assert again.vocab_size == len(vocabulary()) > 100  # room for adversarial tokens beyond the prompt words
    (folder / REQUIRED_FILES[1]).unlink()  # a broken entry is detected and rebuilt, identically (seeded)
    assert not is_complete(folder)
    rebuilt = load_digits_t2i(TINY, log=logs.append)
    assert is_complete(folder) and sum("training" in line for line in logs) == 2
    for a, b in zip(first.unet.state_dict().values(), rebuilt.unet.state_dict().values()):
        assert torch.equal(a, b)


def test_prompt_dropout_and_templates_are_seeded():
    labels = torch.arange(10).repeat(50)
    a = training_prompts(labels, torch.Generator().manual_seed(0), 0.1)
    b = training_prompts(labels, torch.Generator().manual_seed(0), 0.1)
    assert a == b
    empty = sum(p == "" for p in a) / len(a)
    assert 0.05 < empty < 0.15
    assert all(p == "" or p.split()[-1] in ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine") for p in a)
