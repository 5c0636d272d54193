"""Shared pytest fixtures: a real Mosquitto broker per test that needs one."""

from __future__ import annotations

import pytest

from tests.support.broker import Broker


@pytest.fixture
def broker():
    running = Broker().start()
    yield running
    running.close()
