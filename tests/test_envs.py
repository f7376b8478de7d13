"""Per-rule conda environments: each parses, pins exactly, and agrees with the project's pins.

Conda cannot reach its channels on the build machine, so the environments are not created here; this
test keeps them from drifting away from requirements.txt / constraints.txt, which the test suite does run.
The envs hold only third-party packages, named and pinned: a path, URL or editable line would resolve against
wherever conda copies the env file (the conda prefix, not envs/) and would tie an env that several checkouts
share to one of them; the jobs get ercpipe from the checkout that runs them (Snakefile). Conda's pip stage
itself is replayed in tests/test_conda_pip_stage.py, the jobs' imports in tests/test_conda_jobs.py.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ENV_FILES = sorted((REPO / "envs").glob("*.yaml"))


def _pins(lines) -> dict[str, str]:
    pins = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        m = re.match(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([^\s;]+)$", line)
        if m:
            pins[m.group(1).lower().replace("_", "-")] = m.group(3)
    return pins


# A distribution name, optional extras, `==` an exact version: nothing that is a path, URL, option or `-e`.
PINNED_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*(\[[A-Za-z0-9_,.\- ]*\])?==[A-Za-z0-9_.+!\-]+$")
PROJECT_PINS = _pins((REPO / "requirements.txt").read_text().splitlines())
LOCKED_PINS = _pins((REPO / "constraints.txt").read_text().splitlines())


def test_there_is_one_env_per_rule_group():
    assert {p.stem for p in ENV_FILES} >= {"base", "text", "audio", "vision", "clip", "train"}


@pytest.mark.parametrize("env_file", ENV_FILES, ids=lambda p: p.name)
def test_env_file_pins_agree_with_requirements(env_file):
    env = yaml.safe_load(env_file.read_text())
    assert set(env) == {"channels", "dependencies"}
    deps = env["dependencies"]
    assert "python=3.11" in deps
    pip_sections = [d["pip"] for d in deps if isinstance(d, dict)]
    assert len(pip_sections) == 1, "one pip: section"
    pip = pip_sections[0]
    not_a_named_package = [line for line in pip if not PINNED_NAME.match(str(line).strip())]
    assert not not_a_named_package, (
        f"{env_file.name}: pip lines that are not `name==version` {not_a_named_package}: paths, URLs, editable "
        "installs and options resolve against the conda prefix, and the library must not be in the env")
    assert not any(str(line).split("==")[0].strip().lower() == "ercpipe" for line in pip), "ercpipe in an env"
    pins = _pins(pip)
    for name, version in pins.items():
        expected = PROJECT_PINS.get(name) or LOCKED_PINS.get(name)
        assert expected is not None, f"{env_file.name}: {name} is not pinned in requirements.txt/constraints.txt"
        assert version == expected, f"{env_file.name}: {name}=={version} but the project pins {expected}"


def test_every_rule_has_a_conda_env_that_exists():
    rules_dir = REPO / "workflow" / "rules"
    for smk in rules_dir.glob("*.smk"):
        text = smk.read_text()
        rules = re.findall(r"^rule (\w+):", text, flags=re.M)
        envs = re.findall(r'conda:\s*\n\s*"([^"]+)"', text)
        assert len(envs) == len(rules), f"{smk.name}: {len(rules)} rules but {len(envs)} conda: directives"
        for env in envs:
            assert (rules_dir / env).resolve().exists(), f"{smk.name}: conda env {env} does not exist"
