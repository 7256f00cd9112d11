"""The ``occfeat`` command line (import name ``occfeat.cli``): thin Typer commands over the library.

The folder sits at the repository root as ``cli/``; setuptools installs it as ``occfeat/cli`` (see
``setup.py``), and in a source checkout ``occfeat/__init__.py`` binds ``occfeat.cli`` to this folder.
There is no top-level ``cli`` package.
"""
