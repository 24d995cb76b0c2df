"""Exit codes every command keeps, so a script or a Slurm prolog can act on them: the one table is
docs/exit-codes.md. No command picks a number anywhere else."""

READY = 0  # ready (warnings allowed), or the command did what was asked
NOT_READY = 1  # at least one check failed, or the command could not do its job
USAGE = 2  # bad usage, or input that is missing or unreadable (the message names the flag or file)
CRASHED = 3  # avatardoctor itself crashed (a bug), a crashed check included: not a verdict on the machine
INTERRUPTED = 130  # stopped by Ctrl-C (128 + SIGINT, as shells report it)


def for_checks(ready: bool, crashed: bool) -> int:
    """A checking command's exit code: a crashed check says nothing about the machine, so it outranks the verdict."""
    return CRASHED if crashed else READY if ready else NOT_READY


def for_run(outcome: str) -> int:
    """A run's exit code from its outcome: success, interrupted, or anything else that went wrong."""
    return READY if outcome == "success" else INTERRUPTED if outcome == "interrupted" else NOT_READY
