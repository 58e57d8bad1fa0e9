"""``segbench report``: the paper's Tables 1-5 beside ours, figures, README.md and summary.json.

Hook-up in segbench/cli.py (this module imports nothing heavy until ``run`` is called)::

    from segbench import report
    parser = commands.add_parser("report", help=report.HELP)
    report.add_arguments(parser)
    parser.set_defaults(handler=report.run)
"""
from __future__ import annotations

import argparse
import sys

HELP = "render reports/ (tables, figures, README.md, summary.json, plots/ for dvc plots) from results/"


def build_reports(results_dir="results", out_dir="reports", data_root="data",
                  paper_results="config/paper_results.csv", literature_results="config/literature_results.csv",
                  paper_claims="config/paper_claims.yaml") -> dict:
    from segbench.report.build import build_reports as build

    return build(results_dir, out_dir, data_root, paper_results, literature_results, paper_claims)


def report_files(cfg: dict | None) -> list:
    """Every table and figure file the report writes for ``cfg``: ReportFile(path, caption, category)."""
    from segbench.report.files import report_files as files

    return files(cfg)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", default="results", help="results folder written by the workflow")
    parser.add_argument("--out", default="reports", help="folder for the report files")
    parser.add_argument("--data", default="data", help="data root (images for the qualitative figures)")
    parser.add_argument("--paper", default="config/paper_results.csv", help="the paper's numbers")
    parser.add_argument("--literature", default="config/literature_results.csv",
                        help="published PraNet and Polyp-PVT numbers (Table 2b)")
    parser.add_argument("--claims", default="config/paper_claims.yaml", help="the paper's claims, made checkable")


def run(args: argparse.Namespace) -> None:
    from segbench.report.collect import collect
    from segbench.report.plot_data import PLOT_DIR, write_plot_data

    build_reports(args.results, args.out, args.data, args.paper, args.literature, args.claims)
    write_plot_data(collect(args.results), args.out)
    print(f"wrote {args.out}/README.md, tables, figures, summary.json and {PLOT_DIR}/ (dvc plots)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="segbench report", description=HELP)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        run(args)
    except ValueError as error:  # malformed inputs: the message names the file
        print(f"segbench report: error: {error}", file=sys.stderr)
        return 2
    return 0
