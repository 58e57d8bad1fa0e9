"""The independent attack on the suite, items 11-12: results bound to the config that made them, and
training edge cases. A changed config never resumes an old run, two invocations never share a config
file, a final batch of one image trains, a planted lock link is refused, and bad run inputs (unknown
protocol, CUDA without a GPU, a checkpoint or model.pt that does not fit, integral floats, typos in
model_args or pretrained keys) stop with one line, through the real CLI and Snakemake."""
from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
import torch
import yaml

from conftest import run_tool, tool_env, write_config

from .helpers import error_line, last_lines, segbench, train_args, train_config, write_yaml


def _model_pt_hash(run):
    return json.loads((run / "manifest.json").read_text())["weights_sha256"]


@pytest.mark.fault("train.lr changed after a finished run, then the same training command again",
                   expected="refused with one line naming train.lr (old -> new) and how to start fresh; with "
                            "--restart it trains anew and the manifest describes the new weights")
def test_a_changed_learning_rate_never_resumes_the_old_run(tmp_path, two_epoch_run):
    config, reference = two_epoch_run
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    changed = write_yaml(tmp_path / "changed.yaml", {**yaml.safe_load(config.read_text()),
                                                      "train": {**yaml.safe_load(config.read_text())["train"],
                                                                "lr": 0.01}})
    message = error_line(segbench(*train_args(changed, run), cwd=tmp_path), "train")
    assert "made with a different config" in message and "train.lr: 0.001 -> 0.01" in message, message
    assert "--restart" in message and str(run / "checkpoints") in message, message
    assert _model_pt_hash(run) == _model_pt_hash(reference), "a refused run must leave its outputs alone"

    fresh = segbench(*train_args(changed, run), "--restart", cwd=tmp_path)
    assert fresh.returncode == 0, last_lines(fresh.stderr)
    assert "resuming" not in fresh.stdout
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["config"]["train"]["lr"] == 0.01 and manifest["fingerprint"]["train"]["lr"] == 0.01
    assert manifest["weights_sha256"] != _model_pt_hash(reference)


@pytest.mark.fault("a run evaluated with a config that differs from the one it was trained with",
                   expected="refused with one line naming the differing keys")
def test_evaluation_with_another_config_is_refused(tmp_path, two_epoch_run):
    config, run = two_epoch_run
    cfg = yaml.safe_load(config.read_text())
    other = write_yaml(tmp_path / "other.yaml", {**cfg, "train": {**cfg["train"], "epochs": 3}})
    result = segbench("evaluate", "--config", other, "--run", run, "--test-sets", "kvasir", "--out", tmp_path / "eval",
                      cwd=tmp_path)
    message = error_line(result, "evaluate")
    assert "train.epochs: 2 -> 3" in message and "manifest.json" in message, message
    assert not (tmp_path / "eval").exists()


@pytest.mark.slow
@pytest.mark.fault("two Snakemake invocations with different configs and disjoint targets in one folder",
                   expected="each job reads its own invocation's config file (results/configs/<hash>.yaml); "
                            "the manifests record each invocation's learning rate")
def test_two_invocations_with_different_configs_do_not_share_a_config_file(project_copy):
    base = dict(models=["unet"], protocols={"polyp": {"train": "polyp_train", "test": ["kvasir"]}})
    first = write_config(project_copy / "first.yaml", **base)
    cfg = yaml.safe_load(first.read_text())
    cfg["train"]["lr"] = 0.01
    cfg["seeds"] = [1]
    second = write_yaml(project_copy / "second.yaml", cfg)
    targets = {first: "results/polyp/unet/seed0/manifest.json", second: "results/polyp/unet/seed1/manifest.json"}
    run_tool(["snakemake", "--cores", "1", "data_all", "--configfile", str(first)], cwd=project_copy)
    # both at once, in one folder: each invocation's jobs must read their own config file
    processes = [subprocess.Popen(["snakemake", "--cores", "1", "--nolock", target, "--configfile", str(path)],
                                  cwd=project_copy, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  env=tool_env(PYTHONPATH=str(project_copy)))
                 for path, target in targets.items()]
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-3000:]
    rates = {path.name: json.loads((project_copy / target).read_text())["config"]["train"]["lr"]
             for path, target in targets.items()}
    assert rates == {"first.yaml": 0.001, "second.yaml": 0.01}
    assert len(list((project_copy / "results" / "configs").glob("*.yaml"))) == 2


@pytest.mark.fault("a training set whose last batch holds one image (11 images, batch size 2, batch norm)",
                   expected="the single image joins the batch before it; the run trains")
def test_a_final_batch_of_one_image_trains(tmp_path, data_root):
    from segbench.data import load_cache

    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    cache = root / "cache" / "polyp_train_32.npz"
    ids, images, masks = load_cache(cache, "train")
    np.savez(cache, ids=np.array(ids[:11]), split=np.array(["train"] * 11), images=images[:11], masks=masks[:11])
    config = train_config(tmp_path / "c.yaml", root, train={"epochs": 1, "batch_size": 2})
    result = segbench(*train_args(config, tmp_path / "run"), cwd=tmp_path)
    assert result.returncode == 0, last_lines(result.stderr)
    log = (tmp_path / "run" / "train_log.csv").read_text().splitlines()
    assert log[1].split(",")[1] == "5", f"expected 5 steps (4 of 2 and one of 3 images): {log}"


@pytest.mark.fault("run folder's .train.lock replaced by a symbolic link to another file",
                   expected="refused with one line; the link's target is untouched")
def test_a_lock_file_symlink_is_refused_without_touching_its_target(tmp_path, data_root):
    victim = tmp_path / "precious.txt"
    victim.write_text("do not truncate me\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / ".train.lock").symlink_to(victim)
    message = error_line(segbench(*train_args(train_config(tmp_path / "c.yaml", data_root), run), cwd=tmp_path),
                         "train")
    assert "is a symbolic link" in message and str(run / ".train.lock") in message, message
    assert victim.read_text() == "do not truncate me\n"


def _checkpoint_with(run, change):
    """Rewrite checkpoints/last.pt through ``change`` and update its recorded hash (a consistent but wrong file)."""
    import hashlib
    import io

    path = run / "checkpoints" / "last.pt"
    state = torch.load(path, weights_only=True)
    change(state)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    path.write_bytes(buffer.getvalue())
    (run / "checkpoints" / "last.pt.sha256").write_text(hashlib.sha256(buffer.getvalue()).hexdigest() + "\n")
    (run / "checkpoints" / "last.pt.prev").unlink(missing_ok=True)


def _wrong_shape(state):
    key = next(iter(state["model"]))
    state["model"][key] = torch.zeros(3)


def _no_optimizer(state):
    del state["optimizer"]


@pytest.mark.parametrize("change, expected", [
    pytest.param(_wrong_shape, "does not fit this model", id="shape", marks=pytest.mark.fault(
        "a checkpoint (with a matching hash) whose tensors have the wrong shapes, then a resume",
        expected="one line starting with last.pt: does not fit this model and optimizer; delete the checkpoints")),
    pytest.param(_no_optimizer, "found no optimizer", id="keys", marks=pytest.mark.fault(
        "a checkpoint (with a matching hash) that lacks the optimizer state, then a resume",
        expected="one line starting with last.pt naming the missing key; delete the checkpoints")),
])
def test_a_checkpoint_that_does_not_fit_is_one_line(tmp_path, two_epoch_run, change, expected):
    config, reference = two_epoch_run
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    _checkpoint_with(run, change)
    message = error_line(segbench(*train_args(config, run), cwd=tmp_path), "train")
    assert message.startswith(str(run / "checkpoints" / "last.pt")) and expected in message, message
    assert "delete" in message


@pytest.mark.fault("model.pt cut short (or replaced) after training, then evaluated",
                   expected="one line: the file is not the one the manifest describes")
def test_a_cut_model_file_is_one_line(tmp_path, two_epoch_run):
    config, reference = two_epoch_run
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    weights = run / "model.pt"
    weights.write_bytes(weights.read_bytes()[:1000])
    message = error_line(segbench("evaluate", "--config", config, "--run", run, "--test-sets", "kvasir", "--out",
                                  tmp_path / "eval", cwd=tmp_path), "evaluate")
    assert message.startswith(str(weights)) and "is not the file" in message and "retrain" in message, message


def _unknown_protocol(tmp_path, data_root):
    args = train_args(train_config(tmp_path / "c.yaml", data_root), tmp_path / "run")
    args[args.index("--protocol") + 1] = "nosuch"
    return args, "train", "unknown protocol 'nosuch'"


def _cuda_without_gpu(tmp_path, data_root):
    return train_args(train_config(tmp_path / "c.yaml", data_root, train={"device": "cuda"}), tmp_path / "run"), \
        "train", "torch sees no CUDA device"


def _integral_float(tmp_path, data_root):
    return train_args(train_config(tmp_path / "c.yaml", data_root, train={"epochs": 2.0}), tmp_path / "run"), \
        "train", "train.epochs: 2.0 is not of type 'integer'"


def _model_args_typo(tmp_path, data_root):
    return train_args(train_config(tmp_path / "c.yaml", data_root, model_args={"unet": {"base_widht": 4}}),
                      tmp_path / "run"), "train", "model_args.unet: unet"


def _pretrained_typo(tmp_path, data_root):
    return train_args(train_config(tmp_path / "c.yaml", data_root, pretrained={"vmunetv3": "x.pth"}),
                      tmp_path / "run"), "train", "pretrained.vmunetv3: unknown model 'vmunetv3'"


@pytest.mark.parametrize("case", [
    pytest.param(_unknown_protocol, id="unknown-protocol", marks=pytest.mark.fault(
        "segbench train --protocol nosuch", expected="one line naming the protocol and the defined ones")),
    pytest.param(_cuda_without_gpu, id="cuda-without-gpu", marks=pytest.mark.fault(
        "train.device: cuda on a machine without a GPU", expected="one line naming the setting and what to set")),
    pytest.param(_integral_float, id="integral-float", marks=pytest.mark.fault(
        "train.epochs: 2.0 in the config", expected="refused by the schema on one line naming train.epochs")),
    pytest.param(_model_args_typo, id="model-args-typo", marks=pytest.mark.fault(
        "a typo in model_args (unet: {base_widht: 4})",
        expected="one line at config load naming model_args.unet, the model file and the argument")),
    pytest.param(_pretrained_typo, id="pretrained-typo", marks=pytest.mark.fault(
        "a typo in the pretrained keys (vmunetv3)", expected="one line at config load naming pretrained.vmunetv3")),
])
def test_bad_run_inputs_are_one_line(tmp_path, data_root, case):
    if case is _cuda_without_gpu and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    args, command, expected = case(tmp_path, data_root)
    message = error_line(segbench(*args, cwd=tmp_path), command)
    assert expected in message, message
    assert not (tmp_path / "run" / "model.pt").exists()


@pytest.mark.slow
@pytest.mark.fault("a model_args typo in the config given to Snakemake",
                   expected="Snakemake stops while reading the config, naming the key, before any job runs")
def test_a_model_args_typo_stops_snakemake_before_any_job(project_copy):
    config = write_config(project_copy / "typo.yaml", model_args={"unet": {"base_widht": 4}})
    result = run_tool(["snakemake", "--cores", "1", "--configfile", str(config)], cwd=project_copy, check=False)
    assert result.returncode != 0
    assert "model_args.unet" in result.stdout + result.stderr
    assert not (project_copy / "results" / "polyp").exists()
