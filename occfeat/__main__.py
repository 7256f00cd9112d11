"""``python -m occfeat`` / ``torchrun --nproc_per_node N -m occfeat pretrain ...``: the ``occfeat``
command without the console script (which may be a shell shim, e.g. under pyenv)."""

from occfeat.cli.main import app

app(prog_name="occfeat")
