"""The demo's photographs: free-licence photos shipped inside the scikit-image and
scikit-learn wheels, each written whole and as a few square crops, with a licence record.

The photographs are read as files from the installed packages (found without importing
them: scikit-image's and scikit-learn's own imports need their compiled dependencies, and
`pip install --no-deps` is enough here). Only photographs whose licence the package states
as CC0, public domain or CC-BY are used; `PHOTOGRAPHS` records, for each, the statement
quoted from the package (scikit-image's `skimage/data/_fetchers.py` docstrings,
scikit-learn's `sklearn/datasets/images/README.txt`).

`build_demo_images(out_dir)` is deterministic: the same photographs give byte-identical
PNG files (same Pillow version), named `<photo>_<view>.png`, so their sorted order (the
analyses' image order) is fixed too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from PIL import Image

from vit_jax_analytics import atomic
from vit_jax_analytics.errors import DataError, OptionError, OutputError
from vit_jax_analytics.progress import progress_bar

SKIMAGE_LICENCES = 'skimage/data/_fetchers.py, docstring of skimage.data.{name}()'
SKLEARN_README = 'sklearn/datasets/images/README.txt'
INSTALL_HINT = 'pip install --no-deps scikit-image scikit-learn'
LICENCE_URLS = {'CC0 1.0': 'https://creativecommons.org/publicdomain/zero/1.0/',
                'CC BY 2.0': 'https://creativecommons.org/licenses/by/2.0/',
                'public domain': ''}


@dataclasses.dataclass(frozen=True)
class Photo:
  """One photograph: where it is inside which package, and its licence as stated there."""
  name: str            # the demo's name for it: file prefix
  package: str         # import name of the package that ships it (found, not imported)
  path: str            # relative to the package's directory
  licence: str         # short form: 'CC0 1.0', 'public domain', 'CC BY 2.0'
  statement: str       # quoted from the package
  where_stated: str    # the file whose text is quoted
  credit: str          # author / origin
  url: str = ''        # original source, when the package gives one

  @property
  def licence_url(self) -> str:
    return LICENCE_URLS.get(self.licence, '')


def _skimage(name, path, licence, statement, credit, url=''):
  return Photo(name, 'skimage', f'data/{path}', licence, statement,
               SKIMAGE_LICENCES.format(name=name), credit, url)


# skimage.data's immunohistochemistry ("No known copyright restrictions.") and
# stereo_motorcycle (Middlebury 2014; no licence stated) are left out: their docstrings
# name no licence.
PHOTOGRAPHS = (
    _skimage('astronaut', 'astronaut.png', 'public domain',
             'No known copyright restrictions, released into the public domain.',
             'NASA (Eileen Collins), NASA Great Images database', 'https://flic.kr/p/r9qvLn'),
    _skimage('brick', 'brick.png', 'CC0 1.0',
             'The original image was downloaded from CC0Textures and licensed under the '
             'Creative Commons CC0 License.', 'CC0Textures (Bricks25), grayscale',
             'https://cc0textures.com/view.php?tex=Bricks25'),
    _skimage('chelsea', 'chelsea.png', 'CC0 1.0',
             'No copyright restrictions.  CC0 by the photographer (Stefan van der Walt).',
             'Stefan van der Walt'),
    _skimage('coffee', 'coffee.png', 'CC0 1.0',
             'No copyright restrictions.  CC0 by the photographer (Rachel Michetti).',
             'Rachel Michetti (courtesy of Pikolo Espresso Bar)'),
    _skimage('grass', 'grass.png', 'CC0 1.0',
             'The original image was downloaded from DeviantArt and licensed under the '
             'Creative Commons CC0 License.', 'linolafett (DeviantArt), grayscale',
             'https://www.deviantart.com/linolafett/art/Grass-01-434853879'),
    _skimage('gravel', 'gravel.png', 'CC0 1.0',
             'The original image was downloaded from CC0Textures and licensed under the '
             'Creative Commons CC0 License.', 'CC0Textures (Gravel04), grayscale',
             'https://cc0textures.com/view.php?tex=Gravel04'),
    _skimage('hubble_deep_field', 'hubble_deep_field.jpg', 'public domain',
             'The image was captured by NASA and may be freely used in the public domain.',
             'NASA, Hubble eXtreme Deep Field (HubbleSite)',
             'http://hubblesite.org/newscenter/archive/releases/2012/37/image/a/'),
    _skimage('retina', 'retina.jpg', 'CC0 1.0',
             'This file is made available under the Creative Commons CC0 1.0 Universal '
             'Public Domain Dedication.', 'Mikael Häggström (Wikimedia Commons)',
             'https://commons.wikimedia.org/wiki/File:Fundus_photograph_of_normal_left_eye.jpg'),
    _skimage('rocket', 'rocket.jpg', 'public domain',
             'The image was captured by SpaceX and released in the public domain.',
             'SpaceX (launch of DSCOVR on Falcon 9)',
             'https://www.flickr.com/photos/spacexphotos/16511594820/'),
    Photo('china', 'sklearn', 'datasets/images/china.jpg', 'CC BY 2.0',
          'Released under a creative commons license. Attribution: Some rights reserved by '
          'danielbuechele. Retrieved 21st August, 2011 by Robert Layton.', SKLEARN_README,
          'danielbuechele (Flickr)',
          'https://www.flickr.com/photos/danielbuechele/6061409035/'),
    Photo('flower', 'sklearn', 'datasets/images/flower.jpg', 'CC BY 2.0',
          'Released under a creative commons license. Attribution: Some rights reserved by '
          'danielbuechele. Retrieved 21st August, 2011 by Robert Layton.', SKLEARN_README,
          'vultilion (Flickr; the README names danielbuechele but links this photo to '
          'vultilion)', 'https://www.flickr.com/photos/vultilion/6056698931/'),
)

# Each photograph is written whole (resized to size x size, as the analyses would resize
# it) and as square crops: (name, side as a fraction of the short side, anchor as the
# fraction of the slack on each axis: 0 = top/left, 0.5 = centre, 1 = bottom/right).
VIEWS = (('full', None, None),
         ('zoom', 0.5, 0.5),
         ('topleft', 0.6, 0.0),
         ('bottomright', 0.6, 1.0))

DEFAULT_VIEWS = tuple(v[0] for v in VIEWS)


def views_named(names) -> tuple:
  """The VIEWS entries named in `names` (in VIEWS order); ValueError naming an unknown one."""
  known = {v[0]: v for v in VIEWS}
  unknown = [n for n in names if n not in known]
  if unknown or not names:
    raise OptionError('views', f'expected some of {", ".join(known)}, got '
                               f'{", ".join(unknown) if unknown else "none"}')
  return tuple(v for v in VIEWS if v[0] in set(names))


def parse_views(text: str) -> tuple:
  """'full,zoom' -> ('full', 'zoom') (argparse type: errors name the flag)."""
  import argparse
  names = tuple(n.strip() for n in text.split(',') if n.strip())
  try:
    return tuple(v[0] for v in views_named(names))
  except OptionError as e:
    raise argparse.ArgumentTypeError(e.message) from None


def package_dir(package: str) -> Optional[Path]:
  """The installed package's directory, without importing it (None if not installed)."""
  try:
    spec = importlib.util.find_spec(package)
  except (ImportError, ValueError):
    return None
  if spec is None or not spec.submodule_search_locations:
    return None
  return Path(list(spec.submodule_search_locations)[0])


def find_photographs(photos: Sequence[Photo] = PHOTOGRAPHS) -> dict:
  """{photo name: path of its file} in the installed packages; a DataError (one line) names
  what is missing and how to install it."""
  found, missing = {}, []
  for photo in photos:
    root = package_dir(photo.package)
    path = None if root is None else root / photo.path
    if path is None or not path.is_file():
      missing.append(f'{photo.package}/{photo.path}')
    else:
      found[photo.name] = path
  if missing:
    raise DataError(f'demo photographs not found: {", ".join(missing[:3])}'
                    f'{" ..." if len(missing) > 3 else ""} (install them with '
                    f'`{INSTALL_HINT}`: only their data files are used)')
  return found


def crop_box(width: int, height: int, side: Optional[float], anchor: Optional[float]):
  """(left, upper, right, lower) of a square crop of `side` x the short side, placed at
  `anchor` of the slack on both axes; None, None: the whole image."""
  if side is None:
    return (0, 0, width, height)
  if not 0 < side <= 1 or not 0 <= anchor <= 1:
    raise ValueError(f'crop side must be in (0, 1] and anchor in [0, 1], got {side}, {anchor}')
  s = max(1, round(min(width, height) * side))
  left, top = round((width - s) * anchor), round((height - s) * anchor)
  return (left, top, left + s, top + s)


DEFAULT_SIZE = 224  # pixels: the resolution most ViT checkpoints run at


def render(image: Image.Image, box, size: int) -> Image.Image:
  """The RGB crop `box` of `image` resized to size x size (Lanczos)."""
  return image.convert('RGB').crop(box).resize((size, size), Image.Resampling.LANCZOS)


def _sha256(path) -> str:
  return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _readme(records: list, size: int) -> str:
  lines = ['# Demo images', '',
           f'{len(records)} images of {size} x {size} pixels made by '
           '`vit-analytics demo-images` from photographs shipped inside the scikit-image '
           'and scikit-learn wheels: each photograph whole (resized, aspect not kept) and '
           'as square crops (`zoom`: the central half; `topleft`, `bottomright`: 0.6 of the '
           'short side at those corners). The crops and resizing are this project\'s '
           'changes; the licences are those of the photographs, as the packages state them '
           '(quoted in `licences.json`).', '',
           '| photograph | licence | credit | source | stated in | files |',
           '| --- | --- | --- | --- | --- | --- |']
  by_photo = {}
  for r in records:
    by_photo.setdefault(r['photograph'], []).append(r)
  for name, rs in by_photo.items():
    r = rs[0]
    licence = (f"[{r['licence']}]({r['licence_url']})" if r['licence_url'] else r['licence'])
    lines.append(f"| {name} | {licence} | {r['credit']} | {r['url'] or '-'} | "
                 f"`{r['where_stated']}` | "
                 f"{', '.join(x['file'] for x in rs)} |")
  return '\n'.join(lines) + '\n'


def build_demo_images(out_dir, photos: Sequence[Photo] = PHOTOGRAPHS, size: int = DEFAULT_SIZE,
                      views=VIEWS, paths: Optional[dict] = None,
                      progress: bool = True) -> list:
  """Writes every photograph in `photos`, whole and cropped (`views`), as `size` x `size`
  RGB PNG files `<photo>_<view>.png` into `out_dir`, with `licences.json` (one record per
  file: photograph, package, source file and its SHA-256, crop box, licence, the quoted
  statement) and a `README.md` table. The folder is built beside `out_dir` and renamed
  over it, so it is never seen half-written. `paths` ({name: file}) overrides where the
  photographs are read from (default: `find_photographs`). Returns the records."""
  out_dir = Path(out_dir)
  if isinstance(size, bool) or not isinstance(size, int) or size < 1:
    raise OptionError('size', f'expected a positive number of pixels, got {size!r}')
  names = [p.name for p in photos]
  if not photos or len(set(names)) != len(names):
    raise OptionError('photos', f'expected a non-empty list of distinct names, got {names}')
  paths = find_photographs(photos) if paths is None else {k: Path(v) for k, v in paths.items()}
  if out_dir.exists() and not out_dir.is_dir():
    raise DataError(f'{out_dir}: exists and is not a folder')
  try:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{out_dir.name}.', dir=out_dir.parent))
  except OSError as e:
    raise OutputError(f'{out_dir}: cannot write the demo images there '
                      f'({e.strerror or type(e).__name__})') from None
  records = []
  try:
    with progress_bar(len(photos) * len(views), 'demo images', 'image',
                      disable=not progress) as bar:
      for photo in photos:
        source = paths[photo.name]
        try:
          with Image.open(source) as im:
            im.load()
            original = im.copy()
        except (OSError, ValueError) as e:
          raise DataError(f'{source}: cannot read photograph {photo.name!r} '
                          f'({type(e).__name__}: {e})') from None
        digest = _sha256(source)
        for view, side, anchor in views:
          box = crop_box(*original.size, side, anchor)
          file = f'{photo.name}_{view}.png'
          render(original, box, size).save(tmp / file, optimize=False)
          records.append({'file': file, 'photograph': photo.name, 'view': view,
                          'crop_box': list(box), 'source_size': list(original.size),
                          'package': photo.package, 'source_file': photo.path,
                          'source_sha256': digest, 'licence': photo.licence,
                          'licence_url': photo.licence_url,
                          'statement': photo.statement, 'where_stated': photo.where_stated,
                          'credit': photo.credit, 'url': photo.url})
          bar.update(1)
    (tmp / 'licences.json').write_text(json.dumps(records, indent=1, ensure_ascii=False) + '\n',
                                       encoding='utf-8')
    (tmp / 'README.md').write_text(_readme(records, size), encoding='utf-8')
    os.chmod(tmp, 0o755)
    atomic.replace_directory(tmp, out_dir)
  except OSError as e:  # a full disk, or the folder's place taken meanwhile
    raise OutputError(f'{out_dir}: cannot write the demo images there '
                      f'({e.strerror or type(e).__name__})') from None
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return records
