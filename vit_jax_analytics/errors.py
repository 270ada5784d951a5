"""Errors a user can act on: each message is one line naming the file or field at fault."""


class VitAnalyticsError(Exception):
  """Base class; the CLI prints these as `error: <message>` without a traceback."""


class CheckpointError(VitAnalyticsError, ValueError):
  """A checkpoint file is missing, not a checkpoint, or does not fit the model."""


class DataError(VitAnalyticsError, ValueError):
  """An image folder, image or labels file cannot be used."""
