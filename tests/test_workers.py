"""Workers: the plan of workers, and `arcsl solve --workers 2` on the CPU with a tiny model: one queue, the same
results as one worker, a worker killed mid-run replaced with its task redone."""

import json
import os
import signal
from pathlib import Path

import pytest

import arcsl.workers
from arcsl.cli import main
from arcsl.grids import load_tasks, select_tasks
from arcsl.loop import TaskStarted
from arcsl.store import open_store
from arcsl.submission import submission_problems
from arcsl.workers import WorkerSpec, auto_tasks_in_flight, gpu_adapter_limit, plan_workers
from tiny_lm import tiny_llama, tiny_tokenizer

NUM_TASKS = 4


def test_each_worker_owns_a_gpu_and_a_share_of_the_cores():
    gpus = ["0", "1", "2", "3"]
    assert plan_workers(0, gpus, 64, 0) == [WorkerSpec(i, "cuda:0", str(i), 16, 16) for i in range(4)]
    assert plan_workers(2, ["5", "7"], 64, 3) == [WorkerSpec(0, "cuda:0", "5", 3, 32),  # as CUDA_VISIBLE_DEVICES
                                                  WorkerSpec(1, "cuda:0", "7", 3, 32)]  # names them
    assert plan_workers(0, [], 2, 0) == [WorkerSpec(0, "cpu", None, 2, 2)]  # no GPU: one worker, every core
    assert plan_workers(3, [], 2, 0) == [WorkerSpec(i, "cpu", None, 1, 1) for i in range(3)]  # CPU workers on request
    # Ray gives each actor its GPU: the worker leaves CUDA_VISIBLE_DEVICES as Ray set it
    assert plan_workers(0, ["0", "1"], 32, 0, assigned_gpus=True) == [WorkerSpec(i, "cuda:0", None, 16, 16)
                                                                       for i in range(2)]


def test_more_workers_than_gpus_is_refused_naming_the_flag():
    with pytest.raises(ValueError, match="--workers 3: each worker owns one GPU, and 2 are visible"):
        plan_workers(3, ["0", "1"], 16, 0)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model")
    tokenizer = tiny_tokenizer()
    model = tiny_llama(tokenizer)
    model.config.max_position_embeddings = 4096
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def solve_args(model_dir, out, workers: int, *extra: str) -> list[str]:
    return ["solve", "--dataset", "arc-agi-1/training", "--sort", "small-first", "--limit", str(NUM_TASKS),
            "--model", str(model_dir), "--device", "cpu", "--lora-rank", "4", "--workers", str(workers),
            "--initial-programs", "4", "--programs-per-round", "4", "--samples-per-view", "2", "--max-rounds", "1",
            "--stop", "never", "--max-new-tokens", "12", "--sandbox-workers", "1", "--output-dir", str(out),
            "--no-progress", *extra]


def stored(out) -> dict[str, list]:
    """Every task's attempts as they were stored, in sampling order, without their timings."""
    with open_store(out / "results.sqlite", resume=True) as store:
        assert store.finished_task_ids() == {t.id for t in TASKS}
        return {t.id: [(a.round, a.augmentation, a.response, a.program, a.error) for a in store.attempts(t.id)]
                for t in TASKS}


TASKS = select_tasks(load_tasks("arc-agi-1/training").tasks, sort="small-first", limit=NUM_TASKS)


def test_two_workers_give_the_results_of_one_and_repeat_exactly(model_dir, tmp_path):
    assert main(solve_args(model_dir, tmp_path / "one", 1, "--tasks-in-flight", "2")) == 0
    assert main(solve_args(model_dir, tmp_path / "two", 2, "--tasks-in-flight", "2")) == 0
    assert main(solve_args(model_dir, tmp_path / "again", 2, "--tasks-in-flight", "2")) == 0
    one = stored(tmp_path / "one")
    assert stored(tmp_path / "two") == one and stored(tmp_path / "again") == one
    submission = json.loads((tmp_path / "two" / "submission.json").read_text())
    assert submission_problems(submission, TASKS, "submission.json") == []


def test_a_killed_worker_is_replaced_and_its_task_starts_over(model_dir, tmp_path, monkeypatch, capsys):
    serve, killed = arcsl.workers.Workers._serve, []

    def kill_after_first_start(self, w):
        for event in serve(self, w):
            yield event
            if isinstance(event, TaskStarted) and not killed:  # the task is in flight on that worker: kill it
                killed.append(event.task.id)
                os.kill(w.handle.pid, signal.SIGKILL)

    monkeypatch.setattr(arcsl.workers.Workers, "_serve", kill_after_first_start)
    assert main(solve_args(model_dir, tmp_path / "run", 2, "--tasks-in-flight", "1")) == 0
    err = capsys.readouterr().err
    assert f"with tasks {killed[0]} in flight: 1 go back to the queue" in err and "a new worker takes its place" in err
    with open_store(tmp_path / "run" / "results.sqlite", resume=True) as store:
        assert store.finished_task_ids() == {t.id for t in TASKS}
        assert len(store.attempts(killed[0])) == 4 + 4  # its two rounds, once: the dead worker's part is gone


@pytest.mark.parametrize("signum, workers", [(signal.SIGTERM, 2), (signal.SIGINT, 1)])  # SIGINT: Ctrl-C
def test_a_signal_stops_every_worker_and_resume_with_another_number_of_workers_finishes_the_run(
        model_dir, tmp_path, signum, workers):
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    settings = ["--max-new-tokens", "400", "--max-rounds", "3"]
    args = solve_args(model_dir, out, workers, *settings)
    repo = str(Path(arcsl.workers.__file__).parents[1])  # this checkout's arcsl, whatever is installed
    run = subprocess.Popen([sys.executable, "-c", f"import sys; from arcsl.cli import main; sys.exit(main({args!r}))"],
                           stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=os.environ | {"PYTHONPATH": repo})
    started = time.monotonic()
    while not (out / "results.sqlite").exists() or not _running_tasks(out):  # stop it with tasks in flight
        assert run.poll() is None and time.monotonic() - started < 120, run.stderr.read() if run.poll() else "slow"
        time.sleep(0.5)
    run.send_signal(signum)
    assert run.wait(timeout=60) == 128 + signum
    err = run.stderr.read()
    assert f"stopped by {signal.Signals(signum).name}" in err and "Traceback" not in err
    assert not _children(run.pid)  # no worker (or sandbox) process outlives the run
    assert not [f.name for f in out.iterdir() if f.name.endswith(("-wal", "-shm"))]  # the store checkpointed, closed
    assert main(solve_args(model_dir, out, 3 - workers, *settings, "--resume")) == 0  # with the run's settings
    assert set(stored(out)) == {t.id for t in TASKS}


def _running_tasks(out) -> list[str]:
    with open_store(out / "results.sqlite", resume=True) as store:
        return [t.id for t in TASKS if store.task_status(t.id) == "running"]


def _children(pid: int) -> list[int]:
    """Processes whose parent is `pid`, from /proc."""
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        children.append(int(entry))
            except OSError:
                continue
    return children


def test_ray_actors_run_the_same_workers_on_a_local_cluster(model_dir, tmp_path, monkeypatch):
    ray = pytest.importorskip("ray", reason="the Ray extra: pip install 'arcsl[ray]' (CI installs it)")
    import arcsl.solve

    monkeypatch.setenv("PYTHONPATH", str(Path(arcsl.workers.__file__).parents[1]))  # the actors import this arcsl
    arcsl.solve._ray_launcher.cache_clear()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        assert main(solve_args(model_dir, tmp_path / "ray", 2, "--tasks-in-flight", "2", "--ray-address", "local")) == 0
    finally:
        ray.shutdown()
        arcsl.solve._ray_launcher.cache_clear()
    assert main(solve_args(model_dir, tmp_path / "one", 1, "--tasks-in-flight", "2")) == 0
    assert stored(tmp_path / "ray") == stored(tmp_path / "one")


def test_tasks_in_flight_auto_stays_within_the_adapters_a_gpus_memory_holds(tmp_path):
    from arcsl.config import ModelConfig
    from arcsl.toy.config import SHIPPED_MODEL_DIR as SHIPPED_MODEL

    assert auto_tasks_in_flight(16, 128, 400, 1) == 8 and auto_tasks_in_flight(16, 128, 400, 1, max_tasks=3) == 3
    model = ModelConfig(model=str(SHIPPED_MODEL), lora_rank=8)
    count, why = gpu_adapter_limit(model, 2**30)  # a tiny model on a 1 GiB GPU: hundreds of adapters
    assert count > 100 and why == f"{count} adapters of rank 8 fit in 1 GiB"
    capped, _ = gpu_adapter_limit(ModelConfig(model=str(SHIPPED_MODEL), lora_rank=8, gpu_memory_gb=0.5), 2**30)
    assert capped < count  # --gpu-memory-gb is the memory
    assert gpu_adapter_limit(model, None) == (None, "GPU memory unknown here")  # a Ray cluster's GPUs
    assert gpu_adapter_limit(ModelConfig(model=str(tmp_path)), 2**30)[0] is None  # no config.json here


def test_refinement_in_two_workers_gives_the_attempts_and_lineage_of_one(model_dir, tmp_path):
    """The toy format reads every completion as a program, so the tiny model's crashing ones become parents."""
    refine = ["--prompt-format", "toy", "--refine-programs", "2", "--tasks-in-flight", "2"]
    assert main(solve_args(model_dir, tmp_path / "one", 1, *refine)) == 0
    assert main(solve_args(model_dir, tmp_path / "two", 2, *refine)) == 0

    def lineage(out) -> dict[str, list]:
        with open_store(out / "results.sqlite", resume=True) as store:
            return {t.id: [(a.key, a.parent, a.prompt_hash, a.response) for a in store.attempts(t.id)] for t in TASKS}

    one = lineage(tmp_path / "one")
    assert lineage(tmp_path / "two") == one
    assert all(sum(parent is not None for _, parent, _, _ in attempts) == 2 for attempts in one.values())
