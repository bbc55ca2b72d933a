"""The command line, ``python -m studio COMMAND``: one parser (:mod:`studio.cli.main`), one module per command."""
