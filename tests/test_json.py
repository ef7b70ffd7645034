"""
JSON backends: orjson when installed, the stdlib otherwise, with the same behaviour.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from airudder_async import _json

WITHOUT_ORJSON = textwrap.dedent(
    """
    import sys
    sys.modules["orjson"] = None  # make `import orjson` fail, as on an install without the extra
    import anyio
    from airudder_async import _json
    from airudder_async.testing import FakeAirudder

    assert not _json.HAS_ORJSON
    assert _json.loads(_json.dumps({"a": "é"})) == {"a": "é"}

    async def main():
        async with FakeAirudder(workflows=450) as fake, fake.client() as client:
            ids = [w.workflow_id async for w in client.iter_workflows(page_size=100)]
        assert ids == fake.workflow_ids(), "walk differs"
        print("ok", len(ids))

    anyio.run(main)
    """
)


def test_stdlib_json_fallback_walks_the_same() -> None:
    """Without orjson the package falls back to the stdlib and a full walk still matches."""
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", WITHOUT_ORJSON], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok 450"


def test_orjson_is_used_when_installed() -> None:
    """With the orjson extra installed (as in the test extra), it is picked automatically."""
    assert _json.HAS_ORJSON
    assert _json.loads(b'{"x": [1, 2]}') == {"x": [1, 2]}
    assert _json.dumps({"x": None}) == b'{"x":null}'
