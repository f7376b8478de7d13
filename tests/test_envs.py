"""Per-rule conda environments: each parses, pins exactly, and agrees with the project's pins.

Conda cannot reach its channels on the build machine, so the environments are not created here; this
test keeps them from drifting away from requirements.txt / constraints.txt, which the test suite does run.
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
    assert "-e .." in pip, "the env must install this repository's ercpipe package"
    pins = _pins(pip)
    unpinned = [p for p in pip if p != "-e .." and "==" not in p]
    assert not unpinned, f"{env_file.name}: unpinned pip packages {unpinned}"
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
