"""Conda environments, checked statically: conda channels are not reachable from our machines.

The environment files must parse, name their channels, pin exactly what pyproject.toml pins,
install segbench itself, and be the environment of every rule that runs a command.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
RULE_ENV = ROOT / "workflow" / "envs" / "segbench.yaml"
TOP_ENV = ROOT / "environment.yml"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# Which optional-dependency groups each file carries besides [project].dependencies.
EXTRAS = {RULE_ENV: [], TOP_ENV: ["dev"]}


def load_env(path: Path) -> dict:
    env = yaml.safe_load(path.read_text())
    assert isinstance(env, dict), f"{path}: expected a mapping (name, channels, dependencies), found {type(env).__name__}"
    return env


def pip_entries(path: Path) -> list[str]:
    sections = [d["pip"] for d in load_env(path)["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(sections) == 1, f"{path}: expected one `pip:` list under dependencies, found {len(sections)}"
    return sections[0]


def exact_pins(requirements: list[str], where: str) -> dict[str, str]:
    pins = {}
    for text in requirements:
        requirement = Requirement(text)
        specifiers = list(requirement.specifier)
        assert len(specifiers) == 1 and specifiers[0].operator == "==", (
            f"{where}: '{text}' is not pinned to one exact version (expected name==version)"
        )
        pins[canonicalize_name(requirement.name)] = specifiers[0].version
    return pins


def expected_pins(path: Path) -> dict[str, str]:
    pins = exact_pins(PYPROJECT["dependencies"], "pyproject.toml [project].dependencies")
    for extra in EXTRAS[path]:
        pins |= exact_pins(PYPROJECT["optional-dependencies"][extra], f"pyproject.toml extra '{extra}'")
    return pins


@pytest.mark.parametrize("path", [RULE_ENV, TOP_ENV], ids=lambda p: p.name)
def test_env_names_its_channels_and_a_supported_python(path):
    env = load_env(path)
    assert env.get("name") == "segbench", f"{path}: expected `name: segbench`, found {env.get('name')!r}"
    channels = env.get("channels") or []
    assert "conda-forge" in channels, f"{path}: the channel list {channels} lacks conda-forge"
    assert "defaults" not in channels, f"{path}: Anaconda's `defaults` channel is not used; found {channels}"
    conda_packages = [d for d in env["dependencies"] if isinstance(d, str)]
    assert "pip" in conda_packages, f"{path}: `pip` must be a conda dependency for the `pip:` section"
    pythons = [p.split("=", 1)[1] for p in conda_packages if p.startswith("python=")]
    assert len(pythons) == 1, f"{path}: expected one `python=X.Y` dependency, found {conda_packages}"
    supported = SpecifierSet(PYPROJECT["requires-python"])
    assert pythons[0] in supported, f"{path}: python={pythons[0]} is outside requires-python {supported}"


@pytest.mark.parametrize("path", [RULE_ENV, TOP_ENV], ids=lambda p: p.name)
def test_env_pins_the_same_versions_as_pyproject(path):
    packages = [entry for entry in pip_entries(path) if not entry.startswith("-")]
    found = exact_pins(packages, str(path))
    expected = expected_pins(path)
    differing = {
        name: (found.get(name, "missing"), expected.get(name, "not in pyproject"))
        for name in found.keys() | expected.keys()
        if found.get(name) != expected.get(name)
    }
    assert not differing, (
        f"{path} and pyproject.toml disagree (package: (env file, pyproject)): {differing}. "
        "Change both to the version you tested."
    )


@pytest.mark.parametrize("path", [RULE_ENV, TOP_ENV], ids=lambda p: p.name)
def test_env_installs_segbench_itself(path):
    editable = [entry for entry in pip_entries(path) if entry.startswith("-e ")]
    assert len(editable) == 1, f"{path}: expected one `-e <repository root>` pip entry, found {editable}"
    # conda runs pip in the environment file's folder, so the path is relative to it.
    target = (path.parent / editable[0][3:].strip()).resolve()
    pyproject = target / "pyproject.toml"
    assert pyproject.is_file(), f"{path}: '{editable[0]}' points at {target}, which has no pyproject.toml"
    assert tomllib.loads(pyproject.read_text())["project"]["name"] == "segbench", (
        f"{path}: '{editable[0]}' installs {target}, which is not segbench"
    )


def test_every_conda_directive_names_the_rule_env():
    rule_files = sorted((ROOT / "workflow" / "rules").glob("*.smk")) + [ROOT / "workflow" / "Snakefile"]
    directives = []
    for rule_file in rule_files:
        text = rule_file.read_text()
        for match in re.finditer(r"^\s+conda:\s*\n?\s*[\"']([^\"']+)[\"']", text, flags=re.MULTILINE):
            # Snakemake resolves a conda: path relative to the file that holds the rule.
            directives.append((rule_file.name, (rule_file.parent / match.group(1)).resolve()))
    assert directives, "no `conda:` directive in workflow/rules/*.smk or the Snakefile"
    wrong = [(name, str(target)) for name, target in directives if target != RULE_ENV]
    assert not wrong, f"conda: directives that do not name {RULE_ENV.relative_to(ROOT)}: {wrong}"


@pytest.mark.slow
def test_every_rule_that_runs_a_command_has_a_conda_env(tmp_path):
    """Snakemake's own linter parses the workflow and flags each rule without an environment."""
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--lint", "--snakefile", str(ROOT / "workflow" / "Snakefile"),
         "--configfile", str(ROOT / "config" / "smoke.yaml"), "--directory", str(tmp_path)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    output = result.stdout + result.stderr
    parsed = "Lints for" in output or "Congratulations" in output
    assert parsed, f"snakemake --lint could not parse the workflow (exit {result.returncode}):\n{output[-3000:]}"
    sections = re.split(r"^Lints for ", output, flags=re.MULTILINE)[1:]
    without_env = [
        section.split(" (", 1)[0]
        for section in sections
        if "Specify a conda environment or container for each rule" in section
    ]
    assert not without_env, (
        f"{', '.join(without_env)} run commands without a conda environment; add "
        "`conda: \"../envs/segbench.yaml\"` to each (path relative to workflow/rules/)"
    )


def test_versions_quoted_in_the_readme_match_pyproject():
    pins = exact_pins(PYPROJECT["dependencies"], "pyproject.toml")
    for extra, requirements in PYPROJECT["optional-dependencies"].items():
        pins |= exact_pins(requirements, f"pyproject.toml extra '{extra}'")
    docs = ROOT / "README.md"
    quoted = re.findall(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][A-Za-z0-9.+-]*)", docs.read_text())
    assert quoted, f"{docs} quotes no name==version pins"
    wrong = [f"{name}=={version} (pyproject: {pins.get(canonicalize_name(name), 'absent')})"
             for name, version in quoted if pins.get(canonicalize_name(name)) != version]
    assert not wrong, f"{docs} quotes versions that pyproject.toml does not pin: {wrong}"


def test_no_deps_requirements_are_installed_by_every_route():
    """requirements-nodeps.txt (pins that conflict with pyproject's) is installed by the venv route
    (Makefile) and by the rule environment's post-deploy script, each with --no-deps."""
    pinned = exact_pins([line for line in (ROOT / "requirements-nodeps.txt").read_text().splitlines()
                         if line.strip() and not line.startswith("#")], "requirements-nodeps.txt")
    assert "pysodmetrics" in pinned, f"requirements-nodeps.txt: expected pysodmetrics, found {pinned}"
    post_deploy = RULE_ENV.with_name(RULE_ENV.stem + ".post-deploy.sh")
    assert os.access(post_deploy, os.X_OK), f"{post_deploy} is missing or not executable"
    for where in (ROOT / "Makefile", post_deploy):
        assert re.search(r"pip install .*--no-deps -r requirements-nodeps\.txt", where.read_text()), (
            f"{where} does not run `pip install --no-deps -r requirements-nodeps.txt`")
