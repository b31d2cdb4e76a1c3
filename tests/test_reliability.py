"""Reliability: resume after SIGKILL, atomic cache, safe loading, OOM back-off."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from robustbench_peft.cache import cached_tensors, entry_path
from robustbench_peft.errors import UserError
from robustbench_peft.safe_load import load_state_dict

ARGS = ["--suite", "quick", "--attack", "pgd:steps=200,restarts=2", "--attack", "pgd:norm=L2,steps=100", "--eps", "Linf:0.05,0.1", "--eps", "L2:0.5,1",
        "--n", "512", "--batch-size", "32", "--chunk-size", "32", "--no-checks", "--quiet"]


def numbers(path: Path) -> list:
    doc = json.loads((path / "report.json").read_text())
    return [
        (run["clean_correct"], [(a["name"], a["eps"], a["robust_accuracy"], a["correct"]) for a in run["attacks"]],
         [(w["eps"], w["correct"]) for w in run["worst_case"]])
        for run in doc["runs"]
    ]


def eval_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "robustbench_peft", "eval", *args]


def test_sigkill_then_resume_equals_uninterrupted(tmp_path, cnn):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    killed = tmp_path / "killed"
    proc = subprocess.Popen(eval_cmd("--out", str(killed), *ARGS), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = killed / ".checkpoint"
    deadline = time.time() + 240
    while time.time() < deadline and len(list(checkpoint.glob("m0-*.json"))) < 3:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list(checkpoint.glob("m0-*.json")))
    assert 3 <= done_before < 32, "the kill should land mid-run"
    assert not (killed / "report.json").exists()
    # an existing directory is not overwritten without --force or --resume
    assert subprocess.run(eval_cmd("--out", str(killed), *ARGS), env=env, capture_output=True).returncode == 2
    resumed = subprocess.run(eval_cmd("--resume", "--out", str(killed), "--quiet"), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    fresh = tmp_path / "fresh"
    assert subprocess.run(eval_cmd("--out", str(fresh), *ARGS), env=env, capture_output=True).returncode == 0
    assert numbers(killed) == numbers(fresh)


def test_corrupted_cache_entry_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTBENCH_PEFT_CACHE", str(tmp_path))
    builds = []

    def build():
        builds.append(1)
        return {"w": torch.arange(6.0)}

    recipe = {"what": "test"}
    assert torch.equal(cached_tensors("t", recipe, build)["w"], torch.arange(6.0))
    cached_tensors("t", recipe, build)
    assert len(builds) == 1
    path = entry_path("t", recipe)
    path.write_bytes(path.read_bytes()[:-7])  # truncate
    assert torch.equal(cached_tensors("t", recipe, build)["w"], torch.arange(6.0))
    assert len(builds) == 2
    assert not list(path.parent.glob(".*.tmp"))


class Malicious:
    """Unpickling this creates a file: the proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    checkpoint = tmp_path / "model.pt"
    with open(checkpoint, "wb") as fh:
        pickle.dump({"weight": Malicious(str(marker))}, fh)
    with pytest.raises(UserError, match="refused"):
        load_state_dict(checkpoint)
    assert not marker.exists()


def test_plain_state_dicts_load(tmp_path):
    from safetensors.torch import save_file

    torch.save({"state_dict": {"a": torch.ones(2)}}, tmp_path / "m.pt")
    assert torch.equal(load_state_dict(tmp_path / "m.pt")["a"], torch.ones(2))
    save_file({"b": torch.zeros(3)}, str(tmp_path / "m.safetensors"))
    assert load_state_dict(tmp_path / "m.safetensors")["b"].shape == (3,)
    (tmp_path / "bad.safetensors").write_bytes(b"nonsense")
    with pytest.raises(UserError):
        load_state_dict(tmp_path / "bad.safetensors")


def test_out_of_memory_backs_off_batch_size(cnn, small_batch):
    from attacks.pgd import PGD
    from robustbench_peft.targets import ClassifierTarget

    class SmallMemory(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            if x.requires_grad and len(x) > 16:
                raise torch.OutOfMemoryError("simulated: batch too large")
            return self.inner(x)

    x, y = small_batch
    target = ClassifierTarget(SmallMemory(cnn), 10, (1, 8, 8), name="small-memory")
    attack = PGD(steps=5, batch_size=64, progress=False)
    with pytest.warns(RuntimeWarning, match="out of memory"):
        result = attack(target, x, y, [0.1])
    assert attack.batch_size == 16
    assert result.robust_accuracy[0] < 1.0
