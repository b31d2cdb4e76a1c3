"""Write a report's output set (report.json, report.md, report.html, PNG plots, the sections' files) into a folder.

The set is all or nothing (:func:`robustbench_peft.atomic.write_set_atomic`):
everything is rendered in memory, written into a hidden staging folder inside
the output folder, then moved into place with ``report.json`` last. A write
error (no space, no permission, read-only file system) leaves no new file, keeps
a report set already there as it was, and never touches the run's checkpoint
(``OUT/.checkpoint/``), so ``eval --resume --out OUT`` finishes the job once the
cause is fixed. Files get ``0o666`` less the user's umask.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import TYPE_CHECKING

from .atomic import write_set_atomic
from .errors import UserError

if TYPE_CHECKING:
    from .report import Report

REPORT_FILES = ("report.md", "report.html", "report.json")


def render_outputs(report: "Report") -> dict[str, bytes]:
    """Every file of the output set, name -> bytes: the plots, then report.md, report.html, report.json."""
    from . import render  # here, not at the top: render re-exports write_outputs from this module

    plots = [("Robust accuracy vs eps", render.PLOT_NAME, render.accuracy_plot(report))]
    efficiency = render.efficiency_plot(report)
    if efficiency is not None:
        plots.append(("Robust accuracy vs trainable parameters", render.EFFICIENCY_PLOT_NAME, efficiency))
    plots += [(name, f"{name}.png", png) for name, png in render.section_plots(report)]
    files = {filename: png for _, filename, png in plots}
    files.update(report.files)  # the sections' own files (e.g. image grids)
    files["report.md"] = render.markdown(report).encode("utf-8")
    files["report.html"] = render.html_page(report, [(t, p) for t, _, p in plots]).encode("utf-8")
    files["report.json"] = (report.dumps() + "\n").encode("utf-8")
    return files


def output_names() -> list[str]:
    """Every file name an output set can have: what a new set replaces (a stale plot of an older set too)."""
    from . import render
    from .section import SECTIONS

    return [render.PLOT_NAME, render.EFFICIENCY_PLOT_NAME, *(f"{entry.name}.png" for entry in SECTIONS), *REPORT_FILES]


def write_outputs(report: "Report", out_dir: str | Path) -> dict[str, Path]:
    """Write report.json, report.md, report.html and the plot(s) into ``out_dir``, all or nothing.

    Returns file name -> path. A write error is a :class:`UserError` naming the
    folder and the cause; nothing new is left in ``out_dir`` then."""
    from .checkpoint import CHECKPOINT_DIR, SUITE_FILE

    out = Path(out_dir)
    files = render_outputs(report)
    try:
        return write_set_atomic(out, files, replaces=output_names())
    except OSError as exc:
        cause = getattr(exc, "strerror", None) or str(exc)
        code = errno.errorcode.get(exc.errno or 0)
        message = f"cannot write the report into {out}: {cause}{f' [{code}]' if code else ''}; nothing new was left there (a report already there is unchanged)"
        if (out / CHECKPOINT_DIR / SUITE_FILE).is_file():
            message += f"; the run's checkpoint is kept: fix the cause, then run `python -m robustbench_peft eval --resume --out {out}`"
        raise UserError(message) from None
