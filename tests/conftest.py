"""Shared test set-up: offline hubs, the repository root, and a small synthetic raw corpus."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# Nothing may download weights or data during the tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def meld_csv_dir() -> Path:
    """The real MELD CSVs (../shared/data/meld); tests that need them skip with a reason if absent."""
    path = Path(os.environ.get("ERCPIPE_MELD_CSV_DIR", SHARED / "data" / "meld"))
    if not (path / "train_sent_emo.csv").exists():
        pytest.skip(f"real MELD CSVs not found at {path} (set ERCPIPE_MELD_CSV_DIR)")
    return path
