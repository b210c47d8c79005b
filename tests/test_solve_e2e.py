"""End to end on CPU: `arcsl solve` with a tiny randomly initialised model on ARC tasks."""

import json
from dataclasses import replace

import pytest

import arcsl.engine.hf
from arcsl.cli import main
from arcsl.grids import load_tasks, select_tasks
from arcsl.store import open_store
from arcsl.submission import submission_problems
from fakes import IDENTITY
from tiny_lm import one_thread, tiny_llama, tiny_tokenizer  # noqa: F401 (one_thread: an autouse fixture)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model")
    tokenizer = tiny_tokenizer()
    model = tiny_llama(tokenizer)
    model.config.max_position_embeddings = 4096  # BARC prompts of the smallest tasks: ~1-2k tokens here
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def solve_args(model_dir, out, num_tasks: int, max_rounds: int, *extra: str) -> list[str]:
    return ["solve", "--dataset", "arc-agi-1/training", "--sort", "small-first", "--limit", str(num_tasks),
            "--model", str(model_dir), "--device", "cpu", "--lora-rank", "4",
            "--initial-programs", "4", "--programs-per-round", "4", "--samples-per-view", "2",
            "--max-rounds", str(max_rounds), "--stop", "never", "--max-new-tokens", "16", "--num-workers", "2",
            "--output-dir", str(out), "--no-progress", *extra]


def test_solve_with_a_tiny_model_writes_consistent_outputs(model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(solve_args(model_dir, out, 2, 2)) == 0

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
    assert sum(1 for _ in open(out / "attempts.jsonl")) == 2 * (4 + 2 * 4)
    assert json.loads((out / "config.json").read_text())["loop"]["max_rounds"] == 2
    report = (out / "report.html").read_text()
    assert all(t.id in report for t in tasks) and (out / "rounds.png").stat().st_size > 0
    assert "time by phase" in capsys.readouterr().out


class ProgramWriter:
    """The tiny model's engine with a valid program before each of its completions. The model's random
    text alone never runs, so nothing would be relabelled and fine-tuning would go untested."""

    def __init__(self, engine):
        self.engine, self.num_finetunes = engine, 0
        self.num_adapters = engine.num_adapters
        self.sampled_adapters, self.finetuned_adapters = [], []  # per call

    def sample(self, prompts, cfg, seed=0, adapters=None, stop=None, stop_at=None, on_complete=None, idle=None):
        self.sampled_adapters.append(adapters)
        streamed = None if on_complete is None else lambda i, j, c: on_complete(i, j, replace(c, text=IDENTITY + c.text))
        result = self.engine.sample(prompts, cfg, seed, adapters, stop, stop_at, on_complete=streamed, idle=idle)
        return replace(result, completions=[[replace(c, text=IDENTITY + c.text) for c in cs]
                                            for cs in result.completions])

    def finetune(self, examples, cfg, seed=0, adapter=0, stop_at=None):
        self.num_finetunes += 1
        self.finetuned_adapters.append(adapter)
        return self.engine.finetune(examples, cfg, seed, adapter, stop_at)

    def reset(self, adapter=None):
        self.engine.reset(adapter)


@pytest.fixture
def engines(monkeypatch) -> list[ProgramWriter]:
    """The engines `arcsl solve` loads, each wrapped in a ProgramWriter, as they are loaded."""
    loaded = []

    def load_engine(cfg):
        loaded.append(ProgramWriter(load_real_engine(cfg)))
        return loaded[-1]

    load_real_engine = arcsl.engine.hf.load_engine
    monkeypatch.setattr(arcsl.engine.hf, "load_engine", load_engine)
    return loaded


def test_seed_makes_a_cpu_run_exactly_reproducible(model_dir, tmp_path, engines):

    def attempts(name: str, seed: int, *flags: str) -> list[dict]:
        assert main(solve_args(model_dir, tmp_path / name, 1, 1, "--seed", str(seed), *flags)) == 0
        rows = [json.loads(line) for line in open(tmp_path / name / "attempts.jsonl")]
        return [{k: v for k, v in row.items() if k != "timings"} for row in rows]  # timings vary from run to run

    first = attempts("first", seed=0)
    assert engines[0].num_finetunes == 1 and {row["round"] for row in first} == {0, 1}
    assert attempts("again", seed=0) == first  # views, samples, fine-tuning and the samples after it
    # the flags' old names still work, for one release
    assert attempts("old-names", 0, "--initial-predictions", "4", "--predictions-per-round", "4") == first


def test_two_tasks_in_flight_share_each_sampling_call_of_a_tiny_model_with_two_adapters(model_dir, tmp_path,
                                                                                        engines):
    out = tmp_path / "run"
    assert main(solve_args(model_dir, out, 3, 1, "--tasks-in-flight", "2")) == 0
    [engine] = engines
    assert engine.num_adapters == 2 and sorted(engine.finetuned_adapters) == [0, 0, 1]
    # both tasks' rounds 0 and 1 in two calls, then the third task alone in its adapter
    assert [sorted(set(a)) for a in engine.sampled_adapters] == [[0, 1], [0, 1], [0], [0]]
    tasks = select_tasks(load_tasks("arc-agi-1/training").tasks, sort="small-first", limit=3)
    submission = json.loads((out / "submission.json").read_text())
    assert submission_problems(submission, tasks, "submission.json") == []
    with open_store(out / "results.sqlite", resume=True) as store:
        assert store.finished_task_ids() == {t.id for t in tasks} and store.num_attempts() == 3 * (4 + 4)
