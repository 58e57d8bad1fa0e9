"""``segbench data ...``: download, prepare, split, cache, check, synthesize, sources.

The top-level CLI plugs this in with ``segbench.data.cli.add_subparsers(subparsers)``; every
subcommand sets ``handler`` (``args.handler(args)``: returns on success; on failure prints the error,
one line that starts with the offending file, and exits with status 2). ``python -m segbench.data.cli
data ...`` runs the same commands.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from segbench.data.registry import ARCHIVES, DATASET_NAMES


def _root(args) -> Path:
    return Path(args.root)


def _processed(args) -> Path:
    return _root(args) / "processed" / args.dataset


def _hash_pairs(values: list[str]) -> dict[str, str]:
    hashes = {}
    for value in values or []:
        name, separator, digest = value.partition("=")
        if not separator or len(digest) != 64:
            raise ValueError(f"--sha256 expects NAME=<64 hex digits>, got {value!r}")
        hashes[name] = digest
    return hashes


def _synthetic_settings(args):
    from segbench.data.synthetic import SyntheticSettings

    return SyntheticSettings(seed=args.seed, n_train=args.n_train, n_test=args.n_test, n_isic=args.n_isic,
                             min_side=args.min_side, max_side=args.max_side)


def cmd_download(args) -> None:
    from segbench.data.download import download_archive

    path = download_archive(args.archive, _root(args) / "raw", url=args.url, sha256=args.sha256,
                            retries=args.retries, progress=not args.no_progress,
                            **_caps(args))
    print(f"{path}: ok")


def cmd_prepare(args) -> None:
    from segbench.data.prepare import prepare_real, prepare_synthetic

    out = Path(args.out) if args.out else _processed(args)
    if args.source == "synthetic":
        report = prepare_synthetic(args.dataset, _synthetic_settings(args), out, progress=not args.no_progress)
    else:
        report = prepare_real(
            args.dataset, _root(args) / "raw", out, isic_split=args.isic_split,
            known_hashes=_hash_pairs(args.sha256), expected_count=args.expected_count,
            max_uncompressed=args.max_uncompressed, max_member=args.max_member, progress=not args.no_progress,
            workers=args.workers,
        )
    print(f"{out}: {report['n_pairs']} pairs prepared ({len(report['warnings'])} warning(s))")
    for warning in report["warnings"]:
        print(f"  warning: {warning}")


def cmd_split(args) -> None:
    from segbench.data.splits import write_split

    out = Path(args.out) if args.out else _root(args) / "splits" / f"{args.dataset}.csv"
    counts = write_split(args.dataset, _processed(args), out, args.val_fraction, args.seed, args.user_split)
    print(f"{out}: " + ", ".join(f"{split} {count}" for split, count in counts.items()))


def cmd_cache(args) -> None:
    from segbench.data.cache import build_cache, cache_file

    out = Path(args.out) if args.out else cache_file(_root(args), args.dataset, args.size)
    split_file = _root(args) / "splits" / f"{args.dataset}.csv"
    count = build_cache(args.dataset, _processed(args), split_file, args.size, out,
                        progress=not args.no_progress, workers=args.workers)
    print(f"{out}: {count} images at {args.size}x{args.size}")


def cmd_check(args) -> None:
    from segbench.data.check import check_dataset, format_report

    report, problems = check_dataset(args.dataset, _root(args))
    print(json.dumps(report, indent=2) if args.json else format_report(report, problems))
    if problems:
        raise SystemExit(1)


def cmd_synthesize(args) -> None:
    from segbench.data.prepare import prepare_synthetic

    from segbench.data.registry import get_dataset

    settings = _synthetic_settings(args)
    datasets = [get_dataset(name).name for name in args.datasets] or DATASET_NAMES
    for dataset in datasets:
        report = prepare_synthetic(dataset, settings, _root(args) / "processed" / dataset, progress=False)
        print(f"{_root(args) / 'processed' / dataset}: {report['n_pairs']} synthetic pairs")


def cmd_sources(args) -> None:
    from segbench.data.registry import DATASETS, archives_for, get_dataset

    raw = _root(args) / "raw"
    for name in [get_dataset(name).name for name in args.datasets] or DATASET_NAMES:
        print(f"{name}: {DATASETS[name].title}; archives: {', '.join(archives_for(name, args.isic_split))}")
    print()
    for archive in ARCHIVES.values():
        state = "present" if (raw / archive.name).exists() else "missing"
        print(f"{raw / archive.name} [{state}] <- {archive.manual_url} (size: {archive.approx_size})")


def _caps(args) -> dict:
    from segbench.data.archives import MAX_MEMBER_BYTES, MAX_TOTAL_BYTES

    return {"max_total": args.max_uncompressed or MAX_TOTAL_BYTES, "max_member": args.max_member or MAX_MEMBER_BYTES}


def _add_caps(parser: argparse.ArgumentParser) -> None:
    from segbench.data.archives import MAX_MEMBER_BYTES, MAX_TOTAL_BYTES

    parser.add_argument("--max-uncompressed", type=int, metavar="BYTES",
                        help=f"zip bomb guard: what an archive may unpack to in total (default {MAX_TOTAL_BYTES})")
    parser.add_argument("--max-member", type=int, metavar="BYTES",
                        help=f"zip bomb guard: what one member may unpack to (default {MAX_MEMBER_BYTES})")


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", default="data", help="data root (config data.root)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_synthetic(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("synthetic source (config data.synthetic)")
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--n-train", type=int, default=24)
    group.add_argument("--n-test", type=int, default=8)
    group.add_argument("--n-isic", type=int, default=None, help="images per ISIC stand-in (default n-train + n-test)")
    group.add_argument("--min-side", type=int, default=80)
    group.add_argument("--max-side", type=int, default=128)


def _guarded(handler):
    def run(args) -> None:
        from segbench.data.archives import ArchiveReadError, UnsafeArchiveError
        from segbench.data.cache import CacheError
        from segbench.data.download import DownloadError
        from segbench.data.prepare import PrepareError
        from segbench.data.splits import SplitError

        try:
            handler(args)
        except (ArchiveReadError, UnsafeArchiveError, CacheError, DownloadError, PrepareError, SplitError,
                OSError, ValueError, KeyError) as error:
            message = error.args[0] if isinstance(error, KeyError) and error.args else error
            print(f"segbench data {args.data_command}: error: {message}", file=sys.stderr)
            raise SystemExit(2) from None

    return run


def add_subparsers(subparsers) -> argparse.ArgumentParser:
    """Register the ``data`` command group on the top-level CLI's subparsers."""
    data = subparsers.add_parser("data", help="datasets: download, prepare, split, cache, check",
                                 description=__doc__.splitlines()[0])
    commands = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")

    download = commands.add_parser("download", help="fetch one archive into ROOT/raw/ (verified)")
    download.add_argument("archive", choices=sorted(ARCHIVES), metavar="ARCHIVE",
                          help=f"archive file name: {', '.join(ARCHIVES)}")
    download.add_argument("--url", help="override the source URL (config data.urls); $SEGBENCH_MIRROR wins")
    download.add_argument("--sha256", help="known sha256 (config data.sha256)")
    download.add_argument("--retries", type=int, default=2, help="retries after a network error")
    _add_caps(download)
    _add_common(download)
    download.set_defaults(handler=_guarded(cmd_download))

    prepare = commands.add_parser("prepare", help="archives -> ROOT/processed/DATASET (checked, atomic)")
    prepare.add_argument("dataset", choices=DATASET_NAMES)
    prepare.add_argument("--source", choices=["real", "synthetic"], default="real")
    prepare.add_argument("--out", help="default ROOT/processed/DATASET")
    prepare.add_argument("--isic-split", choices=["vmunet_archive", "seeded"], default="vmunet_archive")
    prepare.add_argument("--sha256", action="append", metavar="ARCHIVE=HASH", help="known archive hash (repeatable)")
    prepare.add_argument("--expected-count", type=int, help="override the registry's pair count")
    _add_caps(prepare)
    prepare.add_argument("--workers", type=int, default=1, help="threads converting images")
    _add_synthetic(prepare)
    _add_common(prepare)
    prepare.set_defaults(handler=_guarded(cmd_prepare))

    split = commands.add_parser("split", help="write ROOT/splits/DATASET.csv")
    split.add_argument("dataset", choices=DATASET_NAMES)
    split.add_argument("--out", help="default ROOT/splits/DATASET.csv")
    split.add_argument("--val-fraction", type=float, default=0.1)
    split.add_argument("--seed", type=int, default=0)
    split.add_argument("--user-split", help="CSV id,split that replaces the seeded rule")
    _add_common(split)
    split.set_defaults(handler=_guarded(cmd_split))

    cache = commands.add_parser("cache", help="write ROOT/cache/DATASET_SIZE.npz (resized uint8 arrays)")
    cache.add_argument("dataset", choices=DATASET_NAMES)
    cache.add_argument("--size", type=int, required=True)
    cache.add_argument("--out", help="default ROOT/cache/DATASET_SIZE.npz")
    cache.add_argument("--workers", type=int, default=1, help="threads decoding and resizing images")
    _add_common(cache)
    cache.set_defaults(handler=_guarded(cmd_cache))

    check = commands.add_parser("check", help="print the integrity report of a prepared dataset")
    check.add_argument("dataset", choices=DATASET_NAMES)
    check.add_argument("--json", action="store_true", help="print integrity.json as it is")
    _add_common(check)
    check.set_defaults(handler=_guarded(cmd_check))

    synthesize = commands.add_parser("synthesize", help="prepare synthetic stand-ins for the datasets")
    synthesize.add_argument("datasets", nargs="*", metavar="DATASET", help="default: all eight")
    _add_synthetic(synthesize)
    _add_common(synthesize)
    synthesize.set_defaults(handler=_guarded(cmd_synthesize))

    sources = commands.add_parser("sources", help="list the archives each dataset needs and where they go")
    sources.add_argument("datasets", nargs="*", metavar="DATASET")
    sources.add_argument("--isic-split", choices=["vmunet_archive", "seeded"], default="vmunet_archive")
    _add_common(sources)
    sources.set_defaults(handler=_guarded(cmd_sources))
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="segbench")
    add_subparsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    args.handler(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
