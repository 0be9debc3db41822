"""The `mailkeep` command line: one module per command noun, dispatched by `main.py`."""
