"""Errors that reach the user as one line naming the flag or file and what to do (exit code 2)."""


class InputError(Exception):
    """Bad usage or unreadable input. str() is the whole message the user sees."""
