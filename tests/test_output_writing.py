"""Writing the output set: a full / read-only disk is one ``error:`` line (exit 2), the set is
all or nothing, a previous set survives, the checkpoint survives and ``--resume`` finishes,
and files get the user's umask."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from robustbench_peft import atomic
from robustbench_peft.checkpoint import CHECKPOINT_DIR
from robustbench_peft.cli import main
from robustbench_peft.errors import UserError
from robustbench_peft.outputs import write_outputs
from robustbench_peft.render import EFFICIENCY_PLOT_NAME, PLOT_NAME
from robustbench_peft.report import Report
from robustbench_peft.runner import Runner
from robustbench_peft.validation import load_report_json

#: The cheapest eval that writes a full set: 32 digits, 2-step PGD, no sanity checks.
ARGS = ["--suite", "quick", "--n", "32", "--attack", "pgd:steps=2", "--no-checks", "--quiet"]
REPORT_SET = {"report.json", "report.md", "report.html", PLOT_NAME}


@pytest.fixture(autouse=True)
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, one_thread):
    """One uninterrupted eval (under umask 022): its folder and report document."""
    out = tmp_path_factory.mktemp("reference") / "out"
    old = os.umask(0o022)
    try:
        assert main(["eval", *ARGS, "--out", str(out)]) == 0
    finally:
        os.umask(old)
    return out, load_report_json(out)


def numbers(doc: dict) -> list:
    return [(r["clean_correct"], [(a["name"], a["eps"], a["correct"]) for a in r["attacks"]]) for r in doc["runs"]]


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` by relative path (hidden ones too)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def chunk_files(out: Path) -> dict[str, tuple[int, bytes]]:
    """The checkpoint's finished chunks (not suite.json, which every run rewrites): mtime and bytes."""
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted((out / CHECKPOINT_DIR).glob("m*.json"))}


def full_disk_after(k: int, real=atomic._write_all, spare_checkpoint: bool = True):
    """A replacement for atomic._write_all: ENOSPC after ``k`` whole files, the failing one half written.

    With ``spare_checkpoint`` the run's checkpoint writes go through (the disk fills at the end)."""
    count = [0]

    def write(fh, data: bytes) -> None:
        if spare_checkpoint and CHECKPOINT_DIR in Path(fh.name).parts:
            return real(fh, data)
        if count[0] >= k:
            real(fh, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        count[0] += 1
        return real(fh, data)

    return write


def one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    return errors[0]


def assert_resume_finishes(out: Path, reference_doc: dict) -> None:
    """``eval --resume`` writes the full set from the checkpoint alone (no chunk recomputed)."""
    chunks = chunk_files(out)
    assert chunks, "the checkpoint should hold finished chunks"
    assert main(["eval", "--resume", "--out", str(out), "--quiet"]) == 0
    assert set(os.listdir(out)) == REPORT_SET | {CHECKPOINT_DIR}  # no staging leftovers either
    assert chunk_files(out) == chunks  # re-rendered from the checkpoint, not re-attacked
    assert numbers(load_report_json(out)) == numbers(reference_doc)


@pytest.mark.parametrize("k", [0, 3], ids=["first-plot-fails", "report.json-fails"])
def test_full_disk_is_one_error_line_no_partial_set_and_resume_finishes(tmp_path, capsys, monkeypatch, reference, k):
    out = tmp_path / "out"
    real = atomic._write_all
    monkeypatch.setattr(atomic, "_write_all", full_disk_after(k))
    assert main(["eval", *ARGS, "--out", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(out) in line and "No space left on device" in line and "--resume" in line
    assert os.listdir(out) == [CHECKPOINT_DIR]  # no report file, no staging folder
    assert (out / CHECKPOINT_DIR / "suite.json").is_file()
    monkeypatch.setattr(atomic, "_write_all", real)  # space again
    assert_resume_finishes(out, reference[1])


def test_full_disk_during_the_run_is_one_error_line(tmp_path, capsys, monkeypatch):
    """Checkpoint writes fail too (the disk is full from the start): still no traceback."""
    out = tmp_path / "out"
    monkeypatch.setattr(atomic, "_write_all", full_disk_after(0, spare_checkpoint=False))
    assert main(["eval", *ARGS, "--out", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(out / CHECKPOINT_DIR) in line and "No space left on device" in line
    assert not (set(os.listdir(out)) & REPORT_SET)


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1 MiB tmpfs (root and a permitted mount only)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; the monkeypatched full-disk tests cover the same paths")
    if shutil.which("mount") is None or shutil.which("umount") is None:
        pytest.skip("no mount/umount command on this machine")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "none", str(mnt)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"mount -t tmpfs is not permitted here: {done.stderr.strip() or done.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(mnt: Path, leave: int) -> Path:
    """Fill the file system at ``mnt`` with one file, then free about ``leave`` bytes again."""
    filler = mnt / "filler"
    with open(filler, "wb", buffering=0) as fh:
        for size in (1 << 16, 1 << 12, 1):
            try:
                while True:
                    fh.write(b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


@pytest.mark.parametrize("cause", ["full", "read-only"])
def test_real_tmpfs_filled_during_eval(small_tmpfs, capsys, monkeypatch, reference, cause):
    """The kernel's own ENOSPC / EROFS, hit after the attacks ran and the checkpoint is on disk."""
    out = small_tmpfs / "out"
    real_run = Runner.run
    filler: list[Path] = []

    def run_then_break_disk(self):
        report = real_run(self)
        if cause == "full":
            filler.append(fill(small_tmpfs, leave=40_000))  # the plot (~30 kB) fits, the rest does not
        else:
            subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
        return report

    monkeypatch.setattr(Runner, "run", run_then_break_disk)
    assert main(["eval", *ARGS, "--out", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(out) in line
    assert ("No space left on device" if cause == "full" else "Read-only file system") in line
    assert os.listdir(out) == [CHECKPOINT_DIR]
    monkeypatch.setattr(Runner, "run", real_run)
    if cause == "full":
        filler[0].unlink()
    else:
        subprocess.run(["mount", "-o", "remount,rw", str(small_tmpfs)], check=True)
    assert_resume_finishes(out, reference[1])


def test_failed_force_rewrite_keeps_the_previous_set(tmp_path, capsys, monkeypatch, reference):
    out = tmp_path / "out"
    shutil.copytree(reference[0], out)
    (out / "notes.txt").write_text("mine\n")  # not part of a report set: never touched
    before = {k: v for k, v in snapshot(out).items() if not k.startswith(CHECKPOINT_DIR)}
    monkeypatch.setattr(atomic, "_write_all", full_disk_after(2))
    assert main(["eval", *ARGS, "--out", str(out), "--force"]) == 2
    one_error_line(capsys.readouterr().err)
    after = {k: v for k, v in snapshot(out).items() if not k.startswith(CHECKPOINT_DIR)}
    assert after == before
    assert set(os.listdir(out)) == REPORT_SET | {CHECKPOINT_DIR, "notes.txt"}


def test_failure_while_moving_into_place_puts_the_previous_set_back(tmp_path, monkeypatch, reference):
    """The commit renames fail halfway (after the old set went aside and some new files moved in)."""
    out = tmp_path / "out"
    out.mkdir()
    for name in REPORT_SET:
        shutil.copy(reference[0] / name, out / name)
    (out / EFFICIENCY_PLOT_NAME).write_bytes(b"stale plot of the old set")
    before = snapshot(out)
    doc = dict(reference[1], created="2000-01-01T00:00:00+00:00")
    real_replace, calls = atomic._replace, []

    def replace(src, dst):
        if Path(src).parent.name.startswith(".staging-") and Path(dst).parent == out:  # staged file -> its place
            calls.append(dst)
            if len(calls) == 3:
                raise OSError(errno.EIO, "Input/output error")
        return real_replace(src, dst)

    monkeypatch.setattr(atomic, "_replace", replace)
    with pytest.raises(UserError, match="Input/output error"):
        write_outputs(Report.from_json(doc), out)
    assert len(calls) == 3 and snapshot(out) == before
    monkeypatch.setattr(atomic, "_replace", real_replace)
    paths = write_outputs(Report.from_json(doc), out)
    assert set(paths) == REPORT_SET and list(paths)[-1] == "report.json"
    assert set(os.listdir(out)) == REPORT_SET  # the stale plot of the old set went with it
    assert json.loads((out / "report.json").read_text())["created"].startswith("2000")


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)], ids=["022", "027", "077"])
def test_files_get_the_users_umask(tmp_path, reference, umask, mode):
    os.umask(umask)
    paths = write_outputs(Report.from_json(reference[1]), tmp_path / "out")
    assert {name: oct(p.stat().st_mode & 0o777) for name, p in paths.items()} == {name: oct(mode) for name in REPORT_SET}


def test_eval_under_umask_022_writes_0644(reference):
    out = reference[0]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= REPORT_SET | {"suite.json"}
    assert {str(p.relative_to(out)): oct(p.stat().st_mode & 0o777) for p in files} == {str(p.relative_to(out)): "0o644" for p in files}


def test_umask_is_read_without_proc_and_left_unchanged(monkeypatch, tmp_path):
    os.umask(0o027)
    assert atomic.current_umask() == 0o027
    monkeypatch.setattr(atomic, "_PROC_STATUS", str(tmp_path / "no-such-file"))
    assert atomic.current_umask() == 0o027
    assert os.umask(0o022) == 0o027  # still what it was


def test_write_error_is_an_oserror_and_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "_write_all", full_disk_after(0, spare_checkpoint=False))
    with pytest.raises(atomic.WriteError) as info:
        atomic.write_text_atomic(tmp_path / "a.txt", "x")
    exc = info.value
    assert isinstance(exc, OSError) and isinstance(exc, UserError) and exc.errno == errno.ENOSPC
    assert str(exc) == f"cannot write {tmp_path / 'a.txt'}: No space left on device [ENOSPC]"
    assert os.listdir(tmp_path) == []
