import json

import pytest
from tensorboard.compat.proto import summary_pb2

from vit_jax_analytics.logdir import metadata


def test_roundtrip_and_tensor_data_class():
  m = metadata.create_summary_metadata('importance', 'array', 'desc', ['layer', 'head'])
  assert m.plugin_data.plugin_name == metadata.PLUGIN_NAME
  assert m.data_class == summary_pb2.DATA_CLASS_TENSOR
  parsed = metadata.parse_plugin_metadata(m.plugin_data.content)
  assert parsed == {'version': metadata.FORMAT_VERSION, 'analysis': 'importance',
                    'kind': 'array', 'axes': ['layer', 'head']}


def test_rejects_unknown_kind_and_newer_versions():
  with pytest.raises(ValueError, match='kind'):
    metadata.create_summary_metadata('importance', 'video')
  with pytest.raises(ValueError, match='newer'):
    metadata.parse_plugin_metadata(json.dumps({'kind': 'array', 'version': 99}).encode())
  with pytest.raises(ValueError, match='not JSON'):
    metadata.parse_plugin_metadata(b'\xff')
