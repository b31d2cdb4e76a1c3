"""Loading and validating report documents against the versioned JSON Schema."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import UserError


@lru_cache(maxsize=1)
def report_schema() -> dict[str, Any]:
    from .report import SCHEMA_PATH

    return json.loads(SCHEMA_PATH.read_text())


def schema_errors(doc: Any) -> list[str]:
    """Every way ``doc`` breaks the report schema (empty when valid)."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(report_schema())
    return [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in validator.iter_errors(doc)]


def load_report_json(path: str | Path) -> dict[str, Any]:
    """Read a report.json (or a directory holding one); a clear error if malformed."""
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"no report at {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is not a readable JSON report: {exc}") from None
    errors = schema_errors(doc)
    if errors:
        raise UserError(f"{path} does not match the report schema: {errors[0]}" + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""))
    return doc
