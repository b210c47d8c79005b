"""arcsl: search and learn for ARC-AGI (program synthesis with test-time training).

Import-light on purpose: `import arcsl`, the loop and the engine's boundary types (`arcsl.engine.types`) load no
torch; only `arcsl.engine.hf` and its parts do, when a run loads a model. (Sandbox workers import nothing of arcsl.)
"""

from arcsl.grids import Grid, Pair, Task, load_tasks

__all__ = ["Grid", "Pair", "Task", "load_tasks"]
__version__ = "0.1.0"
