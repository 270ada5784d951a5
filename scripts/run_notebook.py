"""Executes a notebook top to bottom (nbclient, the kernel of this Python) and fails on the
first cell that raises, so that examples/ cannot rot; CI runs it (`make notebook`). The
TensorBoard that the notebook's `%tensorboard` cell starts is stopped afterwards.

  python scripts/run_notebook.py examples/quickstart.ipynb [--output executed.ipynb]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path


def started_tensorboards() -> set:
  from tensorboard import manager
  return {info.pid for info in manager.get_all()}


def run(path: Path, output=None, timeout: int = 900) -> float:
  """Runs the notebook in its own folder; returns the seconds it took."""
  import nbclient
  import nbformat

  notebook = nbformat.read(path, as_version=4)
  before = started_tensorboards()
  start = time.perf_counter()
  try:
    nbclient.NotebookClient(notebook, timeout=timeout, kernel_name='python3',
                            resources={'metadata': {'path': str(path.parent)}}).execute()
  finally:
    for pid in started_tensorboards() - before:
      try:
        os.kill(pid, signal.SIGTERM)
      except ProcessLookupError:
        pass
  if output is not None:
    nbformat.write(notebook, output)
  return time.perf_counter() - start


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('notebook', type=Path)
  parser.add_argument('--output', type=Path, default=None,
                      help='also write the executed notebook (with its outputs) here')
  parser.add_argument('--timeout', type=int, default=900, help='seconds per cell')
  args = parser.parse_args(argv)
  if not args.notebook.is_file():
    print(f'error: {args.notebook}: no such notebook', file=sys.stderr)
    return 2
  import nbclient.exceptions
  try:
    seconds = run(args.notebook, args.output, args.timeout)
  except nbclient.exceptions.CellExecutionError as e:
    print(f'error: {args.notebook}: a cell failed:\n{e}', file=sys.stderr)
    return 1
  print(f'{args.notebook}: every cell ran ({seconds:.0f} s)')
  return 0


if __name__ == '__main__':
  sys.exit(main())
