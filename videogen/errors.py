"""The one error type of the videogen package (one line, exit code 2 in the CLI)."""

from auteur.errors import AuteurError


class VideogenError(AuteurError):
    """A problem a user can fix: a plan without keyframes, a bad frame count, a missing checkpoint."""
