"""pipeline.ray_runtime.complete_in_tasks: every call runs once, results come back with their call index,
the calls are read lazily with a bounded number in flight, and a task's DaptError reaches the caller as
itself. Real local Ray (the session's ``ray_local``)."""

from __future__ import annotations

import sys
import time

import pytest
import ray.cloudpickle

from dapt.pipeline.errors import InputError
from dapt.pipeline.ray_runtime import complete_in_tasks

# the workers cannot import a test module by name: ship its functions by value
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _square_after(x: int, delay: float) -> int:
    time.sleep(delay)
    return x * x


def _fail_on(x: int, bad: int) -> int:
    if x == bad:
        raise InputError(f"item {x}: bad input")
    return x


def test_every_call_once_in_completion_order_with_bounded_flight(ray_local) -> None:
    pulled = []

    def calls():
        for i in range(12):
            pulled.append(i)
            # the first call is slow, so later ones finish first
            yield (i, 1.5 if i == 0 else 0.0)

    seen = []
    for i, result in complete_in_tasks(_square_after, calls(), name="test:square", in_flight=3):
        assert len(pulled) - len(seen) <= 3  # never more than in_flight submitted and not yet yielded
        seen.append((i, result))
    assert sorted(seen) == [(i, i * i) for i in range(12)]
    assert seen[0][0] != 0  # yielded as they finish, not in call order


def test_a_task_error_is_raised_as_itself(ray_local) -> None:
    with pytest.raises(InputError, match="item 3: bad input"):
        for _ in complete_in_tasks(_fail_on, ((i, 3) for i in range(8)), name="test:fail"):
            pass


def test_no_calls_yields_nothing(ray_local) -> None:
    assert list(complete_in_tasks(_square_after, [], name="test:none")) == []


def _zeros(n: int):
    import numpy as np

    return np.zeros(n, np.uint8)


def test_a_small_task_result_goes_to_the_object_store_not_the_driver(ray_local):
    """A 10 KB result (a shuffle's map output at scale) is stored in the node's object store; only a
    result under 1 KB comes back inline into the driver's heap (``RAY_max_direct_call_object_size``:
    Ray's 100 KB default made clean's driver grow with the corpus, docs/scale.md)."""
    refs = [ray.remote(_zeros).remote(n) for n in (100, 10_000)]
    ray.get(refs)
    where = ray.experimental.get_object_locations(refs)
    assert where[refs[0]]["node_ids"] == []  # inline, in the driver
    assert len(where[refs[1]]["node_ids"]) == 1  # in the object store
