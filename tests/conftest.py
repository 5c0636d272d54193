"""Shared pytest fixtures: a real Mosquitto broker; gateway processes that never outlive a test."""

from __future__ import annotations

import pytest

from tests.support.broker import Broker, PersistentBroker
from tests.support.e2e import GatewayProcess


@pytest.fixture
def broker():
    running = Broker().start()
    yield running
    running.close()


@pytest.fixture
def persistent_broker():
    """Mosquitto that saves its state across a restart, for persistent-session subscribers."""
    running = PersistentBroker().start()
    yield running
    running.close()


@pytest.fixture
def gateway_process(tmp_path):
    """Factory for `gateway run` child processes; any still running at teardown is killed."""
    started: list[GatewayProcess] = []

    def make(config_text: str) -> GatewayProcess:
        process = GatewayProcess(config_text, str(tmp_path))
        started.append(process)
        return process

    yield make
    for process in started:
        process.kill()
