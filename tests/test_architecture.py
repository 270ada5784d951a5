"""The structure holds: data flows one way, analyses do no I/O, the import graph is acyclic.
Read from the source (ast), so a new back-edge fails here, not in review."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ('vit_jax_analytics', 'tb_plugin')
ANALYSES = ('vit_jax_analytics.importance', 'vit_jax_analytics.strength',
            'vit_jax_analytics.patterns')
IO = ('vit_jax_analytics.data', 'vit_jax_analytics.checkpoints', 'vit_jax_analytics.logdir',
      'vit_jax_analytics.pipeline', 'vit_jax_analytics.inputs', 'vit_jax_analytics.naflex',
      'vit_jax_analytics.cli', 'vit_jax_analytics.demo',
      'tb_plugin')


def module_name(path: Path) -> str:
  parts = path.relative_to(ROOT).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def imports() -> dict:
  """{module: set of project modules it imports} (function-level imports included)."""
  graph = {}
  for package in PACKAGES:
    for path in (ROOT / package).rglob('*.py'):
      name = module_name(path)
      found = set()
      for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
          found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
          found.add(node.module)
          found.update(f'{node.module}.{a.name}' for a in node.names)
      graph[name] = {m for m in found if m.split('.')[0] in PACKAGES}
  known = set(graph)
  return {k: {m for m in v if m in known and m != k} for k, v in graph.items()}


def is_analysis(name: str) -> bool:
  """An analysis module: importance (the package and its modules), strength, patterns."""
  return any(name == a or name.startswith(a + '.') for a in ANALYSES)


def test_analyses_import_no_io_module():
  graph = imports()
  analyses = [m for m in graph if is_analysis(m)]
  assert len(analyses) > len(ANALYSES)  # importance's own modules are checked too
  for analysis in analyses:
    bad = sorted(m for m in graph[analysis] if m.startswith(IO))
    assert not bad, f'{analysis} imports {bad}'


def source_files():
  for package in PACKAGES:
    for path in sorted((ROOT / package).rglob('*.py')):
      yield module_name(path), path


def calls(path: Path, name: str) -> list:
  """Line numbers where `path` calls a function or method named `name`."""
  return [node.lineno for node in ast.walk(ast.parse(path.read_text()))
          if isinstance(node, ast.Call) and name in (getattr(node.func, 'attr', None),
                                                     getattr(node.func, 'id', None))]


def test_only_streaming_builds_meshes_for_analyses():
  """The analyses get their mesh, shard, batch size and cast params from streaming.py (and
  in-training analysis its probe placement); nobody else constructs a Mesh."""
  allowed = {'vit_jax_analytics.streaming', 'vit_jax_analytics.parallel'}
  for name, path in source_files():
    if name not in allowed:
      for call in ('batch_mesh', 'process_shard', 'local_batch_size', 'Mesh', 'make_mesh'):
        assert not calls(path, call), f'{name} calls {call} (lines {calls(path, call)})'


def test_one_attention_implementation():
  """Attention weights are computed in model.dot_product_attention alone (the model,
  intercepted foreign models and importance's one-head recomputation call it)."""
  for name, path in source_files():
    text = path.read_text()
    tree = ast.parse(text)
    softmaxes = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Call)
                 and getattr(n.func, 'attr', None) == 'softmax']
    if name == 'vit_jax_analytics.model':
      assert len(softmaxes) == 1, softmaxes
    else:
      assert not softmaxes, f'{name} computes a softmax (lines {softmaxes})'


def test_importance_is_a_package_of_small_modules():
  modules = sorted((ROOT / 'vit_jax_analytics' / 'importance').glob('*.py'))
  assert len(modules) >= 8
  for path in modules + [ROOT / 'vit_jax_analytics' / m for m in ('streaming.py',
                                                                   'prefix_reuse.py')]:
    lines = len(path.read_text().splitlines())
    assert lines <= 500, f'{path.name}: {lines} lines'


def test_patterns_is_a_package_of_small_modules():
  """Sampling, the autoencoder and the summary each in a module of its own; the package's
  public names still reachable as `patterns.<name>`."""
  import vit_jax_analytics.patterns as patterns
  modules = {p.stem: p for p in (ROOT / 'vit_jax_analytics' / 'patterns').glob('*.py')}
  assert {'sample', 'autoencoder', 'summary'} <= set(modules)
  for path in modules.values():
    lines = len(path.read_text().splitlines())
    assert lines <= 500, f'{path.name}: {lines} lines'
  assert not (ROOT / 'vit_jax_analytics' / 'patterns.py').exists()
  for name in ('compute_patterns', 'extract_samples', 'summarise', 'train_autoencoder',
               'PatternOptions', 'AEOptions', 'describe_pattern'):
    assert name in patterns.__all__ and callable(getattr(patterns, name)), name


def test_test_only_kernels_live_under_tests():
  """The plain (no-reuse) reference kernels are not part of the package."""
  for name, path in source_files():
    text = path.read_text()
    for kernel in ('ablation_batch_no_reuse', 'partial_batch_plain'):
      assert f'def {kernel}' not in text, f'{name} defines {kernel}'


def test_training_uses_importance_through_its_public_api():
  """training.py reaches importance only through names its __init__ exports."""
  import vit_jax_analytics.importance as importance
  tree = ast.parse((ROOT / 'vit_jax_analytics' / 'training.py').read_text())
  used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
          and getattr(n.value, 'id', None) == 'importance'}
  assert used and used <= set(importance.__all__), sorted(used - set(importance.__all__))


def test_logdir_and_plugin_depend_only_downstream():
  graph = imports()
  for name, deps in graph.items():
    if name.startswith('vit_jax_analytics.logdir'):
      assert not {d for d in deps if d.startswith(ANALYSES + ('vit_jax_analytics.pipeline',
                                                              'vit_jax_analytics.cli'))}, name
    if name.startswith('tb_plugin'):
      outside = {d for d in deps if not d.startswith('tb_plugin')}
      assert outside <= {'vit_jax_analytics.logdir', 'vit_jax_analytics.logdir.metadata'}, (
          name, deps)


def test_import_graph_is_acyclic():
  graph = imports()
  state = {}

  def visit(node, path):
    if state.get(node) == 'done':
      return
    if state.get(node) == 'open':
      pytest.fail('import cycle: ' + ' -> '.join(path + [node]))
    state[node] = 'open'
    for dep in sorted(graph[node]):
      # A package's __init__ importing nothing is normal; module -> its package is not a cycle.
      if not node.startswith(dep + '.'):
        visit(dep, path + [node])
    state[node] = 'done'

  for node in sorted(graph):
    visit(node, [])


def test_loaders_import_no_analysis():
  """checkpoints/ and families/ (weight mappers, foreign-model interception) load and wrap
  models; they run no analysis: pipeline.analyse_module runs a foreign model's."""
  graph = imports()
  loaders = [m for m in graph if m.startswith(('vit_jax_analytics.checkpoints',
                                               'vit_jax_analytics.families'))]
  assert {'vit_jax_analytics.checkpoints.posemb',
          'vit_jax_analytics.families.intercept'} <= set(loaders)
  for name in loaders:
    bad = sorted(d for d in graph[name] if is_analysis(d))
    assert not bad, f'{name} imports {bad}'


COMPUTES = ('compute_importance', 'compute_strength', 'compute_patterns')


def test_one_orchestrator_runs_the_analyses():
  """Only pipeline.analyse calls the analyses' entry points: the CLI, the photo demo,
  in-training analysis and foreign models all go through it."""
  for name, path in source_files():
    if name == 'vit_jax_analytics.pipeline' or is_analysis(name):
      continue
    for entry in COMPUTES:
      assert not calls(path, entry), f'{name} calls {entry} (lines {calls(path, entry)})'
  pipeline = ROOT / 'vit_jax_analytics' / 'pipeline.py'
  tree = ast.parse(pipeline.read_text())
  callers = {f.name for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)
             for n in ast.walk(f) if isinstance(n, ast.Call)
             and getattr(n.func, 'attr', None) in COMPUTES}
  assert callers == {'analyse'}, callers


def test_no_module_over_500_lines():
  """One job a module: none of the package's modules (or the plugin's) grows past 500."""
  for name, path in source_files():
    lines = len(path.read_text().splitlines())
    assert lines <= 500, f'{name}: {lines} lines'


def test_benchmarks_import_no_test_module():
  """Benchmarks share the tests' helper modules (tests/tiny.py, tests/reference/, ...), never
  a test module: a test's fixtures are not an API."""
  for path in sorted((ROOT / 'benchmarks').glob('*.py')):
    for node in ast.walk(ast.parse(path.read_text())):
      names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
               [f'{node.module}.{a.name}' for a in node.names]
               if isinstance(node, ast.ImportFrom) and node.module else [])
      bad = [n for n in names if any(part.startswith('test_') for part in n.split('.'))]
      assert not bad, f'{path.name} imports {bad}'


def test_checkpoints_is_a_package_of_small_modules():
  modules = sorted((ROOT / 'vit_jax_analytics' / 'checkpoints').glob('*.py'))
  assert len(modules) >= 6
  for path in modules:
    lines = len(path.read_text().splitlines())
    assert lines <= 500, f'{path.name}: {lines} lines'
  # One bilinear resampler: the position embedding's, used by every loader.
  for name, path in source_files():
    if name != 'vit_jax_analytics.checkpoints.posemb':
      assert 'def _linear_weights' not in path.read_text(), name
