"""Drives the plugin as a person sees it: the real `tensorboard` on a free local port and
Debian's headless Chromium (via Selenium). Shared by the browser test and the plugin
benchmark; nothing here is used when TensorBoard serves the plugin."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

CHROMIUM = shutil.which('chromium') or '/usr/bin/chromium'
CHROMEDRIVER = shutil.which('chromedriver') or '/usr/bin/chromedriver'
CHROMIUM_FLAGS = ('--headless=new', '--no-sandbox', '--disable-gpu', '--disable-quic',
                  '--no-first-run', '--disable-background-networking',
                  '--disable-component-update', '--disable-sync')


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@contextlib.contextmanager
def tensorboard(logdir, load_fast: str = 'false', wait_for_runs: bool = True, cwd=None,
                reload_interval: float = 1, module: str = 'tensorboard.main',
                ready_path: str = '/data/plugin/vit_analytics/runs'):
  """Runs `tensorboard --logdir` on 127.0.0.1; yields its URL once the plugin answers.

  The server runs in `cwd` (default: this process's): `python -m` puts that folder first on
  the server's sys.path, before PYTHONPATH, so a tb_plugin/ there is the plugin it loads.
  It re-reads the logdir every `reload_interval` seconds (1 s: tests see new runs soon; with
  --load_fast=false on a large logdir that alone keeps about a third of a core busy).
  `module` is the server's entry point (`python -m module`, TensorBoard's flags); it is up
  once `ready_path` answers (with runs, if `wait_for_runs`)."""
  port = free_port()
  proc = subprocess.Popen(
      [sys.executable, '-m', module, '--logdir', str(logdir), '--port', str(port),
       '--host', '127.0.0.1', f'--load_fast={load_fast}', '--reload_interval', str(reload_interval)],
      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=cwd)
  url = f'http://127.0.0.1:{port}'
  try:
    deadline = time.time() + 90
    while True:
      try:
        with urllib.request.urlopen(f'{url}{ready_path}', timeout=5) as r:
          if not wait_for_runs or json.loads(r.read())['runs']:
            break
      except OSError:
        pass
      if proc.poll() is not None or time.time() > deadline:
        raise RuntimeError(f'tensorboard did not come up: {proc.stderr.read()[-2000:]}')
      time.sleep(0.5)
    yield url
  finally:
    proc.terminate()
    try:
      proc.wait(10)
    except subprocess.TimeoutExpired:
      proc.kill()


@contextlib.contextmanager
def chromium(window: str = '1400,2200'):
  """A headless Chromium WebDriver with a throw-away profile."""
  from selenium import webdriver
  from selenium.webdriver.chrome.service import Service

  with tempfile.TemporaryDirectory() as profile:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS + (f'--window-size={window}', f'--user-data-dir={profile}'):
      options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
      yield driver
    finally:
      driver.quit()


def open_plugin(driver, url, timeout: float = 90):
  """Opens the plugin's tab and switches into its iframe; returns a WebDriverWait."""
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support.ui import WebDriverWait

  driver.switch_to.default_content()
  driver.get(f'{url}/#vit_analytics')
  frame = WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.TAG_NAME, 'iframe'))[0]
  driver.switch_to.frame(frame)
  return WebDriverWait(driver, timeout)


def js_fmt(v) -> str:
  """The page's number format (fmt in static/format.js), for tests that read numbers off the
  page: 3 significant digits, exact zeros as 0, powers of ten beyond 1e4 or below 1e-3
  ('7.02e-4', '1.23e5'), a leading '−' for minus."""
  v = float(v)
  if v == 0:
    return '0'
  if abs(v) >= 1e4 or abs(v) < 1e-3:
    mantissa, exponent = f'{v:.2e}'.split('e')
    text = f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
  else:
    text = repr(float(f'{v:.3g}')).removesuffix('.0')
  return text[0].replace('-', '−') + text[1:]
