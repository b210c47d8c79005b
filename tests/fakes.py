"""A scripted engine: canned responses instead of a model, so the loop runs on CPU in seconds."""

from dataclasses import dataclass, field

from arcsl.engine import ChatPrompt, Completion, SampleResult, SampleStats


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


@dataclass
class ScriptedEngine:
    """Answers each prompt with its script, chosen by the number of train examples the prompt shows."""
    scripts: dict[int, list[str]]
    sampled: list[int] = field(default_factory=list)       # prompts per sample() call
    finetuned: list[list] = field(default_factory=list)    # examples per finetune() call
    num_resets: int = 0

    def sample(self, prompts, cfg, seed=0) -> SampleResult:
        self.sampled.append(len(prompts))
        out = []
        for p in prompts:
            text = p.messages[-1]["content"] if isinstance(p, ChatPrompt) else p
            script = self.scripts[text.count("\nExample ")]
            out.append([Completion(script[(seed + i) % len(script)], 10, "stop") for i in range(cfg.num_samples)])
        stats = SampleStats(len(prompts), len(prompts) * cfg.num_samples, 1, 0, 0, 0, 0.0, 0.0, 0.0, 0.0, 0.0)
        return SampleResult(out, stats)

    def finetune(self, examples, cfg, seed=0):
        self.finetuned.append(list(examples))

    def reset(self):
        self.num_resets += 1
