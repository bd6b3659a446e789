"""The exceptions users see as a message, not a traceback."""


class AnimalclsError(Exception):
    """A problem the user can fix; its text says how. The CLI prints it and exits non-zero."""


class Interrupted(Exception):
    """A stop was requested (Ctrl-C, SIGTERM): raised where the work can stop cleanly."""


class Pruned(Exception):
    """A hyper-parameter search stopped this run after an epoch (its row says `pruned`)."""


class DiskFull(AnimalclsError, OSError):
    """A write ran out of space (ENOSPC) or quota (EDQUOT). Also an OSError with that errno, so
    code that already handles a failed write (a warning, a TableError) keeps handling it."""

    def __init__(self, code: int, message: str, path: str) -> None:
        OSError.__init__(self, code, message, path)

    def __str__(self) -> str:  # the message alone: the CLI prints it as one line
        return str(self.strerror)


class RunBusy(AnimalclsError):
    """Another process holds this run id's lock (it is training the same configuration now)."""
