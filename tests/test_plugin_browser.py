"""The plugin in a real browser: the real `tensorboard` on a free local port, headless
Chromium (Debian's chromium + chromium-driver) driven by Selenium.

Screenshots are saved to test-artifacts/ for a person to look at.
"""

from pathlib import Path

import numpy as np
import pytest

from tb_plugin.browser import CHROMEDRIVER, CHROMIUM, chromium, js_fmt, open_plugin, tensorboard
from vit_jax_analytics.logdir import reader

ARTIFACTS = Path(__file__).resolve().parents[1] / 'test-artifacts'


@pytest.fixture(scope='module')
def browser():
  assert Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists(), (
      'the browser test needs Debian chromium and chromium-driver '
      '(apt-get install chromium chromium-driver; `make test` installs them)')
  with chromium() as driver:
    yield driver



@pytest.mark.parametrize('load_fast', ['false', 'true'])
def test_views_render_link_and_respond(analysis_logdir, browser, load_fast):
  from selenium.webdriver.common.action_chains import ActionChains
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support.ui import Select

  written = reader.read_run(analysis_logdir / 'tiny')
  L, H = written['importance/taylor'].shape
  with tensorboard(analysis_logdir, load_fast) as url:
    wait = open_plugin(browser, url)
    ready = lambda d: d.find_element(By.TAG_NAME, 'body').get_attribute('data-ready') == 'true'
    wait.until(ready)
    find = lambda css: browser.find_elements(By.CSS_SELECTOR, css)
    # Runs are listed in order; the importance-only run comes first and shows the others as
    # not computed.
    assert 'Not computed for this run' in browser.find_element(By.ID, 'view-strength').text
    Select(browser.find_element(By.ID, 'run-select')).select_by_value('tiny')
    wait.until(lambda d: ready(d) and d.find_elements(By.CSS_SELECTOR, '.thumb'))

    # Importance grid: layers x heads cells; a tooltip shows the exact value.
    cells = find('#importance-grid rect.imp-cell')
    assert len(cells) == L * H
    l, h = np.unravel_index(np.argmax(written['importance/taylor']), (L, H))
    cell = next(c for c in cells if c.get_attribute('data-layer') == str(l)
                and c.get_attribute('data-head') == str(h))
    ActionChains(browser).move_to_element(cell).perform()
    wait.until(lambda d: js_fmt(written['importance/taylor'][l, h]) in
               d.find_element(By.ID, 'vit-tooltip').text)

    # Every view drew its content.
    assert len(find('#pruning-curves polyline')) >= 1
    assert len(find('.multiples canvas.offset-small')) == L * H
    assert len(find('#pattern-map .pattern-cell')) == written['patterns/map'].shape[0] ** 2
    assert len(find('.cluster')) == written['patterns/cluster_pattern'].shape[0]
    assert len(find('.thumb')) == 3

    # Linked selection: a head clicked in the grid is selected in the strength view too.
    target = next(c for c in find('#importance-grid rect.imp-cell')
                  if c.get_attribute('data-layer') == '2' and c.get_attribute('data-head') == '3')
    target.click()
    assert browser.find_element(By.ID, 'selected-head').text == 'L2 H3'
    wait.until(lambda d: any('L2 H3' in e.text for e in d.find_elements(
        By.CSS_SELECTOR, '#view-strength h3')))
    # ... and clicking a small multiple selects back in the importance grid.
    find('.multiples canvas.offset-small')[1].click()  # L0 H1
    wait.until(lambda d: d.find_element(By.ID, 'selected-head').text == 'L0 H1')
    selected = find('#importance-grid rect.imp-cell.selected')
    assert [(c.get_attribute('data-layer'), c.get_attribute('data-head')) for c in selected] == [
        ('0', '1')]

    # Images: clicking a patch overlays its attention and draws it for every head.
    stage = browser.find_element(By.ID, 'image-stage')
    browser.execute_script('arguments[0].scrollIntoView()', stage)
    overlay = lambda: browser.execute_script(
        "return document.querySelector('#image-stage canvas').toDataURL()")
    before = overlay()
    ActionChains(browser).move_to_element_with_offset(stage, 20, 20).click().perform()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, '#head-multiples canvas')) == L * H)
    assert overlay() != before
    assert 'query patch (row' in browser.find_element(By.ID, 'query-label').text

    # Patterns: clicking a map cell lists the heads that produce that pattern.
    browser.execute_script('arguments[0].scrollIntoView()', find('#pattern-map .pattern-cell')[0])
    occupied = np.argwhere(written['patterns/head_density'].sum((0, 1)) > 0)[0]
    g = written['patterns/map'].shape[0]
    find('#pattern-map .pattern-cell')[occupied[0] * g + occupied[1]].click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, '#cell-heads .chip'))

    # Two runs side by side: the comparison shows both importance grids.
    Select(browser.find_element(By.ID, 'compare-select')).select_by_value('importance-only')
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, '#view-compare svg.compare-grid'))
               == 2)
    assert len(find('#view-compare svg.compare-grid')[0].find_elements(By.TAG_NAME, 'rect')) == L * H

    ARTIFACTS.mkdir(exist_ok=True)
    browser.switch_to.default_content()
    browser.save_screenshot(str(ARTIFACTS / f'plugin-load_fast-{load_fast}.png'))


def test_logdir_without_analysis_shows_empty_state(browser, tmp_path):
  from selenium.webdriver.common.by import By

  with tensorboard(tmp_path, 'false', wait_for_runs=False) as url:
    wait = open_plugin(browser, url)
    empty = wait.until(lambda d: d.find_elements(By.ID, 'empty-state'))[0]
    assert 'No ViT analysis' in empty.text and 'vit-analytics analyze' in empty.text
