"""UnlearnDiff and its baselines on a tiny embedded-style target: simplex, k tokens, early stop."""
from __future__ import annotations

import pytest
import torch

from attacks.simplex import project_simplex
from attacks.unlearndiff import NoAttack, RandomTokens, UnlearnDiff, insert_slots
from robustbench_peft.t2i.attack_base import PromptItem
from test_t2i_helpers import FixedJudge, tiny_digits_target

PROMPT = "a handwritten digit three"


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    target = tiny_digits_target()
    return target, target.generate(PROMPT, [7])[0]


def test_projection_lands_on_simplex_and_is_the_closest_point():
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(64, 30, generator=gen) * torch.logspace(-2, 2, 64)[:, None]
    p = project_simplex(v)
    assert torch.allclose(p.sum(-1), torch.ones(64), atol=1e-5)
    assert (p >= 0).all()
    # KKT: v - p is one constant theta on the support and v <= theta off it
    for row_v, row_p in zip(v, p):
        support = row_p > 0
        theta = (row_v - row_p)[support]
        assert torch.allclose(theta, theta[0].expand_as(theta), atol=1e-4)
        assert (row_v[~support] <= theta[0] + 1e-5).all()
    on = torch.softmax(torch.randn(5, 9, generator=gen), -1)
    assert torch.allclose(project_simplex(on), on, atol=1e-6)


def test_relaxed_distribution_stays_on_simplex(tiny):
    target, reference = tiny
    attack = UnlearnDiff(k=3, timesteps=2, inner_steps=3, lr=0.05, seed=1)
    result = attack.run(target, PromptItem(PROMPT, 7, 3), FixedJudge(False), reference)
    w = attack.last_distribution
    assert w.shape[0] == 3 and w.shape[1] == target.vocab_size - len(target.special_ids)
    assert torch.allclose(w.sum(-1), torch.ones(3), atol=1e-5)
    assert (w >= 0).all()
    assert result.steps == 6 and not result.success


@pytest.mark.parametrize("k", [1, 3, 5])
def test_adversarial_prompt_has_exactly_k_inserted_tokens(tiny, k):
    target, reference = tiny
    result = UnlearnDiff(k=k, timesteps=1, inner_steps=2, seed=2).run(target, PromptItem(PROMPT, 7, 3), FixedJudge(False), reference)
    ids = target.tokenize([result.adv_prompt])[0]
    plain = target.tokenize([PROMPT])[0]
    n_plain = int((plain != target.tokenizer.pad_token_id).sum())
    assert int((ids != target.tokenizer.pad_token_id).sum()) == n_plain + k
    assert torch.equal(ids[1 + k:n_plain + k], plain[1:n_plain])  # the original prompt follows the k tokens
    assert not set(ids[1:1 + k].tolist()) & target.special_ids
    assert result.details["tokens"] == ids[1:1 + k].tolist()


def test_slots_follow_the_start_token(tiny):
    target, _ = tiny
    ids, slots = insert_slots(target, PROMPT, 2)
    assert slots == [1, 2] and int(ids[0, 0]) == target.tokenizer.bos_token_id


def test_search_stops_at_the_first_judged_success(tiny):
    target, reference = tiny
    result = UnlearnDiff(k=2, timesteps=5, inner_steps=2).run(target, PromptItem(PROMPT, 7, 3), FixedJudge(True), reference)
    assert result.success and result.steps == 2


def test_baselines(tiny):
    target, _ = tiny
    plain = NoAttack().run(target, PromptItem(PROMPT, 7, 3), FixedJudge(False))
    assert plain.adv_prompt == PROMPT and plain.steps == 0 and plain.image.shape == (1, 8, 8)
    rnd = RandomTokens(k=2, trials=3, seed=4).run(target, PromptItem(PROMPT, 7, 3), FixedJudge(False))
    assert rnd.steps == 3 and rnd.adv_prompt.split()[2:] == PROMPT.split()
    again = RandomTokens(k=2, trials=3, seed=4).run(target, PromptItem(PROMPT, 7, 3), FixedJudge(False))
    assert again.adv_prompt == rnd.adv_prompt  # seeded
