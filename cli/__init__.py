"""The ``occfeat`` command line: thin Typer commands over the library."""
