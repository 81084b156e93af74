"""``fieldstudio app``: the Gradio studio. One module per tab (``tab_*.py``), each calling the same
library functions as the CLI, and `jobs` for the background work; gradio is imported only when
the app is built, so the rest of fieldstudio works without the ``app`` extra."""
