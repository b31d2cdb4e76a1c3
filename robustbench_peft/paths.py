"""Expand command-line paths into the JSON files a command reads."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

from .errors import UserError


def json_files(paths: Iterable[str | Path], wanted: Callable[[Path], bool], what: str, missing: str) -> list[Path]:
    """Files named directly, plus every ``*.json`` under a named directory that ``wanted`` accepts
    (sorted); a directory with none, or a path that does not exist, is a :class:`UserError`."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*.json") if f.is_file() and wanted(f))
            if not found:
                raise UserError(f"no {what} under {p}")
            files += found
        elif p.exists():
            files.append(p)
        else:
            raise UserError(f"no {missing} at {p}")
    return files
