"""Where checkpoints and results live: local paths, or object stores (`gs://`, `s3://`, any
fsspec URL such as `memory://`) through fsspec, the layer TensorBoard itself reads such
logdirs through when TensorFlow is absent.

A `RemotePath` has the few `pathlib.Path` methods the logdir writers use, so they serve
both. What holds on an object store: an event file (or a progress file) is written as one
object in one put, so a reader sees all of it or nothing; no rename is used (a rename there
is a copy and a delete). What does not: a directory (the pattern autoencoder) is uploaded
file by file, not replaced atomically. Remote checkpoints are read through a local copy
(a temporary directory, removed once the weights are loaded).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Union

from vit_jax_analytics.errors import CheckpointError

_SCHEME = re.compile(r'^([A-Za-z][A-Za-z0-9+.-]*)://')

# The fsspec package each common scheme needs (for the error that says what to install).
PACKAGES = {'gs': 'gcsfs', 'gcs': 'gcsfs', 's3': 's3fs', 's3a': 's3fs', 'az': 'adlfs',
            'abfs': 'adlfs', 'hf': 'huggingface_hub'}
EXTRAS = {'gcsfs': 'gcs', 's3fs': 's3'}  # pyproject's optional extras


def scheme(path) -> str:
  """'gs' of 'gs://bucket/x'; '' for a local path (and for `file://`)."""
  if isinstance(path, Path):
    return ''
  m = _SCHEME.match(str(path))
  return '' if not m or m.group(1).lower() == 'file' else m.group(1).lower()


def is_url(path) -> bool:
  return bool(scheme(path)) or isinstance(path, RemotePath)


def check_url(url: str) -> None:
  """ValueError (one line) unless fsspec knows the scheme of `url` and its implementation
  imports."""
  s = scheme(url)
  try:
    import fsspec
  except ImportError:
    raise ValueError(f'{url}: object-store paths need fsspec (pip install '
                     f'"vit-jax-analytics[remote]")') from None
  if s not in fsspec.available_protocols():
    raise ValueError(f'{url}: unknown storage scheme {s + "://"!r}; expected a local path or '
                     f'an fsspec URL (gs://, s3://, memory://, ...)')
  try:
    fsspec.get_filesystem_class(s)
  except (ImportError, ValueError, RuntimeError):
    package = PACKAGES.get(s, f'the fsspec implementation of {s}://')
    extra = (f' or "vit-jax-analytics[{EXTRAS[package]}]"' if package in EXTRAS else '')
    raise ValueError(f'{url}: {s}:// needs {package} (pip install {package}{extra})') from None


def cli_location(flag: str):
  """The argparse type of a path flag that may be an object-store URL: a local `Path`, or
  the URL as a string (a Path would fold 'gs://b' into 'gs:/b'); a bad URL is one line
  naming the flag."""
  import argparse

  def parse(text: str):
    if not scheme(text):
      return Path(text[len('file://'):] if text.startswith('file://') else text)
    try:
      check_url(text)
    except ValueError as e:
      raise argparse.ArgumentTypeError(str(e)) from None
    return text
  parse.__name__ = flag.lstrip('-').replace('-', '_')
  return parse


def cli_local_path(flag: str, command: str):
  """The argparse type of a path flag that must be local: a URL is refused in one line
  (rather than folded by Path into a local folder named 'gs:')."""
  import argparse

  def parse(text: str):
    if scheme(text):
      raise argparse.ArgumentTypeError(f'{text}: {command} writes local paths only; the '
                                       f'analysis commands take object-store URLs')
    return Path(text)
  parse.__name__ = flag.lstrip('-').replace('-', '_')
  return parse


def location(path) -> Union[Path, 'RemotePath']:
  """A `Path` for a local path, a `RemotePath` for an object-store URL (checked)."""
  if isinstance(path, RemotePath):
    return path
  if not scheme(path):
    return Path(str(path)[len('file://'):] if str(path).startswith('file://') else path)
  check_url(str(path))
  return RemotePath(str(path))


class RemotePath:
  """An object (or a prefix of objects) in an object store, with the `pathlib.Path` methods
  the writers use. Directories do not exist there: mkdir and rmdir do nothing."""

  def __init__(self, url: str):
    import fsspec
    self.url = url.rstrip('/') if not url.endswith('://') else url
    self.fs, self.path = fsspec.core.url_to_fs(self.url)

  def __truediv__(self, name) -> 'RemotePath':
    return RemotePath(f'{self.url}/{name}')

  def __str__(self):
    return self.url

  def __repr__(self):
    return f'RemotePath({self.url!r})'

  def __eq__(self, other):
    return isinstance(other, RemotePath) and other.url == self.url

  def __lt__(self, other):
    return self.url < other.url

  def __hash__(self):
    return hash(self.url)

  @property
  def name(self) -> str:
    return self.url.rsplit('/', 1)[-1]

  @property
  def suffix(self) -> str:
    return Path(self.name).suffix

  @property
  def parent(self) -> 'RemotePath':
    return RemotePath(self.url.rsplit('/', 1)[0])

  @property
  def parents(self) -> tuple:
    return ()  # no directories to create or clean up

  def with_name(self, name: str) -> 'RemotePath':
    return self.parent / name

  def with_suffix(self, suffix: str) -> 'RemotePath':
    return self.with_name(Path(self.name).with_suffix(suffix).name)

  def _fresh(self):
    self.fs.invalidate_cache()  # listings cached by gcsfs / s3fs would miss new objects

  def exists(self) -> bool:
    self._fresh()
    return self.fs.exists(self.path)

  def is_dir(self) -> bool:
    self._fresh()
    return self.fs.isdir(self.path)

  def is_file(self) -> bool:
    self._fresh()
    return self.fs.isfile(self.path)

  def iterdir(self) -> Iterator['RemotePath']:
    self._fresh()
    for p in sorted(self.fs.ls(self.path, detail=False)):
      yield self / p.rstrip('/').rsplit('/', 1)[-1]

  def glob(self, pattern: str) -> Iterator['RemotePath']:
    self._fresh()
    if not self.fs.isdir(self.path):
      return iter(())
    return iter([self / p.rsplit('/', 1)[-1]
                 for p in sorted(self.fs.glob(f'{self.path}/{pattern}'))])

  def mkdir(self, parents=False, exist_ok=False) -> None:
    pass

  def rmdir(self) -> None:
    pass

  def read_bytes(self) -> bytes:
    return self.fs.cat_file(self.path)

  def write_bytes(self, data) -> None:
    """The whole object in one put: readers see all of it or nothing."""
    self.fs.pipe_file(self.path, bytes(data))
    self._fresh()

  def unlink(self, missing_ok=False) -> None:
    try:
      self.fs.rm_file(self.path)
    except FileNotFoundError:
      if not missing_ok:
        raise
    self._fresh()

  def remove_tree(self) -> None:
    if self.exists():
      self.fs.rm(self.path, recursive=True)
    self._fresh()


def replace(src, dst) -> None:
  """Moves `src` to `dst`: a rename locally, a copy and a delete on an object store (only
  for files no reader relies on: progress set aside)."""
  if isinstance(src, RemotePath):
    src.fs.mv(src.path, dst.path)
    src._fresh()
  else:
    import os
    os.replace(src, dst)


def remove_tree(path) -> None:
  """Removes a directory (local) or every object under a prefix (object store), if there."""
  if isinstance(path, RemotePath) or scheme(path):
    location(path).remove_tree()
  else:
    shutil.rmtree(path, ignore_errors=True)


def upload_directory(local: Path, remote: 'RemotePath') -> None:
  """Replaces the remote directory by the files of `local` (not atomic: see the module)."""
  remote.remove_tree()
  remote.fs.put(str(local), remote.path, recursive=True)
  remote._fresh()


def split_url_subtree(url: str) -> tuple:
  """'gs://b/m.npz:img' -> ('gs://b/m.npz', 'img'); no subtree -> (url, None)."""
  head, sep, tail = url.rpartition(':')
  if sep and tail and '/' not in tail and not head.endswith(':') and '://' in head:
    return head, tail
  return url, None


@contextlib.contextmanager
def local_copy(url: str) -> Iterator[Path]:
  """A local copy of the object or directory at `url` (a file's config.json beside it too,
  for Hugging Face checkpoints), removed afterwards."""
  remote = location(url)
  tmp = Path(tempfile.mkdtemp(prefix='vit-analytics-remote-'))
  try:
    target = tmp / (remote.name or 'checkpoint')
    if remote.is_dir():
      remote.fs.get(remote.path.rstrip('/') + '/', str(target), recursive=True)
    elif remote.is_file():
      remote.fs.get_file(remote.path, str(target))
      beside = remote.parent / 'config.json'
      if remote.suffix == '.safetensors' and beside.is_file():
        beside.fs.get_file(beside.path, str(tmp / 'config.json'))
    else:
      raise CheckpointError(f'{url}: no such checkpoint object or prefix')
    yield target
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
