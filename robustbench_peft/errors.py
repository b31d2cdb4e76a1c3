"""Errors that reach the user as one clear line and exit code 2."""


class UserError(Exception):
    """Bad input from the user: an unknown name, an invalid option, unreadable data.

    The CLI prints ``error: <message>`` on stderr and exits with code 2, without a
    traceback. The message says what was wrong and what to do.
    """


class OfflineModelError(UserError):
    """Weights that would need a download while no network (or HF_HUB_OFFLINE) is set."""


class UnreliableModelError(UserError):
    """A user model that breaks the contract of a target (probabilities, NaN, wrong shape)."""
