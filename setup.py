"""Only the package layout; everything else is in pyproject.toml.

The ``cli/`` folder at the repository root is installed as ``occfeat.cli`` (there is no top-level
``cli`` package to collide with other installs); every package under ``occfeat/`` is found by itself.
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["occfeat", "occfeat.*"]) + ["occfeat.cli", *(f"occfeat.cli.{p}" for p in find_packages(where="cli"))],
    package_dir={"occfeat.cli": "cli"},
)
