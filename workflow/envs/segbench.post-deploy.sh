#!/usr/bin/env bash
# Snakemake runs this inside the new segbench environment, from the repository root, right after
# creating it: packages whose own pins conflict with pyproject.toml (see requirements-nodeps.txt).
set -euo pipefail
pip install --no-deps -r requirements-nodeps.txt
