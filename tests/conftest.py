"""Shared fixtures: small hand-made tasks written to disk in the formats arcsl reads."""

import json

import pytest

TASK_A = {
    "train": [{"input": [[0, 1], [2, 0]], "output": [[1, 0], [0, 2]]},
              {"input": [[3]], "output": [[3, 3]]}],
    "test": [{"input": [[5, 5, 0]]}],
}
TASK_B = {
    "train": [{"input": [[1, 2, 3], [4, 5, 6]], "output": [[6]]}],
    "test": [{"input": [[7]]}, {"input": [[8, 9]]}],
}
SOLUTIONS = {"aaaa0001": [[[0, 5, 5]]], "bbbb0002": [[[7, 7]], [[9]]]}


@pytest.fixture
def kaggle_files(tmp_path):
    """A challenges file with its solutions beside it; returns the challenges path."""
    challenges = tmp_path / "mini_challenges.json"
    challenges.write_text(json.dumps({"aaaa0001": TASK_A, "bbbb0002": TASK_B}))
    (tmp_path / "mini_solutions.json").write_text(json.dumps(SOLUTIONS))
    return challenges
