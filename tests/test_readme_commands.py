"""Every command line and Python block of the README, run as a user runs it.

Each command runs as written, in a fresh working folder, through a real
``python -m robustbench_peft`` process. A case may replace a hub id with a local
stand-in of the same family (saved the way its library saves it) and a data path
with a stand-in data set, never a command's options; ``CASES`` says per command
what it replaces. A command that cannot run here says why beside it in the README,
and its case checks that the README says so.

The commands that need more time than the 10-minute test suite has (the suites,
the hub families on their stand-ins, claims verification, submission) are marked
``readme`` and run by ``python -m pytest -m readme`` (CI runs both). The
leaderboard-budget suite ``full`` and its torchrun form take hours on 2 cores:
marked ``budget``, run by ``python -m pytest -m budget``, not in CI. A meta-test
fails when the README gains a command without a case here.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def readme_commands(text: str) -> list[str]:
    """The command lines of the README's shell blocks (continuations joined, comments dropped)."""
    commands = []
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line.strip())
            if line and not line.startswith("#"):
                commands.append(re.sub(r"\s+", " ", line))
    return commands


def readme_python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.S)


# -- the working folder a user runs the README in ---------------------------------------


@dataclass
class Workdir:
    """A user's folder: commands run here, stand-ins are saved here, outputs accumulate."""

    path: Path
    env: dict[str, str]
    done: dict[str, subprocess.CompletedProcess] = field(default_factory=dict)
    #: Environment of the command being run (a stand-in's cache), on top of ``env``.
    case_env: dict[str, str] = field(default_factory=dict)
    #: Report folders in the repository root before a command that runs there.
    before: set[Path] = field(default_factory=set)

    def run(self, command: str, timeout: float = 1800) -> subprocess.CompletedProcess:
        """``command`` through bash, as typed, with ``python`` this interpreter."""
        if command not in self.done:
            env = {**self.env, **self.case_env}
            self.done[command] = subprocess.run(["bash", "-c", command], cwd=self.path, env=env, capture_output=True, text=True, timeout=timeout)
        return self.done[command]

    def ok(self, command: str, timeout: float = 1800) -> subprocess.CompletedProcess:
        proc = self.run(command, timeout)
        assert proc.returncode == 0, f"{command}\nexit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc

    def report(self, pattern: str) -> dict:
        """The newest report.json under reports/runs/ whose folder matches ``pattern``."""
        found = sorted(self.path.glob(f"reports/runs/{pattern}/report.json"), key=lambda p: p.stat().st_mtime)
        assert found, f"no report under reports/runs/{pattern}"
        return json.loads(found[-1].read_text())


def command_path(bin_dir: Path) -> str:
    """PATH for the README's commands: ``python`` is this interpreter and a virtualenv's tools come first.

    ``python`` is a script that execs ``sys.executable`` by its own path (a symlink to a virtualenv's
    interpreter placed elsewhere loses the virtualenv, so its packages, torch included); in a virtualenv
    its bin folder follows, as activating it would put it, so ``pip`` and ``torchrun`` are its own."""
    wrapper = bin_dir / "python"
    wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    wrapper.chmod(0o755)
    dirs = [str(bin_dir)]
    if sys.prefix != sys.base_prefix:
        dirs.append(str(Path(sys.executable).parent))
    return os.pathsep.join([*dirs, os.environ.get("PATH", "")]).rstrip(os.pathsep)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Workdir:
    path = tmp_path_factory.mktemp("readme-user")
    bin_dir = path / ".bin"
    bin_dir.mkdir()
    env = dict(os.environ)
    env["PATH"] = command_path(bin_dir)
    env["PYTHONPATH"] = os.pathsep.join([str(path / "site"), str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["HOME"] = str(path / "home")  # `~/data/...` is the stand-in data under this user's home
    env["HF_HUB_OFFLINE"] = "1"
    env.setdefault("ROBUSTBENCH_PEFT_CACHE", str(ROOT / ".cache" / "test-cache"))
    (path / "home").mkdir()
    return Workdir(path, env)


# -- stand-ins ---------------------------------------------------------------------------


def stand_in_cifar10(work: Workdir) -> Path:
    from test_tasks_data import fake_cifar10

    folder = work.path / "home" / "data" / "cifar10"
    if not folder.exists():
        fake_cifar10(folder)
    return folder


def stand_in_robustbench_zoo(work: Workdir, name: str) -> None:
    """RobustBench's own layout: the ``robustbench`` package (a stand-in with its API) and the zoo
    checkpoint where the ``robustbench:`` family caches it (``CACHE/robustbench/DATASET/THREAT/NAME.pt``),
    in a cache of this user's own."""
    from test_front_door_families import N_CLASSES, favour
    from test_models_hub import STAND_IN_ROBUSTBENCH

    package = work.path / "site" / "robustbench"
    for relative, text in STAND_IN_ROBUSTBENCH.items():
        (package / relative).parent.mkdir(parents=True, exist_ok=True)
        (package / relative).write_text(text.replace("'Tiny2099'", repr(name)))
    torch.manual_seed(0)
    model = favour(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, N_CLASSES)))
    cache = work.path / "home" / "robustbench-cache"
    work.case_env["ROBUSTBENCH_PEFT_CACHE"] = str(cache)
    checkpoint = cache / "robustbench" / "cifar10" / "Linf" / f"{name}.pt"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict()}, checkpoint)


def stand_in_imagenet_val(work: Workdir) -> Path:
    from test_front_door_families import N_CLASSES
    from test_tasks_data import write_images

    folder = work.path / "home" / "data" / "imagenet-val"
    if not folder.exists():
        write_images(folder, {f"n0{1440764 + i}": 2 for i in range(N_CLASSES)}, size=(64, 48))
    return folder


# -- what each command must produce --------------------------------------------------------


def check_list(work: Workdir, proc: subprocess.CompletedProcess) -> None:
    for name in ("digits", "pgd", "autoattack", "cavp", "advft", "salun", "quick", "full"):
        assert re.search(rf"\b{re.escape(name)}\b", proc.stdout), name


def check_suite(name: str, n_runs: int, sections: tuple[str, ...] = ()) -> Callable[[Workdir, subprocess.CompletedProcess], None]:
    def check(work: Workdir, proc: subprocess.CompletedProcess) -> None:
        report = work.report(f"{name}-*")
        assert report["suite"]["name"] == name and len(report["runs"]) == n_runs
        for section in sections:
            assert report.get(section), f"no {section} section"
        for run in report["runs"]:
            assert run["worst_case"] and all(w["n"] > 0 for w in run["worst_case"])
        assert "report: reports/runs/" in proc.stdout
        assert ("worst " in proc.stdout.lower()) == bool(n_runs), "the summary's worst-case table"

    return check


def check_unlearning(scenarios: tuple[str, ...], methods: tuple[str, ...], flagged: tuple[str, ...] = ()) -> Callable[[Workdir, subprocess.CompletedProcess], None]:
    """The unlearning suite's report: every method of every scenario has the paper's metrics and the probes'
    (per-example MIA, relearning, linear probe, gap over every metric); the class-wise power checks pass;
    ``flagged`` methods are flagged, and no flagged method is named closest to retrain."""

    def check(work: Workdir, proc: subprocess.CompletedProcess) -> None:
        check_suite("unlearning", 0, ("unlearning",))(work, proc)
        section = work.report("unlearning-*")["unlearning"]
        assert tuple(s["kind"] for s in section["scenarios"]) == scenarios
        for scenario in section["scenarios"]:
            rows = {r["method"]: r for r in scenario["rows"]}
            assert set(rows) == {"original", *methods}
            for row in rows.values():
                assert all(row[k] is not None for k in ("UA", "RA", "TA", "MIA", "avg_gap", "MIA_AUC", "MIA_TPR", "relearn_forget", "probe_accuracy", "gap_all"))
                assert "relearn_steps" in row and "retain_relearn_forget" in row
            assert rows["retrain"]["gap_all"] == 0.0 and rows["retrain"]["MIA_AUC"] == 0.5
            assert set(flagged) <= set(scenario["flagged"]) and not set(scenario["best_approximate"]) & set(scenario["flagged"])
        class_checks = [c for c in section["checks"] if c["scope"] == "class"]
        assert {c["name"] for c in class_checks} == {"mia_separates_original", "probes_tell_original"} and all(c["passed"] for c in class_checks)
        closest = [line for line in proc.stdout.splitlines() if "closest to retrain" in line]
        assert closest and not any(name in line for line in closest for name in flagged)

    return check


def check_l2(work: Workdir, proc: subprocess.CompletedProcess) -> None:
    report = json.loads((work.path / "reports" / "runs" / "l2" / "report.json").read_text())
    (run,) = report["runs"]
    assert run["n"] == 200 and report["suite"]["seed"] == 1
    pgd = [a for a in run["attacks"] if a["config"].get("attack") == "pgd"]
    assert sorted(a["eps"] for a in pgd) == [0.5, 1.0, 2.0] and {a["threat_model"] for a in pgd} == {"L2"}
    assert all(a["config"]["steps"] == 50 and a["config"]["restarts"] == 5 for a in pgd)
    worst = [w["robust_accuracy"] for w in sorted(run["worst_case"], key=lambda w: w["eps"])]
    assert worst == sorted(worst, reverse=True) and worst[-1] < worst[0]


def check_diffusion(name: str, attacks: tuple[str, ...], unlearners: tuple[str, ...] = ("esd", "salun-dm"),
                    threat_models: tuple[str, ...] = ("text",), min_items: int = 50,
                    unreliable: tuple[str, ...] = ()) -> Callable[[Workdir, subprocess.CompletedProcess], None]:
    """The section ran every attack spec on every unlearner, the original model reaches 95% judged accuracy, every
    (unlearner, threat model) has its worst case over at least ``min_items`` items with an interval, and every check
    passed (the default suite's evaluation is one its checks accept) but those named in ``unreliable``, which must fail."""

    def check(work: Workdir, proc: subprocess.CompletedProcess) -> None:
        section = work.report("diffusion-*")["diffusion"]
        assert section["task"] == name
        assert {(r["unlearner"], r["attack"]) for r in section["rows"]} >= {(u, a) for u in unlearners for a in attacks}
        assert section["original_model"]["judged_accuracy"] >= 0.95
        worst = {(w["unlearner"], w["threat_model"]): w for w in section["worst_case"]}
        assert set(worst) == {(u, tm) for u in unlearners for tm in threat_models}
        for w in worst.values():
            assert w["n"] >= min_items and w["ci95"][0] <= w["rate"] <= w["ci95"][1] and w["kept_ci95"] is not None
        failed = [c for c in section["checks"] if not c["passed"]]
        assert {c["name"] for c in failed} == set(unreliable), failed
        assert section["reliable"] == (not unreliable)
        assert "worst case per threat model" in proc.stdout

    return check


def check_hub(spec: str, attack: str, n_max: int) -> Callable[[Workdir, subprocess.CompletedProcess], None]:
    def check(work: Workdir, proc: subprocess.CompletedProcess) -> None:
        report = work.report("*")
        (run,) = report["runs"]
        assert run["model"]["spec"].startswith(spec.split(":")[0]) and 0 < run["n"] <= n_max
        assert any(a["config"].get("attack") == attack for a in run["attacks"])

    return check


def check_install_and_eval(work: Workdir, proc: subprocess.CompletedProcess) -> None:
    """``pip install -e . && eval`` runs where a user types it, in the repository root: the
    reinstall is the one ``.ci/run`` already made; the default report lands in the root's
    reports/runs/ (git-ignored) and is checked, then removed."""
    made = sorted(set((ROOT / "reports" / "runs").glob("digits-*")) - work.before)
    assert len(made) == 1, made
    try:
        root_work = Workdir(ROOT, work.env)
        check_suite("digits", 7, ("unlearning",))(root_work, proc)
    finally:
        shutil.rmtree(made[0])


@dataclass(frozen=True)
class Case:
    """How one README command is run here: its tier, the stand-ins it needs (hub id or data path
    -> local path), and what it must produce. ``not_here`` is the reason it cannot run on this
    machine, which the README must give beside the command."""

    check: Callable[[Workdir, subprocess.CompletedProcess], None] | None = None
    #: "fast" (the test suite), "readme" (python -m pytest -m readme; CI) or "budget" (the
    #: leaderboard budget, hours on 2 cores: python -m pytest -m budget; not in CI).
    tier: str = "readme"
    setup: Callable[[Workdir], dict[str, str]] = lambda work: {}
    not_here: str = ""
    #: the README's optional ``[--flag VALUE]`` parts are typed in.
    with_optional: bool = True
    #: run in the repository root (an install command) instead of the user's folder.
    in_repository: bool = False
    #: seconds the command may take before the case fails.
    timeout: float = 1800


def _setup_robustbench(work: Workdir) -> dict[str, str]:
    stand_in_cifar10(work)
    stand_in_robustbench_zoo(work, "Carmon2019Unlabeled")
    return {}


def _setup_timm(work: Workdir) -> dict[str, str]:
    from test_front_door_families import save_timm

    stand_in_imagenet_val(work)
    return {"timm:resnet50.a1_in1k": f"timm:{save_timm(work.path / 'hub' / 'timm-resnet')}"}


def _setup_open_clip(work: Workdir) -> dict[str, str]:
    from test_models_hub import save_tiny_open_clip

    stand_in_cifar10(work)
    folder, _ = save_tiny_open_clip(work.path / "hub" / "open_clip")
    return {"open_clip:ViT-B-32/laion2b_s34b_b79k": f"open_clip:{folder}"}


def _setup_submission(work: Workdir) -> dict[str, str]:
    """X: the README's prompts suite run (AutoAttack on 100 samples, every check passing)."""
    work.ok("python -m robustbench_peft eval --suite prompts")
    (run,) = sorted(work.path.glob("reports/runs/prompts-*"))
    return {"reports/runs/X": str(run.relative_to(work.path)), "card.json": str(_card(work))}


def _card(work: Workdir) -> Path:
    path = work.path / "card.json"
    path.write_text(json.dumps({"name": "digits CNN (reference)", "venue": "robustbench_peft"}))
    return path


def _setup_verify(work: Workdir) -> dict[str, str]:
    shutil.copytree(ROOT / "reports" / "claims", work.path / "reports" / "claims", dirs_exist_ok=True)
    return {"DIR": "verify-out"}


def _setup_leaderboard(work: Workdir) -> dict[str, str]:
    _setup_submission(work)
    submit = next(c for c in CASES if c.startswith("python -m robustbench_peft submit"))
    work.ok(substitute(typed(submit, True), _setup_submission(work)))
    return {}


def check_submission(work: Workdir, proc: subprocess.CompletedProcess) -> None:
    assert list((work.path / "submissions").glob("*.json")), proc.stdout


def check_leaderboard(work: Workdir, proc: subprocess.CompletedProcess) -> None:
    board = (work.path / "site" / "leaderboard.md").read_text()
    assert "digits" in board and (work.path / "site" / "leaderboard.html").exists()


def check_verify(work: Workdir, proc: subprocess.CompletedProcess) -> None:
    junit = (work.path / "junit.xml").read_text()
    assert 'failures="0"' in junit and "digits-cavp" in junit


def check_test_command_is_ci(work: Workdir, proc: subprocess.CompletedProcess | None) -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install -e ".[test]" && python -m pytest\n' in ci


def check_torchrun(work: Workdir, proc: subprocess.CompletedProcess) -> None:
    report = json.loads((work.path / "reports" / "runs" / "full" / "report.json").read_text())
    (run,) = report["runs"]
    assert run["n"] == 540 and report["suite"]["chunk_size"] == 135


CASES: dict[str, Case] = {
    'pip install -e . && python -m robustbench_peft eval': Case(check_install_and_eval, in_repository=True),
    'pip install -e ".[test]" && python -m pytest': Case(not_here="`.ci/run` runs this command exactly as written"),
    "python -m robustbench_peft list": Case(check_list, tier="fast"),
    "python -m robustbench_peft eval": Case(check_suite("digits", 7, ("unlearning",))),
    "python -m robustbench_peft eval --suite quick": Case(check_suite("quick", 1)),
    "python -m robustbench_peft eval --suite quick --attack pgd:norm=L2,steps=50,restarts=5 --eps L2:0.5,1,2 --n 200 --seed 1 --out reports/runs/l2": Case(check_l2),
    "python -m robustbench_peft eval --suite full": Case(check_suite("full", 1), tier="budget"),
    "python -m robustbench_peft eval --suite prompts": Case(check_suite("prompts", 5)),
    "python -m robustbench_peft eval --suite prompts --defense cavp:terms=l1 --defense cavp:terms=l2 --defense cavp:terms=l3": Case(
        check_suite("prompts", 3), tier="budget"),
    "python -m robustbench_peft eval --suite advft": Case(check_suite("advft", 4)),
    "python -m robustbench_peft eval --suite unlearning": Case(check_unlearning(("class", "random"), ("retrain", "ft", "ga", "rl", "l1sparse", "salun"))),
    "python -m robustbench_peft eval --suite unlearning --set unlearning.scenarios=class --set unlearning.methods=retrain+ft+ga+rl+l1sparse+salun+suppress": Case(
        check_unlearning(("class",), ("retrain", "ft", "ga", "rl", "l1sparse", "salun", "suppress"), flagged=("suppress",))),
    "python -m robustbench_peft eval --suite diffusion": Case(check_diffusion("digits-t2i", (
        "no_attack", "unlearndiff", "random_tokens", "concept_inversion:steps=150", "condition_inversion:steps=150", "random_tokens:trials=15"),
        threat_models=("text", "embedding", "condition")),
        timeout=3000),  # cold: trains the model, ESD and SalUn-DM first (about 29 minutes on one core)
    'python -m robustbench_peft eval --suite diffusion --set diffusion.preset=digits-quick --set \'diffusion.unlearners=["salun-dm:alpha=0.001","salun-dm:alpha=0.01","salun-dm:alpha=0.1","salun-dm:alpha=1.0"]\'': Case(
        check_diffusion("digits-t2i", ("no_attack", "unlearndiff:timesteps=8,inner_steps=10", "random_tokens:trials=8"),
                        tuple(f"salun-dm:alpha={a}" for a in ("0.001", "0.01", "0.1", "1.0")),
                        unreliable=("attack_steers_the_original",)), tier="budget"),
    'python -m robustbench_peft eval --suite diffusion --set diffusion.task=sd-object --set \'diffusion.task_options={"model": "CompVis/stable-diffusion-v1-4", "forget": "church"}\' --set \'diffusion.unlearners=["esd"]\' --set \'diffusion.attacks=["unlearndiff"]\'': Case(
        not_here="not run offline: downloads Stable Diffusion v1-4 and the ResNet-50 judge"),
    "python -m robustbench_peft eval --task cifar10 --data-dir ~/data/cifar10 --model robustbench:cifar10/Linf/Carmon2019Unlabeled --attack autoattack:version=standard --n 1000 --batch-size 250": Case(
        check_hub("robustbench:cifar10/Linf/Carmon2019Unlabeled", "autoattack", 1000), setup=_setup_robustbench),
    "python -m robustbench_peft eval --task imagefolder --data-dir ~/data/imagenet-val --model timm:resnet50.a1_in1k --attack pgd:steps=50 --n 500": Case(
        check_hub("timm:", "pgd", 500), setup=_setup_timm),
    "python -m robustbench_peft eval --task cifar10 --data-dir ~/data/cifar10 --model open_clip:ViT-B-32/laion2b_s34b_b79k --attack pgd:steps=20 --n 500": Case(
        check_hub("open_clip:", "pgd", 500), setup=_setup_open_clip),
    "python -m robustbench_peft verify reports/claims/ --junit junit.xml [--out DIR] [--threads 1]": Case(check_verify, setup=_setup_verify),
    "python -m robustbench_peft submit reports/runs/X --out submissions/ [--card card.json] [--min-n 100]": Case(check_submission, setup=_setup_submission),
    "python -m robustbench_peft leaderboard submissions/ reports/runs/ --out site/": Case(check_leaderboard, setup=_setup_leaderboard),
    "torchrun --standalone --nproc_per_node=4 -m robustbench_peft eval --suite full --num-examples 540 --chunk-size 135 --out reports/runs/full": Case(check_torchrun, tier="budget"),
    "torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST0:29500 --rdzv_id=eval-full -m robustbench_peft eval --suite full --device cuda --chunk-size 32 --out /shared/runs/full": Case(
        not_here="not run here: two machines with 8 GPUs each"),
}


def typed(command: str, with_optional: bool) -> str:
    """The command as a user types it: the README's ``[--opt V]`` parts in (or out)."""
    return re.sub(r"\s*\[([^\]]+)\]", (lambda m: " " + m.group(1)) if with_optional else "", command)


def substitute(command: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        command = command.replace(old, new)
    return command


def test_every_readme_command_has_a_case():
    commands = readme_commands(README.read_text())
    assert len(commands) == len(set(commands)), "a README command appears twice"
    assert set(commands) == set(CASES), {"README only": set(commands) - set(CASES), "cases only": set(CASES) - set(commands)}


def test_readme_commands_that_cannot_run_here_say_why_beside_them():
    """Beside: in the command's block, or in the lines just above it."""
    text = README.read_text()
    for command, case in CASES.items():
        if not case.not_here:
            continue
        around = [text[max(0, m.start() - 300) : m.end()] for m in re.finditer(r"```(?:bash|sh)\n(.*?)```", text, re.S)
                  if command in readme_commands(m.group(0))]
        assert around, command
        assert any(case.not_here in re.sub(r"\s+", " ", a) for a in around), f"the README does not say beside {command!r}: {case.not_here}"


def test_the_readme_test_command_is_what_ci_runs(workdir):
    check_test_command_is_ci(workdir, None)


def test_python_in_a_command_is_this_interpreter_with_its_packages(workdir):
    """A command's ``python`` has this environment (a virtualenv's too): its prefix, and torch from the same place;
    in a virtualenv, ``pip`` is the virtualenv's."""
    proc = workdir.ok('python -c "import sys, torch; print(sys.prefix); print(torch.__file__)"')
    assert proc.stdout.splitlines() == [sys.prefix, torch.__file__]
    if sys.prefix != sys.base_prefix:
        assert str(Path(sys.prefix) / "lib") in workdir.ok("pip --version").stdout


def _params(tier: str) -> list:
    return [pytest.param(c, id=re.sub(r"[^\w.:=-]+", "_", c)[:90]) for c, case in CASES.items() if case.check is not None and case.tier == tier]


def _run_case(workdir: Workdir, command: str) -> None:
    case = CASES[command]
    workdir.case_env = {}
    line = substitute(typed(command, case.with_optional), case.setup(workdir))
    if case.in_repository:
        workdir.before = set((ROOT / "reports" / "runs").glob("digits-*"))
        here = Workdir(ROOT, workdir.env)
        case.check(workdir, here.ok(line, case.timeout))
    else:
        case.check(workdir, workdir.ok(line, case.timeout))


@pytest.mark.parametrize("command", _params("fast"))
def test_readme_command(workdir, command):
    _run_case(workdir, command)


@pytest.mark.readme
@pytest.mark.parametrize("command", _params("readme"))
def test_long_readme_command(workdir, command):
    _run_case(workdir, command)


@pytest.mark.budget
@pytest.mark.parametrize("command", _params("budget"))
def test_leaderboard_budget_readme_command(workdir, command):
    _run_case(workdir, command)


@pytest.mark.readme
def test_readme_python_blocks(workdir):
    """The Python API block and the Extending block, executed as written (in a child process);
    then the attack the Extending block registers runs through ``evaluate``: it returns its
    inputs unchanged, so its robust accuracy is the clean accuracy."""
    blocks = readme_python_blocks(README.read_text())
    assert len(blocks) == 2, "a new Python block in the README needs running here"
    api, extending = blocks
    script = workdir.path / "readme_blocks.py"
    script.write_text(api + "\n" + extending + "\n" + textwrap.dedent("""
        import json
        run = evaluate(model="digits:cnn", task="digits", attacks=["my_attack"], eps=[0.1], n=16).runs[0]
        mine = [a for a in run["attacks"] if a["config"]["attack"] == "my_attack"]
        print("MY_ATTACK", json.dumps({"clean": run["clean_accuracy"], "mine": [a["robust_accuracy"] for a in mine]}))
    """))
    proc = workdir.ok(f"python {script.name}")
    assert "digits:cnn" in proc.stdout  # report.summary() of the API block
    result = json.loads(proc.stdout.split("MY_ATTACK", 1)[1])
    assert result["mine"] == [result["clean"]]
