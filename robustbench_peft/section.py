"""Report sections: parts of a report beyond the classifier runs (unlearning, diffusion, ...).

A section is one class with everything the engine needs from it: a cheap check of
its settings (before any model is attacked), the run that measures it, and how
its data reads back: tables, a plot, extra HTML, the terminal summary, why it
cannot be trusted, and the metrics claims may name. The runner, the pages, the
terminal summary and ``verify`` ask the section; none of them knows its layout.

``report.json`` keeps a section's data (JSON) under its name. Binary outputs a
section makes (images) travel as :attr:`SectionResult.files`, written beside
``report.json`` and embedded in the HTML page when it is rendered.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping

from .registry import Registry

if TYPE_CHECKING:
    from .suite import Suite

#: A titled table: (title, header, rows).
Table = tuple[str, list[str], list[list[Any]]]
#: Reads a claimed number out of a section's data: ``function(section_data, claim) -> float``.
ClaimMetric = Callable[[dict[str, Any], Any], float]


@dataclass
class SectionResult:
    """What a section's run gives: its JSON data and the files (name -> bytes) its data names."""

    data: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)


class Section:
    """One report section. Subclasses set :attr:`name` and implement :meth:`run`; the rest has
    defaults that read the data a section keeps in common (``summary``, ``reliable``)."""

    name: ClassVar[str] = ""

    def check(self, suite: "Suite") -> dict[str, Any]:
        """The section's settings for ``suite``; raises :class:`~.errors.UserError` on bad ones."""
        return {}

    def run(self, suite: "Suite", runner: Any) -> SectionResult:
        """Measure the section (``runner`` gives ``base_target`` and ``log``)."""
        raise NotImplementedError(f"report section {self.name!r} cannot run here")

    def tables(self, data: dict[str, Any]) -> list[Table]:
        return []

    def plot(self, data: dict[str, Any]) -> bytes | None:
        """One PNG shown with the section (written as ``<name>.png``), or None."""
        return None

    def html(self, data: dict[str, Any], files: Mapping[str, bytes]) -> str:
        """Extra HTML after the section's tables and plot, from its data and its files."""
        return ""

    def dataframe_rows(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        """Rows the section adds to :meth:`Report.to_dataframe` (each with a ``section`` column)."""
        return []

    def summary(self, data: dict[str, Any]) -> list[str]:
        """Lines for the terminal summary: those the section kept under ``summary``."""
        return list(data.get("summary") or [])

    def unreliable_reasons(self, data: dict[str, Any]) -> list[str]:
        """Why the section's numbers cannot back a claim; empty when they can."""
        if data.get("reliable") is False:
            return list(data.get("unreliable_reasons") or ["section marked unreliable"])
        return []

    def claim_metrics(self) -> dict[str, ClaimMetric]:
        """Claim metric name -> how to read it from this section's data."""
        return {}


SECTIONS = Registry("report section")


def register_section(cls: type[Section]) -> type[Section]:
    """Class decorator: register a :class:`Section` subclass under its :attr:`~Section.name`."""
    return SECTIONS.register(cls.name)(cls)


def get_section(name: str) -> Section:
    """The registered section ``name`` (UserError naming the known ones otherwise)."""
    return SECTIONS.get(name).factory()


def section_of(name: str) -> Section:
    """The registered section ``name``; a plain :class:`Section` for data no registered section
    wrote (an older report, another installation), which still reads its summary and reliability."""
    return get_section(name) if name in SECTIONS else Section()


def claim_metrics() -> dict[str, tuple[str, ClaimMetric]]:
    """Every claim metric the registered sections provide: name -> (section, extractor)."""
    return {metric: (entry.name, fn) for entry in SECTIONS for metric, fn in entry.factory().claim_metrics().items()}
