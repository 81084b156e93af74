"""User-facing errors.

Every problem a user can fix (a missing file, a bad config, NaN in training) raises a
`FieldStudioError` whose message names the problem *and* the fix. The CLI prints it on one
line and exits non-zero without a traceback; anything else is a bug and keeps its traceback.
"""


class FieldStudioError(Exception):
    """A problem with the user's input or environment, with a hint on how to fix it."""

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(problem if not fix else f"{problem} -> {fix}")


class ConfigError(FieldStudioError):
    """A component config (encoder, network, run) that cannot be built as written."""


class InputError(FieldStudioError):
    """A data file that is missing, unreadable or inconsistent."""


class TrainingError(FieldStudioError):
    """Training cannot go on (NaN loss, diverged); the last good checkpoint is kept."""
