"""
The APPSecret and the token never show up in reprs, logs or error strings, whatever goes wrong.
"""

from __future__ import annotations

import logging
import pickle

import pytest

from airudder_async import RetryPolicy
from airudder_async.errors import AirudderError
from airudder_async.testing import FakeAirudder, Fault

pytestmark = pytest.mark.anyio

SECRET = "s3cr3t-APP-value-0042"


async def test_secret_and_token_never_leak(caplog: pytest.LogCaptureFixture) -> None:
    """Through retries, refusals, decode errors and failed walks, neither secret nor token is printed."""
    texts: list[str] = []
    async with FakeAirudder(workflows=300, app_secret=SECRET) as fake:
        async with fake.client(retry=RetryPolicy(attempts=2, backoff_initial=0)) as client:
            with caplog.at_level(logging.DEBUG):
                await client.list_workflows()
                token = client._loop.auth.token  # type: ignore[union-attr]  # open client
                assert token
                fake.inject(Fault.http_status(503), Fault.http_status(503), on=1)
                fake.inject(Fault.http_status(503), on=2)
                fake.inject(Fault.malformed_json(), on=3)
                fake.inject(Fault.revoke_token(), on=4)
                fake.inject(Fault.drop(), on=5)
                for _ in range(4):
                    try:
                        async for wf in client.iter_workflows(page_size=50):
                            texts.append(repr(wf))
                    except AirudderError as exc:
                        texts += [
                            str(exc),
                            repr(exc),
                            repr(exc.__dict__),
                            repr(pickle.loads(pickle.dumps(exc))),
                        ]
                walk = client.iter_workflows()
                texts += [
                    repr(client),
                    repr(client._loop),
                    repr(client._loop.auth),
                    repr(walk),
                    repr(client.stats),
                    repr(fake),
                ]
                await walk.aclose()
        bad = fake.client()
        bad._app_secret = SECRET + "-wrong"
        async with bad:
            try:
                await bad.list_workflows()
            except AirudderError as exc:
                texts += [str(exc), repr(exc.__dict__)]
    texts.append(caplog.text)
    blob = "\n".join(texts)
    assert SECRET not in blob
    assert token not in blob
    assert "Authorization" not in caplog.text


async def test_a_prepared_call_never_shows_its_body(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    The send loop's record of one call leaves its body out of its repr (what a frame-locals capturer
    such as Sentry prints): the auth call's body holds the APPSecret.
    """
    from airudder_async._session import SendLoop, _Call

    seen: list[str] = []
    original = SendLoop._with_retries

    async def spy(self: SendLoop, call: _Call) -> object:
        seen.append(repr(call))
        return await original(self, call)

    monkeypatch.setattr(SendLoop, "_with_retries", spy)
    async with FakeAirudder(workflows=3, app_secret=SECRET) as fake, fake.client() as client:
        await client.list_workflows()
    assert "<_Call POST /service/cloud/auth>" in seen
    assert not [text for text in seen if SECRET in text]
