# `make demo` and `make test` work from a fresh clone: they build .venv first.
PY := .venv/bin/python
PIP := $(PY) -m pip

.PHONY: setup demo test fuzz bench clean

setup: .venv/.installed

.venv/.installed: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	# torch first, pinned: the CPU wheel on disk, never the multi-GB CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev,world]"
	# printer tests: pyGCodeDecode (MIT) is the planner's reference and ships real slicer G-code; --no-deps because
	# its only other dependency, pyvista (VTK), serves its 3D plots, which kiln never imports.
	$(PIP) install -q --no-deps "pyGCodeDecode==1.5.1"
	touch $@

# every recipe's quick config (configs/nav/quick.yaml, configs/traffic/quick.yaml, configs/world/quick.yaml,
# configs/printer/quick.yaml, configs/seqgen/quick.yaml) into runs/<recipe>/demo, then one table (also runs/demo.md)
demo: setup
	.venv/bin/kiln demo

test: setup
	$(PY) -m pytest

# the fuzzers (tests/fuzz/) with fresh random examples; `make test` runs them derandomized, the same examples each time
fuzz: setup
	$(PY) -m pytest tests/fuzz --hypothesis-profile=explore --hypothesis-show-statistics

bench: setup
	$(PY) bench/engine_overhead.py
	$(PY) bench/engine_loader.py
	$(PY) bench/nav_datagen.py
	$(PY) bench/nav_precision.py
	$(PY) bench/traffic_step.py
	$(PY) bench/quick_steps.py
	$(PY) bench/world_collect.py
	$(PY) bench/printer_stream.py
	$(PY) bench/seqgen_step.py
	$(PY) bench/seqgen_loss_gradients.py
	$(PY) bench/sweep_parallel.py

clean:
	rm -rf .venv runs data
