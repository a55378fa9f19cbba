"""Exception types. Each subclasses EmbedlabError and the closest builtin, so generic handlers keep working."""


class EmbedlabError(Exception):
    """Base class: the CLI turns these into a one-line message and exit code 1."""


class ConfigError(EmbedlabError, ValueError):
    """An option or combination of options is invalid."""


class ManifestError(EmbedlabError, ValueError):
    """A data manifest is malformed or names files that are not there."""


class ModelLoadError(EmbedlabError, RuntimeError):
    """A model or its weights could not be created or fetched."""


class DeviceError(EmbedlabError, RuntimeError):
    """The requested device is not available."""


class IncompatibleRunError(EmbedlabError, ValueError):
    """Two artifacts (runs, residuals, checkpoints) were made with different models or preprocessing."""


class MissingDependencyError(EmbedlabError, ImportError):
    """An optional package is not installed."""


class InputFileError(EmbedlabError, ValueError):
    """An input file cannot be used: it holds pickled objects (refused for safety), is damaged, or is another kind."""
