"""One exception hierarchy: every error lmstack raises on bad input says what went wrong and what to do."""


class LMStackError(Exception):
    """Base class of all lmstack errors."""


class ConfigError(LMStackError, ValueError):
    """A config or recipe is malformed: unknown key, wrong type, or a value outside the allowed set."""


class CheckpointError(LMStackError):
    """A checkpoint is missing, partial or corrupt."""


class WeightsError(LMStackError):
    """Pretrained weights cannot be found or do not fit the model."""


class DataError(LMStackError):
    """Input data is missing or malformed."""
