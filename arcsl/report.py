"""What a run shows a human: the summary table, two plots and an HTML report, all from the results store.

- `print_summary`: the MEAN metrics and the time per phase (where "other" is the overhead we fight);
- `plot_pass_at_k`: mean pass@k over tasks against k, the number of predictions;
- `plot_rounds`: best train pixel score per round, one line per task;
- `write_report`: report.html, per task its grids, the two answers chosen and the best programs;
- `refinement_summary`: with refinement, how many attempts refined a parent, how many improved on it, and
  the tasks first solved by a refinement (printed, and at the top of report.html).

What is not covered: the metrics themselves (`scoring.py`), the store (`store.py`).
"""

import html
import sys
from collections import defaultdict
from pathlib import Path

from arcsl.grids import Task
from arcsl.render import grid_html
from arcsl.scoring import TaskScores, metrics_rows
from arcsl.store import PhaseTiming, Store

SUMMARY_COLUMNS = ("n_preds", "valid_outputs", "train_pass_rate", "train_is_correct", "test_is_correct",
                   "oracle_pass_at_n", "solved_at_2")
NUM_PROGRAMS_SHOWN = 3


def phase_totals(timings: list[PhaseTiming]) -> dict[str, float]:
    """Seconds per phase summed over all tasks and rounds."""
    totals: dict[str, float] = defaultdict(float)
    for t in timings:
        totals[t.phase] += t.seconds
    return dict(totals)


def print_summary(scores: list[TaskScores], timings: list[PhaseTiming], file=None) -> None:
    """The MEAN row of the metrics and where the time went (to stdout unless `file` is given)."""
    file = file or sys.stdout
    if not scores:
        print("no task finished", file=file)
        return
    mean = metrics_rows(scores)[-1]
    print(f"\n{len(scores)} tasks, mean over tasks:", file=file)
    for col in SUMMARY_COLUMNS:
        value = mean.get(col)
        print(f"  {col:<18} {'-' if value is None else f'{value:.3f}'}", file=file)
    if any(s.num_refined for s in scores):
        print(refinement_summary(scores), file=file)
    totals = phase_totals(timings)
    whole = sum(totals.values()) or 1.0
    print("time by phase:", file=file)
    for phase, seconds in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"  {phase:<18} {seconds:8.1f} s  {100 * seconds / whole:5.1f} %", file=file)


def refinement_summary(scores: list[TaskScores]) -> str:
    """One line: refined attempts, those better on train than their parent, and the tasks a refinement solved first."""
    refined, improved = sum(s.num_refined for s in scores), sum(s.refined_improved for s in scores)
    first = [s.task_id for s in scores if s.solved_by_refinement]
    return (f"refinement: {refined} attempts refined a parent, {improved} improved on its train score; "
            f"{len(first)} of {sum(s.solved_by_refinement is not None for s in scores)} solved tasks were first solved "
            f"by a refinement{': ' + ', '.join(first) if first else ''}")


def plot_pass_at_k(scores: list[TaskScores], path: Path) -> None:
    """Mean pass@k (one program exact on train and test) against k."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = sorted({k for s in scores for k in s.pass_at_k})
    means = [sum(s.pass_at_k[k] for s in scores if k in s.pass_at_k) / sum(k in s.pass_at_k for s in scores)
             for k in ks]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(ks, means, marker="o")
    ax.set(xscale="log", xlabel="programs per task (k)", ylabel="pass@k", ylim=(0, 1), title="pass@k")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def best_score_by_round(store: Store, task_ids: list[str]) -> dict[str, list[float]]:
    """Per task, the best train pixel score reached by the end of each round."""
    curves = {}
    for task_id in task_ids:
        best, curve = 0.0, []
        by_round: dict[int, float] = defaultdict(float)
        for a in store.iter_attempts(task_id):
            by_round[a.round] = max(by_round[a.round], a.scores.train.pixel_score)
        for r in sorted(by_round):
            best = max(best, by_round[r])
            curve.append(best)
        curves[task_id] = curve
    return curves


def plot_rounds(curves: dict[str, list[float]], path: Path) -> None:
    """Best train pixel score after each round, one line per task."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for task_id, curve in curves.items():
        ax.plot(range(len(curve)), curve, marker=".", label=task_id)
    ax.set(xlabel="round (0 = first search)", ylabel="best train pixel score", ylim=(0, 1.02),
           title="search and learn, per task")
    if len(curves) <= 12:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _task_section(task: Task, store: Store, predictions: list | None, scores: TaskScores | None) -> str:
    attempts = sorted(store.iter_attempts(task.id), key=lambda a: (-a.scores.train.correct_grids,
                                                                  -a.scores.train.pixel_score, a.code_length))
    pairs = "".join(f"<div class='pair'>{grid_html(p.input)}&rarr;{'' if p.output is None else grid_html(p.output)}</div>"
                    for p in (*task.train, *task.test))
    answers = "".join(f"<div class='pair'>test {i + 1}: {''.join(grid_html(g) for g in pair)}</div>"
                      for i, pair in enumerate(predictions or []))
    programs = "".join(
        f"<details><summary>round {a.round}{'' if a.parent is None else f', refines attempt {html.escape(a.parent)}'}, "
        f"train exact {a.scores.train.correct_grids:.2f}, "
        f"pixels {a.scores.train.pixel_score:.2f}{'' if a.error is None else ', ' + html.escape(a.error)}</summary>"
        f"<pre>{html.escape(a.program or a.response)}</pre>"
        f"<div class='pair'>{''.join(grid_html(g) for g in (a.train_outputs or []) if g is not None)}</div></details>"
        for a in attempts[:NUM_PROGRAMS_SHOWN])
    refined = "" if scores is None or not scores.num_refined else (
        f"<p>{scores.num_refined} attempts refined a parent, {scores.refined_improved} improved on it"
        f"{'; first solved by a refinement' if scores.solved_by_refinement else ''}</p>")
    return (f"<section><h2>{html.escape(task.id)}</h2>{pairs}{refined}<h3>answers</h3>{answers}"
            f"<h3>best programs</h3>{programs}</section>")


def write_report(out: Path, tasks: list[Task], store: Store) -> None:
    """metrics plots and report.html in `out`, for the tasks the store has finished."""
    finished = store.finished_task_ids()
    done = [t for t in tasks if t.id in finished]
    if not done:
        return
    scores = [s for s in store.task_scores() if s.task_id in finished]
    if any(s.pass_at_k for s in scores):
        plot_pass_at_k(scores, out / "pass_at_k.png")
    plot_rounds(best_score_by_round(store, [t.id for t in done]), out / "rounds.png")
    predictions = store.predictions()
    by_id = {s.task_id: s for s in scores}
    body = "".join(_task_section(t, store, predictions.get(t.id), by_id.get(t.id)) for t in done)
    if any(s.num_refined for s in scores):
        body = f"<p>{html.escape(refinement_summary(scores))}</p>" + body
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>arcsl report</title><style>
body {{ font-family: sans-serif; margin: 16px; }} .pair {{ display: flex; gap: 8px; align-items: center; margin: 4px 0; }}
table.grid {{ border-collapse: collapse; background: #555; }} table.grid td {{ width: 10px; height: 10px; border: 1px solid #555; padding: 0; }}
pre {{ background: #f4f4f4; padding: 6px; font-size: 12px; }}</style></head>
<body><h1>arcsl report: {len(done)} tasks</h1>{body}</body></html>"""
    (out / "report.html").write_text(page)
