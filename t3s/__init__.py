"""t3s: Training-Trajectory-Aware Token Selection (arXiv 2601.10348).

One module per stage of the data flow:
data -> score -> select -> train -> rrt, with `artifacts` for fingerprints and atomic writes,
`models` for loading and precision, and `tiny` for the built-in test model.
"""

__version__ = "0.2.0"


class T3SError(Exception):
    """A user-facing error: the CLI prints the message and exits non-zero, without a traceback."""


class Interrupted(KeyboardInterrupt):
    """A termination signal (SIGTERM: a scheduler's pre-emption) raised as an exception, so that it unwinds like
    Ctrl-C: temporary directories are removed and the command says what it left."""

    def __init__(self, signal: str):
        super().__init__(signal)
        self.signal = signal
