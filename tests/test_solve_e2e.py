"""End to end on CPU: `arcsl solve` with a tiny randomly initialised model on two ARC tasks, two rounds."""

import json

from arcsl.cli import main
from arcsl.grids import load_tasks, select_tasks
from arcsl.store import open_store
from arcsl.submission import submission_problems
from tiny_lm import tiny_llama, tiny_tokenizer


def test_solve_with_a_tiny_model_writes_consistent_outputs(tmp_path, capsys):
    tokenizer = tiny_tokenizer()
    model = tiny_llama(tokenizer)
    model.config.max_position_embeddings = 4096  # BARC prompts of the smallest tasks: ~1-2k tokens here
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    out = tmp_path / "run"
    args = ["solve", "--dataset", "arc-agi-1/training", "--sort", "small-first", "--limit", "2",
            "--model", str(tmp_path / "model"), "--device", "cpu", "--lora-rank", "4",
            "--initial-predictions", "4", "--predictions-per-round", "4", "--samples-per-view", "2",
            "--max-rounds", "2", "--stop", "never", "--max-new-tokens", "16", "--num-workers", "2",
            "--output-dir", str(out), "--no-progress"]
    assert main(args) == 0

    tasks = select_tasks(load_tasks("arc-agi-1/training").tasks, sort="small-first", limit=2)
    submission = json.loads((out / "submission.json").read_text())
    assert submission_problems(submission, tasks, "submission.json") == []
    with open_store(out / "results.sqlite", resume=True) as store:
        assert store.finished_task_ids() == {t.id for t in tasks}
        assert store.num_attempts() == 2 * (4 + 2 * 4)
        rounds = {(t.task_id, t.round) for t in store.phase_timings()}
        assert rounds == {(t.id, r) for t in tasks for r in range(3)}
    lines = (out / "metrics.csv").read_text().splitlines()
    assert len(lines) == 1 + 2 + 1 and lines[-1].startswith("MEAN")
    assert "time by phase" in capsys.readouterr().out
