"""The plugin served in-process: a werkzeug client over TensorBoard's WSGI app, for route
tests and benchmarks/bench_fuzz.py."""

import json

from tensorboard.backend import application
from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
from tensorboard.plugins import base_plugin
from werkzeug import test as werkzeug_test, wrappers

from tb_plugin.vit_analytics_plugin import VitAnalyticsPlugin
from vit_jax_analytics.logdir import metadata

PREFIX = f'/data/plugin/{metadata.PLUGIN_NAME}'


def make_client(logdir):
  multiplexer = plugin_event_multiplexer.EventMultiplexer()
  multiplexer.AddRunsFromDirectory(str(logdir))
  multiplexer.Reload()
  provider = data_provider.MultiplexerDataProvider(multiplexer, str(logdir))
  context = base_plugin.TBContext(logdir=str(logdir), data_provider=provider,
                                  multiplexer=multiplexer)
  plugin = VitAnalyticsPlugin(context)
  app = application.TensorBoardWSGI([plugin])
  return werkzeug_test.Client(app, wrappers.Response), plugin


def get(client, route, **params):
  """(status, parsed JSON or bytes) of GET <plugin>/<route>?params."""
  r = client.get(f'{PREFIX}{route}', query_string=params)
  body = r.get_data()
  return r.status_code, (json.loads(body) if r.mimetype == 'application/json' else body)
