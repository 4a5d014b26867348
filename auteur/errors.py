"""The one exception type a user can cause.

Every package raises a subclass of :class:`AuteurError` for problems a user can fix (a bad path, a bad
config key, a corrupt file); the CLIs turn it into a one-line message and exit code 2, never a traceback.
"""


class AuteurError(Exception):
    """A problem with the user's input: reported as one line, exit code 2."""


class ConfigError(AuteurError):
    """A bad config: unknown key, wrong type, unknown preset."""


class PlanError(AuteurError):
    """A plan folder that does not follow the Plan schema."""


class VisionError(AuteurError):
    """A visual-encoder problem: missing checkpoint, mixed embedding spaces."""


class VideoError(AuteurError):
    """A missing, unreadable or corrupt video, or a time range outside it."""
