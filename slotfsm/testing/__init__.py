"""Testing kit: a faithful fake Lemonade Server for slotfsm's tests and yours.

``FakeLemonade`` is an ASGI app that behaves like Lemonade Server's model
API (route prefixes, API key, serialized loads, per-type LRU, the nuclear
evict-all on a failed load, unload-all on an empty body, ``last_use`` in
monotonic milliseconds), with switches to make a model hang, fail or be
unknown, and a log of every request it received.

In process, on the test's own clock (trio's ``MockClock`` included, so a
120 s timeout takes no real time)::

    import httpx
    from slotfsm.testing import FakeLemonade, FakeModel

    fake = FakeLemonade([FakeModel("qwen3-0.6b"), FakeModel("nomic", type="embedding")])
    async with httpx.AsyncClient(transport=fake.transport(), base_url="http://lemonade") as c:
        with fake.hanging("qwen3-0.6b"):  # its /load will not answer in this block
            ...
    assert len(fake.loads()) == 1

On a real loopback socket, in the current event loop (asyncio or trio)::

    async with fake.serve() as url:  # "http://127.0.0.1:PORT"
        async with httpx.AsyncClient(base_url=url) as c:
            await c.post("/api/v1/load", json={"model_name": "qwen3-0.6b"})
    assert fake.loaded_models() == ["qwen3-0.6b"]
"""

from slotfsm.testing._switches import Hang, Switch
from slotfsm.testing._values import (
    HEALTH_TYPES,
    MODEL_TYPES,
    FakeModel,
    FakeTiming,
    HealthFault,
    RecordedRequest,
)
from slotfsm.testing.fake_lemonade import PREFIXES, FakeLemonade

__all__ = [
    "HEALTH_TYPES",
    "MODEL_TYPES",
    "PREFIXES",
    "FakeLemonade",
    "FakeModel",
    "FakeTiming",
    "Hang",
    "HealthFault",
    "RecordedRequest",
    "Switch",
]
