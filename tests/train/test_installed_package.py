"""TubeMAE as a user installs it: a wheel of this checkout installed (not editable) into a fresh virtual
environment; its `train` script (what the README's launch form `torchrun --no-python train` runs on every rank) run
with a config the README names from a folder outside the checkout that holds the user's own `model.py`. The configs
travel as package data; the working folder is never on the import path.

The fresh environment borrows the installed dependencies (torch, DALI, ...) through a .pth file instead of
downloading them; TubeMAE itself comes only from the wheel."""

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from synthetic_shards import synthetic_shards

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "README.md", "configs", "pipeline", "model", "train", "shard_tools")


def readme_commands() -> list[str]:
    """The README's shell commands, lines continued with a backslash joined."""
    return [line.strip() for line in re.sub(r"\\\n\s*", " ", (ROOT / "README.md").read_text()).splitlines()]


def test_the_readme_launches_torchrun_on_the_installed_train_script():
    launches = [line for line in readme_commands() if "torchrun " in line and " train " in line]
    assert launches
    for line in launches:  # `-m train` would import a model.py in the working folder before TubeMAE's
        assert "--no-python train --config" in line and "-m train" not in line, line


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The bin/ folder of a fresh virtual environment holding TubeMAE's wheel."""
    tmp = tmp_path_factory.mktemp("install")
    source = tmp / "source"
    source.mkdir()
    for name in SOURCES:  # a copy, so that building leaves nothing in the checkout
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, source / name)
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp / "wheel",
         source])
    env = tmp / "env"
    run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip", env])
    python = env / "bin" / "python"
    purelib = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip())
    (purelib / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed",
         *(tmp / "wheel").glob("tubemae-*.whl")])
    found = run([python, "-P", "-c", "import importlib.util as u; print(u.find_spec('train').origin)"]).strip()
    assert Path(found).is_relative_to(purelib), found  # the wheel's package (and its configs), not the checkout's
    return env / "bin"


def run(command: list, **kwargs) -> str:
    """`command`'s output; it must succeed. Nothing of this process's import path reaches it."""
    kwargs.setdefault("env", {k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=300, **kwargs)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_installed_train_script_trains_from_a_users_folder_with_a_shipped_config(installed, tmp_path):
    """The script torchrun's launch form runs on every rank (`--no-python train`), run here directly."""
    shards = synthetic_shards(tmp_path / "data")
    user = tmp_path / "my-project"
    user.mkdir()
    (user / "model.py").write_text("raise ImportError('the user\\'s own model.py was imported')\n")
    out = run(["train", "--config", "configs/synth-tiny-pretrain.yaml", "--out", "runs/tiny", "--set",
               f"data.shards={shards}", "--set", "run.max_steps=1", "--set", "data.batch_size=2", "--set",
               "data.num_threads=1"], cwd=user, env={"PATH": f"{installed}:/usr/bin:/bin", "HOME": str(tmp_path)})
    assert "train: done, 1 steps" in out, out
    assert (user / "runs" / "tiny" / "checkpoint-00000001.pt").is_file()
