"""arcsl: search and learn for ARC-AGI (program synthesis with test-time training).

Import-light on purpose: sandbox workers import parts of this package, and must not pay for torch.
"""

from arcsl.grids import Grid, Pair, Task, load_tasks

__all__ = ["Grid", "Pair", "Task", "load_tasks"]
__version__ = "0.1.0"
