"""
The examples of `airudder_async.testing`'s docstring and the README's test examples run as written.

Both once waited on a gate for more requests than adaptive pacing's slow start sends at first, and
hung for their 5 s timeout: nothing ran them.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

import pytest

import airudder_async.testing
from airudder_async import Limits
from airudder_async.testing import INSTANCELIST_PATH, FakeAirudder, Fault

README = Path(__file__).resolve().parent.parent / "README.md"


def blocks(text: str) -> list[str]:
    """The ```python blocks of *text*."""
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def names() -> dict[str, Any]:
    return {
        "FakeAirudder": FakeAirudder,
        "Fault": Fault,
        "INSTANCELIST_PATH": INSTANCELIST_PATH,
        "Limits": Limits,
        "pytest": pytest,
    }


@pytest.mark.anyio
@pytest.mark.parametrize("index", [0, 1])
async def test_the_testing_module_examples_run(index: int) -> None:
    found = blocks(airudder_async.testing.__doc__ or "")
    assert len(found) == 2
    namespace = names()
    exec("async def example():\n" + textwrap.indent(found[index], "    "), namespace)
    await namespace["example"]()


@pytest.mark.anyio
@pytest.mark.parametrize(
    "name", ["test_my_etl_survives_a_bad_day", "test_break_stops_the_prefetched_requests"]
)
async def test_the_readme_test_examples_run(name: str) -> None:
    (code,) = [b for b in blocks(README.read_text()) if f"def {name}(" in b]
    namespace = names()
    exec(code, namespace)
    await namespace[name]()
