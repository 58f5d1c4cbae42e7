"""The whole World Models pipeline, stage by stage, at a scale set by one knob.

    python pipeline.py --scale tiny|small|paper [--work_dir runs/<scale>] [--seed 0] [--force]
    make pipeline SCALE=small

Every stage is the ordinary stage script run as a subprocess, writing under --work_dir:
rollouts (extract.py) -> V (vae_train.py) -> series.py -> M (rnn_train.py) -> copy_models.py
-> dream fidelity -> [dream starts (dream_starts.py)] -> C in the dream (train.py; at tiny and
small from several seeds side by side, of which pick_controller.py keeps the best on validation)
-> evaluation on the real env (model.py). tiny and small begin their dreams at recorded real states (M run
along the recorded episodes; no new real steps) and score a dream by the waste of its decoded
first and last pictures, with common random numbers (README: "Dreams begun at real states")
and without the Gaussian noise of M's next z (--z_noise 0: "A quieter dream");
paper keeps the original's dreams from empty packings scored by M's reward head.
A stage whose command and input files are unchanged since it last succeeded is skipped; a stage
killed half way resumes, because every training script resumes from its own checkpoint; a stage
that succeeded before but is re-run (its command or inputs changed, or --force) first removes
its own state (the records, a checkpoint, the CMA-ES logs), so it starts afresh instead of
resuming what other inputs produced. The first failing stage stops the pipeline with its error.
Per-stage wall times and the final rewards go to <work_dir>/pipeline_summary.json.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

from stages_common import atomic_write_json

# What each scale runs. tiny: CI smoke test (minutes); small: a 2-core machine in about an
# hour; paper: the original's scale for a big machine. Rollouts are (episodes, epsilon, policy).
# tiny and small train M with one mixture component for the whole z (README: "Does the dream
# stay a packing?") on rollouts around Best Fit and Sum of Squares ("What holds C at Best Fit").
# small's V trains on the first two rollout sets (500 files), the Best Fit ones, as the shipped V did: on
# all 800 the same flags gave a weaker V and an agent 10 points below Best Fit (README, "The
# whole pipeline"). A scale may set recon_loss="bce": a better V, but not a better agent in
# the one small run made with it (README, "A sharper loss for V").
SHARED_M = ["--mixture", "shared", "--num_mixtures", "16", "--z_input", "mean"]
SCALES = {
    "tiny": dict(rollouts=[(4, 0.3, "epsilon_best_fit"), (2, 0.2, "epsilon_sum_of_squares")], horizon=30,
                 vae_epochs=1, frames_per_episode=10, vae_rollout_sets=1, vae_lr=1e-3, kl_tolerance=4, rnn_steps=20,
                 seq_len=10, rnn_extra=SHARED_M, popsize=4, num_episode=2, generations=2, dream_horizon=10,
                 weight_decay=0.01, eval_steps=2, eval_episodes=2, eval_horizon=30, workers=1, final_episodes=3,
                 starts_per_episode=5, dream_reward="picture", common_random_numbers=True, z_noise=0.0,
                 c_seeds=2, fidelity_episodes=2, fidelity_extra=["--ranking_horizons", "10", "--ranking_episodes", "4",
                                                      "--ranking_real_episodes", "2", "--coherence_dreams", "8"]),
    "small": dict(rollouts=[(300, 0.2, "epsilon_best_fit"), (200, 0.5, "epsilon_best_fit"),
                            (300, 0.2, "epsilon_sum_of_squares")], horizon=None, vae_epochs=30, frames_per_episode=50,
                  vae_rollout_sets=2, vae_lr=5e-4, kl_tolerance=4, rnn_steps=4000, seq_len=100,
                  rnn_extra=SHARED_M, popsize=64, num_episode=16, generations=30, dream_horizon=300,
                  weight_decay=400, eval_steps=2, eval_episodes=100, eval_horizon=None, workers=1, c_seeds=3,
                  final_episodes=1000, fidelity_episodes=20, starts_per_episode=100, dream_reward="picture",
                  common_random_numbers=True, z_noise=0.0),
    "paper": dict(rollouts=[(6000, 0.2, "epsilon_best_fit"), (4000, 0.5, "epsilon_best_fit")], horizon=None,
                  vae_epochs=10, frames_per_episode=0,
                  vae_lr=1e-4, kl_tolerance=0.5, rnn_steps=4000, seq_len=100, popsize=64, num_episode=16,
                  generations=1000, dream_horizon=None, weight_decay=0.01, eval_steps=25, eval_episodes=1024,
                  eval_horizon=None, workers=64, final_episodes=1000, fidelity_episodes=100),
}


def stages(s: dict, w: str, seed: int) -> list[dict]:
    """(name, command, inputs, outputs) of every stage, in order."""
    py = sys.executable
    j = lambda *p: os.path.join(w, *p)  # noqa: E731
    horizon = ["--time_horizon", str(s["horizon"])] if s["horizon"] else []
    # V trains on the first vae_rollout_sets rollout sets (by their seeds, not by file-name order)
    vae_sets = (["--rollout_sets", ",".join(str(seed + 1 + k) for k in range(s["vae_rollout_sets"]))]
                if s.get("vae_rollout_sets") else [])
    recon = ["--recon_loss", s["recon_loss"]] if s.get("recon_loss", "l2") != "l2" else []
    rollouts = [[py, "extract.py", "--episodes", str(n), "--policy", policy, "--epsilon", str(eps),
                 "--workers", "2", "--seed", str(seed + 1 + k), "--record_dir", j("record"), "--quiet", *horizon]
                for k, (n, eps, policy) in enumerate(s["rollouts"])]
    best = j("log", f"binpacking.cma.{s['num_episode']}.{s['popsize']}.best.json")
    eval_horizon = ["--eval_horizon", str(s["eval_horizon"])] if s["eval_horizon"] else []
    dream_horizon = ["--time_horizon", str(s["dream_horizon"])] if s["dream_horizon"] else []
    starts = j("starts", "dream_starts.npz")
    # C is trained from c_seeds seeds (side by side, a process each) and pick_controller.py keeps
    # the one with the best validation score; one seed writes straight to log/
    c_seeds = s.get("c_seeds", 1)
    c_runs = [(seed + k, j("log", f"seed{seed + k}") if c_seeds > 1 else j("log")) for k in range(c_seeds)]
    starts_stage = [dict(name="dream_starts", commands=[[py, "dream_starts.py", "--series", j("series", "series.npz"),
                                                          "--rnn", j("rnn", "rnn.json"), "--per_episode",
                                                          str(s["starts_per_episode"]), "--out", starts,
                                                          "--seed", str(seed)]],
                         inputs=[j("series", "series.npz"), j("rnn", "rnn.json")], outputs=[starts])
                    ] if s.get("starts_per_episode") else []
    starts_flag = ["--dream_starts", starts] if starts_stage else []
    dream_flags = ((["--dream_reward", s["dream_reward"]] if s.get("dream_reward", "m") != "m" else [])
                   + (["--common_random_numbers"] if s.get("common_random_numbers") else [])
                   + (["--z_noise", str(s["z_noise"])] if "z_noise" in s else []))
    return [
        dict(name="rollouts", commands=rollouts, inputs=[], outputs=[j("record")], fresh=[j("record")]),
        dict(name="vae", commands=[[py, "vae_train.py", "--record_dir", j("record"), "--out_dir", j("tf_vae"),
                                    "--epochs", str(s["vae_epochs"]), "--frames_per_episode",
                                    str(s["frames_per_episode"]), "--learning_rate", str(s["vae_lr"]),
                                    "--kl_tolerance", str(s["kl_tolerance"]),
                                    *recon, *vae_sets,
                                    "--seed", str(seed)]],
             inputs=[j("record")], outputs=[j("tf_vae", "vae.json")], fresh=[j("tf_vae")]),
        dict(name="series", commands=[[py, "series.py", "--record_dir", j("record"), "--vae", j("tf_vae", "vae.json"),
                                       "--out", j("series", "series.npz")]],
             inputs=[j("record"), j("tf_vae", "vae.json")], outputs=[j("series", "series.npz")]),
        dict(name="rnn", commands=[[py, "rnn_train.py", "--series", j("series", "series.npz"), "--out_dir", j("tf_rnn"),
                                    "--steps", str(s["rnn_steps"]), "--seq_len", str(s["seq_len"]),
                                    "--seed", str(seed), *s.get("rnn_extra", [])]],
             inputs=[j("series", "series.npz")], outputs=[j("tf_rnn", "rnn.json"), j("tf_rnn", "initial_z.json")],
             fresh=[j("tf_rnn")]),
        dict(name="copy", commands=[[py, "copy_models.py", "--vae", j("tf_vae", "vae.json"), "--rnn",
                                     j("tf_rnn", "rnn.json"), "--initial_z", j("tf_rnn", "initial_z.json"),
                                     "--out_root", w]],
             inputs=[j("tf_vae", "vae.json"), j("tf_rnn", "rnn.json"), j("tf_rnn", "initial_z.json")],
             outputs=[j("vae", "vae.json"), j("rnn", "rnn.json"), j("initial_z", "initial_z.json")]),
        dict(name="dream_fidelity", commands=[[py, "-m", "analysis.dream_fidelity", "--record_dir", j("record"),
                                               "--vae", j("vae", "vae.json"), "--rnn", j("rnn", "rnn.json"),
                                               "--episodes", str(s["fidelity_episodes"]),
                                               "--out", j("dream_fidelity.json"), "--seed", str(seed),
                                               *s.get("fidelity_extra", [])]],
             inputs=[j("vae", "vae.json"), j("rnn", "rnn.json"), j("initial_z", "initial_z.json")],
             outputs=[j("dream_fidelity.json")]),
        *starts_stage,
        dict(name="controller", parallel=[[py, "train.py", "--vae", j("vae", "vae.json"), "--rnn", j("rnn", "rnn.json"),
                                           "--initial_z", j("initial_z", "initial_z.json"), "--log_dir", log_dir,
                                           "--popsize", str(s["popsize"]), "--num_episode", str(s["num_episode"]),
                                           "--generations", str(s["generations"]), *dream_horizon,
                                           "--weight_decay", str(s["weight_decay"]),
                                           "--eval_steps", str(s["eval_steps"]),
                                           "--eval_episodes", str(s["eval_episodes"]), "--num_worker",
                                           str(s["workers"]), "--seed", str(c_seed), *eval_horizon, *starts_flag,
                                           *dream_flags] for c_seed, log_dir in c_runs],
             parallel_logs=[os.path.join(d, "train.out") for _, d in c_runs],
             commands=[[py, "pick_controller.py", *[os.path.join(d, os.path.basename(best)) for _, d in c_runs],
                        "--out", best]] if len(c_runs) > 1 else [],
             inputs=[j("vae", "vae.json"), j("rnn", "rnn.json"), j("initial_z", "initial_z.json"),
                     *starts_flag[1:]], outputs=[best],
             fresh=[j("log")]),
        dict(name="evaluation", commands=[[py, "model.py", "norender", best, "--vae", j("vae", "vae.json"),
                                           "--rnn", j("rnn", "rnn.json"), "--episodes", str(s["final_episodes"]),
                                           "--seed", str(seed), *horizon],
                                          [py, "baseline_best_fit.py", "--episodes", str(s["final_episodes"]),
                                           "--seed", str(seed), *horizon]],
             inputs=[best], outputs=[j("evaluation.json")], capture=j("evaluation.json")),
    ]


def fingerprint(paths) -> str:
    """Changes when any input file changes (size and modification time of every file)."""
    h = hashlib.sha256()
    for path in paths:
        files = [path] if os.path.isfile(path) else sorted(
            os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs)
        for f in files:
            st = os.stat(f)
            h.update(f"{f}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()


def run_side_by_side(name: str, commands: list[list[str]], logs: list[str]):
    """Run commands as concurrent processes (at most one per core), each writing to its own log;
    the first failure, after all have ended, stops the stage with the tail of its log."""
    if len(commands) == 1:  # one run: its progress goes to the console like any stage's
        return run_commands(name, commands, capture=False)
    pending, running, failed = list(zip(commands, logs)), [], []
    while pending or running:
        while pending and len(running) < (os.cpu_count() or 1):
            cmd, log = pending.pop(0)
            print(f"[{name}] {' '.join(cmd[1:])} > {log}", flush=True)
            os.makedirs(os.path.dirname(log), exist_ok=True)
            with open(log, "w") as out:
                running.append((subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT), cmd, log))
        time.sleep(1)
        for entry in [r for r in running if r[0].poll() is not None]:
            running.remove(entry)
            if entry[0].returncode != 0:
                failed.append(entry)
    if failed:
        proc, cmd, log = failed[0]
        with open(log, errors="replace") as f:
            tail = f.read()[-2000:]
        raise RuntimeError(f"stage {name} failed (exit {proc.returncode}): {' '.join(cmd[1:])}\n"
                           f"last lines of {log}:\n{tail}")


def run_commands(name: str, commands: list[list[str]], capture: bool) -> list:
    """Run commands one after the other; with capture, collect each one's last stdout line as JSON."""
    results = []
    for cmd in commands:
        print(f"[{name}] {' '.join(cmd[1:])}", flush=True)
        proc = subprocess.run(cmd, stdout=subprocess.PIPE if capture else None, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"stage {name} failed (exit {proc.returncode}): {' '.join(cmd[1:])}")
        if capture:
            print(proc.stdout, end="")
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return results


def run_stage(stage: dict, stamp_path: str, force: bool) -> tuple[str, float]:
    key = json.dumps([stage.get("parallel", []), stage["commands"], fingerprint(stage["inputs"])])
    if os.path.exists(stamp_path):
        with open(stamp_path) as f:
            same = json.load(f).get("key") == key
        if same and not force and all(os.path.exists(o) for o in stage["outputs"]):
            return "skipped", 0.0
        # it finished before, on other inputs: start afresh; dropping the stamp first means a
        # kill during the redo leaves a stage that resumes, like any half-finished one
        for path in stage.get("fresh", []):
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
        os.remove(stamp_path)
    start = time.time()
    if stage.get("parallel"):
        run_side_by_side(stage["name"], stage["parallel"], stage["parallel_logs"])
    results = run_commands(stage["name"], stage["commands"], bool(stage.get("capture")))
    if stage.get("capture"):
        atomic_write_json(stage["capture"], results, indent=1)
    atomic_write_json(stamp_path, {"key": key})
    return "ran", time.time() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=sorted(SCALES), default="small")
    parser.add_argument("--work_dir", default=None, help="default: runs/<scale>")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="redo every finished stage from scratch")
    parser.add_argument("--workers", type=int, default=None, help="MPI workers for CMA-ES (default: the scale's)")
    args = parser.parse_args(argv)
    scale = dict(SCALES[args.scale])
    if args.workers is not None:
        if args.workers < 1:
            parser.error("--workers must be >= 1")
        scale["workers"] = args.workers
    work_dir = args.work_dir or os.path.join("runs", args.scale)
    os.makedirs(os.path.join(work_dir, ".stamps"), exist_ok=True)
    summary = {"scale": args.scale, "seed": args.seed, "stages": []}
    total = time.time()
    for stage in stages(scale, work_dir, args.seed):
        try:
            status, seconds = run_stage(stage, os.path.join(work_dir, ".stamps", stage["name"] + ".json"), args.force)
        except RuntimeError as e:
            print(f"pipeline stopped: {e}", file=sys.stderr)
            sys.exit(1)
        summary["stages"].append({"stage": stage["name"], "status": status, "wall_s": round(seconds, 1)})
        print(f"[{stage['name']}] {status} ({seconds:.1f} s)", flush=True)
    summary["wall_s"] = round(time.time() - total, 1)
    with open(os.path.join(work_dir, "evaluation.json")) as f:
        summary["evaluation"] = json.load(f)
    atomic_write_json(os.path.join(work_dir, "pipeline_summary.json"), summary, indent=1)
    print("\n| stage | status | wall s |\n| --- | --- | --- |")
    for row in summary["stages"]:
        print(f"| {row['stage']} | {row['status']} | {row['wall_s']} |")
    for r in summary["evaluation"]:
        print(f"{r['policy']}: {r['mean_reward']:.2f} +- {r['stderr']:.2f} over {r['episodes']} episodes")
    print(f"total {summary['wall_s']:.0f} s; summary in {work_dir}/pipeline_summary.json")
    return summary


if __name__ == "__main__":
    main()
