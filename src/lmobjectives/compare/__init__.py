"""``lmobj compare``: several objectives trained at an equal budget on the same data, evaluated on held-out text,
side by side in a report (``report.md``, a self-contained ``report.html`` with plots, ``results.json``).

>>> from lmobjectives.compare import CompareConfig
>>> config = CompareConfig.from_preset("demo", scale=0.1)
>>> config.objectives, config.steps, config.seeds
(('clm', 'mlm'), 40, 2)

``compare(config)`` runs it (:mod:`.runner`); :data:`PRESETS` lists the named comparisons and
:func:`parse_objective` reads an objective spec such as ``mlm:unit=word,probability=0.4`` (:mod:`.specs`).
"""

from .report import format_table
from .runner import CompareConfig, CompareResult, compare
from .specs import PRESETS, Preset, RunSpec, parse_objective

__all__ = [
    "PRESETS",
    "CompareConfig",
    "CompareResult",
    "Preset",
    "RunSpec",
    "compare",
    "format_table",
    "parse_objective",
]
