"""Exception types. Each subclasses EmbedlabError and the closest builtin, so generic handlers keep working."""


class EmbedlabError(Exception):
    """Base class: the CLI turns these into a one-line message and exit code 1.

    Messages name Python parameters, quoted ('device'); `naming(...)` lists them so that the CLI shows each as the
    flag that sets it ('--device')."""

    also: tuple = ()

    def naming(self, *params: str) -> "EmbedlabError":
        self.also = (*self.also, *params)
        return self


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


class DiskFullError(EmbedlabError, OSError):
    """The disk (or quota) that holds an output is full: the message names the folder, what was being written and
    how much it needed when known (`embedlab._io.disk_full_error`)."""

    def __init__(self, message: str, path: str | None = None):
        import errno

        super().__init__(errno.ENOSPC, message)
        self.path = path

    def __str__(self) -> str:
        return self.strerror

    def __reduce__(self):  # pickled as (message, path): Ray sends it from an actor to the driver
        return (type(self), (self.strerror, self.path))


class InvalidParameterError(ConfigError, TypeError):
    """A function parameter has a value outside its constraint (`embedlab._validate.check_param`).

    `param` is the Python parameter name and `owner` the function; the CLI rewrites both into the flag and the
    command it shows (one rule, `embedlab.cli.flag_for`), and every parameter the message quotes ('name': `param`
    and those in `also`) into its flag. `owner` may be empty where a helper cannot know which function called it."""

    def __init__(self, message: str, param: str, owner: str = "", also: tuple = ()):
        super().__init__(message)
        self.param = param
        self.owner = owner
        self.also = tuple(also)
