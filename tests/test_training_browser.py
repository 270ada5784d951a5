"""The demo trained for a few steps with in-training logging, then shown by the plugin in
headless Chromium: the step selector switches every view between steps, and the
over-training view draws a chart per head."""

from pathlib import Path

import numpy as np
import pytest

from tb_plugin.browser import CHROMEDRIVER, CHROMIUM, chromium, js_fmt, open_plugin, tensorboard
from vit_jax_analytics.logdir import reader

ARTIFACTS = Path(__file__).resolve().parents[1] / 'test-artifacts'



@pytest.fixture(scope='module')
def training_logdir(tmp_path_factory):
  from vit_jax_analytics import demo
  root = tmp_path_factory.mktemp('training')
  rng = np.random.default_rng(0)
  rows = np.concatenate([rng.integers(0, 256, (60, 784)), rng.integers(0, 10, (60, 1))], 1)
  np.savetxt(root / 'digits.csv', rows, fmt='%d', delimiter=',')
  demo.train_demo(root / 'out', max_steps=4, batch_size=16, held_out=20,
                  mnist_csv=root / 'digits.csv', progress=False, log_every=2,
                  logdir=root / 'logs', run='demo-training', probe_images=8)
  return root / 'logs'


def test_step_selector_switches_views(training_logdir):
  from selenium.webdriver.common.action_chains import ActionChains
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support.ui import Select

  assert Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()
  run = training_logdir / 'demo-training'
  assert reader.steps(run) == {'importance': [0, 2, 4], 'strength': [0, 2, 4]}
  taylor = {s: reader.read_run(run, s)['importance/taylor'] for s in (0, 2, 4)}
  L, H = taylor[0].shape
  with chromium() as browser, tensorboard(training_logdir) as url:
    wait = open_plugin(browser, url)
    ready = lambda d: d.find_element(By.TAG_NAME, 'body').get_attribute('data-ready') == 'true'
    wait.until(ready)
    steps = Select(browser.find_element(By.ID, 'step-select'))
    assert [o.get_attribute('value') for o in steps.options] == ['', '0', '2', '4']
    # The over-training view: three metrics, one small chart per head each.
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, '.training-cell')) == 3 * L * H)
    assert len(browser.find_elements(By.CSS_SELECTOR, '.training-metric')) == 3
    for step in (0, 4, 2):
      steps.select_by_value(str(step))
      wait.until(lambda d: ready(d) and d.find_elements(By.CSS_SELECTOR, '#importance-grid'))
      steps = Select(browser.find_element(By.ID, 'step-select'))
      assert steps.first_selected_option.get_attribute('value') == str(step)
      l, h = np.unravel_index(np.argmax(taylor[step]), (L, H))
      cell = next(c for c in browser.find_elements(By.CSS_SELECTOR, '#importance-grid rect.imp-cell')
                  if c.get_attribute('data-layer') == str(l) and c.get_attribute('data-head') == str(h))
      ActionChains(browser).move_to_element(cell).perform()
      expected = js_fmt(float(taylor[step][l, h]))
      wait.until(lambda d: expected in d.find_element(By.ID, 'vit-tooltip').text)
    # Selecting a head in the over-training view highlights it there.
    browser.find_elements(By.CSS_SELECTOR, '.training-cell')[H + 1].click()
    wait.until(lambda d: 'L1 H1' in d.find_element(By.ID, 'selected-head').text)
    assert browser.find_elements(By.CSS_SELECTOR, '.training-cell.selected')
    assert 'Could not draw' not in browser.find_element(By.ID, 'vit-root').text
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / 'training-steps.png'))
