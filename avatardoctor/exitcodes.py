"""Exit codes every command keeps, so a script or a Slurm prolog can act on them."""

READY = 0  # ready (warnings allowed), or the command did what was asked
NOT_READY = 1  # at least one check failed, or the command could not do its job
USAGE = 2  # bad usage or unreadable input (the message names the flag or file)
INTERRUPTED = 130  # stopped by Ctrl-C (128 + SIGINT, as shells report it)


def for_run(outcome: str) -> int:
    """A run's exit code from its outcome: success, interrupted, or anything else that went wrong."""
    return READY if outcome == "success" else INTERRUPTED if outcome == "interrupted" else NOT_READY
