"""Every setting of arcsl, as dataclasses: one file shows each knob and its default.

Components receive only the part they use (a sandbox gets a `SandboxConfig`, not the whole run).
Help texts live in `field(metadata={"help": ...})`; the CLI builds its flags from them.
"""

from dataclasses import dataclass, field


@dataclass(slots=True)
class SandboxConfig:
    num_workers: int = field(default=0, metadata={"help": "worker processes; 0 = one per CPU core"})
    timeout_s: float = field(default=5.0, metadata={"help": "wall-clock limit per program (all its inputs), seconds"})
    memory_mb: int = field(default=2048, metadata={"help": "address-space cap per worker process, MB"})
    max_side: int = field(default=30, metadata={"help": "largest accepted output side; outputs beyond it are invalid"})
    check_determinism: bool = field(default=False, metadata={"help": "run each program twice and flag differing outputs"})

    def __post_init__(self):
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0 (0 = one per core), got {self.num_workers}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.memory_mb < 64:
            raise ValueError(f"memory_mb must be >= 64, got {self.memory_mb}")
        if not 1 <= self.max_side <= 1000:
            raise ValueError(f"max_side must be in 1..1000, got {self.max_side}")


SORT_ORDERS = ("none", "small-first", "large-first")


@dataclass(slots=True)
class DataConfig:
    dataset: str = field(default="arc-agi-1/evaluation", metadata={
        "help": "named dataset (arc-agi-1/training, arc-agi-1/evaluation, arc-agi-2/training, arc-agi-2/evaluation, "
                "kaggle-2024/..., kaggle-2025/...), a Kaggle *_challenges.json, or a directory of per-task JSON files"})
    solutions: str | None = field(default=None, metadata={
        "help": "solutions JSON; default: *_solutions.json beside a *_challenges.json, if present"})
    task_ids: list[str] | None = field(default=None, metadata={"help": "only these task ids (in this order)"})
    limit: int = field(default=-1, metadata={"help": "keep the first N tasks after selection and sorting; -1 = all"})
    sort: str = field(default="none", metadata={
        "help": "order tasks by size (total cells, a proxy for prompt length): none, small-first, large-first"})
    skip_invalid: bool = field(default=False, metadata={
        "help": "skip tasks that fail validation (each one is listed) instead of stopping with an error"})

    def __post_init__(self):
        if self.sort not in SORT_ORDERS:
            raise ValueError(f"sort must be one of {', '.join(SORT_ORDERS)}; got {self.sort!r}")
        if self.limit < -1 or self.limit == 0:
            raise ValueError(f"limit must be a positive number of tasks or -1 (all); got {self.limit}")
