"""One family of user-facing errors: the CLI prints their message as one sentence, never a traceback."""


class EncstealError(Exception):
    """A problem the user can fix; the message says what to do."""


class ConfigError(EncstealError, ValueError):
    """A config that cannot be used; the message names the key and says what to do."""
