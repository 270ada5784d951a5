"""The on-disk format's identity: plugin name, version, and the per-value plugin metadata.

Imported by the writer (`logdir.writer`) and by the TensorBoard plugin (`tb_plugin`), and
nothing else defines these; the format is documented in docs/logdir-format.md.
"""

import json

from tensorboard.compat.proto import summary_pb2

PLUGIN_NAME = 'vit_analytics'
# 1: one event file per (run, analysis), every value at step 0.
# 2: one event file per (run, analysis, step); values at that step (training steps). A
#    reader of version 2 reads version-1 files as step 0.
FORMAT_VERSION = 2
# array: a numeric tensor; json: a scalar string tensor holding UTF-8 JSON;
# png: a scalar string tensor holding PNG bytes.
KINDS = ('array', 'json', 'png')
ANALYSES = ('importance', 'strength', 'patterns')


def create_summary_metadata(analysis: str, kind: str, description: str = '',
                            axes=None) -> summary_pb2.SummaryMetadata:
  """SummaryMetadata for one value. `axes` names the array's dimensions, e.g.
  ['layer', 'head']."""
  if kind not in KINDS:
    raise ValueError(f'kind must be one of {KINDS}, got {kind!r}')
  content = {'version': FORMAT_VERSION, 'analysis': analysis, 'kind': kind}
  if axes is not None:
    content['axes'] = list(axes)
  return summary_pb2.SummaryMetadata(
      summary_description=description,
      plugin_data=summary_pb2.SummaryMetadata.PluginData(
          plugin_name=PLUGIN_NAME, content=json.dumps(content).encode()),
      # Without DATA_CLASS_TENSOR, TensorBoard's data provider never returns the value.
      data_class=summary_pb2.DATA_CLASS_TENSOR)


def parse_plugin_metadata(content: bytes) -> dict:
  """The dict written by `create_summary_metadata`; ValueError if it is not ours."""
  try:
    parsed = json.loads(content.decode())
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f'plugin metadata is not JSON: {e}') from None
  if not isinstance(parsed, dict) or parsed.get('kind') not in KINDS:
    raise ValueError(f'plugin metadata has no valid kind: {parsed!r}')
  if parsed.get('version', 0) > FORMAT_VERSION:
    raise ValueError(f"format version {parsed.get('version')} is newer than this plugin's "
                     f'{FORMAT_VERSION}; upgrade vit-jax-analytics')
  return parsed
