"""fieldstudio: neural fields on any machine.

The library lives in sub-packages: `fieldstudio.encoders` (coordinates -> features),
`fieldstudio.fields` (encoder + network -> named channels), `fieldstudio.renderers`,
`fieldstudio.datasets`, and `fieldstudio.apps` (the CLI and run folders, built on the rest).
"""

__version__ = "0.1.0"

from .errors import ConfigError, FieldStudioError, InputError, TrainingError  # noqa: E402


def load_run(path, device=None):
    """Open a run folder written by any fieldstudio command; see `fieldstudio.runs.load_run`."""
    from fieldstudio.runs import load_run as _load_run

    return _load_run(path, device=device)


__all__ = ["__version__", "load_run", "FieldStudioError", "ConfigError", "InputError", "TrainingError"]
