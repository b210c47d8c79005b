"""A scripted engine: canned responses instead of a model, so the loop runs on CPU in seconds;
and a fake clock, so deadlines and time budgets are tested without waiting."""

from collections.abc import Callable
from dataclasses import dataclass, field

from arcsl.engine.types import ChatPrompt, Completion, SampleResult, SampleStats
from arcsl.prompting import BARC_REFINE_INTRO


def fenced(program: str) -> str:
    return f"Reasoning first.\n```python\n{program}```\n"


SCALE_2 = fenced("from common import *\n\ndef transform(input_grid):\n"
                 "    return np.kron(input_grid, np.ones((2, 2), dtype=int))\n")
ROTATE_180 = fenced("from common import *\n\ndef transform(input_grid):\n    return np.rot90(input_grid, 2)\n")
ROTATE_180_LONG = fenced("from common import *\n\ndef transform(input_grid):\n"
                         "    # turn the grid half a turn\n    return input_grid[::-1, ::-1]\n")
IDENTITY = fenced("def transform(input_grid):\n    return input_grid\n")
CRASH = fenced("def transform(input_grid):\n    raise ValueError('no idea')\n")
NO_CODE = "I cannot solve this one."


class FakeClock:
    """Stands in for the `time` module of loop.py and solve.py: time passes only when told to."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def monotonic(self) -> float:
        return self.now

    perf_counter = monotonic

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class ScriptedEngine:
    """Answers each prompt with its script, chosen by the number of train examples the prompt shows, starting at
    the prompt's seed (as a real engine, a prompt's samples depend on its own seed alone). A refine prompt (BARC's)
    is answered from `refine_scripts` by the same rule, when given.

    With a `clock`, each sample() call takes `sample_s` (its samples finish one after another, prompt by prompt;
    a call given `stop_at` ends there with those finished) and each finetune() call `finetune_s` of its time, in
    one step per `examples_per_step` examples (a call given `stop_at` starts no step at or after it).
    `failures` maps (method, call index) to an exception that call raises, e.g. {("finetune", 1): KeyboardInterrupt()}.
    Adapters are only recorded: every adapter answers with the same scripts.

    With `streams`, sample() hands each sample to its `on_complete` as it is drawn, prompt by prompt, and after
    each prompt calls `idle` (in 10 ms slices) until `busy_until()` says so, as a host waits for a GPU that is
    still decoding (AssertionError if it never does); without it, the hooks are ignored, as a remote engine may.
    """
    scripts: dict[int, list[str]]
    refine_scripts: dict[int, list[str]] = field(default_factory=dict)
    clock: FakeClock | None = None
    sample_s: float = 0.0
    finetune_s: float = 0.0
    failures: dict[tuple[str, int], BaseException] = field(default_factory=dict)
    num_adapters: int = 1
    sampled: list[int] = field(default_factory=list)       # prompts per sample() call
    prompts: list = field(default_factory=list)            # every prompt, in order
    finetuned: list[list] = field(default_factory=list)    # examples per finetune() call
    sampled_adapters: list[list[int]] = field(default_factory=list)  # adapter per prompt, per sample() call
    finetuned_adapters: list[int] = field(default_factory=list)      # adapter per finetune() call
    reset_adapters: list[int | None] = field(default_factory=list)   # adapter per reset() call (None: all)
    stops: list = field(default_factory=list)              # the stop rule of each sample() call (texts are not cut)
    num_resets: int = 0
    step_s: list[float] = field(default_factory=list)      # the length of a fine-tuning step, per finetune() call
    num_calls: dict[str, int] = field(default_factory=dict)  # method -> calls so far, failed ones included
    streams: bool = False
    busy_until: Callable[[], bool] = lambda: True
    streamed: list[tuple[int, int]] = field(default_factory=list)  # (prompt, sample) handed to on_complete, in order

    def sample(self, prompts, cfg, seed=0, adapters=None, stop=None, stop_at=None, on_complete=None,
               idle=None) -> SampleResult:
        self._maybe_fail("sample")
        self.stops.append(stop)
        self.sampled.append(len(prompts))
        self.sampled_adapters.append(list(adapters) if adapters is not None else [0] * len(prompts))
        self.prompts += prompts
        total, kept = len(prompts) * cfg.num_samples, len(prompts) * cfg.num_samples
        if self.clock is not None:  # the samples finish one after another over sample_s; stop_at ends the call
            start = self.clock.now
            if stop_at is not None and start + self.sample_s > stop_at:
                kept = max(0, int(total * (stop_at - start) / self.sample_s)) if self.sample_s else total
            self.clock.advance(self.sample_s if kept == total else max(0.0, stop_at - start))
        seeds = seed if isinstance(seed, list) else [seed + i for i in range(len(prompts))]
        out = []
        for p, prompt_seed in zip(prompts, seeds, strict=True):
            text = p.messages[-1]["content"] if isinstance(p, ChatPrompt) else p
            scripts = self.refine_scripts if BARC_REFINE_INTRO in text and self.refine_scripts else self.scripts
            script = scripts[text.count("\nExample ")]
            drawn = min(cfg.num_samples, max(0, kept - len(out) * cfg.num_samples))  # prompt by prompt
            out.append([Completion(script[(prompt_seed + i) % len(script)], 10, "stop") for i in range(drawn)])
            if self.streams:
                self._stream(len(out) - 1, out[-1], on_complete, idle)
        stats = SampleStats(num_prompts=len(prompts), num_samples=len(prompts) * cfg.num_samples, num_batches=1,
                            num_oom_retries=0, num_prompt_tokens=0, num_output_tokens=0, prefill_s=0.0, decode_s=0.0,
                            total_s=0.0, output_tokens_per_s=0.0, peak_memory_gb=0.0)
        return SampleResult(out, stats)

    def _stream(self, prompt: int, completions: list[Completion], on_complete, idle) -> None:
        for j, completion in enumerate(completions):
            on_complete(prompt, j, completion)
            self.streamed.append((prompt, j))
        for _ in range(1000):
            if self.busy_until():
                return
            idle(0.01)
        raise AssertionError(f"busy_until never held after prompt {prompt}")

    def finetune(self, examples, cfg, seed=0, adapter=0, stop_at=None):
        self._maybe_fail("finetune")
        self.finetuned.append(list(examples))
        self.finetuned_adapters.append(adapter)
        if self.clock is not None:  # finetune_s in equal steps, none started at or after stop_at
            num_steps = cfg.num_epochs * -(-len(examples) // cfg.examples_per_step)
            self.step_s.append(self.finetune_s / max(num_steps, 1))
            for _ in range(num_steps):
                if stop_at is not None and self.clock.now >= stop_at:
                    break
                self.clock.advance(self.finetune_s / num_steps)

    def reset(self, adapter=None):
        self.num_resets += 1
        self.reset_adapters.append(adapter)

    def _maybe_fail(self, method: str) -> None:
        index = self.num_calls.get(method, 0)
        self.num_calls[method] = index + 1
        if (method, index) in self.failures:
            raise self.failures[method, index]
