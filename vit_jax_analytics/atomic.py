"""Putting a finished directory in place of another, so that a reader sees the old one or
the new one, never half of either."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def replace_directory(staged: Path, path: Path) -> None:
  """Moves the complete directory `staged` to `path` (on the same filesystem), replacing
  what is there: the old one is renamed aside first and removed only after the new one is
  in place (a directory cannot be renamed over a non-empty one)."""
  old = None
  if path.exists():
    old = path.with_name(f'.{path.name}.old')
    shutil.rmtree(old, ignore_errors=True)
    os.replace(path, old)
  os.replace(staged, path)
  if old is not None:
    shutil.rmtree(old, ignore_errors=True)
