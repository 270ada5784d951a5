"""Errors a user can act on: each message is one line naming the file or field at fault."""


class VitAnalyticsError(Exception):
  """Base class; the CLI prints these as `error: <message>` without a traceback."""


class CheckpointError(VitAnalyticsError, ValueError):
  """A checkpoint file is missing, not a checkpoint, or does not fit the model."""


class DataError(VitAnalyticsError, ValueError):
  """An image folder, image or labels file cannot be used."""


class OptionError(VitAnalyticsError, ValueError):
  """An option is out of range. `field` names it, so the CLI can name the flag instead."""

  def __init__(self, field: str, message: str, owner: type = None):
    super().__init__(f'{field}: {message}')
    self.field, self.message, self.owner = field, message, owner


class ReadError(VitAnalyticsError, ValueError):
  """A run directory holds no results of the analysis asked for, or they cannot be read."""


class OutputError(VitAnalyticsError, OSError):
  """The logdir or run directory cannot be written."""


class NonFiniteError(VitAnalyticsError, ArithmeticError):
  """The model produced NaN or Inf for some images. `indices` are their positions in the
  batch source, so the caller can name the files."""

  def __init__(self, what: str, indices):
    self.what, self.indices = what, [int(i) for i in indices]
    super().__init__(f'{what} is not finite for {len(self.indices)} image(s) (source '
                     f'indices {self.indices[:5]})')
