"""Tell a local path from a hub id in a model name, the same way for every family.

A name that exists on disk is local; a name written like a path (``/x``,
``./x``, ``../x``, ``~/x``) must exist, so a typo in a path is reported as a
missing folder rather than sent to a hub as a repository id.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError

PATH_PREFIXES = ("/", "./", "../", "~", ".\\", "..\\")


def looks_like_path(name: str) -> bool:
    return name.startswith(PATH_PREFIXES) or name in (".", "..")


def local_path(name: str, spec: str) -> Path | None:
    """The local file or folder ``name`` refers to, or None for a hub name."""
    path = Path(name).expanduser()
    if path.exists():
        return path.resolve()
    if looks_like_path(name):
        raise UserError(f"{spec}: no such file or folder {name!r}; check the path (relative paths start from {Path.cwd()})")
    return None


def local_dir(name: str, spec: str, expected: str) -> Path | None:
    """Like :func:`local_path` but the path must be a folder holding ``expected``."""
    path = local_path(name, spec)
    if path is not None and not path.is_dir():
        raise UserError(f"{spec}: {path} is a file; pass the folder that holds {expected}")
    return path
