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


def test_a_deadline_margin_that_leaves_nothing_is_refused_in_one_line(capsys):
    assert main(["solve", "--deadline-s", "20"]) == 2  # the default margin is 60 s
    err = capsys.readouterr().err
    assert err.startswith("arcsl solve: error: --deadline-margin-s 60 leaves nothing of --deadline-s 20") and \
        len(err.splitlines()) == 1


def test_the_deadline_clock_starts_when_the_process_started():
    script = ("import time; time.sleep(1.5); from arcsl.cli import process_started; "
              "print(time.monotonic() - process_started())")
    age = float(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout)
    assert 1.5 <= age < 60  # the sleep and the imports count


def test_a_model_that_cannot_be_loaded_is_one_line_before_anything_is_written(tmp_path, capsys, monkeypatch):
    import huggingface_hub
    import huggingface_hub.constants as hub_constants

    out = tmp_path / "out"
    (tmp_path / "empty").mkdir()
    offline = "nobody/no-such-model"
    cases = [(str(tmp_path / "missing"), "no such model folder (a hub id has the form owner/name)"), (str(tmp_path / "empty"), "this folder has no config.json (not a Hugging Face model folder)"),
             (offline, "not in the Hugging Face cache, and HF_HUB_OFFLINE is set")]
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    for model, problem in cases:
        assert main(["solve", "--model", model, "--output-dir", str(out)]) == 2
        err = capsys.readouterr().err
        assert err == f"arcsl solve: error: --model {model}: {problem}\n"
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)

    def unreachable(name, timeout):
        raise OSError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "model_info", unreachable)
    assert main(["solve", "--model", offline, "--output-dir", str(out)]) == 2
    assert "the hub cannot be reached (OSError: Name or service not known)" in capsys.readouterr().err
    model = Path(__file__).parents[1] / "arcsl" / "toy" / "shipped_model"
    assert main(["solve", "--model", str(model), "--adapter", str(tmp_path), "--output-dir", str(out)]) == 2
    assert "no adapter_model.safetensors there" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("command", ["solve", "demo", "finetune", "tasks", "show", "score", "validate-submission"])
def test_every_commands_help_renders(command, capsys):
    """argparse formats help texts with %: a stray % in a config field's help would crash --help."""
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0 and "usage:" in capsys.readouterr().out


@pytest.mark.parametrize("command, flag, allowed", [("solve", "--training-kernels", "'auto', 'liger', 'none'"),
                                                    ("finetune", "--training-kernels", "'auto', 'liger', 'none'"),
                                                    ("finetune", "--lr-schedule", "'constant', 'linear', 'cosine'")])
def test_a_value_outside_a_fixed_set_is_refused_with_the_choices(command, flag, allowed, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, flag, "fast"])
    assert exit_.value.code == 2
    assert f"{flag}: invalid choice: 'fast' (choose from {allowed})" in capsys.readouterr().err
