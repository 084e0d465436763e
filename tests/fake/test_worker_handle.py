"""The scheduler's contracts, checked without a process (FAKE workers): the WorkerHandle protocol and the states."""

from __future__ import annotations

import inspect
import json

from swarm_edge.scheduling import State, WorkerHandle
from swarm_edge.workers.worker import Worker


class FakeHandle:
    """FAKE: the least a worker handle must have."""

    last_pss, pid = 0, None

    @property
    def alive(self) -> bool:
        return True

    async def stop(self) -> None:
        return None


def test_a_fake_with_the_attributes_is_a_worker_handle_and_one_without_is_not():
    assert isinstance(FakeHandle(), WorkerHandle)
    assert not isinstance(object(), WorkerHandle)


def test_the_real_worker_class_has_what_the_protocol_names():
    for name in ("alive", "pid", "stop"):
        assert hasattr(Worker, name), name
    assert "self.last_pss = " in inspect.getsource(Worker.__init__)  # an instance attribute, set at start


def test_states_read_as_their_words():
    assert json.dumps({"state": State.READY}) == '{"state": "ready"}'
    assert f"{State.LOADING}" == "loading" and State.STOPPING == "stopping"
