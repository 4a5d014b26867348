"""The renderer's user-error type (one line, exit code 2 in the CLI)."""

from auteur.errors import AuteurError


class RendererError(AuteurError):
    """A problem with the renderer's input: plan, bank, checkpoint, size, context length."""
