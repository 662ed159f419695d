"""User-facing errors: one clear line that says what is wrong and what to do."""


class RoutescopeError(Exception):
    """An error the user caused and can fix; the CLI prints its message as one line, no traceback."""


class UnsupportedModelError(RoutescopeError):
    """The model's architecture family has no adapter."""


class PromptFileError(RoutescopeError):
    """A prompt set file is missing, malformed or empty."""


class StoreError(RoutescopeError):
    """The routing store cannot be opened or does not hold what was asked for."""


class InvalidParameterError(RoutescopeError):
    """An analysis or steering parameter is out of range."""
