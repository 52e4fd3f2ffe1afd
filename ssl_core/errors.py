"""Errors the engine raises. A PermanentError fails a job once; the worker never retries it."""


class SSLCoreError(Exception):
    """Base class of pretextlab engine errors."""


class PermanentError(SSLCoreError):
    """Retrying cannot help (bad data, a diverged run): the job fails with this message."""


class DatasetError(PermanentError):
    """Missing or unreadable data, or a path outside the allowed data roots."""


class NonFiniteLossError(PermanentError):
    """The loss became NaN or infinite; the message names the step."""


class SpecError(PermanentError):
    """The spec asks for something this data, backbone or method cannot do; the message starts with the field."""
