# Set-up and everyday commands. Everything runs in a project virtualenv (.venv) with the
# CPU torch wheel; the extension is built without build isolation so pip never downloads
# another (CUDA) torch into a build environment.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_SPEC ?= torch==2.13.0
CSRC := $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh')
EXTENSION_STAMP := $(VENV)/.extension-built
PYTEST_ARGS ?=

.PHONY: install demo demo-segment demo-amg test test-slow bench env clean

$(VENV)/.deps-installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install $(TORCH_SPEC)
	$(PIP) install "setuptools>=64" wheel ninja Cython numpy
	$(PIP) install --no-build-isolation -e ".[test]"
	$(PIP) install --no-deps lvis==0.5.3  # its requirements pull opencv-python (see README)
	touch $@

$(EXTENSION_STAMP): $(VENV)/.deps-installed setup.py $(CSRC)
	$(PIP) install --no-build-isolation --no-deps -e .
	touch $@

install: $(EXTENSION_STAMP)  ## create .venv, install dependencies, build sam_lightning._C

demo: install  ## the main job: train vit_nano on synthetic cell mosaics (CPU, < 10 minutes)
	$(PY) -m sam_lightning.train +exp=demo

demo-segment: install  ## segment a demo image from the command line (random weights)
	$(PY) tools/make_demo_image.py demo_output/scene.png
	$(PY) -m sam_lightning.segment demo_output/scene.png --model-type vit_b \
		--box 70,70,250,250 --box 330,80,580,230 --box 400,290,600,430 --output demo_output/masks

demo-amg: install  ## the data engine on the demo scene (random weights: thresholds 0)
	$(PY) tools/make_demo_image.py demo_output/scene.png
	$(PY) -m sam_lightning.amg input=demo_output/scene.png output=demo_output/amg model.type=vit_b \
		amg.points_per_side=16 amg.pred_iou_thresh=0 amg.stability_score_thresh=0

test: install  ## the default test run (what CI runs first)
	$(PY) tools/collect_env.py
	$(PY) -m ruff check .
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: install  ## the slow tests (full-size models)
	$(PY) -m pytest -m slow $(PYTEST_ARGS) || test $$? -eq 5  # 5: no slow tests collected

bench: install  ## speed against the references; figures go to docs/benchmarks.md
	$(PY) tools/bench_rle.py
	$(PY) tools/bench_predictor.py
	$(PY) tools/bench_postprocess.py
	$(PY) tools/bench_amg.py
	$(PY) tools/bench_train.py
	$(PY) tools/bench_bsds.py
	$(PY) tools/bench_coco_eval.py

env: install  ## report versions and which compiled kernels are available
	$(PY) tools/collect_env.py

clean:
	rm -rf build sam_lightning/_C*.so $(EXTENSION_STAMP)
