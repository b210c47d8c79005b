"""What the benchmarks share: the models, a code tokenizer built in code, BARC-style programs, reporting.

- `build_model`: random weights with the architecture of Llama-3.1-8B, Qwen2.5-7B or Qwen3-4B (built on
  the GPU in bf16) or a tiny Llama or Qwen3 (CPU, float32). Speed does not depend on the weights' values;
  nothing is downloaded.
- `code_tokenizer`: a byte-level BPE trained here on BARC prompts of ARC-AGI-1 training tasks and on
  Python programs, with Llama-3's special tokens and chat template. Like Llama-3's tokenizer it makes one
  token of a colour name and its space, so prompts get realistic token counts (`--tiny`: a smaller one).
- `programs`: BARC-style programs (those of bench_sandbox.py plus parametric recolourings, flips, shifts,
  crops) that run on any ARC grid; a benchmark engine answers with them, so execution, relabelling and
  fine-tuning get real work although the random model writes garbage.
"""

import datetime
import functools
import importlib.util
import json
import random
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from arcsl.engine.types import Completion, SampleResult  # noqa: E402

LLAMA_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                rope_theta=500000.0, rms_norm_eps=1e-5, bos_token_id=128000, eos_token_id=[128001, 128008, 128009],
                rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
# Qwen2.5-7B: biases on q/k/v, 4 KV heads; Qwen3-4B: q/k norms, head_dim 128 over a hidden size of 2,560,
# tied embeddings (the shapes of their published configs)
QWEN25_7B = dict(model_type="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                 num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768,
                 rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=False, use_sliding_window=False,
                 bos_token_id=151643, eos_token_id=151645)
QWEN3_4B = dict(model_type="qwen3", vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=151643,
                eos_token_id=151645)
TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=16384, bos_token_id=0, eos_token_id=1)
TINY_QWEN3 = TINY | dict(model_type="qwen3", head_dim=24, tie_word_embeddings=True)
ARCHS = {"tiny": TINY, "tiny-qwen3": TINY_QWEN3, "llama-3.1-8b": LLAMA_8B, "qwen2.5-7b": QWEN25_7B,
         "qwen3-4b": QWEN3_4B}

SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
           "<|finetune_right_pad_id|>"]
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
                 "{{ m['content'] }}<|eot_id|>{% endfor %}"
                 "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")


def build_model(arch: str, device: torch.device, vocab_size: int | None = None):
    """Random weights, built directly on `device` (bf16 on a GPU, float32 on CPU). `vocab_size` overrides
    the architecture's (a tiny model takes its tokenizer's)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    settings = ARCHS[arch] | ({"vocab_size": vocab_size} if vocab_size else {})
    config = AutoConfig.for_model(settings.pop("model_type", "llama"), **settings)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):  # initialise on the device: an 8B CPU init would take minutes
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model.eval()


def pick_device(tiny: bool) -> torch.device:
    device = torch.device("cpu" if tiny or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu":
        torch.set_num_threads(1)  # tiny matrices: threads only contend
    return device


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def random_ids(n: int, vocab: int, gen: torch.Generator) -> list[int]:
    low, high = (1000, vocab - 300) if vocab > 2000 else (10, vocab)  # clear of Llama-3's special tokens
    return torch.randint(low, high, (n,), generator=gen).tolist()


def error_text(e: Exception) -> str:
    return "out of memory" if isinstance(e, torch.OutOfMemoryError) else f"{type(e).__name__}: {e}"[:300]


def header(bench: str, device: torch.device, argv: list[str] | None) -> dict:
    import peft
    import transformers

    return {"bench": bench, "date": datetime.date.today().isoformat(),
            "command": " ".join(["python", *sys.argv[:1], *(sys.argv[1:] if argv is None else argv)]),
            "device": device_name(device), "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "errors": {}}


def finish(result: dict, out: str | None) -> dict:
    """Writes the result to `out` (if given) and prints it as the last line, one JSON object."""
    line = json.dumps(result)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(line + "\n")
    print(line, flush=True)
    return result


def print_table(title: str, rows: list[dict], columns: list[str]) -> None:
    if not rows:
        return
    print(f"\n{title}")
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for r in rows:
        if "error" in r:
            print(f"{str(r.get(columns[0], '')).ljust(widths[0])}  {r['error']}")
        else:
            print("  ".join(str(r.get(c, "")).ljust(w) for c, w in zip(columns, widths)))


# --- a tokenizer with realistic token counts for BARC prompts ----------------------------------------


@functools.cache
def dataset(name: str) -> list:
    """The tasks of a named dataset, loaded once per process."""
    from arcsl.grids import load_tasks

    return load_tasks(name).tasks


@functools.cache
def code_tokenizer(tiny: bool = False):
    """Byte-level BPE trained on BARC prompts of ARC-AGI-1 training tasks and on programs (seconds)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from arcsl.prompting import barc_prompt

    tasks = dataset("arc-agi-1/training")[:20 if tiny else 400]
    corpus = []
    for task in tasks:
        prompt = barc_prompt(task)
        corpus += [m["content"] for m in prompt.messages] + [prompt.assistant_prefix]
    corpus += programs() * (1 if tiny else 20) + [(ROOT / "arcsl" / "dsl" / "common.py").read_text()]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1024 if tiny else 16384, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|begin_of_text|>",
                                        eos_token="<|end_of_text|>", pad_token="<|finetune_right_pad_id|>")
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


# --- programs that run on any ARC grid ---------------------------------------------------------------


def _sandbox_bench():
    spec = importlib.util.spec_from_file_location("bench_sandbox", ROOT / "bench" / "bench_sandbox.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def programs() -> list[str]:
    """BARC-style programs, each with the header and comments BARC answers have; all run on any grid."""
    sandbox = _sandbox_bench()
    header_ = sandbox.HEADER
    out = list(sandbox.MIX.values())
    for rank in range(4):  # recolour a colour the grid has, so that the output differs from the input
        for color in range(1, 10):
            out.append(header_ + f"# concepts: color mapping\n# description: the colour of rank {rank} becomes "
                       f"{color}\ndef transform(input_grid):\n    output_grid = input_grid.copy()\n"
                       f"    colors = sorted(set(np.unique(input_grid).tolist()) - {{Color.BLACK}})\n"
                       f"    if colors:\n        old = colors[{rank} % len(colors)]\n"
                       f"        output_grid[input_grid == old] = {color} if old != {color} else Color.BLACK\n"
                       f"    return output_grid\n")
    for dx in range(-2, 3):
        for dy in range(-2, 3):
            out.append(header_ + f"# concepts: translation\n# description: the picture moves by ({dx}, {dy})\n"
                       f"def transform(input_grid):\n    return np.roll(input_grid, ({dx}, {dy}), axis=(0, 1))\n")
    for k in range(1, 4):
        out.append(header_ + f"# concepts: rotation\n# description: rotate {90 * k} degrees\n"
                   f"def transform(input_grid):\n    return np.rot90(input_grid, {k}).copy()\n")
    for reps in ((1, 2), (2, 1), (2, 2)):
        out.append(header_ + f"# concepts: repetition\n# description: tile the grid {reps}\n"
                   f"def transform(input_grid):\n    return np.tile(input_grid, {reps})\n")
    return out


REASONING = ("Looking at the examples, each output grid keeps the size of its input grid, and the coloured "
             "objects are changed by one rule that depends on their colour and position. The black background "
             "stays black, so the rule only touches the pixels of the objects. ") * 3


def program_completion(program: str) -> str:
    """A BARC-style answer of ~400 tokens (the seeds' median): reasoning, then the program in a block."""
    return f"{REASONING}\n```python\n{program}```\n"


class ProgramEngine:
    """A real engine (all its sampling work is done) whose completions' texts are replaced by programs
    from `programs()`, sample j of prompt i drawn with (the prompt's seed, j); token counts stay those actually
    generated. Each completion is streamed to `on_complete` as the real engine streams it, so its program
    runs while the others are decoded. Benchmarks only: it gives execution, relabelling and fine-tuning
    realistic work with a random model. A fraction `slow` of the programs loop until the sandbox's timeout."""

    def __init__(self, engine, slow: float = 0.0):
        self.engine, self.pool, self.slow = engine, programs(), slow
        self.slow_program = _sandbox_bench().TIMES_OUT
        self.num_adapters = engine.num_adapters
        self.sample_stats, self.finetune_stats = [], []

    def sample(self, prompts, cfg, seed: int | list[int] = 0, adapters=None, stop=None, stop_at=None,
               on_complete=None, idle=None) -> SampleResult:
        seeds = [seed + i for i in range(len(prompts))] if isinstance(seed, int) else list(seed)

        def answer(i: int, j: int, c: Completion) -> Completion:  # the same whether streamed or returned
            draw = random.Random(f"{seeds[i]} {j}")
            program = self.slow_program if draw.random() < self.slow else draw.choice(self.pool)
            return Completion(program_completion(program), c.num_tokens, c.finish_reason)

        streamed = None if on_complete is None else lambda i, j, c: on_complete(i, j, answer(i, j, c))
        result = self.engine.sample(prompts, cfg, seed, adapters, stop, stop_at, on_complete=streamed, idle=idle)
        completions = [[answer(i, j, c) for j, c in enumerate(cs)] for i, cs in enumerate(result.completions)]
        self.sample_stats.append(result.stats)
        return SampleResult(completions, result.stats)

    def finetune(self, examples, cfg, seed: int = 0, adapter: int = 0, stop_at: float | None = None):
        stats = self.engine.finetune(examples, cfg, seed, adapter, stop_at)
        self.finetune_stats.append(stats)
        return stats

    def reset(self, adapter: int | None = None) -> None:
        self.engine.reset(adapter)


def median_tasks(name: str, num: int) -> list[str]:
    """`num` task ids around the median size (total cells) of `name`: prompts of typical length."""
    tasks = sorted(dataset(name), key=lambda t: (t.num_cells, t.id))
    middle = len(tasks) // 2 - num // 2
    return [t.id for t in tasks[middle:middle + num]]
