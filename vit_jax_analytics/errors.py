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


class OutputError(VitAnalyticsError, OSError):
  """The logdir or run directory cannot be written."""
