"""Progress bars with counts and rate on stderr (tqdm: terminals, notebooks and logs)."""

import sys


def progress_bar(total: int, desc: str, unit: str = 'it', disable: bool = False):
  from tqdm.auto import tqdm

  return tqdm(total=total, desc=desc, unit=unit, disable=disable, file=sys.stderr,
              dynamic_ncols=True, smoothing=0.1, mininterval=0.5)
