"""The error type of the text front-end."""


class TextError(ValueError):
    """A row's text cannot be synthesised (empty, nothing left after normalising, too long...).

    The message names the problem; the workflow adds the row id.
    """
