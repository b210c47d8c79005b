"""The model engine: prompts in, completions out; fine-tuning LoRA adapters on (prompt, completion) pairs.

It knows nothing of grids, tasks or Markdown. `types.py` is the boundary (imports no torch); `hf.py`
holds `HFEngine` and `load_engine`, composed of the parts listed in its docstring. Import from those
modules: this package imports nothing, so that the boundary types stay cheap to import.
"""
