"""Only the package layout; everything else is in pyproject.toml.

The ``cli/`` folder at the repository root is installed as ``occfeat.cli`` (there is no top-level
``cli`` package to collide with other installs), and ``recipes/`` as ``occfeat/recipes``, its YAML files
as package data (``--recipe NAME`` finds them from a wheel: ``occfeat.config.recipes_root``); every
package under ``occfeat/`` is found by itself.
"""

from setuptools import find_namespace_packages, find_packages, setup

RECIPES = ["occfeat.recipes", *(f"occfeat.recipes.{p}" for p in find_namespace_packages(where="recipes"))]

setup(
    packages=find_packages(include=["occfeat", "occfeat.*"]) + ["occfeat.cli", *(f"occfeat.cli.{p}" for p in find_packages(where="cli"))] + RECIPES,
    package_dir={"occfeat.cli": "cli", "occfeat.recipes": "recipes"},
    package_data={"occfeat": ["py.typed"], **{name: ["*.yaml"] for name in RECIPES}},
)
