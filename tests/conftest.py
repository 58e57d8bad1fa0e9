import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def project_files() -> list[str]:
    """Tracked files plus untracked ones git does not ignore: what a fresh clone of this tree holds."""
    listing = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO,
                             capture_output=True, text=True, check=True).stdout
    return [line for line in listing.splitlines() if (REPO / line).is_file()]


@pytest.fixture
def project_copy(tmp_path) -> Path:
    """A copy of the project in a fresh git repository, as a user's clone would be."""
    root = tmp_path / "project"
    for relative in project_files():
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / relative, target)
    git = ["git", "-c", "user.name=segbench-test", "-c", "user.email=test@localhost"]
    subprocess.run(git + ["init", "-q"], cwd=root, check=True)
    subprocess.run(git + ["add", "-A"], cwd=root, check=True)
    subprocess.run(git + ["commit", "-qm", "copy"], cwd=root, check=True)
    return root


def tool_env(**extra) -> dict:
    """The environment a user of the venv has: its bin/ first on PATH, one thread per job."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "DVC_NO_ANALYTICS": "1", "OMP_NUM_THREADS": "1", **extra}
    return env


def run_tool(args, cwd, check=True, **env) -> subprocess.CompletedProcess:
    """Run a command as a user would; inside a project copy, that copy's segbench is the one imported."""
    if (Path(cwd) / "segbench").is_dir():
        env.setdefault("PYTHONPATH", str(cwd))
    result = subprocess.run(args, cwd=cwd, env=tool_env(**env), capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed ({result.returncode}):\n"
                             f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


TINY_CONFIG = {
    "run_name": "tiny",
    "comparable_to_paper": False,
    "data": {"source": "synthetic", "synthetic": {"seed": 0, "n_train": 12, "n_test": 4, "min_side": 40, "max_side": 72}},
    "image_size": 32,
    "protocols": {"polyp": {"train": "polyp_train", "test": ["kvasir", "etis"]}},
    "models": ["unet"],
    "model_args": {"unet": {"base_width": 4}},
    "ablation": {"depths": []},
    "seeds": [0],
    "scan_backend": "torch",
    "train": {"epochs": 2, "batch_size": 4, "device": "cpu", "num_threads": 1},
    "evaluate": {"batch_size": 4, "save_predictions": 2},
    "profile": {"size": 64, "configuration": "trained", "warmup": 0, "runs": 1, "device": "cpu"},
    "report": {"bootstrap_resamples": 200, "qualitative_n": 2},
}


def write_config(path: Path, **overrides) -> Path:
    cfg = yaml.safe_load(yaml.safe_dump(TINY_CONFIG))
    cfg.update(overrides)
    path.write_text(yaml.safe_dump(cfg))
    return path
