"""Test environment: offline hubs and a shared cache of reference models."""

from __future__ import annotations

import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("ROBUSTBENCH_PEFT_CACHE", str(Path(__file__).resolve().parent.parent / ".cache" / "test-cache"))

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="session")
def digits():
    from tasks.digits import digits_task

    return digits_task()


@pytest.fixture(scope="session")
def cnn():
    from robustbench_peft import load_target

    return load_target("digits:cnn")


@pytest.fixture(scope="session")
def surrogate():
    from robustbench_peft import load_target

    return load_target("digits:surrogate")


@pytest.fixture
def small_batch(digits):
    """The first 64 test digits."""
    return digits.x_test[:64], digits.y_test[:64]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny-model tests: on a shared 2-core machine several
    threads spin-wait on each other and run many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
