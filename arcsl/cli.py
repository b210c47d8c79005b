"""The `arcsl` command: flags -> config dataclasses -> one function call per subcommand.

Examples:
    arcsl demo                                   # search-and-learn against search alone, toy model, CPU
    arcsl solve --dataset arc-agi-1/evaluation --model barc0/Llama-3.1-ARC-Potpourri-Induction-8B
    arcsl tasks --dataset arc-agi-1/evaluation --sort large-first --limit 5
    arcsl show 00576224 --dataset arc-agi-1/evaluation --output-dir out/show
    arcsl show 00576224 --dataset arc-agi-1/evaluation --predictions out/submission.json
    arcsl validate-submission out/submission.json --dataset data/arc-agi_test_challenges.json
    arcsl score out/submission.json --dataset arc-agi-1/evaluation

Flags are generated from the dataclass fields in `config.py` (their `help` metadata), so the
config is the one source of truth; this module holds no logic beyond wiring. Names a user types
(`--prompt-format`, shipped `--dataset` names) are resolved to objects by `arcsl.catalog`, here, once.
"""

import argparse
import dataclasses
import os
import signal
import sys
import time
import types
from pathlib import Path
from typing import get_args, get_origin, get_type_hints

from arcsl import catalog
from arcsl.config import (LR_SCHEDULES, SELECT_RULES, TRAINING_KERNELS, DataConfig, FinetuneConfig, ModelConfig,
                          OfflineConfig, RelabelConfig, SolveConfig)
from arcsl.toy.demo import demo_config


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_args(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = (), defaults=None,
                    choices: dict[str, list[str]] | None = None) -> None:
    """Add one kebab-case flag per field of the dataclass `cls` (except `skip`), with its default and help.

    `defaults`, an instance of `cls`, replaces the class defaults (a preset such as the toy demo's);
    `choices` lists the accepted values of some fields; a field's metadata "aliases" are older flag names, and
    its "words" values that may be given as words (e.g. {"auto": 0}).
    """
    group = parser.add_argument_group(cls.__name__)
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = f.default if defaults is None else getattr(defaults, f.name)
        if default is dataclasses.MISSING:  # a default_factory field (a list)
            default = f.default_factory()
        kind, help_text = hints[f.name], f.metadata.get("help", "")
        aliases = [_flag(a) for a in f.metadata.get("aliases", [])]
        words = f.metadata.get("words", {})  # values given as words, e.g. --tasks-in-flight auto
        shown = next((w for w, v in words.items() if v == default), default)
        help_text += f" (default: {shown})" + (f"; old name {', '.join(aliases)} still accepted" if aliases else "")
        names = [_flag(f.name), *aliases]
        if get_origin(kind) in (types.UnionType,):  # X | None
            kind = next(a for a in get_args(kind) if a is not type(None))
        if kind is bool:
            group.add_argument(*names, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        elif get_origin(kind) is list:
            group.add_argument(*names, nargs="+", type=get_args(kind)[0], default=default, help=help_text)
        else:
            group.add_argument(*names, type=_with_words(kind, words) if words else kind, default=default,
                               help=help_text, choices=(choices or {}).get(f.name))


def _with_words(kind: type, words: dict[str, object]):
    def parse(text: str):
        return words[text] if text in words else kind(text)

    parse.__name__ = kind.__name__  # argparse names the type in its errors
    return parse


def config_from_args(cls: type, args: argparse.Namespace, **overrides):
    """Build `cls` from the parsed flags that `add_config_args` added, plus `overrides`."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls(**(values | overrides))


# flags whose values are a fixed set (argparse lists them in --help and names the flag on a bad value)
CHOICES = {"prompt_format": list(catalog.PROMPT_FORMATS), "training_kernels": list(TRAINING_KERNELS),
           "lr_schedule": list(LR_SCHEDULES)}


def add_solve_args(parser: argparse.ArgumentParser, preset: SolveConfig) -> None:
    """The flags of `arcsl solve` and `arcsl demo`, with `preset`'s values as their defaults."""
    for group in dataclasses.fields(preset):
        # the loop sets samples per prompt (samples_per_view), and the engine gets one adapter per task (or
        # task group) in flight: one flag for each, not two
        add_config_args(parser, type(getattr(preset, group.name)), skip=("num_samples", "num_adapters"),
                        defaults=getattr(preset, group.name), choices=CHOICES)


def solve_config(args: argparse.Namespace) -> SolveConfig:
    """The SolveConfig of parsed solve/demo flags, with a shipped dataset name resolved to its file."""
    cfg = SolveConfig(*(config_from_args(f.type, args) for f in dataclasses.fields(SolveConfig)))
    return dataclasses.replace(cfg, data=catalog.resolve_dataset(cfg.data))


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="arcsl", description="Search and learn for ARC-AGI.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="the embedded default: search-and-learn against search alone, with the "
                                       "shipped toy model on 8 shipped drawing tasks (about 4.5 minutes on 2 CPU cores)")
    add_solve_args(demo, demo_config())

    defaults = SolveConfig()
    solve = sub.add_parser(
        "solve", help="search and learn on a dataset; writes submission.json, metrics, report",
        description=f"Search and learn on a dataset. Without flags it runs the reference setting: "
                    f"{defaults.model.model} on {defaults.data.dataset} (an 8B model: it wants a GPU, and is "
                    f"downloaded from the Hugging Face hub unless --model names a local folder). Every default "
                    f"below is what a run without that flag uses. For the CPU demo, run `arcsl demo`.")
    add_solve_args(solve, defaults)

    learn = sub.add_parser("finetune", help="learn across tasks: one LoRA on the hindsight-relabelled attempts of "
                                            "earlier runs (arcsl solve --adapter then starts from it)")
    add_config_args(learn, OfflineConfig, choices={"select": list(SELECT_RULES)})
    add_config_args(learn, ModelConfig, skip=("num_adapters",), choices=CHOICES)
    add_config_args(learn, FinetuneConfig, choices=CHOICES)
    add_config_args(learn, RelabelConfig, skip=("relabel_rounds", "skip_trained", "max_examples", "example_order"))

    tasks = sub.add_parser("tasks", help="list the tasks of a dataset (validates every one)")
    add_config_args(tasks, DataConfig)

    show = sub.add_parser("show", help="render tasks (and predictions) to PNG and HTML")
    show.add_argument("ids", nargs="+", metavar="TASK_ID", help="task ids to render")
    show.add_argument("--predictions", default=None, help="a Kaggle submission.json whose attempts to draw")
    show.add_argument("--output-dir", default=".", help="where TASK_ID.png and TASK_ID.html go (default: .)")
    add_config_args(show, DataConfig, skip=("task_ids", "limit", "sort"))

    score = sub.add_parser("score", help="score a submission.json against the solutions, per task and overall "
                                         "(a submission that validate-submission rejects is not scored)")
    score.add_argument("submission", help="Kaggle submission.json to score")
    score.add_argument("--no-validate", action="store_true",
                       help="score even a submission with problems (missing or extra tasks or entries)")
    add_config_args(score, DataConfig)

    validate = sub.add_parser("validate-submission", help="check a submission.json against the challenges "
                                                          "(exit 1 and list every problem if invalid)")
    validate.add_argument("submission", help="Kaggle submission.json to check")
    add_config_args(validate, DataConfig, skip=("task_ids", "limit", "sort"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        if args.command == "demo":
            return run_demo(solve_config(args))
        if args.command == "solve":
            return run_solve(solve_config(args))
        if args.command == "finetune":
            return run_finetune(*(config_from_args(cls, args) for cls in (OfflineConfig, ModelConfig, FinetuneConfig,
                                                                           RelabelConfig)),
                                argv=sys.argv[1:] if argv is None else argv)
        data = catalog.resolve_dataset(config_from_args(DataConfig, args, **(
            {"task_ids": args.ids} if args.command == "show" else {})))
        if args.command == "tasks":
            return list_tasks(data)
        if args.command == "show":
            return show(data, Path(args.output_dir), args.predictions)
        if args.command == "score":
            return score(data, Path(args.submission), validate=not args.no_validate)
        if args.command == "validate-submission":
            return validate_submission(data, Path(args.submission))
    except ValueError as e:  # user mistakes (bad flags, bad files): one clear line, no traceback
        if os.environ.get("RANK", "0") == "0":  # one line, not one per data-parallel process
            print(f"arcsl {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM during a run (arcsl.solve.Stopped)
        from arcsl.solve import Stopped

        signum = e.signum if isinstance(e, Stopped) else signal.SIGINT
        print(f"arcsl {args.command}: stopped by {signal.Signals(signum).name}; the results so far are stored, and "
              "--resume continues the run", file=sys.stderr)
        return 128 + signum
    raise AssertionError(f"unhandled command {args.command!r}")


# --- subcommands: each loads what it needs and calls one library function ----------------------

def run_demo(cfg: SolveConfig) -> int:
    from arcsl.toy.demo import compare

    compare(cfg, catalog.prompt_format(cfg.loop.prompt_format))
    return 0


def run_solve(cfg: SolveConfig) -> int:
    from arcsl.solve import solve

    if not cfg.run.ray_address:  # with Ray the model may live on the cluster's machines only
        catalog.check_model(cfg.model.model)
        if cfg.model.adapter:
            from arcsl.engine.adapters import saved_adapter_file

            saved_adapter_file(cfg.model.adapter)
    solve(cfg, catalog.prompt_format(cfg.loop.prompt_format), started=process_started())
    return 0


def run_finetune(offline: OfflineConfig, model: ModelConfig, finetune: FinetuneConfig, relabel: RelabelConfig,
                 argv: list[str]) -> int:
    from arcsl.offline import finetune_offline

    catalog.check_model(model.model)
    world_size = os.environ.get("WORLD_SIZE")
    if world_size is None and offline.num_processes > 1:  # start them: this same command under torchrun
        import subprocess

        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc-per-node={offline.num_processes}", "-m", "arcsl.cli", *argv]
        return subprocess.run(command).returncode
    if world_size is not None and offline.num_processes not in (1, int(world_size)):
        raise ValueError(f"--num-processes {offline.num_processes}, but the launcher started {world_size} processes")
    finetune_offline(offline, model, finetune, relabel, catalog.PROMPT_FORMATS)
    return 0


def process_started() -> float:
    """When this process started, on the time.monotonic() clock (Linux: from /proc; elsewhere: now), so that
    --deadline-s counts the imports and the model's loading too."""
    now = time.monotonic()
    try:
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        # field 22 of /proc/self/stat, after the command name in parentheses (which may hold spaces)
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return now
    age = uptime - ticks / os.sysconf("SC_CLK_TCK")
    return now - min(max(age, 0.0), now)


def _load(cfg: DataConfig) -> list:
    from arcsl.grids import load_dataset

    result = load_dataset(cfg)
    for error in result.skipped:
        print(f"skipped invalid task: {error}", file=sys.stderr)
    return result.tasks


def list_tasks(cfg: DataConfig) -> int:
    tasks = _load(cfg)
    print(f"{'task':<12} {'train':>5} {'test':>4} {'cells':>6} {'test outputs':>12}")
    for t in tasks:
        print(f"{t.id:<12} {len(t.train):>5} {len(t.test):>4} {t.num_cells:>6} {'yes' if t.has_test_outputs else 'no':>12}")
    print(f"{len(tasks)} tasks from {cfg.dataset}")
    return 0


def show(cfg: DataConfig, output_dir: Path, predictions: str | None) -> int:
    from arcsl.render import show_tasks
    from arcsl.submission import read_submission

    tasks = _load(cfg)
    attempts = read_submission(Path(predictions)) if predictions else {}
    for path in show_tasks(tasks, output_dir, attempts):
        print(path)
    return 0


def score(cfg: DataConfig, submission: Path, validate: bool = True) -> int:
    from arcsl.submission import overall_score, read_submission, score_submission

    tasks = _load(cfg)
    if validate and (problems := _problems(submission, tasks, selected=cfg.task_ids is not None or cfg.limit != -1)):
        print("\n".join(problems))
        print(f"{submission}: {len(problems)} problems (validate-submission lists the same); not scored, as Kaggle "
              f"would not score it (--no-validate scores it anyway)")
        return 1
    scores = score_submission(read_submission(submission), tasks)
    print(f"{'task':<12} {'test':>4} {'correct':>7} {'score':>6}")
    for s in scores:
        print(f"{s.task_id:<12} {s.num_test:>4} {s.num_correct:>7} {s.score:>6.3f}{'  (missing)' if s.is_missing else ''}")
    print(f"score {overall_score(scores):.2%}: {sum(s.score for s in scores):.2f} of {len(scores)} tasks, "
          f"{sum(s.num_correct for s in scores)} of {sum(s.num_test for s in scores)} test inputs correct, "
          f"{sum(s.is_missing for s in scores)} tasks missing from {submission}")
    return 0


def _problems(submission: Path, tasks: list, selected: bool) -> list[str]:
    """`submission_problems` of the file for `tasks`; with a selection of tasks (--task-ids, --limit), the
    submission's other tasks are not problems."""
    from arcsl.grids import read_json
    from arcsl.submission import submission_problems

    data = read_json(submission)
    if selected and isinstance(data, dict):
        ids = {t.id for t in tasks}
        data = {k: v for k, v in data.items() if k in ids}
    return submission_problems(data, tasks, str(submission))


def validate_submission(cfg: DataConfig, submission: Path) -> int:
    from arcsl.submission import validate_submission_file

    tasks = _load(cfg)
    problems = validate_submission_file(submission, tasks)
    for problem in problems:
        print(problem)
    if problems:
        print(f"{submission}: {len(problems)} problems")
    else:
        print(f"{submission}: valid for the {len(tasks)} tasks of {cfg.dataset}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
