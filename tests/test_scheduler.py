"""The scheduler: one queue in the run's order, tasks put back when a worker dies, the deadline shared by workers."""

import pytest

import arcsl.scheduler
from arcsl.grids import load_tasks, select_tasks
from arcsl.loop import RoundStats
from arcsl.scheduler import DeadlinePlanner, Scheduler
from fakes import FakeClock

TASKS = select_tasks(load_tasks("arc-agi-1/training").tasks, limit=4)


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(arcsl.scheduler, "time", fake)
    return fake


def search(seconds: float) -> RoundStats:
    return RoundStats(0, 8, 0, 0, 0.0, {"sampling": seconds})


def test_tasks_are_handed_out_in_order_to_whoever_asks_then_none():
    scheduler = Scheduler(TASKS, DeadlinePlanner(-1, 0), max_rounds=3)
    handed = [scheduler.next_task() for _ in range(5)]
    assert [h[0].id for h in handed[:4]] == [t.id for t in TASKS] and handed[4] is None
    assert {h[1] for h in handed[:4]} == {3}


def test_a_task_of_a_dead_worker_goes_back_to_the_front_once():
    scheduler = Scheduler(TASKS, DeadlinePlanner(-1, 0), max_rounds=3)
    first, _ = scheduler.next_task()
    assert scheduler.put_back(first) and scheduler.next_task()[0] is first
    assert not scheduler.put_back(first)  # a second death: it fails instead
    assert scheduler.next_task()[0] is TASKS[1]


def test_near_the_deadline_tasks_get_search_only_then_none_start(clock):
    scheduler = Scheduler(TASKS, DeadlinePlanner(1000.0, 0.0), max_rounds=3)
    assert scheduler.next_task()[1] == 3  # no search seen yet: its own search will tell the cost
    scheduler.observe(search(200.0))
    assert scheduler.next_task()[1] == 3  # 1000 s: its search, a learning round and 1 later search (4 x 200 s)
    clock.advance(500.0)
    assert scheduler.next_task()[1] == 0  # 500 s left: not its search, a learning round and the last task's search
    clock.advance(350.0)
    assert scheduler.next_task() is None and scheduler.not_started == [TASKS[3]]  # 150 s left: no search fits


def test_workers_side_by_side_owe_the_later_tasks_fewer_rounds(clock):
    one, two = DeadlinePlanner(1000.0, 0.0), DeadlinePlanner(1000.0, 0.0, tasks_in_flight=1, num_workers=2)
    for planner in (one, two):
        planner.observe(search(100.0))
    assert one.task_deadline(5) == one.deadline - 400.0  # 4 later tasks, one at a time
    assert two.task_deadline(5) == two.deadline - 200.0  # 4 later tasks, two at a time
    assert not one.may_learn(10) and two.may_learn(10)  # its search, a learning round, 9 later searches
