"""Exception types shared by the engines, the CLI and the widgets.

The CLI turns :class:`DuetError` into exit code 2 with a one-line reason and
the widgets into a napari notification, so messages must be short, single
line and say what to change.
"""


class DuetError(Exception):
    """Base class for errors the user can act on."""


class DuetInputError(DuetError, ValueError):
    """Bad input: wrong shape, dtype, parameter value or region."""


class ModelFileError(DuetError):
    """A model file is missing, corrupted, foreign or of another kind."""
