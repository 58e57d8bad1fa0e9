"""config/README.md, generated from the config schema: every key (nested keys as dotted paths)
with its type, default, allowed values and description.

``python -m segbench.config_doc`` rewrites config/README.md from
workflow/schemas/config.schema.yaml; tests/test_catalog.py fails while the two disagree. The
schema is read afresh on every call, and a schema keyword this module does not know is an error,
so a new construct is never dropped from the page silently.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import yaml

from segbench.config import SCHEMA_PATH
from segbench.io import atomic_write

README_PATH = SCHEMA_PATH.parents[2] / "config" / "README.md"
REGENERATE_COMMAND = "python -m segbench.config_doc"

# Keywords rendered below, and those with nothing to render (annotations, containers of $ref targets).
_RENDERED = {
    "type", "enum", "const", "default", "description", "examples", "properties", "additionalProperties",
    "propertyNames", "required", "minProperties", "maxProperties", "items", "minItems", "maxItems",
    "uniqueItems", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "pattern",
    "minLength", "maxLength", "format", "oneOf", "anyOf", "$ref",
}
_SILENT = {"$schema", "$id", "$comment", "title", "definitions", "$defs"}

_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", type(None): "null",
               list: "array", dict: "object"}


class _Schema:
    """One schema document: resolves its local ``$ref``s and checks every keyword is known."""

    def __init__(self, path: Path):
        self.path = path
        self.root = yaml.safe_load(path.read_text())

    def resolve(self, node: dict, key: str) -> dict:
        """``node`` with its ``$ref`` chain merged in (the referring node's own keywords win)."""
        unknown = sorted(set(node) - _RENDERED - _SILENT)
        if unknown:
            raise ValueError(
                f"{self.path}: {key or '(top level)'} uses {', '.join(unknown)}, which segbench/config_doc.py "
                f"does not render; expected only {', '.join(sorted(_RENDERED))}; teach config_doc.py the keyword"
            )
        if "$ref" not in node:
            return node
        target = self.root
        reference = node["$ref"]
        if not reference.startswith("#/"):
            raise ValueError(f"{self.path}: {key}: $ref {reference!r} is not local; expected '#/definitions/<name>'")
        try:
            for part in reference[2:].split("/"):
                target = target[part]
        except (KeyError, TypeError):
            raise ValueError(f"{self.path}: {key}: $ref {reference!r} points at nothing; define it in the schema") from None
        own = {name: value for name, value in node.items() if name != "$ref"}
        return {**self.resolve(target, key), **own}


def _yaml(value) -> str:
    """A value as it is written in the YAML config (``1.0e-05``, not JSON's ``1e-05``, which
    YAML reads as a string)."""
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=1 << 20)
    return text.removesuffix("\n...\n").strip()


def _literal(value) -> str:
    return f"`{_yaml(value)}`"


def _json_type(value) -> str:
    return _JSON_TYPES[type(value)]


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def _either(kinds: list[str]) -> str:
    """"integer or null", but "array of integer, or null" (not an array of integer-or-null)."""
    return (", or " if any(" " in kind for kind in kinds) else " or ").join(kinds)


def _type_names(schema: dict) -> list[str]:
    declared = schema.get("type")
    if declared is not None:
        return declared if isinstance(declared, list) else [declared]
    if "const" in schema:
        return [_json_type(schema["const"])]
    if "enum" in schema:
        return list(dict.fromkeys(_json_type(value) for value in schema["enum"]))
    return []


class _Page:
    def __init__(self, schema: _Schema):
        self.schema = schema

    def type_text(self, node: dict, key: str) -> str:
        """What kind of value: "integer or null", "array of string", "map of object"."""
        alternatives = node.get("oneOf") or node.get("anyOf")
        if alternatives:
            kinds = [self.type_text(self.schema.resolve(option, key), key) for option in alternatives]
            return _either(list(dict.fromkeys(kinds)))
        names = []
        for name in _type_names(node) or ["any"]:
            if name == "array" and isinstance(node.get("items"), dict):
                name = f"array of {self.type_text(self.schema.resolve(node['items'], key), key)}"
            elif name == "object" and isinstance(node.get("additionalProperties"), dict) and "properties" not in node:
                name = f"map of {self.type_text(self.schema.resolve(node['additionalProperties'], key), key)}"
            names.append(name)
        return _either(names)

    def constraints(self, node: dict, key: str) -> list[str]:
        """The allowed values of ``node`` as short phrases ("> 0", "one of `a`, `b`")."""
        alternatives = node.get("oneOf") or node.get("anyOf")
        if alternatives:
            phrases = []
            for option in alternatives:
                option = self.schema.resolve(option, key)
                own = self.constraints(option, key)
                phrases.append(own[0] if "const" in option else " ".join([self.type_text(option, key), *own]))
            return [" or ".join(phrases)]
        phrases = []
        if "const" in node:
            phrases.append(f"exactly {_literal(node['const'])}")
        if "enum" in node:
            phrases.append("one of " + ", ".join(_literal(value) for value in node["enum"]))
        for keyword, sign in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<")):
            if keyword in node:
                phrases.append(f"{sign} {_yaml(node[keyword])}")
        if "multipleOf" in node:
            phrases.append(f"a multiple of {_yaml(node['multipleOf'])}")
        if "minLength" in node:
            phrases.append(f"at least {_plural(node['minLength'], 'character')}")
        if "maxLength" in node:
            phrases.append(f"at most {_plural(node['maxLength'], 'character')}")
        if "pattern" in node:
            phrases.append(f"matches `{node['pattern']}`")
        if "format" in node:
            phrases.append(f"format {node['format']}")
        low, high = node.get("minItems"), node.get("maxItems")
        if low is not None and low == high:
            phrases.append(f"exactly {_plural(low, 'item')}")
        else:
            if low is not None:
                phrases.append(f"at least {_plural(low, 'item')}")
            if high is not None:
                phrases.append(f"at most {_plural(high, 'item')}")
        if node.get("uniqueItems"):
            phrases.append("no duplicates")
        if isinstance(node.get("items"), dict):
            item = self.schema.resolve(node["items"], key)
            if not self._has_keys(item, key):
                item_phrases = self.constraints(item, key)
                if item_phrases:
                    joined = ", ".join(item_phrases)
                    phrases.append(f"each item ({joined})" if "array" in _type_names(item) else f"each item {joined}")
        if "minProperties" in node:
            phrases.append(f"at least {_plural(node['minProperties'], 'key')}")
        if "maxProperties" in node:
            phrases.append(f"at most {_plural(node['maxProperties'], 'key')}")
        if isinstance(node.get("propertyNames"), dict):
            names = self.constraints(self.schema.resolve(node["propertyNames"], key), key)
            if names:
                phrases.append("keys: " + ", ".join(names))
        values = node.get("additionalProperties")
        if isinstance(values, dict) and "properties" not in node:
            value = self.schema.resolve(values, key)
            if not self._has_keys(value, key):
                value_phrases = self.constraints(value, key)
                if value_phrases:
                    phrases.append("values: " + ", ".join(value_phrases))
        if "properties" in node and node.get("additionalProperties") is False:
            phrases.append("only the keys below")
        return phrases

    def _has_keys(self, node: dict, key: str) -> bool:
        """Whether ``node`` gets rows of its own below its parent's row (it has named keys)."""
        if "properties" in node:
            return True
        nested = [node.get("additionalProperties"), node.get("items"), *node.get("oneOf", node.get("anyOf", []))]
        return any(self._has_keys(self.schema.resolve(part, key), key) for part in nested if isinstance(part, dict))

    def rows(self, node: dict, prefix: str):
        """(key, type, default, allowed, description) of every key under ``node``, depth first."""
        required = set(node.get("required", []))
        for name, child in node.get("properties", {}).items():
            key = f"{prefix}.{name}" if prefix else name
            child = self.schema.resolve(child, key)
            allowed = (["required"] if name in required else []) + self.constraints(child, key)
            description = " ".join(str(child.get("description", "")).split())
            if "examples" in child:
                description += (" " if description else "") + "Examples: " + ", ".join(_literal(e) for e in child["examples"]) + "."
            default = _literal(child["default"]) if "default" in child else ""
            yield key, self.type_text(child, key), default, "; ".join(allowed), description
            yield from self.nested_rows(child, key)

    def nested_rows(self, node: dict, key: str):
        yield from self.rows(node, key)
        values = node.get("additionalProperties")
        if isinstance(values, dict):
            names = node.get("propertyNames", {})
            placeholder = names["$ref"].rsplit("/", 1)[-1] if "$ref" in names else "name"
            yield from self.nested_rows(self.schema.resolve(values, key), f"{key}.<{placeholder}>")
        items = node.get("items")
        if isinstance(items, dict):
            yield from self.nested_rows(self.schema.resolve(items, key), f"{key}[]")
        for option in node.get("oneOf", node.get("anyOf", [])):
            yield from self.nested_rows(self.schema.resolve(option, key), key)


def _cell(text: str) -> str:
    """One table cell: on one line, pipes escaped, and no ``<word>`` outside code spans (a
    renderer would take it for an HTML tag and hide it)."""
    parts = re.split(r"(`[^`]*`)", re.sub(r"\s+", " ", text).strip())
    parts = [part if part.startswith("`") else re.sub(r"<(?=[A-Za-z/!?])", "&lt;", part) for part in parts]
    return "".join(parts).replace("|", "\\|")


def config_readme(schema_path: Path = SCHEMA_PATH) -> str:
    """The text of config/README.md for the schema at ``schema_path`` (read now)."""
    schema = _Schema(schema_path)
    root = schema.resolve(schema.root, "")
    page = _Page(schema)
    relative_schema = "workflow/schemas/" + schema_path.name
    lines = [
        "# Configuration",
        "",
        f"<!-- Generated from {relative_schema} by `{REGENERATE_COMMAND}`; edit the schema, not this file. -->",
        "",
        "Two configurations ship with segbench:",
        "",
        "- `config/config.yaml`: the paper protocol (real data, the paper's settings) on GPU. Snakemake runs it",
        "  when no `--configfile` is given: `snakemake --cores 8 --use-conda`.",
        "- `config/smoke.yaml`: the embedded synthetic run on CPU (toy model widths, minutes; its numbers are not",
        "  comparable to the paper), as `make smoke` runs it: `snakemake --cores 2 --configfile config/smoke.yaml`.",
        "",
        "To run with another, copy one of them, edit the copy and name it: `snakemake --configfile my.yaml`",
        "(the `segbench` commands take it as `--config my.yaml`). The file replaces `config/config.yaml` as a",
        "whole; nothing is merged, and every key it leaves out takes the default below. Snakemake and the",
        f"`segbench` commands check it against `{relative_schema}` before anything runs.",
        "",
    ]
    description = " ".join(str(root.get("description", "")).split())
    if description:
        lines += [f"From the schema: {description}", ""]
    lines += [
        "## Keys",
        "",
        "A dotted key is nested in the file (`train.lr` is `lr:` under `train:`), a part in angle brackets is a",
        "key you choose (`<dataset>`: a dataset name), and `[]` stands for each item of a list. Defaults are",
        "written as in the YAML file; an empty default means the key has none.",
        "",
        "| key | type | default | allowed | description |",
        "|---|---|---|---|---|",
    ]
    for row in page.rows(root, ""):
        key, *rest = row
        lines.append("| " + " | ".join([f"`{key}`", *(_cell(cell) for cell in rest)]) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=REGENERATE_COMMAND, description="Write config/README.md from the config schema.")
    parser.add_argument("--schema", type=Path, default=SCHEMA_PATH)
    parser.add_argument("--output", type=Path, default=README_PATH)
    args = parser.parse_args(argv)
    text = config_readme(args.schema)
    with atomic_write(args.output) as handle:
        handle.write(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
