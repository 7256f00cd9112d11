"""The finetuning tasks the report knows, with the column titles of the paper's Table 1. Shared by
:mod:`occfeat.report` and :mod:`occfeat.plots` (which must not import each other)."""

TASKS: dict[str, str] = {"vehicle": "Vehicles", "map": "Map"}
"""Task name (``occfeat finetune --task``) → its title in tables and plots, in the paper's column order."""
