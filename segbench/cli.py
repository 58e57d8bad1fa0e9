"""The one command line: ``segbench <command>``. Every Snakemake rule is one call of it."""
from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
from pathlib import Path

from segbench.config import ConfigError, load_config, variant_spec


def _gpu_slot_for(device: str):
    """Hold one GPU for this process (segbench.gpu_slots) unless the config pins it to the CPU.

    Must run before anything touches CUDA: the slot is chosen by setting CUDA_VISIBLE_DEVICES, which
    CUDA reads once. gpu_slot() yields None when no GPU is visible.
    """
    if device == "cpu":
        return contextlib.nullcontext()
    from segbench.gpu_slots import gpu_slot

    return gpu_slot()


def _train(args) -> None:
    from segbench.train import train_run

    cfg = load_config(args.config, variants=[args.variant])
    with _gpu_slot_for(cfg["train"]["device"]):
        train_run(cfg, args.protocol, args.variant, args.seed, args.out, restart=args.restart)


def _pretrain(args) -> None:
    from segbench.config import check_model_arguments
    from segbench.pretrain import pretrain_encoder, pretraining_model

    cfg = load_config(args.config, variants=())
    model = pretraining_model(cfg, args.out)
    check_model_arguments(cfg, args.config, [model])
    with _gpu_slot_for(cfg["train"]["device"]):
        pretrain_encoder(cfg, model, args.out)


def _evaluate(args) -> None:
    from segbench.evaluate import evaluate_run
    from segbench.fingerprint import check_manifest
    from segbench.nn.selective_scan import set_default_backend
    from segbench.train import load_trained, select_device

    # The run's model is rebuilt from its manifest, whose arguments were checked when it trained.
    cfg = load_config(args.config, variants=())
    set_default_backend(cfg["scan_backend"])
    with _gpu_slot_for(cfg["train"]["device"]):
        device = select_device(cfg["train"]["device"])
        model, card, manifest = load_trained(args.run, device)
        check_manifest(cfg, manifest, args.run)
        meta = {key: manifest[key] for key in ("protocol", "variant", "model", "seed", "fingerprint_sha256")}
        for test_set in args.test_sets:
            metrics = evaluate_run(model, card, cfg, test_set, Path(args.out) / test_set, meta, device)
            print(json.dumps({"test_set": test_set, **{key: metrics[key] for key in ("n_images", "pooled", "per_image")}},
                             indent=2))


def _score(args) -> None:
    from segbench.evaluate import format_score, score_folders
    from segbench.io import atomic_write

    text = format_score(score_folders(args.pred_dir, args.gt_dir))
    if args.out:
        with atomic_write(args.out) as handle:
            handle.write(text + "\n")
    print(text)


def _profile(args) -> None:
    from segbench.io import write_json
    from segbench.nn.selective_scan import set_default_backend
    from segbench.profile import profile_model
    from segbench.train import select_device

    if args.config:
        variant = args.variant or args.model
        cfg = load_config(args.config, variants=[variant])
        model_name, kwargs = variant_spec(cfg, variant)
        if cfg["profile"]["configuration"] == "default":
            kwargs = {}
        size, warmup, runs = cfg["profile"]["size"], cfg["profile"]["warmup"], cfg["profile"]["runs"]
        device_name, backend, amp = cfg["profile"]["device"], cfg["scan_backend"], cfg["train"]["amp"]
    else:
        variant, model_name, kwargs = args.model, args.model, {}
        size, warmup, runs, device_name, backend, amp = args.size, args.warmup, args.runs, args.device, "auto", False
    set_default_backend(backend)
    with _gpu_slot_for(device_name):
        result = profile_model(model_name, kwargs, size, select_device(device_name), warmup, runs, amp)
    result["variant"] = variant
    if args.out:
        write_json(args.out, result)
    print(json.dumps(result, indent=2, sort_keys=True))


def _fetch_weights(args) -> None:
    """Download a model card's pretrained file (pooch: retries, progress, temp name then rename) and
    check it against its recorded sha256."""
    import pooch

    from segbench.registry import get_card

    source = get_card(args.model).pretrained
    if not source:
        raise ValueError(f"model {args.model!r} has no pretrained weights in its card")
    out = Path(args.out)
    if out.name != source["filename"]:
        raise ValueError(f"{out} should be named {source['filename']} (the file {source['url']} serves)")
    try:
        pooch.retrieve(source["url"], known_hash=source["sha256"] and f"sha256:{source['sha256']}",
                       fname=out.name, path=out.parent, progressbar=True)
    except Exception as error:
        raise FileNotFoundError(
            f"could not download {source['url']} ({error}); download it by hand and save it as {out}"
        ) from None
    from segbench.data.download import DownloadError, verify_archive

    try:  # no published hash: the first download's is recorded in weights/sha256.lock and enforced after
        verify_archive(out, {out.name: source["sha256"]} if source["sha256"] else {})
    except DownloadError as error:
        out.unlink()  # a file that fails its hash never stays where a good one is expected
        raise ValueError(str(error)) from None


def _models(args) -> None:
    from segbench.registry import get_card, list_models, model_import_errors

    for name in list_models():
        card = get_card(name)
        print(f"{name:12s} output={card.output:13s} needs_mamba_ssm={card.needs_mamba_ssm!s:5s} {card.paper}")
    for path, error in model_import_errors().items():
        print(f"BROKEN {path}: {error}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segbench", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train one (protocol, variant, seed) run; resumes if interrupted")
    train.add_argument("--config", required=True)
    train.add_argument("--protocol", required=True)
    train.add_argument("--variant", required=True, help="a model name from the config, or an ablation cell")
    train.add_argument("--seed", type=int, required=True)
    train.add_argument("--out", required=True, help="run folder (model.pt, train_log.csv, manifest.json)")
    train.add_argument("--restart", action="store_true",
                       help="discard the run folder's checkpoints and train anew (a checkpoint made with another "
                            "config is otherwise refused, never resumed)")
    train.set_defaults(handler=_train)

    pretrain = commands.add_parser("pretrain", help="write a synthetic-pretraining encoder file (pretrain.models)")
    pretrain.add_argument("--config", required=True)
    pretrain.add_argument("--out", required=True, help="the encoder file, as named under pretrain.models")
    pretrain.set_defaults(handler=_pretrain)

    evaluate = commands.add_parser("evaluate", help="score a trained run on its test sets")
    evaluate.add_argument("--config", required=True)
    evaluate.add_argument("--run", required=True, help="run folder written by segbench train")
    evaluate.add_argument("--test-sets", nargs="+", required=True, metavar="TEST_SET")
    evaluate.add_argument("--out", required=True,
                          help="folder of the run's evaluations: <out>/<test set>/{metrics.json,per_image.csv,predictions.npz}")
    evaluate.set_defaults(handler=_evaluate)

    score = commands.add_parser("score", help="score a folder of predicted masks against ground truth")
    score.add_argument("pred_dir")
    score.add_argument("gt_dir")
    score.add_argument("--out", help="also write the JSON here")
    score.set_defaults(handler=_score)

    profile = commands.add_parser("profile", help="parameters, FLOPs and FPS of a model")
    profile.add_argument("--model", help="registered model name (without --config: its default configuration)")
    profile.add_argument("--config", help="take the variant's configuration and the profile settings from here")
    profile.add_argument("--variant")
    profile.add_argument("--size", type=int, default=256)
    profile.add_argument("--warmup", type=int, default=10)
    profile.add_argument("--runs", type=int, default=50)
    profile.add_argument("--device", default="auto")
    profile.add_argument("--out")
    profile.set_defaults(handler=_profile)

    fetch = commands.add_parser("fetch-weights", help="download a model's pretrained weights (URL in its card)")
    fetch.add_argument("model")
    fetch.add_argument("--out", required=True)
    fetch.set_defaults(handler=_fetch_weights)

    models = commands.add_parser("models", help="list registered models")
    models.set_defaults(handler=_models)

    from segbench import report as report_command
    from segbench.data.cli import add_subparsers as add_data_commands

    report = commands.add_parser("report", help="render reports/ (tables, figures, README) from results/")
    report_command.add_arguments(report)
    report.set_defaults(handler=report_command.run)

    add_data_commands(commands)
    return parser


def _exit_on_sigterm(signum, frame):
    # Snakemake, SLURM (preemption) and kill(1) send SIGTERM: unwinding as an exception lets every
    # temp-and-rename writer remove its temporary file, so a stopped job leaves no partial output.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    args = build_parser().parse_args(argv)
    if args.handler is _profile and not (args.model or args.variant):
        build_parser().error("profile needs --model (or --config with --variant)")
    try:
        return args.handler(args) or 0
    except Exception as error:
        if not isinstance(error, (ConfigError, OSError, KeyError, ValueError, *_run_errors())):
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"segbench {args.command}: error: {message}", file=sys.stderr)
        return 2


def _run_errors() -> tuple[type[Exception], ...]:
    """Expected failures of a run, reported as one line (imported late: they pull in torch)."""
    from segbench.checkpoint import CheckpointError
    from segbench.train import NonFiniteLossError, RunFolderBusyError

    return CheckpointError, NonFiniteLossError, RunFolderBusyError


if __name__ == "__main__":
    sys.exit(main())
