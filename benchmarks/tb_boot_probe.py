"""TensorBoard without this project's plugin, with a minimal plugin of its own in an iframe
(its frontend draws one word): what TensorBoard's own page costs before it starts a
plugin's frame, for bench_plugin.py to set against the ViT Analytics page.

  python -m benchmarks.tb_boot_probe --logdir DIR --port N   (TensorBoard's flags)
"""

import sys

from tensorboard import default, main_lib, program
from tensorboard.backend import http_util
from tensorboard.plugins import base_plugin
from werkzeug import wrappers

NAME = 'boot_probe'
FRONTEND = b"export function render() { document.body.textContent = 'probe'; }\n"


class ProbePlugin(base_plugin.TBPlugin):
  plugin_name = NAME

  def __init__(self, context):
    pass

  def is_active(self):
    return True

  def frontend_metadata(self):
    return base_plugin.FrontendMetadata(es_module_path='/index.js', tab_name='probe')

  def get_plugin_apps(self):
    return {'/index.js': self._index, '/ready': self._ready}

  @wrappers.Request.application
  def _index(self, request):
    return http_util.Respond(request, FRONTEND, 'application/javascript')

  @wrappers.Request.application
  def _ready(self, request):
    return http_util.Respond(request, '{"runs": []}', 'application/json')


def main():
  # TensorBoard's own plugins only (none found through entry points: not ours), and the probe.
  main_lib.global_init()
  tensorboard = program.TensorBoard(plugins=default.get_static_plugins() + [ProbePlugin])
  tensorboard.configure(sys.argv)
  sys.exit(tensorboard.main())


if __name__ == '__main__':
  main()
