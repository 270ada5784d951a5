"""The pipeline end to end: resume only what is the same computation, fail before work
when results cannot be written, and leave nothing half-written."""

import errno
import shutil

import numpy as np
import pytest

from tests import numerics
from tests.tiny import TINY, tiny_params, write_images
from vit_jax_analytics import checkpoints, cli, importance, pipeline
from vit_jax_analytics.errors import OutputError
from vit_jax_analytics.logdir import progress_store, reader, writer


def options(**kw):
  return importance.ImportanceOptions(**{'progress': False, 'curve_points': 3,
                                         'random_orders': 1, 'batch_size': 4,
                                         'save_every_seconds': 0., **kw})


@pytest.fixture
def inputs(tmp_path):
  write_images(tmp_path / 'images', n=12)
  ckpt = checkpoints.save_checkpoint(tmp_path / 'ckpt', tiny_params(), TINY)
  return pipeline.Inputs(checkpoint=ckpt, images=tmp_path / 'images')


def interrupt_after(monkeypatch, batches):
  """Makes the next importance run stop (KeyboardInterrupt) after `batches` batches."""
  real, calls = importance.taylor_ablation_batch, []

  def ablation(*a, **k):
    calls.append(1)
    if len(calls) > batches:
      raise KeyboardInterrupt
    return real(*a, **k)
  monkeypatch.setattr(importance.driver, 'taylor_ablation_batch', ablation)
  return lambda: monkeypatch.setattr(importance.driver, 'taylor_ablation_batch', real)


def test_resume_after_the_image_set_changed_starts_over(inputs, tmp_path, monkeypatch):
  restore = interrupt_after(monkeypatch, 2)
  with pytest.raises(KeyboardInterrupt):
    pipeline.run_importance(inputs, tmp_path / 'logs', 'r', options())
  restore()
  assert list(progress_store.state_directory(tmp_path / 'logs', 'r').glob('*.npz'))
  for p in sorted((tmp_path / 'images').rglob('*.png'))[:5]:  # the user deletes images
    p.unlink()
  pipeline.run_importance(inputs, tmp_path / 'logs', 'r', options())
  resumed = reader.read_importance(tmp_path / 'logs' / 'r')
  pipeline.run_importance(inputs, tmp_path / 'fresh', 'r', options())
  fresh = reader.read_importance(tmp_path / 'fresh' / 'r')
  assert resumed.images == fresh.images == 7
  for name in ('taylor', 'ablation_loss', 'curve_top1', 'partial_kl'):
    np.testing.assert_array_equal(numerics.importance_array(resumed, name),
                                  numerics.importance_array(fresh, name), err_msg=name)


@pytest.mark.parametrize('change', ['checkpoint_contents', 'labels', 'option'])
def test_resume_key_covers_what_changes_results(inputs, tmp_path, change):
  loaded = inputs.load()
  key = pipeline.computation_key(inputs, loaded, options())
  if change == 'checkpoint_contents':  # same path, other weights
    params = tiny_params(seed=5)
    checkpoints.save_checkpoint(inputs.checkpoint, params, TINY)
    other = pipeline.computation_key(inputs, inputs.load(), options())
  elif change == 'labels':
    relabelled = loaded._replace(image_set=loaded.image_set.__class__(
        loaded.image_set.root, loaded.image_set.paths, loaded.image_set.labels[::-1].copy(),
        loaded.image_set.class_names))
    other = pipeline.computation_key(inputs, relabelled, options())
  else:
    other = pipeline.computation_key(inputs, loaded, options(random_orders=2))
  assert other != key
  # Progress bars and save frequency do not change results: same key.
  assert pipeline.computation_key(inputs, loaded, options(progress=True,
                                                          save_every_seconds=5.)) == key


def test_logdir_that_is_a_file_fails_before_computing(inputs, tmp_path, capsys, monkeypatch):
  (tmp_path / 'logs').write_text('not a folder')
  monkeypatch.setattr(importance.driver, 'taylor_ablation_batch', lambda *a: pytest.fail('computed first'))
  code = cli.main(['importance', '--checkpoint', str(inputs.checkpoint), '--images',
                   str(inputs.images), '--logdir', str(tmp_path / 'logs'), '--no-progress'])
  err = capsys.readouterr().err
  assert code == 2 and err.startswith('error: ') and err.count('\n') == 1
  assert 'cannot write' in err and str(tmp_path / 'logs') in err


def test_full_disk_is_one_line_error_and_leaves_no_temp_files(inputs, tmp_path, monkeypatch,
                                                              capsys):
  def full(path, *a):
    path.write_bytes(b'partial')
    raise OSError(errno.ENOSPC, 'No space left on device')
  monkeypatch.setattr(writer, '_write_events', full)
  code = cli.main(['importance', '--checkpoint', str(inputs.checkpoint), '--images',
                   str(inputs.images), '--logdir', str(tmp_path / 'logs'), '--no-progress',
                   '--curve-points', '3', '--random-orders', '1'])
  err = capsys.readouterr().err
  last = err.strip().splitlines()[-1]
  assert code == 2 and last.startswith('error: ') and 'No space left on device' in last
  assert 'Traceback' not in err
  run = tmp_path / 'logs' / 'ckpt'
  assert not list(run.glob('.*partial')) and not list(run.rglob('*.tmp.npz'))
  assert not list(run.glob('events.out.tfevents*'))
  # The computed progress is kept, so that a rerun after freeing space does not redo it.
  assert list(progress_store.state_directory(tmp_path / 'logs', 'ckpt').glob('*.npz'))


def test_rerun_keeps_previous_results_until_new_ones_are_complete(inputs, tmp_path, monkeypatch):
  pipeline.run_importance(inputs, tmp_path / 'logs', 'r', options())
  first = reader.read_run(tmp_path / 'logs' / 'r')
  restore = interrupt_after(monkeypatch, 1)
  with pytest.raises(KeyboardInterrupt):
    pipeline.run_importance(inputs, tmp_path / 'logs', 'r', options(random_orders=2))
  restore()
  again = reader.read_run(tmp_path / 'logs' / 'r')
  np.testing.assert_array_equal(again['importance/taylor'], first['importance/taylor'])


def overflowing_checkpoint(tmp_path):
  """Finite weights whose logits overflow to Inf (so the loss is NaN) for every image."""
  params = tiny_params()
  params['head']['kernel'] = np.full_like(params['head']['kernel'], 3e38)
  return checkpoints.save_checkpoint(tmp_path / 'overflow', params, TINY)


@pytest.mark.parametrize('command', ['evaluate', 'importance'])
def test_non_finite_outputs_are_one_line_errors_naming_an_image(inputs, tmp_path, capsys,
                                                                command):
  argv = [command, '--checkpoint', str(overflowing_checkpoint(tmp_path)), '--images',
          str(inputs.images), '--no-progress']
  if command == 'importance':
    argv += ['--logdir', str(tmp_path / 'logs')]
  code = cli.main(argv)
  err = capsys.readouterr().err
  last = err.strip().splitlines()[-1]
  assert code == 2 and last.startswith('error: ') and 'not finite' in last
  assert str(inputs.images) in last and '.png' in last and 'Traceback' not in err
  assert not list((tmp_path / 'logs').rglob('events.out.tfevents*'))


def test_label_outside_the_model_classes_is_an_error(inputs, tmp_path, capsys):
  flat = tmp_path / 'flat'
  flat.mkdir()
  for p in sorted(inputs.images.rglob('*.png'))[:4]:
    shutil.copy(p, flat / p.name)
  names = sorted(p.name for p in flat.iterdir())
  (tmp_path / 'labels.csv').write_text(''.join(f'{n},{i}\n' for i, n in enumerate(names[:3]))
                                       + f'{names[3]},42\n')
  code = cli.main(['evaluate', '--checkpoint', str(inputs.checkpoint), '--images', str(flat),
                   '--labels', str(tmp_path / 'labels.csv'), '--no-progress'])
  err = capsys.readouterr().err
  assert code == 2 and 'label 42' in err and names[3] in err and err.count('\n') == 1
