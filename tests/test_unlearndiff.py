"""UnlearnDiff and its baselines on a tiny target: the reference setting, simplex, k tokens, ids judged, early stop."""
from __future__ import annotations

import pytest
import torch

from attacks.simplex import project_simplex
from attacks.unlearndiff import (NoAttack, RandomTokens, RandomTokensConfig, UnlearnDiff, UnlearnDiffConfig, candidate_ids,
                                 insert_slots, timestep_schedule)
from robustbench_peft.options import parse_plugin_spec
from robustbench_peft.t2i.attack_base import PromptAttack, PromptItem
from test_t2i_helpers import FixedJudge, RecordingJudge, tiny_digits_target

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


def test_defaults_are_the_reference_setting():
    cfg = UnlearnDiffConfig()
    assert (cfg.timesteps, cfg.inner_steps, cfg.lr, cfg.weight_decay, cfg.k, cfg.noise_batch) == (50, 40, 0.01, 0.1, 3, 1)
    assert RandomTokensConfig().trials == cfg.timesteps  # equal judge budget: one judged image per timestep
    schedule = timestep_schedule(1000, 50)
    assert schedule == list(range(10, 1000, 20)) and len(schedule) == 50  # 10, 30, ..., 990, ascending


@pytest.mark.parametrize("preset", ["digits", "digits-paper", "digits-quick"])
def test_presets_pair_each_unlearndiff_with_random_tokens_at_its_judge_budget(preset):
    from unlearning.diffusion_section import PRESETS

    attacks = [parse_plugin_spec(a) for a in PRESETS[preset]["attacks"]]
    ud = [UnlearnDiffConfig.from_options(a.options, "test") for a in attacks if a.name == "unlearndiff"]
    rnd = [RandomTokensConfig.from_options(a.options, "test") for a in attacks if a.name == "random_tokens"]
    assert ud and {c.timesteps for c in ud} <= {c.trials for c in rnd}
    if preset != "digits-quick":
        assert (50, 40) in [(c.timesteps, c.inner_steps) for c in ud]  # the reference budget
    assert PRESETS["digits-paper"]["attacks"] == ["unlearndiff", "random_tokens"]


def test_candidates_are_the_whole_vocabulary_minus_special_and_reserved_tokens(tiny):
    target, _ = tiny
    vocab = target.tokenizer.get_vocab()
    cands = set(candidate_ids(target).tolist())
    specials = {vocab[w] for w in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")}
    reserved = {vocab[f"[unused{i}]"] for i in range(3)}
    assert target.special_ids == specials and target.reserved_ids == reserved
    assert cands == set(range(target.vocab_size)) - specials - reserved
    assert {vocab["three"], vocab["cat"], vocab["##s"]} <= cands


def test_candidates_on_minilm_vocabulary():
    """The real encoder's vocabulary: 30,522 WordPiece entries; specials [PAD] 0, [UNK] 100, [CLS] 101,
    [SEP] 102, [MASK] 103 and the [unusedN] placeholders are out, every other entry is in."""
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from robustbench_peft.t2i.target import TextToImageTarget
    from tasks.t2i_digits_model import encoder_folder

    tokenizer = AutoTokenizer.from_pretrained(encoder_folder())
    embedding = torch.nn.Embedding(len(tokenizer), 1)
    stub = TextToImageTarget("vocab", tokenizer, SimpleNamespace(get_input_embeddings=lambda: embedding, eval=lambda: None,
                                                                 requires_grad_=lambda _: None), torch.nn.Identity(), None)
    cands = set(candidate_ids(stub).tolist())
    vocab = tokenizer.get_vocab()
    unused = {i for w, i in vocab.items() if w.startswith("[unused")}
    assert len(tokenizer) == 30522 and stub.special_ids == {0, 100, 101, 102, 103} and len(unused) > 900
    assert cands == set(range(30522)) - {0, 100, 101, 102, 103} - unused
    assert vocab["three"] in cands and vocab["##s"] in cands and vocab["trio"] in cands


def test_relaxed_distribution_stays_on_simplex(tiny):
    target, reference = tiny
    attack = UnlearnDiff(k=3, timesteps=2, inner_steps=3, lr=0.05, seed=1)
    result = attack.run(target, PromptItem(PROMPT, 7, 3), FixedJudge(False), reference)
    w = attack.last_distribution
    assert w.shape == (1, 3, len(candidate_ids(target)))
    assert torch.allclose(w.sum(-1), torch.ones(1, 3), atol=1e-5)
    assert (w >= 0).all()
    assert result.steps == 6 and not result.success


@pytest.mark.parametrize("k", [1, 3, 5])
def test_adversarial_prompt_has_exactly_k_inserted_tokens(tiny, k):
    target, reference = tiny
    result = UnlearnDiff(k=k, timesteps=1, inner_steps=2, seed=2).run(target, PromptItem(PROMPT, 7, 3), FixedJudge(False), reference)
    ids = torch.tensor(result.adv_ids)
    plain = target.tokenize([PROMPT])[0]
    n_plain = int((plain != target.pad_id).sum())
    assert int((ids != target.pad_id).sum()) == n_plain + k
    assert torch.equal(ids[1 + k:n_plain + k], plain[1:n_plain])  # the original prompt follows the k tokens
    assert not set(ids[1:1 + k].tolist()) & (target.special_ids | target.reserved_ids)
    assert result.details["tokens"] == ids[1:1 + k].tolist()


def test_slots_follow_the_start_token(tiny):
    target, _ = tiny
    ids, slots = insert_slots(target, PROMPT, 2)
    assert slots == [1, 2] and int(ids[0, 0]) == target.start_id == target.tokenizer.cls_token_id


def test_search_stops_at_the_first_judged_success(tiny):
    target, reference = tiny
    result = UnlearnDiff(k=2, timesteps=5, inner_steps=2).run(target, PromptItem(PROMPT, 7, 3), FixedJudge(True), reference)
    assert result.success and result.steps == 2


class FixedIds(PromptAttack):
    """Returns the given id row (a search result handed back as ids)."""

    name = "fixed_ids"

    def __init__(self, ids: torch.Tensor) -> None:
        super().__init__()
        self.ids = ids

    def search(self, target, item, judge, reference):
        return self.ids, 1, {}


def test_the_judge_sees_the_optimised_ids_not_their_retokenised_text(tiny):
    target, _ = tiny
    ids, slots = insert_slots(target, PROMPT, 1)
    ids[0, slots] = target.tokenizer.convert_tokens_to_ids("##s")  # a word piece: its text does not tokenise back to it
    text = target.decode(ids[0])
    assert not torch.equal(target.tokenize([text])[0], ids[0])
    judge = RecordingJudge(False)
    result = FixedIds(ids[0]).run(target, PromptItem(PROMPT, 7, 3), judge)
    from_ids = target.generate_ids(ids, [7])
    assert result.adv_prompt == text and result.adv_ids == ids[0].tolist()
    assert torch.equal(judge.seen[-1], from_ids) and torch.equal(result.image, from_ids[0])
    assert not torch.allclose(from_ids, target.generate(text, [7]))


def test_unlearndiff_and_random_tokens_are_judged_on_their_ids(tiny):
    target, reference = tiny
    for attack in (UnlearnDiff(k=2, timesteps=1, inner_steps=2, seed=3), RandomTokens(k=2, trials=2, seed=3)):
        judge = RecordingJudge(False)
        result = attack.run(target, PromptItem(PROMPT, 7, 3), judge, reference)
        assert torch.equal(judge.seen[-1][0], target.generate_ids(torch.tensor(result.adv_ids), [7])[0])


def test_batched_search_equals_one_prompt_at_a_time(tiny):
    target, reference = tiny
    items = [PromptItem(PROMPT, 7, 3), PromptItem("the number 3", 8, 3)]
    refs = torch.stack([reference, target.generate("the number 3", [8])[0]])
    for make in (lambda: UnlearnDiff(k=2, timesteps=2, inner_steps=3, seed=5), lambda: RandomTokens(k=2, trials=3, seed=5)):
        together = make().run_many(target, items, FixedJudge(False), refs)
        alone = [make().run(target, it, FixedJudge(False), refs[i]) for i, it in enumerate(items)]
        assert [r.adv_ids for r in together] == [r.adv_ids for r in alone]


def test_baselines(tiny):
    target, _ = tiny
    plain = NoAttack().run(target, PromptItem(PROMPT, 7, 3), FixedJudge(False))
    assert plain.adv_prompt == PROMPT and plain.steps == 0 and plain.image.shape == (1, 8, 8) and plain.adv_ids is None
    rnd = RandomTokens(k=2, trials=3, seed=4).run(target, PromptItem(PROMPT, 7, 3), FixedJudge(False))
    assert rnd.steps == 3 and rnd.adv_ids[3:7] == target.tokenize([PROMPT])[0][1:5].tolist()
    again = RandomTokens(k=2, trials=3, seed=4).run(target, PromptItem(PROMPT, 7, 3), FixedJudge(False))
    assert again.adv_ids == rnd.adv_ids  # seeded
    hit = RandomTokens(k=2, trials=5, seed=4).run(target, PromptItem(PROMPT, 7, 3), FixedJudge(True))
    assert hit.success and hit.steps == 1


def test_sampled_token_embedding_is_the_one_hot_product_with_a_clipped_straight_through_gradient():
    from attacks.unlearndiff import sampled_token_embeddings

    gen = torch.Generator().manual_seed(0)
    table = torch.randn(50, 4, generator=gen) * 10  # large entries: the clip must act
    weights = project_simplex(torch.rand(2, 3, 50, generator=gen)).requires_grad_(True)  # 2 prompts x 3 slots
    out = sampled_token_embeddings(weights, table, [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)])
    upstream = torch.randn(2, 3, 4, generator=gen)
    (out * upstream).sum().backward()
    for p, seed in enumerate((1, 2)):  # each prompt samples with its own generator
        pick = torch.multinomial(weights[p].detach(), 1, generator=torch.Generator().manual_seed(seed))[:, 0]
        onehot = torch.nn.functional.one_hot(pick, 50).float()
        assert torch.equal(out[p], onehot @ table)
        expected = torch.nn.functional.hardtanh(upstream[p] @ table.T)
        assert torch.allclose(weights.grad[p], expected)
    assert (weights.grad.abs() == 1).any()
