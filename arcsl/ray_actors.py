"""Workers as Ray actors: `arcsl solve --ray-address auto|HOST:PORT|local` runs the same worker body
(`workers.worker_main`) on the GPUs of a Ray cluster, one actor per GPU (Ray assigns it and sets
CUDA_VISIBLE_DEVICES), with the same parent: the parent keeps the scheduler, the store and the submission.

Messages between the parent and an actor go through one small async actor of mailboxes (two queues per
worker), because a worker asks the parent questions (its next task, its round deadline) and Ray calls only
go the other way. Ray is an optional dependency (`pip install 'arcsl[ray]'`); nothing else imports this module.

What is not covered: actors of several GPUs (one model per GPU), Ray's own fault tolerance (a dead actor is
replaced by the parent, as a dead process is; see `workers.py`).

    ray start --head                                   # on the first machine
    ray start --address HEAD_IP:6379                   # on every other machine
    arcsl solve --ray-address auto --dataset ... --model ...   # on the first machine
"""

import asyncio
import time

import ray

from arcsl.config import SolveConfig
from arcsl.prompting import PromptFormat
from arcsl.workers import STOP_WAIT_S, WorkerSpec, WorkerHandle, worker_main

POLL_S = 0.02  # how often the parent looks into the mailboxes while every worker is quiet


@ray.remote(num_cpus=0)
class Mailboxes:
    """One queue per (worker, direction): the parent's end and the actor's end of each worker's channel."""

    def __init__(self):
        self.boxes: dict[tuple[int, str], asyncio.Queue] = {}

    def _box(self, key: tuple[int, str]) -> asyncio.Queue:
        return self.boxes.setdefault(key, asyncio.Queue())

    async def put(self, key: tuple[int, str], message) -> None:
        await self._box(key).put(message)

    async def get(self, key: tuple[int, str]):
        return await self._box(key).get()

    async def size(self, key: tuple[int, str]) -> int:
        return self._box(key).qsize()


class Channel:
    """`send` / `recv` / `poll` over the mailboxes, as a multiprocessing Connection offers them."""

    def __init__(self, mailboxes, key: int, outbox: str, inbox: str):
        self.mailboxes, self.outbox, self.inbox = mailboxes, (key, outbox), (key, inbox)
        self.run_ref = None  # on the parent's end: the actor's run; once it ended, an empty inbox means EOF

    def send(self, message) -> None:
        ray.get(self.mailboxes.put.remote(self.outbox, message))

    def poll(self) -> bool:
        return ray.get(self.mailboxes.size.remote(self.inbox)) > 0

    def recv(self):
        if self.run_ref is not None and not self.poll() and _is_done(self.run_ref):
            raise EOFError("the worker's actor ended")
        return ray.get(self.mailboxes.get.remote(self.inbox))

    def close(self) -> None:
        pass  # the mailboxes go with the launcher


@ray.remote
class WorkerActor:
    def run(self, spec: WorkerSpec, cfg: SolveConfig, prompt_format: PromptFormat, conn: Channel) -> None:
        worker_main(spec, cfg, prompt_format, conn, set_signals=False)


def _is_done(ref) -> bool:
    ready, _ = ray.wait([ref], timeout=0)
    return bool(ready)


class RayActors:
    """The launcher of `workers.Workers` on a Ray cluster (`address`: auto, HOST:PORT, or local: start one here)."""

    def __init__(self, address: str):
        if not ray.is_initialized():
            ray.init(address=None if address == "local" else address, include_dashboard=False,
                     log_to_driver=False)
        self.mailboxes = Mailboxes.remote()
        self.num_started = 0  # each actor's mailboxes are its own: a replacement never reads a dead one's
    @staticmethod
    def cluster() -> tuple[int, int]:
        """(GPUs, CPUs) of the cluster."""
        resources = ray.cluster_resources()
        return int(resources.get("GPU", 0)), int(resources.get("CPU", 1))

    def start(self, spec: WorkerSpec, cfg: SolveConfig, prompt_format: PromptFormat) -> WorkerHandle:
        num_gpus = 1 if spec.device.startswith("cuda") else 0
        self.num_started += 1
        actor = WorkerActor.options(num_gpus=num_gpus, num_cpus=spec.torch_threads).remote()
        ref = actor.run.remote(spec, cfg, prompt_format, Channel(self.mailboxes, self.num_started, "up", "down"))
        conn = Channel(self.mailboxes, self.num_started, "down", "up")
        conn.run_ref = ref
        return WorkerHandle(spec, conn, (actor, ref))

    def wait(self, workers: list[WorkerHandle], timeout: float) -> list[WorkerHandle]:
        """The workers with a message to read, or whose actor ended; polls until `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            ready = [w for w in workers if w.conn.poll() or _is_done(w.handle[1])]
            if ready or time.monotonic() >= deadline:
                return ready
            time.sleep(POLL_S)

    def exit_code(self, w: WorkerHandle) -> int | None:
        try:
            ray.get(w.handle[1], timeout=STOP_WAIT_S)
            return 0
        except Exception:  # the actor died (RayActorError) or its run raised: no exit code to give
            return None

    def stop(self, workers: list[WorkerHandle]) -> None:
        for w in workers:
            ray.kill(w.handle[0])
