"""Does the recipe beat Best Fit, or one lucky seed? Every C seed on the evaluation episodes.

    python -m analysis.seed_table runs/small_transition/log/seed*/binpacking.cma.16.64.best.json \\
        --vae runs/small_transition/vae/vae.json --rnn runs/small_transition/rnn/rnn.json \\
        [--episodes 1000 --seed 0 --out runs/small_transition/seed_table.json]

pick_controller.py keeps one seed by its validation score, which is the right way to ship an
agent but hides how much the recipe depends on the seed. Here each run's kept controller (the
CMA-ES mean with the best validation score, as train.py chose it) plays the same evaluation
episodes as Best Fit, and the table gives each seed's reward, its paired difference from Best
Fit, and the recipe's statistics: seeds at or above Best Fit, median and best. Each seed's result
is written to --out as soon as it is measured, and a rerun with the same episodes skips it.
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np

from baselines import POLICIES, evaluate_policy
from bin_packing_environment import PRESETS, preset_config
from controller import DEFAULT_RNN, DEFAULT_VAE, Controller, check_bin_size, evaluate_real, load_rnn, load_vae
from pick_controller import load_run
from stages_common import atomic_write_json, check_output_file, episode_count, positive_int, require_file, seed_int


def best_generation(best_path: str, reward: float) -> int | None:
    """The generation whose validation train.py kept (from the .hist_best.json beside the run)."""
    hist = best_path.replace(".best.json", ".hist_best.json")
    if not os.path.isfile(hist):
        return None
    with open(hist) as f:
        rows = json.load(f)
    matches = [int(row[0]) for row in rows if abs(float(row[2]) - reward) < 1e-6]
    return matches[-1] if matches else None


def mean_stderr(x: np.ndarray) -> tuple[float, float]:
    return float(x.mean()), float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else 0.0


def summarise(rows: list[dict], best_fit: float) -> dict:
    """The recipe's statistics over its seeds."""
    means = np.array([r["mean"] for r in rows])
    return {"seeds": len(rows), "at_or_above_best_fit": int((means >= best_fit).sum()),
            "median": float(np.median(means)), "best": float(means.max()), "worst": float(means.min())}


def markdown(rows: list[dict], best_fit: dict, stats: dict) -> str:
    lines = ["| run | best validation (generation) | evaluation | minus Best Fit, paired |", "| --- | --- | --- | --- |"]
    for r in rows:
        gen = f" ({r['generation']})" if r.get("generation") is not None else ""
        lines.append(f"| {r['run']} | {r['validation']:.2f}{gen} | {r['mean']:.2f} +- {r['stderr']:.2f} | "
                     f"{r['minus_best_fit']:+.2f} +- {r['minus_best_fit_stderr']:.2f} |")
    lines.append(f"| Best Fit | | {best_fit['mean']:.2f} +- {best_fit['stderr']:.2f} | 0 |")
    lines.append(f"\n{stats['at_or_above_best_fit']} of {stats['seeds']} seeds at or above Best Fit; "
                 f"median {stats['median']:.2f}, best {stats['best']:.2f}, worst {stats['worst']:.2f}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="each seed's binpacking.cma.<E>.<P>.best.json")
    parser.add_argument("--vae", default=DEFAULT_VAE)
    parser.add_argument("--rnn", default=DEFAULT_RNN)
    parser.add_argument("--episodes", type=episode_count, default=1000)
    parser.add_argument("--seed", type=seed_int, default=0, help="evaluation seed (episodes from the 'eval' stream)")
    parser.add_argument("--preset", default="perfect_pack", choices=sorted(PRESETS))
    parser.add_argument("--time_horizon", type=positive_int, default=None, help="override the preset's horizon")
    parser.add_argument("--out", default=None, help="JSON of every row, written after each seed (resumable)")
    args = parser.parse_args(argv)
    require_file(parser, args.vae, "--vae")
    require_file(parser, args.rnn, "--rnn")
    if args.out:
        check_output_file(parser, args.out, "--out")
    if len(set(args.runs)) != len(args.runs):
        parser.error("a run is named twice")
    runs = {path: load_run(path) for path in args.runs}
    config = preset_config(args.preset, args.time_horizon)
    vae, rnn = load_vae(args.vae), load_rnn(args.rnn)
    check_bin_size(rnn, args.rnn, config, args.preset)
    controller = Controller(rnn.z_size, rnn.hidden_size, rnn.action_size)
    key = {"episodes": args.episodes, "seed": args.seed, "preset": args.preset, "time_horizon": args.time_horizon,
           "vae": args.vae, "rnn": args.rnn}
    done = {}
    if args.out and os.path.exists(args.out):
        with open(args.out) as f:
            previous = json.load(f)
        if previous.get("key") == key:
            done = {r["run"]: r for r in previous["rows"]}
    reference = evaluate_policy(POLICIES["best_fit"], config, args.episodes, args.seed, progress="best_fit")
    best_fit = dict(zip(("mean", "stderr"), mean_stderr(reference)))
    rows = []
    for path, (params, validation) in runs.items():
        if path in done:
            rows.append(done[path])
            print(f"{path}: measured before, {done[path]['mean']:.2f}")
            continue
        rewards = evaluate_real(controller, np.asarray(params, np.float32), vae, rnn, config, args.episodes,
                                args.seed, progress=os.path.basename(os.path.dirname(path)) or path)
        mean, stderr = mean_stderr(rewards)
        diff, diff_se = mean_stderr(rewards - reference)     # paired: the same episodes
        rows.append({"run": path, "validation": validation, "generation": best_generation(path, validation),
                     "mean": mean, "stderr": stderr, "minus_best_fit": diff, "minus_best_fit_stderr": diff_se})
        print(f"{path}: {rows[-1]['mean']:.2f} +- {rows[-1]['stderr']:.2f} ({diff:+.2f} +- {diff_se:.2f} "
              "against Best Fit)", flush=True)
        if args.out:
            atomic_write_json(args.out, {"key": key, "best_fit": best_fit, "rows": rows}, indent=1)
    stats = summarise(rows, best_fit["mean"])
    table = markdown(rows, best_fit, stats)
    print("\n" + table)
    result = {"key": key, "best_fit": best_fit, "rows": rows, "summary": stats, "table": table}
    if args.out:
        atomic_write_json(args.out, result, indent=1)
    print(json.dumps(stats))
    return result


if __name__ == "__main__":
    main()
