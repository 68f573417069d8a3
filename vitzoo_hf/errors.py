"""The one exception type a CLI user sees as a one-line message instead of a traceback."""


class ZooError(Exception):
    """A problem the user can fix: the message names what is wrong and how to fix it."""
