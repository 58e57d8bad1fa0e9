"""What the Snakemake workflow catalog needs for its "standardized usage" tier, checked the way its
scripts/generate-catalog.py checks it: the settings file it reads, config/README.md (generated
from the schema and current), the main Snakefile where it looks, and snakefmt on the rule files."""
from __future__ import annotations

import shlex

import pytest
import yaml

from conftest import BIN, REPO, run_tool
from segbench.config_doc import REGENERATE_COMMAND, config_readme

SETTINGS = REPO / ".snakemake-workflow-catalog.yml"
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
CONFIG_README = REPO / "config" / "README.md"
# The deployment keys the catalog's pages render: index.html (conda, singularity, singularity+conda)
# and source/build_wf_pages.py, which maps singularity to apptainer.
DEPLOYMENT_KEYS = {"conda", "singularity", "singularity+conda", "apptainer", "apptainer+conda"}


def test_catalog_settings_have_the_keys_the_catalog_reads():
    settings = yaml.safe_load(SETTINGS.read_text())
    assert set(settings) == {"usage"}, f"{SETTINGS.name}: expected only `usage`, found {sorted(settings)}"
    usage = settings["usage"]
    assert set(usage) <= {"mandatory-flags", "software-stack-deployment", "report"}, sorted(usage)

    flags = usage["mandatory-flags"]
    assert isinstance(flags["desc"], str) and flags["desc"].strip()
    words = shlex.split(flags["flags"]) if isinstance(flags["flags"], str) else flags["flags"]
    for option, value in zip(words, words[1:]):
        if option == "--configfile":
            assert (REPO / value).is_file(), f"{SETTINGS.name}: mandatory flag --configfile {value}: no such file"

    deployment = usage["software-stack-deployment"]
    assert set(deployment) <= DEPLOYMENT_KEYS, f"{SETTINGS.name}: unknown deployment keys {sorted(set(deployment) - DEPLOYMENT_KEYS)}"
    assert all(isinstance(works, bool) for works in deployment.values()), deployment
    assert deployment["conda"] is True
    assert (REPO / "workflow" / "envs" / "segbench.yaml").is_file()
    assert isinstance(usage.get("report", False), bool)


def test_catalog_finds_the_main_snakefile():
    """The catalog takes workflow/ as the workflow folder whenever it exists, and skips a
    repository without workflow/Snakefile there ("Skipped ... because of missing Snakefile")."""
    workflow = REPO / "workflow" if (REPO / "workflow").is_dir() else REPO
    assert (workflow / "Snakefile").is_file(), (
        f"{(workflow / 'Snakefile').relative_to(REPO)} is missing: since workflow/ exists, the catalog looks for the "
        "main Snakefile there (root Snakefile is used only without a workflow/ folder); move Snakefile to "
        "workflow/Snakefile, which snakemake also finds by default"
    )


def test_config_readme_is_current():
    assert CONFIG_README.is_file(), f"{CONFIG_README} is missing; write it with `{REGENERATE_COMMAND}`"
    assert config_readme(SCHEMA) == CONFIG_README.read_text(), (
        f"config/README.md does not match {SCHEMA.relative_to(REPO)}; regenerate it with `{REGENERATE_COMMAND}`"
    )


def test_snakefiles_are_formatted():
    snakefiles = [path for path in (REPO / "Snakefile", REPO / "workflow" / "Snakefile") if path.is_file()]
    snakefiles += sorted((REPO / "workflow" / "rules").glob("*.smk"))
    names = [str(path.relative_to(REPO)) for path in snakefiles]
    result = run_tool([str(BIN / "snakefmt"), "--check", "-v", *names], cwd=REPO, check=False)
    assert result.returncode == 0, (
        f"snakefmt --check fails (the catalog runs it); `snakefmt --diff {' '.join(names)}` shows the changes and "
        f"`snakefmt {' '.join(names)}` makes them:\n{result.stderr[-3000:]}"
    )


# -- the generator copes with every construct a schema may use ----------------------------------------


EVERY_CONSTRUCT = """
$schema: "https://json-schema.org/draft/2020-12/schema"
description: A test schema.
type: object
additionalProperties: false
required: [jobs]
definitions:
  name: {type: string, enum: [alpha, beta]}
  positive: {type: integer, minimum: 1}
properties:
  jobs:
    type: array
    minItems: 1
    items:
      type: object
      additionalProperties: false
      required: [name]
      properties:
        name: {$ref: "#/definitions/name"}
        retries: {$ref: "#/definitions/positive", default: 2, description: Attempts after the first.}
  limits:
    type: object
    default: {}
    propertyNames: {$ref: "#/definitions/name"}
    additionalProperties:
      type: object
      properties:
        cpu: {type: [integer, "null"], minimum: 1, default: null}
  hashes:
    type: object
    additionalProperties: {type: string, pattern: "^[0-9a-f]{8}$"}
  grid:
    type: [array, "null"]
    items: {type: array, items: {type: number, exclusiveMinimum: 0}, minItems: 2, maxItems: 2}
    default: [[0.5, 1.0e-05]]
  period:
    oneOf:
      - {$ref: "#/definitions/positive"}
      - {const: auto}
    default: auto
    description: "Steps | or `auto`; see <period>."
"""


def test_config_readme_renders_every_schema_construct(tmp_path):
    schema = tmp_path / "config.schema.yaml"
    schema.write_text(EVERY_CONSTRUCT)
    text = config_readme(schema)
    assert text == config_readme(schema)
    for row in [
        "| `jobs` | array of object |  | required; at least 1 item |  |",
        "| `jobs[].name` | string |  | required; one of `alpha`, `beta` |  |",
        "| `jobs[].retries` | integer | `2` | >= 1 | Attempts after the first. |",
        "| `limits` | map of object | `{}` | keys: one of `alpha`, `beta` |  |",
        "| `limits.<name>.cpu` | integer or null | `null` | >= 1 |  |",
        "| `hashes` | map of string |  | values: matches `^[0-9a-f]{8}$` |  |",
        "| `grid` | array of array of number, or null | `[[0.5, 1.0e-05]]` | each item (exactly 2 items, each item > 0) |  |",
        "| `period` | integer or string | `auto` | integer >= 1 or exactly `auto` | Steps \\| or `auto`; see &lt;period>. |",
    ]:
        assert row in text.splitlines(), f"missing row {row!r} in:\n{text}"
    assert "From the schema: A test schema." in text

    schema.write_text(EVERY_CONSTRUCT.replace("Attempts after the first.", "Retries."))
    assert "| `jobs[].retries` | integer | `2` | >= 1 | Retries. |" in config_readme(schema)


@pytest.mark.parametrize("construct, message", [
    ("allOf: [{type: integer}]", "uses allOf"),
    ("$ref: 'other.yaml#/x'", "is not local"),
    ("$ref: '#/definitions/missing'", "points at nothing"),
])
def test_config_readme_refuses_what_it_cannot_render(tmp_path, construct, message):
    schema = tmp_path / "config.schema.yaml"
    schema.write_text(f"type: object\nproperties:\n  odd: {{{construct}}}\n")
    with pytest.raises(ValueError, match=message) as raised:
        config_readme(schema)
    assert str(schema) in str(raised.value) and "odd" in str(raised.value)


def test_the_snakemake_report_texts_are_current():
    """workflow/report/ (the report rule's front page and captions) is written from segbench.report.files."""
    from segbench.report.files import report_texts

    stale = [str(path.relative_to(REPO)) for path, text in report_texts().items()
             if not path.is_file() or path.read_text(encoding="utf-8") != text]
    assert not stale, f"{stale} differ from segbench/report/files.py; regenerate with `python -m segbench.report.files`"
