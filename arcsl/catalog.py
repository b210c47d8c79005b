"""The names a user types and the objects they stand for: prompt formats and shipped datasets.

This is the edge: the CLI resolves `--prompt-format` and a shipped `--dataset` name here, once, and
hands the objects down (the loop, the sandbox and the engine get the `PromptFormat` itself). With
`cli.py`, it is the only module of the core that names the toy domain; everything else uses the toy
domain's objects as it would a user's own domain.
"""

from dataclasses import replace

from arcsl.config import DataConfig
from arcsl.prompting import BARC_FORMAT, PromptFormat
from arcsl.toy.demo import DEMO_DATASET, DEMO_TASKS
from arcsl.toy.prompt import TOY_FORMAT

PROMPT_FORMATS: dict[str, PromptFormat] = {f.name: f for f in (BARC_FORMAT, TOY_FORMAT)}
SHIPPED_DATASETS = {DEMO_DATASET: DEMO_TASKS}  # name -> task file inside the package


def prompt_format(name: str) -> PromptFormat:
    """The prompt format `--prompt-format name` means."""
    if name not in PROMPT_FORMATS:
        raise ValueError(f"--prompt-format {name!r} is not a prompt format; choose one of {', '.join(PROMPT_FORMATS)}")
    return PROMPT_FORMATS[name]


def resolve_dataset(cfg: DataConfig) -> DataConfig:
    """`cfg` with a shipped dataset's name replaced by its file; other sources as they are."""
    if cfg.dataset in SHIPPED_DATASETS:
        return replace(cfg, dataset=str(SHIPPED_DATASETS[cfg.dataset]))
    return cfg
