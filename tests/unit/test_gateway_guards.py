"""The gateway's guards on their own (pure, or in-memory): values no execution can take, answers
without server paths, Prefect's refusals read, the create queue, and which uploads expire.
No server."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from prefect.client.schemas.objects import FlowRun

from prefect_pipedeploy.datastore.base import ObjectInfo
from prefect_pipedeploy.gateway.answers import _detail_of, public_message
from prefect_pipedeploy.gateway.bodies import MAX_DEPTH, json_value_problem
from prefect_pipedeploy.gateway.uploads import expired_uploads, uploads_in_use
from prefect_pipedeploy.gateway.waiting import CallerGone, CreateQueue, QueueFull, Tally


def deep(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


# -- values no execution can take ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "path", "phrase"),
    [
        ({"a": "text", "b": [1, 2.5, True, None, {"c": "ü😀"}]}, None, None),
        ({"a": 1.7e308, "b": -(2**1000)}, None, None),
        ({"a": deep(MAX_DEPTH - 1)}, None, None),
        ({"a": deep(MAX_DEPTH + 5)}, ("a",) + (0,) * MAX_DEPTH, "nested deeper than 100"),
        ({"a": "x\ud800y"}, ("a",), "lone surrogate '\\ud800' (at character 1)"),
        ({"a": {"\udc00": 1}}, ("a",), "has a key that holds the lone surrogate"),
        ({"\ud800": 1}, (), "has a key that holds the lone surrogate"),
        ({"a": [0, float("inf")]}, ("a", 1), "too large for a 64-bit float"),
        ({"a": float("-inf")}, ("a",), "too large for a 64-bit float"),
        ({"a": 10**400}, ("a",), "integer of 401 digits"),
        ({"a": -(10**309)}, ("a",), "integer of 310 digits"),
        ({"a": {"__prefect_kind": "workspace_variable", "variable_name": "v"}}, ("a",), "reserves"),
        (
            {"a": [1, {"b": {"__prefect_kind": "jinja", "template": "{{ 1 }}"}}]},
            ("a", 1, "b"),
            "rename",
        ),
        ({"a": {"prefect_kind": 1, "kind": "__prefect_kind"}}, None, None),
    ],
    ids=[
        "ordinary",
        "large but finite",
        "deep but within",
        "too deep",
        "lone surrogate",
        "surrogate key",
        "surrogate top-level key",
        "infinity",
        "minus infinity",
        "400-digit integer",
        "negative 310-digit integer",
        "an object the server would hydrate",
        "one deep inside",
        "the name as a value or another key",
    ],
)
def test_json_value_problem(value: Any, path: tuple[Any, ...] | None, phrase: str | None) -> None:
    found = json_value_problem(value)
    if path is None:
        assert found is None
        return
    assert found is not None
    assert found[0][: len(path)] == path and phrase in found[1]


def test_any_depth_is_walked_without_recursion() -> None:
    found = json_value_problem({"a": deep(50_000)})
    assert found is not None and "nested deeper" in found[1]


# -- answers without server paths ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("bad batch in /work/main/flows/demo.py", "bad batch in demo.py"),
        (
            "no object 'm.bin' in the data store /tmp/pytest-of-x/store0; check the key",
            "no object 'm.bin' in the data store store0; check the key",
        ),
        (
            "leads out of the root directory /srv/data through a link",
            "leads out of the root directory data through a link",
        ),
        ("cannot read '/etc/passwd' (denied)", "cannot read 'passwd' (denied)"),
        ("a file at C:\\Users\\me\\out.bin", "a file at out.bin"),
        ("key 'results/2024/x.bin' is fine", "key 'results/2024/x.bin' is fine"),
        (
            "s3://bucket/prefix/x at http://127.0.0.1:9000/a",
            "s3://bucket/prefix/x at http://127.0.0.1:9000/a",
        ),
        ("1/2 and/or ratio", "1/2 and/or ratio"),
    ],
    ids=[
        "python file",
        "store root",
        "symlink refusal",
        "quoted",
        "windows",
        "key",
        "urls",
        "not paths",
    ],
)
def test_public_message_drops_absolute_paths(text: str, expected: str) -> None:
    """Before: only paths to .py files were dropped; the store's root stayed in 500 answers."""
    assert public_message(text) == expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"detail": "Deployment not found"}, "Deployment not found"),
        (
            {
                "exception_message": "Invalid request received.",
                "exception_detail": [
                    {
                        "loc": ["body", "parameters"],
                        "msg": "Value error, Flow run parameters must be less than 524,288 "
                        "bytes when serialized (got 600,015 bytes).",
                    }
                ],
                "request_body": {"parameters": {"name": "secret-ish"}},
            },
            "Flow run parameters must be less than 524,288 bytes when serialized "
            "(got 600,015 bytes).",
        ),
        ({"exception_message": "x"}, ""),
        (["not", "a", "dict"], ""),
    ],
    ids=["detail", "422 exception_detail", "nothing", "a list"],
)
def test_detail_of_a_prefect_refusal(body: Any, expected: str) -> None:
    """Before: a 422's text (in `exception_detail`) was read as null."""
    response = httpx.Response(422, content=json.dumps(body).encode())
    assert _detail_of(response) == expected
    assert "secret-ish" not in _detail_of(response)


# -- the create queue ------------------------------------------------------------------------------


async def never_gone() -> bool:
    return False


@pytest.mark.anyio
async def test_the_queue_takes_turns_first_come_first_served_and_refuses_past_its_limit() -> None:
    queue = CreateQueue(check_s=0.01)
    order: list[int] = []
    release = asyncio.Event()

    async def call(i: int) -> None:
        async with queue.turn(3, never_gone):
            order.append(i)
            await release.wait()

    tasks = [asyncio.create_task(call(i)) for i in range(3)]
    await asyncio.sleep(0.05)
    assert queue.queued == 3 and order == [0]
    with pytest.raises(QueueFull) as full:
        async with queue.turn(3, never_gone):
            pass
    assert full.value.queued == 3 and 1 <= full.value.retry_after_s <= 60
    release.set()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2] and queue.queued == 0


@pytest.mark.anyio
async def test_a_caller_who_leaves_while_waiting_frees_its_place() -> None:
    queue = CreateQueue(check_s=0.01)
    release = asyncio.Event()
    left = asyncio.Event()

    async def holder() -> None:
        async with queue.turn(2, never_gone):
            await release.wait()

    async def gone() -> bool:
        return left.is_set()

    async def leaver() -> None:
        async with queue.turn(2, gone):
            raise AssertionError("a caller that left got its turn")

    first = asyncio.create_task(holder())
    await asyncio.sleep(0.02)
    second = asyncio.create_task(leaver())
    await asyncio.sleep(0.02)
    assert queue.queued == 2
    left.set()
    with pytest.raises(CallerGone):
        await second
    assert queue.queued == 1
    release.set()
    await first
    async with queue.turn(1, never_gone):  # the lock was left free
        assert queue.queued == 1


@pytest.mark.anyio
async def test_up_to_its_concurrency_creates_go_at_once_the_rest_in_arrival_order() -> None:
    """Issue 14: creates one at a time held the gateway to about 0.5 creates/s while runs
    executed; now `gateway_max_creating` go at once, and the others still in arrival order."""
    queue = CreateQueue(concurrency=3, check_s=0.01)
    inside: list[int] = []
    release = {i: asyncio.Event() for i in range(6)}

    async def call(i: int) -> None:
        async with queue.turn(10, never_gone):
            inside.append(i)
            await release[i].wait()

    tasks = []
    for i in range(6):
        tasks.append(asyncio.create_task(call(i)))
        await asyncio.sleep(0.01)  # arrive in order
    assert inside == [0, 1, 2] and queue.queued == 6
    for i in (1, 0):
        release[i].set()
        await asyncio.sleep(0.02)
    assert inside == [0, 1, 2, 3, 4]
    for event in release.values():
        event.set()
    await asyncio.gather(*tasks)
    assert inside == [0, 1, 2, 3, 4, 5] and queue.queued == 0


@pytest.mark.parametrize(
    ("queued", "create_s", "concurrency", "retry_after"),
    [
        (0, 0.5, 1, 1),
        (10, 0.05, 1, 1),
        (10, 2.0, 1, 20),
        (10, 2.0, 4, 5),
        (100, 5.0, 1, 60),
    ],
)
def test_retry_after_follows_the_pace_of_creates(
    queued: int, create_s: float, concurrency: int, retry_after: int
) -> None:
    queue = CreateQueue(concurrency)
    queue.queued, queue.create_s = queued, create_s
    assert queue.retry_after_s() == retry_after


# -- uploads that expire ---------------------------------------------------------------------------

NOW = datetime(2024, 3, 9, 12, 0, tzinfo=timezone.utc)
DAY = 24 * 3600.0


def obj(key: str, age: timedelta) -> ObjectInfo:
    return ObjectInfo(key=key, size=1, last_modified=NOW - age)


def test_expired_uploads() -> None:
    objects = [
        obj("uploads/a/old.bin", timedelta(days=2)),
        obj("uploads/b/in-use.bin", timedelta(days=2)),
        obj("uploads/c/young.bin", timedelta(hours=23)),
        obj("results/old.json", timedelta(days=9)),  # not an upload
    ]
    assert expired_uploads(objects, NOW, DAY, {"uploads/b/in-use.bin"}) == ["uploads/a/old.bin"]
    assert expired_uploads(objects, NOW, 3600.0, set()) == [
        "uploads/a/old.bin",
        "uploads/b/in-use.bin",
        "uploads/c/young.bin",
    ]


def test_uploads_in_use_are_the_markers_in_run_parameters() -> None:
    runs = [
        FlowRun(flow_id="00000000-0000-0000-0000-000000000000", parameters=parameters)
        for parameters in (
            {"doc": {"datastore_path": "uploads/a/x.bin"}, "label": "x"},
            {"doc": {"datastore_path": "models/m.bin"}},  # not an upload
            {"doc": {"path": "uploads/b/y.bin"}},  # not a marker
            {},
        )
    ]
    assert uploads_in_use(runs) == {"uploads/a/x.bin"}


@pytest.mark.parametrize(
    ("times", "expected"),
    [
        # the first is reported at once, with itself
        ([0.0], [1]),
        # then nothing until 10 s have passed; the report counts every one since the last
        ([0.0, 1.0, 2.0, 9.9], [1, None, None, None]),
        ([0.0, 1.0, 2.0, 10.0], [1, None, None, 3]),
        ([0.0, 10.0, 10.5, 25.0], [1, 1, None, 2]),
        # a long quiet stretch: the next is reported at once, with itself
        ([0.0, 100.0], [1, 1]),
    ],
)
def test_a_tally_reports_the_first_then_at_most_once_per_interval(
    times: list[float], expected: list[int | None]
) -> None:
    tally = Tally(every_s=10.0)
    assert [tally.add(now) for now in times] == expected
