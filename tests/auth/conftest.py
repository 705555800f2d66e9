from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.auth.fake_google import FakeGoogle


@pytest.fixture
def google() -> Iterator[FakeGoogle]:
    fake = FakeGoogle().start()
    yield fake
    fake.stop()
