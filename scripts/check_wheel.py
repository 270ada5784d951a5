"""The package as users install it: builds a wheel from this tree, checks its metadata and
files, installs it with its dependencies into a fresh venv, then runs plain `tensorboard`
from that venv (no test code, outside the tree) and checks that it lists the plugin, serves
the plugin's frontend module from the installed files, and answers the plugin's routes on a
logdir. CI runs it (`.ci/run`); `make wheel-check` too.

  python3 scripts/check_wheel.py --logdir logdir      # a logdir with at least one analysed run
"""

from __future__ import annotations

import argparse
import email
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = 'vit_analytics'
EXTRAS = ('safetensors', 'onnx', 'demo', 'notebook', 'test')
PYTHONS = ('3.11', '3.12', '3.13')


class CheckFailed(Exception):
  pass


START = time.perf_counter()


def check(condition: bool, what: str) -> None:
  if not condition:
    raise CheckFailed(what)
  print(f'  ok: {what}')


def stage(what: str) -> None:
  print(f'[{time.perf_counter() - START:6.1f} s] {what}', flush=True)


def build_wheel(out: Path) -> Path:
  subprocess.run([sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps', '-w', str(out),
                  str(ROOT)], check=True)
  wheels = list(out.glob('vit_jax_analytics-*.whl'))
  if len(wheels) != 1:
    raise CheckFailed(f'expected one wheel in {out}, found {wheels}')
  return wheels[0]


def check_contents(wheel: Path) -> None:
  """Metadata complete; the frontend's static files are package data; no tests shipped."""
  with zipfile.ZipFile(wheel) as z:
    names = z.namelist()
    meta_name = next(n for n in names if n.endswith('.dist-info/METADATA'))
    meta = email.message_from_bytes(z.read(meta_name))
  print(f'{wheel.name}: {len(names)} files')
  check(bool(meta['Summary']), 'Summary (one-line description)')
  check(meta.get_content_type() == 'text/markdown' or
        meta['Description-Content-Type'] == 'text/markdown', 'long description is Markdown')
  check(len(meta.get_payload() or '') > 1000, 'long description (the README) included')
  check(meta['License-Expression'] == 'Apache-2.0', 'License-Expression: Apache-2.0')
  check(any(n.endswith('/licenses/LICENSE') for n in names), 'LICENSE file in the wheel')
  check(meta['Requires-Python'] == '>=3.11', 'Requires-Python >=3.11')
  classifiers = meta.get_all('Classifier') or []
  for version in PYTHONS:
    check(f'Programming Language :: Python :: {version}' in classifiers,
          f'classifier for Python {version}')
  check(any(c.startswith('Intended Audience') for c in classifiers), 'audience classifier')
  check(len(meta.get_all('Project-URL') or []) >= 1, 'project URLs')
  check(set(EXTRAS) <= set(meta.get_all('Provides-Extra') or []),
        f'extras {", ".join(EXTRAS)}')
  static = sorted(p.name for p in (ROOT / 'tb_plugin' / 'static').iterdir() if p.is_file())
  shipped = sorted(n.rsplit('/', 1)[1] for n in names if n.startswith('tb_plugin/static/'))
  check(shipped == static, f'all {len(static)} frontend files are package data')
  check(not any(n.startswith(('tests/', 'benchmarks/')) for n in names),
        'no tests or benchmarks in the wheel')


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def get(url: str, timeout: float = 10.0) -> bytes:
  with urllib.request.urlopen(url, timeout=timeout) as r:
    return r.read()


def serve_and_check(venv: Path, logdir: Path, workdir: Path) -> None:
  """Plain `tensorboard` of the venv, started outside the tree (nothing of it importable)."""
  site = subprocess.run([venv / 'bin' / 'python', '-c',
                         'import tb_plugin, vit_jax_analytics; print(tb_plugin.__file__); '
                         'print(vit_jax_analytics.__file__)'],
                        cwd=workdir, capture_output=True, text=True, check=True).stdout.split()
  check(all(str(venv) in path for path in site), 'the plugin imports from the installed files')
  help_text = subprocess.run([venv / 'bin' / 'vit-analytics', '--help'], cwd=workdir,
                             capture_output=True, text=True, check=True).stdout
  check('analyze' in help_text, 'the installed `vit-analytics --help` lists its commands')
  port = free_port()
  env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'VIRTUAL_ENV')}
  server = subprocess.Popen([venv / 'bin' / 'tensorboard', '--logdir', str(logdir.resolve()),
                             '--port', str(port), '--host', '127.0.0.1'], cwd=workdir, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  base = f'http://127.0.0.1:{port}'
  try:
    listing = None
    for _ in range(240):
      if server.poll() is not None:
        raise CheckFailed(f'tensorboard exited: {server.stderr.read()[-2000:]}')
      try:
        listing = json.loads(get(f'{base}/data/plugins_listing'))
        if listing.get(PLUGIN, {}).get('enabled'):
          break
      except OSError:
        pass
      time.sleep(0.5)
    stage('tensorboard answers')
    check(listing is not None and PLUGIN in listing, f'plain tensorboard lists {PLUGIN}')
    check(listing[PLUGIN].get('enabled') is True, f'{PLUGIN} is active on {logdir}')
    mechanism = listing[PLUGIN].get('loading_mechanism', {})
    check(mechanism.get('type') == 'IFRAME' and 'module_path' in mechanism,
          f'its frontend is an ES module: {mechanism}')
    module = mechanism['module_path']
    served = get(base + (module if module.startswith('/') else f'/data/plugin/{PLUGIN}/{module}'))
    installed = (Path(site[0]).parent / 'static' / Path(module).name).read_bytes()
    check(served == installed and b'import' in served,
          f'serves its frontend module {module} from the installed files')
    runs = json.loads(get(f'{base}/data/plugin/{PLUGIN}/runs'))['runs']
    names = sorted(r['run'] if isinstance(r, dict) else r for r in runs)
    expected = sorted(p.name for p in logdir.iterdir() if p.is_dir())
    check(names == expected, f'the plugin answers /runs with the logdir\'s runs: {names}')
  finally:
    server.terminate()
    try:
      server.wait(timeout=20)
    except subprocess.TimeoutExpired:
      server.kill()


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--logdir', type=Path, required=True,
                      help='a logdir with at least one analysed run, for the served plugin')
  parser.add_argument('--workdir', type=Path, default=None,
                      help='where the wheel and its venv go (default: a temporary directory, '
                           'removed afterwards)')
  args = parser.parse_args(argv)
  if not args.logdir.is_dir():
    print(f'error: --logdir {args.logdir}: not a directory', file=sys.stderr)
    return 2
  workdir = args.workdir or Path(tempfile.mkdtemp(prefix='wheel-check-'))
  try:
    stage('building the wheel')
    wheel = build_wheel(workdir / 'dist')
    check_contents(wheel)
    stage('installing it into a fresh venv')
    venv = workdir / 'venv'
    if not (venv / 'bin' / 'python').exists():
      subprocess.run([sys.executable, '-m', 'venv', str(venv)], check=True)
    subprocess.run([venv / 'bin' / 'pip', 'install', '-q', '--disable-pip-version-check',
                    '--force-reinstall', '--no-deps', str(wheel)], check=True)
    subprocess.run([venv / 'bin' / 'pip', 'install', '-q', '--disable-pip-version-check',
                    str(wheel)], check=True)   # its dependencies
    stage('serving it with plain tensorboard')
    serve_and_check(venv, args.logdir, workdir)
  except (CheckFailed, subprocess.CalledProcessError, OSError, KeyError, ValueError) as e:
    print(f'error: wheel check: {e}', file=sys.stderr)
    return 1
  finally:
    if args.workdir is None:
      shutil.rmtree(workdir, ignore_errors=True)
  stage('wheel check passed')
  return 0


if __name__ == '__main__':
  sys.exit(main())
