"""occfeat: self-supervised OccFeat pretraining of camera-only BEV segmentation networks.

Pipeline (one subpackage per stage): ``data`` (index, synth, voxelize, teacher targets) →
``models`` (encoders, lifting, decoders, heads, networks) → ``losses`` → ``train`` → ``report``;
the command line is ``occfeat.cli``.
"""

__version__ = "0.1.0"


def _bind_checkout_cli() -> None:
    """In a source checkout the command line lives in ``<repo>/cli``, not in ``occfeat/cli`` (where a
    wheel puts it). Bind ``occfeat.cli`` to this checkout's folder, so that running from the repository
    root (or an editable install) always gets the CLI of the same tree as this package, never another
    install's — and a clone works without installing."""
    import importlib.util
    import sys
    from pathlib import Path

    here = Path(__file__).resolve().parent
    folder = here.parent / "cli"
    if (here / "cli").is_dir() or not (folder / "main.py").is_file() or not (here.parent / "pyproject.toml").is_file():
        return  # installed from a wheel (occfeat/cli exists), or not our checkout
    spec = importlib.util.spec_from_file_location(f"{__name__}.cli", folder / "__init__.py", submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    setattr(sys.modules[__name__], "cli", module)  # `import occfeat.cli.main` then `occfeat.cli.main.app`


_bind_checkout_cli()
