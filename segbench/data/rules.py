"""Values the data rules of ``workflow/rules/data.smk`` derive from the config (kept here, not in the .smk,
so the rules stay declarations and the logic is importable and testable)."""
from __future__ import annotations

import shlex

from segbench.data.registry import archives_for, get_dataset


def option(flag: str, value) -> str:
    return f"{flag} {shlex.quote(str(value))}" if value is not None else ""


def archive_paths(config: dict, dataset: str) -> list[str]:
    """Archives a dataset is prepared from (none for the synthetic source)."""
    data = config["data"]
    if data["source"] == "synthetic":
        return []
    return [f"{data['root']}/raw/{name}" for name in archives_for(dataset, data["isic_split"])]


def download_options(config: dict, archive: str) -> str:
    data = config["data"]
    return " ".join(filter(None, [option("--url", data["urls"].get(archive)),
                                  option("--sha256", data["sha256"].get(archive))]))


def prepare_options(config: dict, dataset: str) -> str:
    """Everything a prepared folder depends on in the config; as a param, a change reruns preparation."""
    data = config["data"]
    if data["source"] == "synthetic":
        synthetic = data["synthetic"]
        return " ".join(filter(None, ["--source synthetic"] + [
            option(f"--{key.replace('_', '-')}", synthetic[key])
            for key in ("seed", "n_train", "n_test", "min_side", "max_side")
        ] + [option("--n-isic", synthetic.get("n_isic"))]))  # optional: data.smk also runs without the schema
    names = archives_for(dataset, data["isic_split"])
    return " ".join(filter(None, [
        "--source real",
        option("--isic-split", data["isic_split"]) if get_dataset(dataset).kind == "isic" else "",
        option("--expected-count", data.get("expected_counts", {}).get(dataset)),
        *(option("--sha256", f"{name}={data['sha256'][name]}") for name in names if name in data["sha256"]),
    ]))


def user_split(config: dict, dataset: str) -> list[str]:
    path = config["data"].get("split_files", {}).get(dataset)
    return [path] if path else []


def split_options(config: dict, dataset: str) -> str:
    data = config["data"]
    return " ".join(filter(None, [
        option("--val-fraction", data["val_fraction"]),
        option("--seed", data["split_seed"]),
        *(option("--user-split", path) for path in user_split(config, dataset)),
    ]))


def protocol_datasets(config: dict) -> list[str]:
    protocols = config["protocols"].values()
    return sorted({p["train"] for p in protocols} | {t for p in protocols for t in p["test"]})


def data_targets(config: dict) -> list[str]:
    """Prepared folders, split files and caches of every dataset the protocols use."""
    root = config["data"]["root"]
    return [
        path
        for dataset in protocol_datasets(config)
        for path in (
            f"{root}/processed/{dataset}/integrity.json",
            f"{root}/splits/{dataset}.csv",
            f"{root}/cache/{dataset}_{config['image_size']}.npz",
        )
    ]


def root_of(path: str, depth: int) -> str:
    """The data root of an output path ``depth`` folders below it (data/splits/x.csv, depth 1 -> data)."""
    parts = str(path).split("/")
    return "/".join(parts[: len(parts) - depth - 1]) or "."
