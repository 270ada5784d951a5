"""The documentation: the README is a front page, every docs page says whom it is for, and
every relative link (file and #anchor) between the pages resolves."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / 'README.md', ROOT / 'checkpoints' / 'README.md',
                ROOT / 'tb_plugin' / 'http_api.md', *(ROOT / 'docs').glob('*.md')])
LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)\)')
FENCE = re.compile(r'^```.*?^```', re.S | re.M)


def links(page: Path) -> list:
  return LINK.findall(FENCE.sub('', page.read_text()))


def anchors(page: Path) -> set:
  """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
  text = FENCE.sub('', page.read_text())
  return {re.sub(r'[^\w\- ]', '', h.strip().lower()).replace(' ', '-')
          for h in re.findall(r'^#+ (.*)$', text, re.M)}


def test_the_readme_is_a_front_page():
  lines = (ROOT / 'README.md').read_text().splitlines()
  assert len(lines) <= 200, len(lines)


@pytest.mark.parametrize('page', sorted((ROOT / 'docs').glob('*.md')), ids=lambda p: p.name)
def test_each_docs_page_starts_with_whom_it_is_for(page):
  head = page.read_text().splitlines()[:6]
  assert any(line.startswith('**For**') for line in head), page.name


@pytest.mark.parametrize('page', PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
  found = 0
  for target in links(page):
    if re.match(r'[a-z]+:', target):   # http:, https:, mailto:
      continue
    found += 1
    path, _, anchor = target.partition('#')
    resolved = (page.parent / path).resolve() if path else page
    assert resolved.exists(), f'{page.relative_to(ROOT)}: {target} does not exist'
    if anchor:
      assert anchor in anchors(resolved), f'{page.relative_to(ROOT)}: no heading #{anchor} in {resolved.name}'
  if page.name == 'README.md' and page.parent == ROOT:
    assert found >= 10   # the front page links to the docs


def test_the_checker_finds_a_broken_link_and_anchor(tmp_path):
  (tmp_path / 'a.md').write_text('# Top\n\n## A `b`, c\n[x](b.md) [y](#a-b-c) [z](#nope)\n')
  assert anchors(tmp_path / 'a.md') == {'top', 'a-b-c'}
  assert links(tmp_path / 'a.md') == ['b.md', '#a-b-c', '#nope']
