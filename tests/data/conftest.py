"""Fixtures for the data tests: the real corpora in ../shared/data and one cache per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.paths import SHARED_DATA


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "README.md").is_file():
        pytest.skip(f"the real corpora are not at {SHARED_DATA} (expected ../shared/data beside the project root)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One encoded-corpus cache for the whole session, so each real corpus is encoded once."""
    return str(tmp_path_factory.mktemp("ssm_train_cache"))
