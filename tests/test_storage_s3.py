"""Logdirs and checkpoints on S3, against a local S3 emulation (moto's server) through s3fs;
TensorBoard reads the logdir through its own boto3 S3 reader. Skipped unless s3fs, moto and
boto3 are installed (`pip install s3fs "moto[server]"`: the `s3` extra plus moto)."""

import io
import socket

import numpy as np
import pytest

pytest.importorskip('s3fs')
pytest.importorskip('boto3')
moto_server = pytest.importorskip('moto.server')

import fsspec  # noqa: E402

from tests.tiny import TINY, tiny_images, tiny_params  # noqa: E402
from vit_jax_analytics import checkpoints, training  # noqa: E402
from vit_jax_analytics.checkpoints import flatten  # noqa: E402
from vit_jax_analytics.logdir import reader  # noqa: E402


@pytest.fixture
def s3(monkeypatch):
  """A moto S3 server on a free local port with bucket 'bucket'; s3fs and TensorBoard's S3
  reader pointed at it."""
  import boto3
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  server = moto_server.ThreadedMotoServer(ip_address='127.0.0.1', port=port)
  server.start()
  endpoint = f'http://127.0.0.1:{port}'
  for key, value in (('AWS_ACCESS_KEY_ID', 'testing'), ('AWS_SECRET_ACCESS_KEY', 'testing'),
                     ('AWS_DEFAULT_REGION', 'us-east-1')):
    monkeypatch.setenv(key, value)
  monkeypatch.setitem(fsspec.config.conf, 's3', {'endpoint_url': endpoint})
  client = boto3.client('s3', endpoint_url=endpoint)
  client.create_bucket(Bucket='bucket')
  try:
    yield client, endpoint
  finally:
    fsspec.filesystem('s3').clear_instance_cache()
    server.stop()


def test_analyse_step_and_checkpoint_on_s3(s3, monkeypatch, capsys):
  from tensorboard.compat.tensorflow_stub.io import gfile
  from tests.tb_plugin.test_steps import client_for, get
  client, endpoint = s3
  params = tiny_params()
  buf = io.BytesIO()
  np.savez(buf, **flatten(params))
  client.put_object(Bucket='bucket', Key='models/vit.npz', Body=buf.getvalue())
  loaded, config = checkpoints.load_checkpoint('s3://bucket/models/vit.npz')
  assert config == TINY
  np.testing.assert_array_equal(loaded['head']['kernel'], params['head']['kernel'])

  probe = training.Probe(tiny_images(4), np.arange(4))
  for step in (0, 10, 10):  # step 10 twice: the second replaces the first
    training.analyse_step(loaded, config, probe, 's3://bucket/logs', 'run', step)
  keys = sorted(o['Key'] for o in client.list_objects_v2(Bucket='bucket', Prefix='logs/')['Contents'])
  assert len(keys) == 4 and all('tfevents' in k for k in keys)  # no temporary objects
  assert reader.steps('s3://bucket/logs/run') == {'importance': [0, 10], 'strength': [0, 10]}

  # TensorBoard reads s3:// with its own boto3 reader (S3_ENDPOINT, read when registered).
  monkeypatch.setattr(gfile._REGISTERED_FILESYSTEMS['s3'], '_s3_endpoint', endpoint)
  code, body = get(client_for('s3://bucket/logs'), '/steps', run='run')
  assert code == 200 and body['steps'] == {'importance': [0, 10], 'strength': [0, 10]}
