"""The session's one-node Slurm (`slurm` fixture) and the `slurm` marker on every test in this folder."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.slurm.cluster import LocalSlurm, SlurmUnavailable, ensure_slurm_installed

_HERE = Path(__file__).parent
_TIMINGS_S: dict[str, float] = {}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _HERE in Path(item.path).parents:
            item.add_marker(pytest.mark.slurm)


@pytest.fixture(scope="session")
def slurm(tmp_path_factory) -> Iterator[LocalSlurm]:
    """A started LocalSlurm; skips (with the reason) where Slurm cannot be installed, stops at the end
    whether the tests passed or not."""
    try:
        _TIMINGS_S["install"] = ensure_slurm_installed()
    except SlurmUnavailable as err:
        pytest.skip(f"no local Slurm: {err}")
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    try:
        _TIMINGS_S["start"] = cluster.start()
        yield cluster
    finally:
        cluster.stop()


def pytest_terminal_summary(terminalreporter):
    """Installation time counts against the make-test budget, so every run shows it."""
    if _TIMINGS_S:
        terminalreporter.write_line("local slurm: " + ", ".join(
            f"{name} {seconds:.1f} s" for name, seconds in _TIMINGS_S.items()))
