"""Property-based: no command line, however malformed, ends in a traceback.

Every generated argument list goes through the real ``main``: parsing, suite
building, option validation, task and model loading. Work stops at the first
attack (``Runner.run_one`` is replaced by a sentinel), so an input that is valid
enough to start evaluating counts as accepted without spending minutes on it.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from robustbench_peft import cli
from robustbench_peft.runner import Runner


class ReachedEvaluation(Exception):
    """Raised instead of attacking: the arguments were accepted."""


NAMES = st.sampled_from(["digits", "pgd", "autoattack", "transfer", "cavp", "advft", "none", "nosuch", "", "digits:cnn", "digits:surrogate", "timm:", "file:/nonexistent", ":", "=", "pgd:", "pgd:steps", "pgd:steps=", "pgd:norm=L3", "pgd:steps=-1", "pgd:steps=1e99", "pgd:loss=dlr", "transfer:sources=nosuch:model"])
NUMBERS = st.sampled_from(["0", "-1", "1", "0.1", "nan", "inf", "-inf", "1e309", "abc", "", "0.1,0.2", "L2:0.5", "Linf:", ":0.1", "L2:-1", "3", "99999999999999999999"])
FLAGS = st.sampled_from(["--suite", "--task", "--model", "--attack", "--defense", "--eps", "--n", "--seed", "--batch-size", "--chunk-size", "--data-dir", "--device", "--bogus"])


def argument(flag: str) -> st.SearchStrategy[list[str]]:
    values = NUMBERS if flag in ("--eps", "--n", "--seed", "--batch-size", "--chunk-size") else NAMES | st.text(max_size=12)
    return values.map(lambda v: [flag, v])


ARGUMENTS = st.lists(FLAGS.flatmap(argument), max_size=4).map(lambda parts: [token for part in parts for token in part])


@pytest.fixture
def stop_before_attacking(monkeypatch):
    def sentinel(self, *args, **kwargs):
        raise ReachedEvaluation

    monkeypatch.setattr(Runner, "run_one", sentinel)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arguments=ARGUMENTS)
def test_eval_arguments_never_traceback(arguments, tmp_path_factory, stop_before_attacking, capsys):
    out = tmp_path_factory.mktemp("cli") / "run"
    try:
        code = cli.main(["eval", "--quiet", "--no-checks", "--out", str(out), *arguments])
    except ReachedEvaluation:
        return
    captured = capsys.readouterr()
    assert code == 2, (arguments, captured.err)
    assert captured.err.startswith("error: "), (arguments, captured.err)
    assert captured.err.strip().count("\n") == 0, (arguments, captured.err)


@settings(max_examples=40, deadline=None)
@given(command=st.sampled_from(["eval", "list", "nosuch", "", "--help-me"]), extra=st.lists(st.text(max_size=8), max_size=3))
def test_any_subcommand_never_tracebacks(command, extra):
    if command == "eval" or command == "list" and extra:
        extra = ["--bogus-flag", *extra]  # never start real work here; the eval path is covered above
    try:
        code = cli.main([command, *extra] if command else extra)
    except SystemExit as exc:  # only --help may exit this way
        assert exc.code == 0
        return
    assert code in (0, 2)


CLAIM_KEYS = ["id", "description", "evaluation", "metric", "claimed", "tolerance", "direction", "card", "claims", "schema_version",
              "task", "model", "defense", "unlearner", "attacks", "eps", "n", "seed", "name", "threat_model", "Linf", "key"]
JSON_LEAVES = st.none() | st.booleans() | st.integers(-3, 10**6) | st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(
    ["digits", "digits:cnn", "pgd:steps=1", "nosuch", ">=", "<=", "robust_accuracy", "clean_accuracy", "unlearning", "Linf", "", "1.0"])
JSON_VALUES = st.recursive(JSON_LEAVES, lambda children: st.lists(children, max_size=3) | st.dictionaries(st.sampled_from(CLAIM_KEYS), children, max_size=6), max_leaves=25)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=JSON_VALUES | st.dictionaries(st.sampled_from(CLAIM_KEYS), JSON_VALUES, max_size=8), raw=st.booleans(), text=st.text(max_size=40))
def test_verify_never_tracebacks_on_any_claim_file(document, raw, text, tmp_path_factory, stop_before_attacking, capsys):
    import json

    folder = tmp_path_factory.mktemp("claims")
    path = folder / "claim.json"
    path.write_text(text if raw else json.dumps(document))
    try:
        code = cli.main(["verify", str(path), "--quiet", "--out", str(folder / "out")])
    except ReachedEvaluation:  # a well-formed claim reached its evaluation
        return
    captured = capsys.readouterr()
    assert code in (1, 2), (document, captured.err)
    assert "Traceback" not in captured.err + captured.out
    if code == 2:
        assert captured.err.startswith("error: ") and captured.err.strip().count("\n") == 0, captured.err
