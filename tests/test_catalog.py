"""The edge: names a user types -> objects; and the rule that only the edge names the toy domain."""

import ast
from pathlib import Path

import pytest

from arcsl import catalog
from arcsl.config import DataConfig
from arcsl.prompting import BARC_FORMAT
from arcsl.toy.demo import DEMO_TASKS
from arcsl.toy.prompt import TOY_FORMAT

PACKAGE = Path(catalog.__file__).parent
EDGE = {"cli.py", "catalog.py"}


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at any depth of its code."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_no_module_of_the_core_imports_the_toy_domain():
    core = [p for p in PACKAGE.rglob("*.py") if "toy" not in p.relative_to(PACKAGE).parts
            and str(p.relative_to(PACKAGE)) not in EDGE]
    assert len(core) > 20  # the scan sees the package
    offenders = {str(p.relative_to(PACKAGE)): sorted(m for m in imported_modules(p) if m.startswith("arcsl.toy"))
                 for p in core}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_prompt_format_names_map_to_their_formats():
    assert catalog.PROMPT_FORMATS == {"barc": BARC_FORMAT, "toy": TOY_FORMAT}
    assert all(name == fmt.name for name, fmt in catalog.PROMPT_FORMATS.items())
    assert catalog.prompt_format("toy") is TOY_FORMAT


def test_an_unknown_prompt_format_names_the_flag_and_the_choices():
    with pytest.raises(ValueError, match="--prompt-format 'chatml' is not a prompt format; choose one of barc, toy"):
        catalog.prompt_format("chatml")


def test_a_shipped_dataset_name_becomes_its_file_and_other_sources_stay():
    assert catalog.resolve_dataset(DataConfig(dataset="toy/demo")).dataset == str(DEMO_TASKS)
    assert catalog.resolve_dataset(DataConfig(dataset="arc-agi-1/training")).dataset == "arc-agi-1/training"
    assert catalog.resolve_dataset(DataConfig(dataset="x/y_challenges.json")).dataset == "x/y_challenges.json"
