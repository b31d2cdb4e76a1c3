"""Read a JSON file a user named (report, submission, claim, card): a missing or broken file is a UserError."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import UserError


def read_json(path: Path, what: str, missing: str | None = None) -> tuple[Any, bytes]:
    """The parsed document and its bytes. ``what`` names the file in errors ("JSON claim file" ->
    "... is not a readable JSON claim file"); ``missing`` names it when absent (default: ``what``
    without "JSON")."""
    try:
        raw = path.read_bytes()
        return json.loads(raw), raw
    except FileNotFoundError:
        raise UserError(f"no {missing or what.replace('JSON ', '')} at {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is not a readable {what}: {exc}") from None
