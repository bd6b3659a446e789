"""The exceptions users see as a message, not a traceback."""


class AnimalclsError(Exception):
    """A problem the user can fix; its text says how. The CLI prints it and exits non-zero."""


class Interrupted(Exception):
    """A stop was requested (Ctrl-C, SIGTERM): raised where the work can stop cleanly."""


class Pruned(Exception):
    """A hyper-parameter search stopped this run after an epoch (its row says `pruned`)."""
