"""Fixtures: one daemon shared by the whole session (see harness.py), a client on it,
and a way to start daemons with other settings for one test."""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, Iterator, List

import pytest

import mlxd
from harness import TOOLS_MODEL, Daemon, ToolsModel, fixture, fixture_model_args


@pytest.fixture(scope="session")
def tools_model_build(tmp_path_factory: pytest.TempPathFactory) -> ToolsModel:
    return ToolsModel.build(tmp_path_factory.mktemp("tools-model"))


@pytest.fixture(scope="session")
def daemon(tools_model_build: ToolsModel) -> Iterator[Daemon]:
    """One daemon for every test that can share it, serving the fixture models and the
    tiny tool model too."""
    started = Daemon(*fixture_model_args(), *tools_model_build.args)
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def tools_model(daemon: Daemon, tools_model_build: ToolsModel) -> str:
    """The name of the shared daemon's tiny tool model; fails the test if it was not built."""
    if tools_model_build.problem is not None:
        pytest.fail(tools_model_build.problem)
    return TOOLS_MODEL


@pytest.fixture
def client(daemon: Daemon) -> Iterator[mlxd.Client]:
    with daemon.client() as connected:
        yield connected


@pytest.fixture
def start_daemon() -> Iterator[Callable[..., Daemon]]:
    """Starts daemons with other settings, stopped at the end of the test."""
    started: List[Daemon] = []

    def start(*extra_args: str) -> Daemon:
        started.append(Daemon(*extra_args))
        return started[-1]

    try:
        yield start
    finally:
        for one in started:
            one.stop()


@pytest.fixture(scope="module")
def one_stream() -> Iterator[Callable[[], Daemon]]:
    """A daemon whose models decode one stream at a time, so that a generation behind a
    paused stream waits in the queue, silent; shared by a module's tests, and started
    again for the next one if a test killed it."""
    started: List[Daemon] = []

    def get() -> Daemon:
        if not started or started[-1].process.poll() is not None:
            started.append(Daemon("--max-streams", "1"))
        return started[-1]

    try:
        yield get
    finally:
        for one in started:
            one.stop()


@pytest.fixture(scope="session")
def minilm_reference() -> List[Dict[str, Any]]:
    path = fixture("minilm_reference.json")
    items: List[Dict[str, Any]] = json.loads(path.read_text())["items"]
    return items
