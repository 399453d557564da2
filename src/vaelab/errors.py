"""User-facing errors: the CLI prints these as one line and exits 2."""


class VaelabError(Exception):
    """A mistake the user can fix (bad option, missing or broken file)."""


class ConfigError(VaelabError):
    """An invalid option value or configuration file."""


class DataError(VaelabError):
    """Data that cannot be found or that is malformed."""


class TrainingDiverged(VaelabError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""
