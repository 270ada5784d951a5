"""Steps in the plugin's routes: `step` on /meta, /array, /png, /attention; /steps; /series;
older (version-1) logdirs; the loader that keeps every step."""

import argparse
import json

import numpy as np
from tensorboard.backend import application
from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
from tensorboard.plugins import base_plugin
from werkzeug import test as werkzeug_test, wrappers

from tb_plugin.vit_analytics_plugin import VitAnalyticsLoader, VitAnalyticsPlugin, unpack
from vit_jax_analytics.logdir import metadata, writer
from vit_jax_analytics.logdir.writer import Value

PREFIX = f'/data/plugin/{metadata.PLUGIN_NAME}'


def client_for(logdir):
  multiplexer = plugin_event_multiplexer.EventMultiplexer(
      tensor_size_guidance={metadata.PLUGIN_NAME: 0})  # as VitAnalyticsLoader makes it
  multiplexer.AddRunsFromDirectory(str(logdir))
  multiplexer.Reload()
  provider = data_provider.MultiplexerDataProvider(multiplexer, str(logdir))
  context = base_plugin.TBContext(logdir=str(logdir), data_provider=provider,
                                  multiplexer=multiplexer)
  app = application.TensorBoardWSGI([VitAnalyticsPlugin(context)])
  return werkzeug_test.Client(app, wrappers.Response)


def get(client, route, **params):
  r = client.get(f'{PREFIX}{route}', query_string=params)
  return r.status_code, json.loads(r.get_data())


def write_step(logdir, step, scale):
  writer.write_analysis(logdir, 'train', 'strength', {
      'meta': Value.json({'step': step}),
      'entropy': Value.array(np.full((2, 3), scale), ('layer', 'head')),
      'offset_mean': Value.array(np.full((2, 3, 3, 3), scale), ('layer', 'head', 'dy', 'dx'))},
      step=step)


def test_every_step_is_served_and_latest_is_the_default(tmp_path):
  steps = list(range(0, 60, 4))  # 15 steps: more than TensorBoard's default 10 per tag
  for step in steps:
    write_step(tmp_path, step, step / 10)
  write_step(tmp_path, 8, 99.)  # re-written: replaces step 8 only
  client = client_for(tmp_path)
  code, body = get(client, '/steps', run='train')
  assert code == 200 and body['steps'] == {'strength': steps}
  code, body = get(client, '/array', run='train', tag='strength/entropy')
  assert code == 200 and unpack(body)[0, 0] == np.float32(5.6)
  code, body = get(client, '/array', run='train', tag='strength/entropy', step=4)
  assert code == 200 and unpack(body)[0, 0] == np.float32(0.4)
  assert unpack(get(client, '/array', run='train', tag='strength/entropy', step=8)[1])[0, 0] == 99
  assert get(client, '/meta', run='train', analysis='strength', step=12)[1] == {'step': 12}
  code, body = get(client, '/array', run='train', tag='strength/entropy', step=5)
  assert code == 404 and 'no step 5' in body['error']
  for bad in ('-1', 'x', '1.5'):
    assert get(client, '/array', run='train', tag='strength/entropy', step=bad)[0] == 400
  code, body = get(client, '/series', run='train', tag='strength/entropy')
  assert code == 200 and body['steps'] == steps and body['axes'] == ['step', 'layer', 'head']
  series = unpack(body)
  assert series.shape == (15, 2, 3) and series[2, 1, 1] == 99 and series[1, 0, 0] == np.float32(.4)
  assert get(client, '/series', run='train', tag='strength/offset_mean')[0] == 400
  assert get(client, '/steps', run='nope')[0] == 404


def test_version_1_logdir_is_step_0(tmp_path):
  path = writer.write_analysis(tmp_path, 'old', 'importance', {
      'meta': Value.json({'x': 1}), 'taylor': Value.array(np.ones((2, 2)), ('layer', 'head'))})
  path.rename(path.with_name(path.name.replace('.step0', '')))
  client = client_for(tmp_path)
  assert get(client, '/steps', run='old')[1] == {'steps': {'importance': [0]}}
  assert get(client, '/array', run='old', tag='importance/taylor', step=0)[0] == 200


def test_loader_keeps_every_step_unless_told_otherwise():
  flags = argparse.Namespace(samples_per_plugin={})
  VitAnalyticsLoader().fix_flags(flags)
  assert flags.samples_per_plugin == {metadata.PLUGIN_NAME: 0}
  flags = argparse.Namespace(samples_per_plugin={metadata.PLUGIN_NAME: 50})
  VitAnalyticsLoader().fix_flags(flags)
  assert flags.samples_per_plugin == {metadata.PLUGIN_NAME: 50}
