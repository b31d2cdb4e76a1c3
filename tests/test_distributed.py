"""Sharded evaluation: torchrun with two processes writes the report one process writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from robustbench_peft import distributed
from robustbench_peft.errors import UserError

EVAL = ["eval", "--suite", "quick", "--model", "digits:cnn", "--attack", "pgd:steps=5", "--attack", "pgd:norm=L2,steps=5",
        "--eps", "Linf:0.1,0.2", "--eps", "L2:1.0", "--num-examples", "64", "--batch-size", "16", "--chunk-size", "16", "--quiet"]
VOLATILE = {"seconds", "created", "environment"}


def _numbers(doc: Any) -> Any:
    """The report without wall times, timestamps and the machine description."""
    if isinstance(doc, dict):
        return {k: _numbers(v) for k, v in doc.items() if k not in VOLATILE}
    if isinstance(doc, list):
        return [_numbers(v) for v in doc]
    return doc


def _run(cmd: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)


@pytest.mark.slow
def test_torchrun_two_ranks_equals_one_process(tmp_path):
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    one = _run([sys.executable, "-m", "robustbench_peft", *EVAL, "--out", str(single)], tmp_path)
    assert one.returncode == 0, one.stderr[-2000:]
    two = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                "-m", "robustbench_peft", *EVAL, "--out", str(sharded)], tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("report:") == 1, "only rank 0 prints the summary"
    a = json.loads((single / "report.json").read_text())
    b = json.loads((sharded / "report.json").read_text())
    run_a, run_b = a["runs"][0], b["runs"][0]
    # 64 samples in chunks of 16: rank 0 computed chunks 0 and 2, rank 1 chunks 1 and 3
    assert len(run_b["attacks"]) == 3 and run_b["n"] == 64
    assert [x["correct"] for x in run_b["attacks"]] == [x["correct"] for x in run_a["attacks"]]
    assert [w["robust_accuracy"] for w in run_b["worst_case"]] == [w["robust_accuracy"] for w in run_a["worst_case"]]
    assert run_b["clean_accuracy"] == run_a["clean_accuracy"]
    assert _numbers(b) == _numbers(a)
    chunks = sorted(p.name for p in (sharded / ".checkpoint").glob("m0-d0-a*-c*.json"))
    assert len(chunks) == 8, chunks  # both ranks checkpointed into the one output folder


def test_chunks_are_split_round_robin_and_cover_every_chunk():
    world = 3
    owners = {c: [r for r in range(world) if distributed.Shard(rank=r, world_size=world).owns(c)] for c in range(10)}
    assert all(len(ranks) == 1 for ranks in owners.values())
    assert owners[0] == [0] and owners[4] == [1] and owners[8] == [2]


def test_single_process_starts_no_group(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    shard, device = distributed.setup("cpu")
    assert shard == distributed.Shard() and shard.is_main and not shard.distributed and device == "cpu"
    assert distributed.on_main(lambda: 41 + 1) == 42
    assert distributed.gather_chunks({1: "b", 0: "a"}, 2) == ["a", "b"]


def test_single_process_reports_a_missing_chunk():
    with pytest.raises(RuntimeError, match=r"chunks \[1\]"):
        distributed.gather_chunks({0: "a"}, 2)


@pytest.mark.parametrize(
    "env,needle",
    [
        ({"WORLD_SIZE": "2", "RANK": "5"}, "invalid torch.distributed environment"),
        ({"WORLD_SIZE": "two"}, "WORLD_SIZE must be an integer"),
        ({"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "", "MASTER_PORT": ""}, "start the job with torchrun"),
    ],
)
def test_bad_environment_is_a_user_error(monkeypatch, env, needle):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(UserError, match=needle):
        distributed.setup("cpu")


def test_backend_follows_the_device():
    assert distributed.backend_for("cpu") == "gloo"
    assert distributed.rank_device("cpu", distributed.Shard(rank=1, world_size=2)) == "cpu"


# -- device options: channels_last and mixed precision for fitting ------------------------
def test_channels_last_and_amp_leave_attack_numbers_unchanged(tmp_path, capsys):
    from robustbench_peft.cli import main

    fast = ["eval", "--suite", "quick", "--attack", "pgd:steps=5", "--eps", "0.1", "--n", "64", "--no-checks", "--quiet"]
    assert main([*fast, "--out", str(tmp_path / "plain")]) == 0
    capsys.readouterr()
    assert main([*fast, "--out", str(tmp_path / "fast"), "--channels-last", "--amp", "bf16"]) == 0
    assert "--amp bf16 had no effect" in capsys.readouterr().err  # no defense here: said, not silently ignored
    a = json.loads((tmp_path / "plain" / "report.json").read_text())
    b = json.loads((tmp_path / "fast" / "report.json").read_text())
    assert _numbers(a["runs"]) == _numbers(b["runs"])


def test_fit_autocast_only_inside_fitting_and_only_when_asked():
    import torch

    from robustbench_peft import precision

    try:
        precision.set_fit_amp("off")
        with precision.fit_autocast("cpu"):
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
        assert not precision.fit_amp_applied()
        precision.set_fit_amp("bf16")
        with precision.fit_autocast("cpu"):
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
            with precision.full_precision("cpu"):
                assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
        assert precision.fit_amp_applied() and not precision.grad_scaler("cpu").is_enabled()
        precision.set_fit_amp("fp16")
        with pytest.raises(UserError, match="needs a CUDA device"):
            with precision.fit_autocast("cpu"):
                pass
        with pytest.raises(UserError, match="unknown --amp"):
            precision.set_fit_amp("fp8")
    finally:
        precision.set_fit_amp("off")
