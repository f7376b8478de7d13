"""`--use-conda` up to conda's channels: conda's pip stage, replayed where conda runs it, for every env file.

Snakemake copies an env file to `<conda-prefix>/<hash>_.yaml` (`.snakemake/conda/` of the working directory
unless `--conda-prefix` is given) and runs `conda env create --file <that copy> --prefix <conda-prefix>/<hash>_`.
Conda (conda/env/installers/pip.py) then writes the `pip:` list, joined by newlines, to a temporary file
`condaenv.<random>.requirements.txt` in the folder of that copy and runs, in that folder,
`<env>/bin/python -m pip install -U -r <requirements file> --exists-action=b`. So every relative path in a
pip line is resolved against the conda prefix, not against envs/: this replays exactly that, with
`--dry-run --ignore-installed` (resolve and download metadata as into an empty env, install nothing), at the
default prefix inside a copy of the project and at a prefix outside any project.

The pip stage needs the package index (PyPI; torch/torchvision come from this machine's local wheels through
the pip configuration, as for `make venv`): marked `network`. A full resolution takes 4-13 s of CPU per env.
At the second prefix kind the resolution of transitive dependencies would repeat the first one exactly (it
does not depend on the working directory), so there pip runs with `--no-deps`: every line of the file is
still parsed, located and fetched from that folder, which is the only thing the prefix can change.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ENV_FILES = sorted((REPO / "envs").glob("*.yaml"))

pytestmark = pytest.mark.network


def pip_list(env_file: Path) -> list[str]:
    deps = yaml.safe_load(env_file.read_text())["dependencies"]
    return [line for d in deps if isinstance(d, dict) for line in d.get("pip", [])]


def project_copy(dest: Path) -> Path:
    """The project's files (tracked and untracked-not-ignored, as in the working tree) copied to `dest`."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def replay_pip_stage(env_file: Path, prefix: Path, *extra: str) -> subprocess.CompletedProcess:
    """What conda does with the env file's pip list once Snakemake has copied the file into `prefix`."""
    prefix.mkdir(parents=True, exist_ok=True)
    content = env_file.read_bytes()
    env_hash = hashlib.md5(os.path.realpath(prefix).encode() + content, usedforsecurity=False).hexdigest()
    copied = prefix / f"{env_hash}_.yaml"  # Snakemake: env_path + ".yaml", env_path = <prefix>/<hash>_
    copied.write_bytes(content)
    specs = pip_list(copied)
    with tempfile.NamedTemporaryFile("w", prefix="condaenv.", suffix=".requirements.txt", dir=prefix,
                                     delete=False, encoding="utf-8") as requirements:
        requirements.write("\n".join(specs))
    cmd = [sys.executable, "-m", "pip", "install", "-U", "-r", requirements.name, "--exists-action=b",
           "--dry-run", "--ignore-installed", "--quiet", *extra]
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    return subprocess.run(cmd, cwd=prefix, capture_output=True, text=True, timeout=900, env=env)


@pytest.fixture(scope="module")
def pip_stages(tmp_path_factory) -> dict[tuple[str, str], subprocess.CompletedProcess]:
    """(prefix kind, env name) -> the replayed pip stage, two at a time (pip's resolver is CPU-bound: it
    evaluates every file listed on the index pages of torch, numpy, the nvidia packages, ...)."""
    project = project_copy(tmp_path_factory.mktemp("checkout") / "ercpipe")
    outside = tmp_path_factory.mktemp("shared") / "conda-envs"
    cases = {("default", f.stem): (f, project / ".snakemake" / "conda", ()) for f in ENV_FILES}
    cases |= {("outside", f.stem): (f, outside, ("--no-deps",)) for f in ENV_FILES}
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {case: pool.submit(replay_pip_stage, *args[:2], *args[2]) for case, args in cases.items()}
    return {case: future.result() for case, future in futures.items()}


@pytest.mark.parametrize("env_file", ENV_FILES, ids=lambda p: p.stem)
def test_pip_stage_at_the_default_prefix_in_the_project(env_file, pip_stages):
    result = pip_stages["default", env_file.stem]
    assert result.returncode == 0, f"conda's pip stage for {env_file.name} fails:\n{result.stderr[-3000:]}"


@pytest.mark.parametrize("env_file", ENV_FILES, ids=lambda p: p.stem)
def test_pip_stage_at_a_prefix_outside_the_project(env_file, pip_stages):
    result = pip_stages["outside", env_file.stem]
    assert result.returncode == 0, f"conda's pip stage for {env_file.name} fails:\n{result.stderr[-3000:]}"
