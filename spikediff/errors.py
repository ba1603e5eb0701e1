"""The one exception family that CLIs turn into a clear message and exit code."""


class SpikediffError(Exception):
    """A problem with the user's input or set-up; the message says what to do."""

    exit_code = 2
