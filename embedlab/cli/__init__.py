"""The `embedlab` command line: the app and its error handling (app.py), option defaults read from the API
(defaults.py), and one module of commands per stage. Importing this package registers every command, in the
order `--help` lists them (the order of the stages)."""
# isort: skip_file

from embedlab.cli import data, runs, imports, analysis, reports, enhancement, exports, demos  # noqa: F401  (registers the commands)
from embedlab.cli.app import app, main

__all__ = ["app", "main"]
