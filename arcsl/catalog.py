"""The names a user types and the objects they stand for: prompt formats, shipped datasets, models.

This is the edge: the CLI resolves `--prompt-format` and a shipped `--dataset` name here, once, and
hands the objects down (the loop, the sandbox and the engine get the `PromptFormat` itself). With
`cli.py`, it is the only module of the core that names the toy domain; everything else uses the toy
domain's objects as it would a user's own domain.
"""

from dataclasses import replace
from pathlib import Path

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


def check_model(name: str) -> None:
    """Refuses, in one line and before anything is written, a --model that is neither a model folder here nor
    a hub id that this machine has cached or the hub knows; loading it later would fail deep in transformers
    (or retry the network for a minute). Offline (HF_HUB_OFFLINE, or no network) it fails at once."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"--model {name}: this folder has no config.json (not a Hugging Face model folder)")
        return
    if path.exists() or name.startswith(("/", ".", "~")) or name.count("/") != 1:
        raise ValueError(f"--model {name}: no such model folder (a hub id has the form owner/name)")
    import huggingface_hub.constants as hub_constants
    from huggingface_hub import model_info, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return
    if hub_constants.HF_HUB_OFFLINE:
        raise ValueError(f"--model {name}: not in the Hugging Face cache, and HF_HUB_OFFLINE is set")
    try:
        model_info(name, timeout=10)
    except GatedRepoError:
        raise ValueError(f"--model {name}: a gated model; accept its terms on the hub and log in "
                         "(hf auth login)") from None
    except RepositoryNotFoundError:
        raise ValueError(f"--model {name}: no such model on the Hugging Face hub (or a private one: log in "
                         "with hf auth login)") from None
    except Exception as e:  # the hub client raises its HTTP transport's own errors when offline
        raise ValueError(f"--model {name}: not in the Hugging Face cache, and the hub cannot be reached "
                         f"({type(e).__name__}: {e})"[:300]) from None
