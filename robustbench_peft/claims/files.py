"""Claim files: the claim schema, reading and validating one file, collecting a tree of them."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

from ..errors import UserError
from ..json_input import read_json
from ..paths import json_files
from .claim import Claim
from .metrics import known_metrics

CLAIM_SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schema" / "claim.schema.json"


@lru_cache(maxsize=1)
def claim_schema() -> dict[str, Any]:
    return json.loads(CLAIM_SCHEMA_PATH.read_text())


def _schema_errors(doc: Any, definition: str) -> list[str]:
    import jsonschema

    schema = {**claim_schema(), "$ref": f"#/$defs/{definition}"}
    schema.pop("oneOf", None)
    validator = jsonschema.Draft202012Validator(schema)
    return [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in validator.iter_errors(doc)]


def load_claim_file(path: str | Path) -> list[Claim]:
    """Claims of one file (one claim, or ``{"claims": [...]}``); a clear error if malformed."""
    path = Path(path)
    doc, _ = read_json(path, "JSON claim file")
    definition = "collection" if isinstance(doc, dict) and "claims" in doc else "claim"
    errors = _schema_errors(doc, definition)
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise UserError(f"{path} does not match the claim schema: {errors[0]}{more}")
    items = doc["claims"] if definition == "collection" else [doc]
    claims = [Claim.from_json(item, str(path)) for item in items]
    metrics = known_metrics()
    for claim in claims:
        unknown = claim.metric["name"]
        if unknown not in metrics:
            raise UserError(f"{path}: claim {claim.id} uses unknown metric {unknown!r}; known: {', '.join(sorted(metrics))}")
        try:
            claim.suite()
        except UserError as exc:
            raise UserError(f"{path}: {exc}") from None
    return claims


def claim_files(paths: Iterable[str | Path]) -> list[Path]:
    """Files named directly, plus every ``*.json`` under a named directory (sorted)."""
    return json_files(paths, lambda f: True, "claim files (*.json)", "claim file or directory")


def collect_claims(paths: Iterable[str | Path]) -> list[Claim]:
    """Every claim under ``paths``; ids must be unique."""
    claims: list[Claim] = []
    seen: dict[str, str] = {}
    for path in claim_files(paths):
        for claim in load_claim_file(path):
            if claim.id in seen:
                raise UserError(f"claim id {claim.id!r} appears twice: {seen[claim.id]} and {claim.source}")
            seen[claim.id] = claim.source
            claims.append(claim)
    if not claims:
        raise UserError("no claims to verify")
    return claims
