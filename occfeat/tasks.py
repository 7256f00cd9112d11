"""The BEV segmentation tasks of finetuning (paper §4.1) and the name the report prints for each.

One home for the task list: ground truth (``occfeat.data.gt``), the report and its plots read it here.
"""

TASKS: dict[str, str] = {"vehicle": "Vehicles", "map": "Map"}
"""task name (``occfeat finetune --task``) → column / panel title in the report, in table order."""
