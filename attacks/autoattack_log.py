"""Reading AutoAttack's progress messages: points perturbed and time per component, warnings.

Both packages print, per batch and component, how many points it perturbed
(exact counts), and after each component the robust accuracy with the total time.
The counts give the accuracy after each component; the attack cross-checks them
against the predictions on the returned inputs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

_PERTURBED = re.compile(r"^\s*(?P<component>[a-z-]+) - \d+/\d+ - (?:tensor\()?(?P<fooled>\d+)\)? out of (?P<total>\d+) successfully perturbed")
_AFTER = re.compile(r"robust accuracy after (?P<component>[A-Za-z-]+): .*\(total time (?P<seconds>[\d.]+) s\)")
_WARNING = re.compile(r"^\s*warning:?\s*", re.IGNORECASE)
#: Library warnings that are false alarms for some component lists: message fragment -> "is a false alarm".
#: (The library's class-count check warns about the targeted DLR loss whenever APGD-DLR runs on 3 classes.)
FALSE_ALARMS: dict[str, Callable[[Sequence[str]], bool]] = {
    "targeted DLR loss": lambda components: "apgd-t" not in components,
}


@dataclass
class ComponentLog:
    """Points perturbed by each component and its cumulative time, from the library's messages."""

    fooled: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def real_warnings(self, components: Sequence[str]) -> list[str]:
        """The warnings that are not false alarms for ``components``."""
        return [w for w in self.warnings if not any(fragment in w and test(components) for fragment, test in FALSE_ALARMS.items())]


def parse_messages(lines: Sequence[str]) -> ComponentLog:
    parsed = ComponentLog()
    for line in lines:
        if m := _PERTURBED.match(line):
            parsed.fooled[m["component"]] = parsed.fooled.get(m["component"], 0) + int(m["fooled"])
        elif m := _AFTER.search(line):
            parsed.seconds[m["component"].lower()] = float(m["seconds"])
        elif _WARNING.match(line):
            parsed.warnings.append(_WARNING.sub("", line, count=1).strip())
    return parsed


def component_rows(components: list[str], attacked: int, log: ComponentLog) -> list[dict[str, Any]]:
    """Robust counts after each component (components never reached keep the last count)."""
    rows, robust, previous = [], attacked, 0.0
    for name in components:
        robust -= log.fooled.get(name, 0)
        total = log.seconds.get(name, previous)
        rows.append({"component": name, "robust": robust, "seconds": round(max(0.0, total - previous), 3)})
        previous = total
    return rows
