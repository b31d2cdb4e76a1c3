"""Continuous prompt attacks on a tiny target: defaults, threat models, what is judged, batching, early stop, power."""
from __future__ import annotations

import pytest
import torch

from attacks.concept_inversion import (ConceptInversion, ConceptInversionConfig, ConditionInversion, ConditionInversionConfig)
from robustbench_peft.errors import UserError
from robustbench_peft.options import build
from robustbench_peft.registry import PROMPT_ATTACKS
from robustbench_peft.t2i.attack_base import PromptItem
from test_t2i_helpers import FixedJudge, RecordingJudge, tiny_digits_target

PROMPT = "a handwritten digit three"


class YesAfter(FixedJudge):
    """Per concept: no for its first m - 1 images, yes from its m-th on (concepts not in ``after``: never)."""

    def __init__(self, after: dict) -> None:
        super().__init__(False)
        self.after, self.calls = after, {}

    def present(self, images, concept):
        self.calls[concept] = self.calls.get(concept, 0) + len(images)
        return torch.full((len(images),), self.calls[concept] >= self.after.get(concept, float("inf")), dtype=torch.bool)


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    target = tiny_digits_target()
    return target, target.generate(PROMPT, [7])[0]


def test_defaults_are_pinned():
    ci, co = ConceptInversionConfig(), ConditionInversionConfig()
    assert (ci.steps, ci.lr, ci.noise_batch, ci.judge_every, ci.k, ci.initializer, ci.seed) == (50, 0.08, 4, 10, 3, "", 0)
    assert (co.steps, co.lr, co.noise_batch, co.judge_every, co.seed) == (50, 0.1, 4, 10, 0)
    assert not hasattr(co, "k")
    assert ConceptInversion.needs_reference and ConditionInversion.needs_reference


@pytest.mark.parametrize("name, options, message", [
    ("concept_inversion", {"steps": "0"}, "concept_inversion: steps"), ("concept_inversion", {"lr": "0"}, "concept_inversion: lr"),
    ("concept_inversion", {"lr": "-1"}, "concept_inversion: lr"), ("concept_inversion", {"noise_batch": "0"}, "concept_inversion: steps"),
    ("concept_inversion", {"judge_every": "0"}, "concept_inversion: steps"), ("concept_inversion", {"k": "0"}, "concept_inversion: k"),
    ("concept_inversion", {"initializer": "two words"}, "concept_inversion: initializer"),
    ("condition_inversion", {"steps": "0"}, "condition_inversion: steps"), ("condition_inversion", {"lr": "0"}, "condition_inversion: lr"),
    ("condition_inversion", {"noise_batch": "0"}, "condition_inversion: steps"), ("condition_inversion", {"k": "3"}, "unknown option 'k'")])
def test_bad_options_are_user_errors(name, options, message):
    with pytest.raises(UserError, match=message):
        build(PROMPT_ATTACKS.get(name).factory, options, owner=f"prompt attack {name}")


def test_registered_with_their_threat_models():
    assert PROMPT_ATTACKS.get("concept_inversion").factory is ConceptInversion
    assert PROMPT_ATTACKS.get("condition_inversion").factory is ConditionInversion
    assert ConceptInversion.threat_model == "embedding" and ConditionInversion.threat_model == "condition"


def test_a_reference_is_required_and_a_multi_token_initializer_refused(tiny):
    target, reference = tiny
    with pytest.raises(UserError, match="reference"):
        ConceptInversion(steps=1).run(target, PromptItem(PROMPT, 7, 3), FixedJudge(False))
    with pytest.raises(UserError, match="initializer"):
        ConceptInversion(steps=1, initializer="cats").run(target, PromptItem(PROMPT, 7, 3), FixedJudge(False), reference)


def test_new_embeddings_start_at_the_initializer(tiny):
    target, _ = tiny
    table = target.token_embedding.weight
    vocab = target.tokenizer.get_vocab()
    _, params = ConceptInversion(k=2).start(target, [PromptItem(PROMPT, 7, 3), PromptItem("the number 3", 8, 3)])
    assert torch.equal(params[0], table[vocab["three"]].expand(2, -1)) and torch.equal(params[1], table[vocab["3"]].expand(2, -1))
    _, params = ConceptInversion(k=2, initializer="digit").start(target, [PromptItem(PROMPT, 7, 3)])
    assert torch.equal(params[0], table[vocab["digit"]].expand(2, -1))


@pytest.mark.parametrize("k", [1, 3])
def test_concept_inversion_changes_only_the_k_inserted_embeddings(tiny, k):
    target, reference = tiny
    result = ConceptInversion(k=k, steps=4, judge_every=2, seed=1).run(target, PromptItem(PROMPT, 7, 3), FixedJudge(False), reference)
    adv = result.adversarial
    assert result.threat_model == "embedding" and adv.threat_model == "embedding" and adv.condition is None
    assert not adv.embeds.requires_grad and adv.embeds.grad_fn is None
    table = target.token_embedding.weight
    rows = table[adv.ids]
    assert adv.embeds.shape == (target.max_length, table.shape[1])
    plain = target.tokenize([PROMPT])[0]
    n_plain = int((plain != target.pad_id).sum())
    assert torch.equal(adv.ids[1 + k:n_plain + k], plain[1:n_plain]) and int(adv.ids[0]) == target.start_id
    others = [i for i in range(len(adv.ids)) if not 1 <= i <= k]
    assert torch.equal(adv.embeds[others], rows[others])  # every other token keeps its table embedding
    init = table[target.tokenizer.convert_tokens_to_ids("three")]
    assert all(not torch.allclose(adv.embeds[i], init) for i in range(1, 1 + k))  # every slot moved
    assert result.details["k"] == k and result.details["steps"] == result.steps == 4


def test_condition_inversion_returns_an_encoder_output(tiny):
    target, reference = tiny
    result = ConditionInversion(steps=4, judge_every=2).run(target, PromptItem(PROMPT, 7, 3), FixedJudge(False), reference)
    adv = result.adversarial
    encoded = target.encode(target.tokenize([PROMPT]))[0]
    assert result.threat_model == "condition" and adv.threat_model == "condition" and adv.embeds is None
    assert adv.condition.shape == encoded.shape and not adv.condition.requires_grad
    assert torch.equal(adv.ids, target.tokenize([PROMPT])[0])
    assert not torch.allclose(adv.condition, encoded)
    assert result.details["k"] == 0


@pytest.mark.parametrize("make", [lambda: ConceptInversion(k=2, steps=3, judge_every=1, seed=2),
                                  lambda: ConditionInversion(steps=3, judge_every=1, seed=2)], ids=["concept", "condition"])
def test_the_judge_sees_the_image_of_the_returned_input(tiny, make):
    target, reference = tiny
    judge = RecordingJudge(False)
    item = PromptItem(PROMPT, 7, 3, guidance=2.0)
    result = make().run(target, item, judge, reference)
    adv = result.adversarial
    with torch.no_grad():
        cond = adv.condition[None] if adv.condition is not None else target.encode_embeds(adv.ids[None], adv.embeds[None])
    image = target.generate_from_cond(cond, [7], guidance=2.0)
    assert len(judge.seen) == 3  # judged after steps 1 and 2 in the search, then the returned input
    assert torch.equal(judge.seen[-1], image) and torch.equal(result.image, image[0])
    assert not torch.equal(image, target.generate(PROMPT, [7], guidance=2.0))


@pytest.mark.parametrize("make", [lambda: ConceptInversion(k=2, steps=6, judge_every=2, seed=5),
                                  lambda: ConditionInversion(steps=6, judge_every=2, seed=5)], ids=["concept", "condition"])
def test_batched_search_equals_one_item_at_a_time(tiny, make):
    target, reference = tiny
    items = [PromptItem(PROMPT, 7, 3), PromptItem("the number 3", 8, 4), PromptItem(PROMPT, 9, 5, guidance=2.0)]
    refs = torch.stack([reference, target.generate("the number 3", [8])[0], target.generate(PROMPT, [9], guidance=2.0)[0]])
    together = make().run_many(target, items, YesAfter({3: 2}), refs)  # the first item stops at its second judged image
    alone = [make().run(target, it, YesAfter({3: 2}), refs[i]) for i, it in enumerate(items)]
    assert [r.steps for r in together] == [r.steps for r in alone] == [4, 6, 6]
    for a, b in zip(together, alone):
        x = a.adversarial.embeds if a.adversarial.embeds is not None else a.adversarial.condition
        y = b.adversarial.embeds if b.adversarial.embeds is not None else b.adversarial.condition
        assert torch.equal(a.adversarial.ids, b.adversarial.ids)
        assert torch.allclose(x, y, atol=1e-5)
        assert a.details["loss"] == pytest.approx(b.details["loss"], abs=1e-4) and a.details["loss_at"] == b.details["loss_at"]


@pytest.mark.parametrize("make", [ConceptInversion, ConditionInversion], ids=["concept", "condition"])
@pytest.mark.parametrize("judge_every, m", [(1, 3), (2, 2)])
def test_the_search_stops_at_the_first_judged_success(tiny, make, judge_every, m):
    target, reference = tiny
    judge = YesAfter({3: m})
    result = make(steps=10, judge_every=judge_every).run(target, PromptItem(PROMPT, 7, 3), judge, reference)
    assert result.success and result.steps == m * judge_every and judge.calls[3] == m + 1  # m in the search, then the final one
    assert result.details["loss_at"] == [judge_every * j for j in range(m + 1)]


@pytest.mark.parametrize("make", [lambda: ConceptInversion(steps=40, judge_every=20, lr=0.08, seed=0),
                                  lambda: ConditionInversion(steps=40, judge_every=20, lr=0.1, seed=0)], ids=["concept", "condition"])
def test_the_optimisation_lowers_the_denoising_loss_of_the_reference(tiny, make):
    """Attacking another digit's prompt towards the reference: the loss on the fixed draws falls."""
    target, reference = tiny
    result = make().run(target, PromptItem("a handwritten digit seven", 7, 3), FixedJudge(False), reference)
    loss = result.details["loss"]
    assert result.details["loss_at"] == [0, 20, 40] and loss[-1] < loss[0] - 0.01


def test_an_attack_returning_more_than_its_threat_model_is_refused(tiny):
    target, reference = tiny

    class Mislabelled(ConceptInversion):
        name = "mislabelled"
        threat_model = "text"

    with pytest.raises(UserError, match="declares threat model 'text' but returned a 'embedding' input"):
        Mislabelled(steps=1).run(target, PromptItem(PROMPT, 7, 3), FixedJudge(False), reference)

    class Weaker(ConditionInversion):
        name = "weaker"
        threat_model = "embedding"

    with pytest.raises(UserError, match="declares threat model 'embedding' but returned a 'condition' input"):
        Weaker(steps=1).run_many(target, [PromptItem(PROMPT, 7, 3)], FixedJudge(False), reference[None])
