"""Options as typed frozen dataclasses, each default and range written once.

A field made with `option(...)` carries its help text (and optionally a flag name and a
parser); the CLI generates its flags from these fields, so a default exists only here.
`check(...)` validates a value with a one-line error naming the field.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional

from vit_jax_analytics.errors import OptionError


MAX_SEED = 2 ** 32 - 1  # numpy's and JAX's seeds are non-negative; this many is plenty


def option(default=None, help: str = '', *, flag: Optional[str] = None,
           parse: Optional[Callable] = None, factory: Optional[Callable] = None,
           cli: bool = True):
  """A dataclass field with CLI metadata. flag: default `--field-name`; parse: argparse
  `type` (default from the default's type); cli=False keeps it out of the CLI."""
  metadata = {'help': help, 'flag': flag, 'parse': parse, 'cli': cli}
  if factory is not None:
    return dataclasses.field(default_factory=factory, metadata=metadata)
  return dataclasses.field(default=default, metadata=metadata)


def flag_of(field: dataclasses.Field) -> str:
  return field.metadata.get('flag') or '--' + field.name.replace('_', '-')


def check(owner, name: str, value, *, low=None, high=None, optional: bool = False,
          what: str = 'an integer') -> None:
  """Raises OptionError (naming field `name` of the dataclass `owner`) unless
  low <= value <= high (None bounds are open)."""
  if value is None and optional:
    return
  ok = isinstance(value, (int, float)) and not isinstance(value, bool)
  ok = ok and math.isfinite(value)  # inf passes any lower bound; NaN fails them silently
  ok = ok and (low is None or value >= low) and (high is None or value <= high)
  if not ok:
    bounds = (f'>= {low}' if high is None else f'in [{low}, {high}]') if low is not None else ''
    raise OptionError(name, f'expected {what} {bounds}'.rstrip() + f', got {value!r}',
                      owner=type(owner))


def parse_ints(count: Optional[int] = None) -> Callable:
  """A parser of comma-separated integers (exactly `count` of them when given)."""
  import argparse

  def parse(text: str) -> tuple:
    try:
      values = tuple(int(v) for v in text.split(','))
    except ValueError:
      values = ()
    if not values or (count is not None and len(values) != count):
      raise argparse.ArgumentTypeError(
          f'expected {count or "some"} comma-separated integers, got {text!r}')
    return values
  return parse


def parse_floats(count: int) -> Callable:
  """A parser of exactly `count` comma-separated finite numbers."""
  import argparse
  import math

  def parse(text: str) -> tuple:
    try:
      values = tuple(float(v) for v in text.split(','))
    except ValueError:
      values = ()
    if len(values) != count or not all(math.isfinite(v) for v in values):
      raise argparse.ArgumentTypeError(
          f'expected {count} comma-separated finite numbers, got {text!r}')
    return values
  return parse
