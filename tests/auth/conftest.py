from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.auth.fake_google import FakeGoogle


# Every test that verifies tokens runs against both formats Google serves its keys in.
@pytest.fixture(params=["jwks", "x509"])
def google(request: pytest.FixtureRequest) -> Iterator[FakeGoogle]:
    fake = FakeGoogle(request.param).start()
    yield fake
    fake.stop()
