# The README's two commands: `make smoke` (set up, run the synthetic DAG, render reports/) and
# `make test`. Both create .venv on first use.
VENV ?= .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)
export DVC_NO_ANALYTICS := 1
CORES ?= 2

.PHONY: install smoke test test-fast bench lint clean-smoke

# torch goes in first, on its own: the CUDA build that also runs on CPU (see README, "Install").
# requirements-nodeps.txt goes in last, without its own (conflicting) dependency pins.
$(VENV)/.installed: pyproject.toml requirements-nodeps.txt
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -r requirements-nodeps.txt
	touch $@

install: $(VENV)/.installed

# The workflow ends with its report rule (`dvc repro`: reports/ from results/); then Snakemake's own
# HTML report of the run, every table and figure with its caption.
smoke: install
	snakemake --cores $(CORES) --configfile config/smoke.yaml
	snakemake --configfile config/smoke.yaml --report reports/report.html

test: install
	pytest -q

test-fast: install
	pytest -q -m "not slow and not slurm"

bench: install
	python benchmarks/scan.py --markdown reports/.bench_scan.md
	python benchmarks/models.py --markdown reports/.bench_models.md
	python benchmarks/loader.py --markdown reports/.bench_loader.md
	python benchmarks/render.py reports/.bench_scan.md reports/.bench_models.md reports/.bench_loader.md > reports/benchmarks_cpu.md

lint:
	snakemake --lint --configfile config/smoke.yaml
	snakefmt --check workflow/Snakefile workflow/rules/*.smk

clean-smoke:
	find results -mindepth 1 ! -name README.md -exec rm -rf {} +
	rm -rf logs data/processed data/splits data/cache weights/synthetic .snakemake
