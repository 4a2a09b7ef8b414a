"""The errors digitlab raises for bad input. The CLI prints their message without a traceback."""


class DigitlabError(Exception):
    """Base class: something the user gave us is wrong; the message says what and where."""


class DataError(DigitlabError):
    """A dataset file is missing, corrupt, or not what was expected."""


class ModelFileError(DigitlabError):
    """A model file is missing, truncated, corrupt, foreign or too new."""


class ImageError(DigitlabError, ValueError):
    """An image could not be read or is not acceptable.

    kind: "not_image" (no decoder recognises it), "corrupt" (a decoder rejected it) or "too_large"."""

    def __init__(self, message: str, kind: str = "corrupt"):
        super().__init__(message)
        self.kind = kind
