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
      'vit_jax_analytics.pipeline', 'vit_jax_analytics.cli', 'vit_jax_analytics.demo',
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


def test_analyses_import_no_io_module():
  graph = imports()
  for analysis in ANALYSES:
    bad = sorted(m for m in graph[analysis] if m.startswith(IO))
    assert not bad, f'{analysis} imports {bad}'


def test_logdir_and_plugin_depend_only_downstream():
  graph = imports()
  for name, deps in graph.items():
    if name.startswith('vit_jax_analytics.logdir'):
      assert not {d for d in deps if d.startswith(ANALYSES + ('vit_jax_analytics.pipeline',
                                                              'vit_jax_analytics.cli'))}, name
    if name.startswith('tb_plugin'):
      assert deps <= {'vit_jax_analytics.logdir', 'vit_jax_analytics.logdir.metadata'}, (
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
