"""The benchmarks in their tiny CPU mode, so that they keep working (their figures come from GPU runs)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[1] / "bench"


def load(name: str):
    sys.path.insert(0, str(BENCH))  # the scripts import benchlib from beside them
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def one_thread():
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)  # the benchmarks use one thread on CPU


def last_json_line(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_the_engine_benchmark_runs_in_tiny_mode_and_its_paths_agree(capsys):
    result = load("bench_engine").main(["--tiny"])
    assert not result["errors"]
    assert all(row["output_tok_s"] > 0 for row in result["sampling"])
    assert [row["calls"] for row in result["adapters"]] == [1, 1, 1, 3]  # mixed, merged, not merged, one by one
    assert all(row["samples"] == 12 and row["output_tok_s"] > 0 and row["decode_ms_per_step"] > 0
               for row in result["adapters"])
    assert all(row["checkpointed"] == "0/2" for row in result["finetune"])
    assert max(result["check"]["relative_error_per_step"]) < 1e-4  # float32: the fast path is exact
    assert result["paths"]["identical"] and result["paths"]["adapters_differ"]
    assert "cpu mixed" in result["paths"]["paths"]
    assert last_json_line(capsys)["bench"] == "engine"


def test_the_overhead_benchmark_runs_in_tiny_mode(capsys):
    result = load("bench_overhead").main(["--tiny"])
    calls = result["merged"]["calls"]
    assert [c["call"] for c in calls] == ["sample", "finetune", "sample", "reset", "sample"]
    assert all(c["overhead_s"] >= 0 for c in calls) and result["compilations_after_warm_up"] == 0
    assert last_json_line(capsys)["bench"] == "overhead"


def test_the_execution_benchmark_runs_in_tiny_mode(capsys):
    result = load("bench_execution").main(["--tiny", "--sample-tok-s", "1000"])
    assert [sum(r["results"].values()) for r in result["rounds"]] == [16, 16]
    assert result["sampling_round_s"] == 16 * 400 / 1000
    assert last_json_line(capsys)["bench"] == "execution"


def test_the_rounds_benchmark_runs_in_tiny_mode(tmp_path, capsys):
    result = load("bench_rounds").main(["--work-dir", str(tmp_path)])
    assert [c["rounds"] for c in result["configs"]] == [1, 2]
    assert [c["examples_trained"] for c in result["configs"]] == [2, 2]  # equal training across configurations
    assert all(c["output_tokens"] == 12 * 8 for c in result["configs"])  # 12 programs x 8 tokens each
    assert last_json_line(capsys)["bench"] == "rounds"


@pytest.mark.parametrize("group", [1, 2])
def test_the_rounds_benchmark_runs_with_two_tasks_in_flight_alone_or_in_a_group(tmp_path, capsys, group):
    result = load("bench_rounds").main(["--work-dir", str(tmp_path), "--num-tasks", "2", "--rounds", "1",
                                        "--tasks-in-flight", "2", "--task-group-size", str(group)])
    assert result["settings"]["tasks_in_flight"] == 2 and result["settings"]["task_group_size"] == group
    [config] = result["configs"]
    assert len(config["task_s"]) == 2 and config["examples_trained"] == 2 * 2
    assert config["finetune_calls"] == 2 // group  # one a task, or one for the group
    assert config["output_tokens"] == 2 * 12 * 8
    assert last_json_line(capsys)["bench"] == "rounds"


def test_the_rounds_benchmark_can_stop_samples_at_spread_lengths(tmp_path):
    result = load("bench_rounds").main(["--work-dir", str(tmp_path), "--rounds", "1", "--programs", "8",
                                        "--max-new-tokens", "24", "--mean-new-tokens", "4"])
    assert result["settings"]["mean_new_tokens"] == 4
    assert result["configs"][0]["mean_sample_tokens"] < 16  # ~4 expected; all 24 without the option


def test_the_rounds_benchmark_can_match_rows_per_decode_step(tmp_path):
    result = load("bench_rounds").main(["--work-dir", str(tmp_path), "--num-tasks", "3", "--rounds", "1", "2",
                                        "--programs", "12", "--tasks-in-flight", "0"])
    # K = rounds + 1: 2 tasks x 6 rows for 1 round, 3 x 4 for 2 rounds (12 rows per search either way)
    assert [c["tasks_in_flight"] for c in result["configs"]] == [2, 3]
    assert all(len(c["task_s"]) == 3 for c in result["configs"])


def test_the_memory_benchmark_runs_in_tiny_mode(capsys):
    load("bench_memory").main(["--tiny"])
    result = last_json_line(capsys)
    assert [c["call"] for c in result["calls"]] == ["sample 1", "sample 2", "finetune 64", "finetune 128"]
    assert all(c["oom_retries"] == 0 for c in result["calls"])


def test_the_family_benchmark_runs_in_tiny_mode(capsys):
    result = load("bench_families").main(["--tiny"])
    assert [(r["family"], r["model_type"]) for r in result["families"]] == [("tiny", "llama"), ("tiny-qwen3", "qwen3")]
    assert all(r["arcsl_tok_s"] > 0 and r["hf_generate_tok_s"] > 0 for r in result["families"])
    assert last_json_line(capsys)["bench"] == "families"


def test_the_training_benchmark_runs_in_tiny_mode(capsys):
    result = load("bench_training").main(["--tiny"])
    assert [r["sweep"] for r in result["rows"]] == ["length", "checkpointing", "micro-batch", "packing", "packing"]
    assert [r.get("packing") for r in result["rows"][3:]] == [False, True]
    assert all(r["tokens_s"] > 0 for r in result["rows"]) and result["rows"][1]["checkpointed"] == "8"
    assert last_json_line(capsys)["bench"] == "training"


def test_the_refine_benchmark_runs_in_tiny_mode(capsys):
    result = load("bench_refine").main(["--tiny"])
    assert not result["errors"]
    fresh, refine, mixed = result["cases"]
    assert [c["case"] for c in result["cases"]] == ["fresh", "refine", "mixed"]
    assert all(c["programs"] == 4 and c["warm"]["num_output_tokens"] == 4 * 8 for c in result["cases"])
    assert fresh["prompt_tokens"] < mixed["prompt_tokens"] < refine["prompt_tokens"]  # parent and feedback shown
    assert set(result["refine_over_fresh"]) == {"total", "prefill", "decode"} and "within_target" in result
    assert last_json_line(capsys)["bench"] == "refine"
