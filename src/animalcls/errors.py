"""The one exception type users see as a message, not a traceback."""


class AnimalclsError(Exception):
    """A problem the user can fix; its text says how. The CLI prints it and exits non-zero."""
