"""The learning curve of a run_evaluation_dopamine.py run, read from Dopamine's own logs.

    python -m components.plot_curve --base_dir runs/rainbow [--out docs/rainbow_curve.png] [--title ...]
                                    [--reference 'Best Fit=-26.98' ...]

Dopamine 4.0.9's Runner keeps, per iteration, the statistics of its training and evaluation
phases (every episode's length and undiscounted return, the phase averages, training
steps/s) in a dict it pickles to base_dir/logs/log_<iteration> after each iteration, and
it stores the same dict in each checkpoint, so a resumed run's newest log still holds
every iteration since the first. (The 'pickle' collector's base_dir/metrics/pickle/*.pkl
start again from pickle_0.pkl when a run resumes, so they are not read here.)

`load_curve(base_dir)` turns the newest log into arrays: per iteration, the cumulative
training steps (sum of the training episodes' lengths - Dopamine plays whole episodes, so
an iteration runs at least Runner.training_steps), the mean return of the evaluation
episodes (greedy, epsilon_eval) with its standard error, the mean training return
(epsilon-greedy) and training steps/s. Returns are the environment's rewards before the
runner's clipping, i.e. minus the final waste on perfect_pack. `plot_curve` draws it;
plot_training_progress.ipynb calls both.
"""
from __future__ import annotations

import argparse
import os
import pickle
import re
import sys
import textwrap

import numpy as np

_LOG = re.compile(r"^log_(\d+)$")


def newest_log(base_dir: str) -> str:
    logs_dir = os.path.join(base_dir, "logs")
    numbers = sorted(int(m.group(1)) for m in map(_LOG.match, os.listdir(logs_dir) if os.path.isdir(logs_dir) else [])
                     if m)
    if not numbers:
        raise FileNotFoundError(f"no Dopamine logs (logs/log_<iteration>) under {base_dir!r}: "
                                "has run_evaluation_dopamine.py finished an iteration there?")
    return os.path.join(logs_dir, f"log_{numbers[-1]}")


def load_curve(base_dir: str) -> dict:
    """Per-iteration arrays of a run (see the module docstring)."""
    with open(newest_log(base_dir), "rb") as f:
        data = pickle.load(f)
    iterations = sorted(int(k.split("_")[1]) for k in data if k.startswith("iteration_"))
    if iterations != list(range(len(iterations))):
        raise ValueError(f"{base_dir}: iterations {iterations} are not 0..n-1")
    rows = [data[f"iteration_{i}"] for i in iterations]

    def episodes(row, phase):
        return np.asarray(row.get(f"{phase}_episode_returns", []), float), \
            np.asarray(row.get(f"{phase}_episode_lengths", []), int)

    train_steps, eval_mean, eval_stderr, eval_episodes, train_mean, steps_per_s = [], [], [], [], [], []
    for row in rows:
        train_returns, train_lengths = episodes(row, "train")
        eval_returns, _ = episodes(row, "eval")
        train_steps.append(int(train_lengths.sum()))
        train_mean.append(train_returns.mean() if len(train_returns) else np.nan)
        eval_mean.append(eval_returns.mean() if len(eval_returns) else np.nan)
        eval_stderr.append(eval_returns.std(ddof=1) / np.sqrt(len(eval_returns)) if len(eval_returns) > 1 else np.nan)
        eval_episodes.append(len(eval_returns))
        steps_per_s.append(row.get("train_average_steps_per_second", [np.nan])[0])
    return {"base_dir": base_dir, "iteration": np.asarray(iterations),
            "training_steps": np.cumsum(train_steps), "eval_mean": np.asarray(eval_mean),
            "eval_stderr": np.asarray(eval_stderr), "eval_episodes": np.asarray(eval_episodes),
            "train_mean": np.asarray(train_mean), "train_steps_per_s": np.asarray(steps_per_s, float)}


def default_title(curve: dict) -> str:
    n, steps = len(curve["iteration"]), int(curve["training_steps"][-1])
    episodes = curve["eval_episodes"]
    per = f"{episodes.min()}" if episodes.min() == episodes.max() else f"{episodes.min()}-{episodes.max()}"
    return (f"Masked Rainbow on perfect_pack: {steps:,} training steps ({n} iterations); "
            f"evaluation: {per} greedy episode(s) per iteration")


def parse_reference(text: str) -> tuple[str, float]:
    """'Best Fit=-26.98' -> ('Best Fit', -26.98): a level drawn across the plot."""
    name, sep, value = text.rpartition("=")
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not sep or not name.strip() or not np.isfinite(number):
        raise argparse.ArgumentTypeError(f"expected NAME=NUMBER (e.g. 'Best Fit=-26.98'), got {text!r}")
    return name.strip(), number


def plot_curve(curve: dict, ax=None, title: str | None = None, references=()):
    """Mean evaluation return (+- standard error where > 1 episode) against training steps;
    `references` ((name, value), ...) are drawn as horizontal lines (e.g. Best Fit's score)."""
    import matplotlib.pyplot as plt
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 4.5))
    x = curve["training_steps"]
    ax.plot(x, curve["train_mean"], "--", color="0.6", label="training episodes (epsilon-greedy), mean")
    stderr = np.nan_to_num(curve["eval_stderr"])
    ax.errorbar(x, curve["eval_mean"], yerr=stderr if stderr.any() else None, marker="o", capsize=3,
                label="evaluation episodes (greedy), mean")
    for (name, value), style in zip(references, ["-", "-.", ":", (0, (5, 1))] * 4):
        ax.axhline(value, color="k", lw=1, ls=style, label=f"{name} ({value:g})")
    if references:                                  # every level in view, with a margin
        lo, hi = ax.get_ylim()
        values = [v for _, v in references]
        lo, hi = min(lo, *values), max(hi, *values)
        ax.set_ylim(lo - 0.04 * (hi - lo), hi + 0.04 * (hi - lo))
    ax.set_xlabel("training steps")
    ax.set_ylabel("return per episode (= - final waste)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=9)
    ax.set_title(textwrap.fill(title or default_title(curve), 90), fontsize=10)
    return ax


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Plot a Rainbow run's learning curve from Dopamine's logs.")
    parser.add_argument("--base_dir", required=True, help="the run's --base_dir")
    parser.add_argument("--out", default=None, help="PNG to write (default base_dir/learning_curve.png)")
    parser.add_argument("--title", default=None, help="plot title (default: steps, iterations, episodes)")
    parser.add_argument("--reference", type=parse_reference, action="append", default=[], metavar="NAME=NUMBER",
                        help="a level to draw across the plot, e.g. --reference 'Best Fit=-26.98' (repeatable)")
    args = parser.parse_args(argv)
    try:
        curve = load_curve(args.base_dir)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out = args.out or os.path.join(args.base_dir, "learning_curve.png")
    ax = plot_curve(curve, title=args.title, references=args.reference)
    ax.figure.tight_layout()
    ax.figure.savefig(out, dpi=120)
    plt.close(ax.figure)
    for i, s, m, e in zip(curve["iteration"], curve["training_steps"], curve["eval_mean"], curve["eval_episodes"]):
        print(f"iteration {i}: {s} training steps, evaluation {m:.2f} ({e} episodes)")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
