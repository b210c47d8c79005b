import json
import subprocess
import sys
from pathlib import Path

import pytest

from arcsl.cli import main


def test_tasks_command_lists_tasks_with_limit(capsys):
    assert main(["tasks", "--dataset", "arc-agi-1/evaluation", "--sort", "large-first", "--limit", "2"]) == 0
    out = capsys.readouterr().out
    assert "2 tasks from arc-agi-1/evaluation" in out


def test_bad_dataset_file_is_one_clear_error_line(tmp_path, capsys):
    path = tmp_path / "bad_challenges.json"
    path.write_text(json.dumps({"t1": {"train": [{"input": [[1, 2], [3]], "output": [[1]]}], "test": [{"input": [[1]]}]}}))
    assert main(["tasks", "--dataset", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"arcsl tasks: error: {path}: task t1: train[0].input: ragged rows: row 0 has 2 cells, row 1 has 1"


def test_skip_invalid_lists_what_it_skipped(tmp_path, capsys):
    path = tmp_path / "mixed_challenges.json"
    good = {"train": [{"input": [[1]], "output": [[2]]}], "test": [{"input": [[1]]}]}
    path.write_text(json.dumps({"good": good, "bad": {"train": []}}))
    assert main(["tasks", "--dataset", str(path), "--skip-invalid"]) == 0
    captured = capsys.readouterr()
    assert "skipped invalid task" in captured.err and "task bad" in captured.err
    assert "1 tasks from" in captured.out


def test_unknown_task_id_for_show_is_an_error(tmp_path, capsys):
    assert main(["show", "nope", "--dataset", "arc-agi-1/evaluation", "--output-dir", str(tmp_path)]) == 2
    assert "unknown task ids: nope" in capsys.readouterr().err


def test_console_script_is_installed_and_answers_help():
    script = Path(sys.executable).parent / "arcsl"  # the [project.scripts] entry, beside the interpreter
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "show" in result.stdout and "tasks" in result.stdout


def test_an_unknown_prompt_format_is_refused_with_the_choices(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["solve", "--prompt-format", "chatml"])
    assert exit_.value.code == 2
    assert "--prompt-format: invalid choice: 'chatml' (choose from 'barc', 'toy')" in capsys.readouterr().err


def test_demo_and_solve_have_the_same_flags_with_their_own_defaults():
    from arcsl.cli import make_parser

    subcommands = make_parser()._subparsers._group_actions[0].choices
    demo, solve = ({a.dest: a.default for a in subcommands[name]._actions} for name in ("demo", "solve"))
    assert demo.keys() == solve.keys()
    assert solve["prompt_format"] == "barc" and demo["prompt_format"] == "toy"
