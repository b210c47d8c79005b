"""Which values each LoRA adapter holds, as a version number, so that no cache can serve stale weights.

An engine holds several adapters (one per task, or task group, in flight). Whatever keeps something derived from an
adapter's values between calls (the sampler's stacked or merged factors, a block of the mixed factors)
keys it by the adapter's version, never by the adapter's number: a version names one set of values.

- version 0: the initial values. Every adapter starts there and `reset` restores them bit for bit, so
  adapters at version 0 hold the same values and one batch may treat them as one (and skip a LoRA that is
  zero).
- any other version: one fine-tuning call or one load, a number never given out before by this engine.

Every change goes through `changed` or `reset`; the engine calls them in the same method that changes the
values, so a cache keyed by version cannot outlive the values it was made from.

`saved_adapter_file` finds a saved adapter's weights, or says why not; it imports no torch, so the CLI
checks `--adapter` with it before anything is written.
"""

from collections.abc import Iterable
from pathlib import Path


def saved_adapter_file(path: str | Path) -> Path:
    """The weights file of the peft adapter folder `path`; a ValueError if there is none."""
    file = Path(path) / "adapter_model.safetensors"
    if not file.is_file():
        raise ValueError(f"--adapter {path}: no adapter_model.safetensors there (a peft adapter folder, as "
                         "arcsl finetune or save_adapter writes)")
    return file


class AdapterVersions:
    """The version of each of `num_adapters` adapters (see the module docstring)."""

    def __init__(self, num_adapters: int):
        assert num_adapters >= 1, f"an engine holds at least one adapter, got {num_adapters}"
        self.versions = [0] * num_adapters
        self.num_changes = 0

    def __len__(self) -> int:
        return len(self.versions)

    def __getitem__(self, adapter: int) -> int:
        return self.versions[adapter]

    def check(self, adapter: int) -> None:
        if not 0 <= adapter < len(self.versions):
            raise ValueError(f"adapter {adapter} does not exist: this engine has num_adapters={len(self.versions)} "
                             f"(adapters 0 to {len(self.versions) - 1})")

    def changed(self, adapter: int) -> int:
        """`adapter` was fine-tuned or loaded: a new version, never used before. Returns it."""
        self.check(adapter)
        self.num_changes += 1
        self.versions[adapter] = self.num_changes
        return self.num_changes

    def reset(self, adapter: int) -> None:
        """`adapter` is back at the initial values."""
        self.check(adapter)
        self.versions[adapter] = 0

    def of(self, adapters: Iterable[int]) -> dict[int, int]:
        """adapter -> version, for each adapter used (in order of number)."""
        return {adapter: self.versions[adapter] for adapter in sorted(set(adapters))}
