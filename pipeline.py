"""The whole World Models pipeline, stage by stage: how much is the scale, how is the recipe.

    python pipeline.py --scale tiny|small|paper [--recipe starts|transition|original] [--rounds N]
                       [--work_dir runs/<scale>] [--seed 0] [--force] [--dry_run]
    make pipeline SCALE=small

Every stage is the ordinary stage script run as a subprocess, writing under --work_dir:
rollouts (extract.py) -> V (vae_train.py) -> series.py -> M (rnn_train.py) -> copy_models.py
-> [dream starts (dream_starts.py)] -> a Sum of Squares imitation (analysis.imitate, a measuring
instrument only) -> dream fidelity (analysis.dream_fidelity, on the same dream C will train in)
-> C in the dream (train.py; from several seeds side by side where the
scale says so, of which pick_controller.py keeps the best on validation) -> evaluation on the
real problem (model.py, and Best Fit on the same episodes).
The recipe `starts` (the default) begins its dreams at recorded real states and scores a dream
by the waste of its decoded pictures, with common random numbers and M's Gaussian noise off;
`transition` is `starts` with M's next z from a deep MLP trained on noisy inputs (docs/experiments.md);
`original` is World Models as published (dreams from empty packings scored by M's reward head).
--rounds N then repeats World Models' iterative procedure N times: the last C plays the real
problem with a little exploration, its episodes join M's data, M trains on from where it was,
and C is trained again (from the same seeds) in the new dream; the evaluation scores the last
round's C. Each round writes under <work_dir>/round<r>/, and a run with more rounds than the
last keeps every stage already done.
A stage whose command and input files are unchanged since it last succeeded is skipped; a stage
killed half way resumes, because every training script resumes from its own checkpoint; a stage
that succeeded before but is re-run (its command or inputs changed, or --force) first removes
its own state (the records, a checkpoint, the CMA-ES logs), so it starts afresh instead of
resuming what other inputs produced. The first failing stage stops the pipeline with its error.
Per-stage wall times, the real steps each part took and the final rewards go to
<work_dir>/pipeline_summary.json; --dry_run prints the commands and a rough wall-time estimate
for --workers cores instead.
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

from stages_common import SEED_MAX, atomic_write_json, bounded_int, check_output_dir

# Two knobs. A scale says how much (data, epochs, population, workers); a recipe says how (the
# rollout policies, V's and M's losses, what a dream is). Every scale runs every recipe.
# round_episodes and round_rnn_steps size each round of --rounds: C's real episodes added to M's
# data, and M's further training steps.
SCALES = {
    # tiny: the CI smoke test (every stage in about a minute)
    "tiny": dict(rollout_episodes=6, horizon=30, vae_epochs=1, frames_per_episode=10, rnn_steps=20, seq_len=10,
                 popsize=4, num_episode=2, generations=2, dream_horizon_cap=10, eval_steps=2, eval_episodes=2,
                 eval_horizon=30, workers=1, final_episodes=3, starts_per_episode=5, c_seeds=2, fidelity_episodes=2,
                 fidelity_extra=["--ranking_episodes", "4", "--ranking_real_episodes", "2", "--ranking_real_horizon", "30",
                                 "--coherence_dreams", "8"], round_episodes=3, round_rnn_steps=10,
                 imitate_extra=["--rounds", "1", "--episodes", "2", "--steps", "20", "--validation_episodes", "2",
                                "--time_horizon", "30"]),
    # small: a 2-core machine in about an hour (docs/experiments.md, "The whole pipeline at SCALE=small")
    "small": dict(rollout_episodes=800, horizon=None, vae_epochs=30, frames_per_episode=50, rnn_steps=4000,
                  seq_len=100, popsize=64, num_episode=16, generations=30, eval_steps=2, eval_episodes=100,
                  eval_horizon=None, workers=1, c_seeds=3, final_episodes=1000, fidelity_episodes=20,
                  starts_per_episode=100, round_episodes=100, round_rnn_steps=3000),
    # paper: the original's scale, for a big machine (see --dry_run for its commands and time)
    "paper": dict(rollout_episodes=10000, horizon=None, vae_epochs=10, frames_per_episode=0, rnn_steps=4000,
                  seq_len=100, popsize=64, num_episode=16, generations=1000, eval_steps=25, eval_episodes=1024,
                  eval_horizon=None, workers=64, c_seeds=1, final_episodes=1000, fidelity_episodes=100,
                  starts_per_episode=10, round_episodes=1000, round_rnn_steps=3000),
}
# Rollouts are (share of the episodes, epsilon, policy); each share is a rollout set recorded with
# its own seed. V trains on the first vae_rollout_sets sets (None: all).
SHARED_M = ["--mixture", "shared", "--num_mixtures", "16", "--z_input", "mean"]
RECIPES = {
    # World Models as published: M with 5 mixtures per z dimension, 16 free nats for V, dreams from
    # the empty packing scored by M's reward head, each candidate on its own dreams. Its dream does
    # not teach here (docs/experiments.md), but it stays reproducible.
    "original": dict(rollouts=[(0.6, 0.2, "epsilon_best_fit"), (0.4, 0.5, "epsilon_best_fit")],
                     vae_rollout_sets=None, vae_lr=1e-4, kl_tolerance=0.5, rnn_extra=[], dream_horizon=None,
                     weight_decay=0.01, dream_starts=False, dream_reward="m", common_random_numbers=False,
                     z_noise=1.0),
    # The best recipe so far, the default: rollouts around Best Fit and Sum of Squares, V on the
    # Best Fit ones with 128 free nats, M with one mixture component for the whole z, 300-item
    # dreams begun at recorded real states, scored by their decoded pictures, every candidate on
    # the same dreams, M's Gaussian noise off (docs/experiments.md: "Dreams begun at real
    # states", "Does the dream stay a packing?", "A quieter dream").
    "starts": dict(rollouts=[(0.375, 0.2, "epsilon_best_fit"), (0.25, 0.5, "epsilon_best_fit"),
                             (0.375, 0.2, "epsilon_sum_of_squares")],
                   vae_rollout_sets=2, vae_lr=5e-4, kl_tolerance=4, rnn_extra=SHARED_M, dream_horizon=300,
                   weight_decay=400, dream_starts=True, dream_reward="picture", common_random_numbers=True,
                   z_noise=0.0),
}
# transition: the starts recipe with M's next z from a deep MLP on (z, action, next item), trained
# on noisy input z so that its dreams drift back to packings (docs/experiments.md, "Noisy inputs
# for the transition"). The series labels every frame's item (a probe on V's decoded pictures);
# the MLP learns single steps, so M trains on half-length windows of 64 for half the scale's steps.
# Input noise 0.1, not 0.2: 0.2 kept more dreamed steps legal but C learned nothing in its dream.
# A dreamed step of its 3 x 512 MLP costs ~5 times the shipped M's (dream_step_factor, --dry_run only).
RECIPES["transition"] = dict(RECIPES["starts"], item_frames=4000, rnn_steps_factor=0.5, seq_len_factor=0.5,
                             rnn_extra=["--transition", "mlp", "--z_input", "mean", "--transition_hidden", "512",
                                        "--transition_layers", "3", "--transition_input_noise", "0.1"],
                             rnn_batch=64, rnn_window_step=1.9e-4, dream_step_factor=5)
DEFAULT_RECIPE = "starts"
# --rounds: C plays its real episodes with this share of random valid actions, so that M also sees
# what follows C's mistakes (docs/experiments.md, "Rounds of the iterative procedure").
ROUND_EPSILON = 0.1


def plan(scale: str, recipe: str, workers: int | None = None, rounds: int = 0) -> dict:
    """One dict of every setting the stages read: the scale's sizes and the recipe's choices."""
    s = {**SCALES[scale], **RECIPES[recipe], "rounds": rounds, "round_epsilon": ROUND_EPSILON}
    n = s["rollout_episodes"]
    counts = [round(share * n) for share, _, _ in s["rollouts"][:-1]]
    counts.append(n - sum(counts))
    s["rollouts"] = [(k, eps, policy) for k, (_, eps, policy) in zip(counts, s["rollouts"])]
    caps = [h for h in (s["dream_horizon"], s.get("dream_horizon_cap")) if h]
    s["dream_horizon"] = min(caps) if caps else None
    if not s["dream_starts"]:
        s["starts_per_episode"] = 0
    if workers is not None:
        s["workers"] = workers
    s["rnn_steps"] = max(1, round(s["rnn_steps"] * s.get("rnn_steps_factor", 1)))
    s["seq_len"] = max(2, round(s["seq_len"] * s.get("seq_len_factor", 1)))
    return s


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
    eval_horizon = ["--eval_horizon", str(s["eval_horizon"])] if s["eval_horizon"] else []
    dream_horizon = ["--time_horizon", str(s["dream_horizon"])] if s["dream_horizon"] else []
    crn = ["--common_random_numbers"] if s["common_random_numbers"] else []

    def dream_stages(prefix: str, series: str, rnn: str, initial_z: str, out: str) -> tuple[list[dict], str]:
        """The dream starts (recipes that begin dreams at real states), the dream's fidelity measure
        (one-step and closed-loop legality, the paired ranking; every round, so that a user sees
        whether the rounds make the dream better) and C trained in M's dream: from c_seeds seeds
        side by side (a process each), of which pick_controller.py keeps the one with the best
        validation score (one seed writes straight to <out>/log/). Returns the stages and the path
        of the chosen C."""
        best = os.path.join(out, "log", f"binpacking.cma.{s['num_episode']}.{s['popsize']}.best.json")
        c_seeds = s.get("c_seeds", 1)
        c_runs = [(seed + k, os.path.join(out, "log", f"seed{seed + k}") if c_seeds > 1 else os.path.join(out, "log"))
                  for k in range(c_seeds)]
        starts = os.path.join(out, "starts", "dream_starts.npz")
        starts_stage = [dict(name=prefix + "dream_starts",
                             commands=[[py, "dream_starts.py", "--series", series, "--rnn", rnn, "--per_episode",
                                        str(s["starts_per_episode"]), "--out", starts, "--seed", str(seed)]],
                             inputs=[series, rnn], outputs=[starts])] if s.get("starts_per_episode") else []
        starts_flag = ["--dream_starts", starts] if starts_stage else []
        # what a dream is: the same flags for C's training and for the fidelity stage that measures it
        dream = ((["--dream_reward", s["dream_reward"]] if s["dream_reward"] != "m" else [])
                 + (["--z_noise", str(s["z_noise"])] if s["z_noise"] != 1 else []) + starts_flag)
        # the ranking also scores a C fitted to imitate Sum of Squares on this V and M (a measuring
        # instrument that reads the real problem, never trained on or shipped): does the dream put
        # it above Best Fit, as the real problem does?
        imitation = os.path.join(out, "imitate", "sum_of_squares.json")
        fidelity_stages = [
            dict(name=prefix + "imitate",
                 commands=[[py, "-m", "analysis.imitate", "--vae", vae, "--rnn", rnn, "--teacher", "sum_of_squares",
                            "--seed", str(seed), "--out", imitation,
                            *s.get("imitate_extra", ["--rounds", "3", "--validation_episodes", "50"])]],
                 inputs=[vae, rnn], outputs=[imitation]),
            dict(name=prefix + "dream_fidelity",
                 commands=[[py, "-m", "analysis.dream_fidelity", "--record_dir", j("record"), "--vae", vae,
                            "--rnn", rnn, "--initial_z", initial_z, "--episodes", str(s["fidelity_episodes"]),
                            "--out", os.path.join(out, "dream_fidelity.json"), "--seed", str(seed),
                            *dream, *(["--ranking_paired"] if crn else []),
                            *(["--ranking_horizons", str(s["dream_horizon"])] if s["dream_horizon"] else []),
                            "--ranking_controllers", imitation, *s.get("fidelity_extra", [])]],
                 inputs=[vae, rnn, initial_z, imitation, *starts_flag[1:]],
                 outputs=[os.path.join(out, "dream_fidelity.json")])]
        controller = dict(name=prefix + "controller",
                          parallel=[[py, "train.py", "--vae", vae, "--rnn", rnn, "--initial_z", initial_z,
                                     "--log_dir", log_dir, "--popsize", str(s["popsize"]),
                                     "--num_episode", str(s["num_episode"]), "--generations", str(s["generations"]),
                                     *dream_horizon, "--weight_decay", str(s["weight_decay"]),
                                     "--eval_steps", str(s["eval_steps"]), "--eval_episodes", str(s["eval_episodes"]),
                                     "--num_worker", str(s["workers"]), "--seed", str(c_seed), *eval_horizon,
                                     *dream, *crn] for c_seed, log_dir in c_runs],
                          parallel_logs=[os.path.join(d, "train.out") for _, d in c_runs],
                          commands=[[py, "pick_controller.py", *[os.path.join(d, os.path.basename(best))
                                                                 for _, d in c_runs], "--out", best]]
                          if len(c_runs) > 1 else [],
                          inputs=[vae, rnn, initial_z, *starts_flag[1:]], outputs=[best],
                          fresh=[os.path.join(out, "log")])
        return [*starts_stage, *fidelity_stages, controller], best

    vae, rnn, initial_z = j("vae", "vae.json"), j("rnn", "rnn.json"), j("initial_z", "initial_z.json")
    item_frames = ["--item_frames", str(s["item_frames"])] if s.get("item_frames") else []
    rnn_flags = ["--seq_len", str(s["seq_len"]), *(["--batch_size", str(s["rnn_batch"])] if s.get("rnn_batch") else []),
                 "--seed", str(seed), *s.get("rnn_extra", [])]
    dream, best = dream_stages("", j("series", "series.npz"), rnn, initial_z, w)
    # World Models' iterative procedure (section 5 of the paper): each round plays the last C in the
    # real problem with exploration, adds those episodes to M's data, trains M on for
    # round_rnn_steps from the last M, and trains C again in the new dream. Everything a round
    # writes lies under <work_dir>/round<r>/.
    rounds, records = [], [j("record")]
    for r in range(1, s.get("rounds", 0) + 1):
        rj = lambda *p, r=r: j(f"round{r}", *p)  # noqa: E731
        records.append(rj("record"))
        round_rnn = rj("tf_rnn", "rnn.json")
        rounds += [
            dict(name=f"round{r}_rollouts",
                 commands=[[py, "extract.py", "--policy", "controller", "--controller", best, "--vae", vae,
                            "--rnn", rnn, "--epsilon", str(s["round_epsilon"]), "--episodes",
                            str(s["round_episodes"]), "--workers", "2", "--seed", str(seed + 20 + r),
                            "--record_dir", rj("record"), "--quiet", *horizon]],
                 inputs=[best, rnn], outputs=[rj("record")], fresh=[rj("record")]),
            dict(name=f"round{r}_series",
                 commands=[[py, "series.py", "--record_dir", *records, "--vae", vae, "--out",
                            rj("series", "series.npz"), *item_frames]],
                 inputs=[*records, vae], outputs=[rj("series", "series.npz")]),
            dict(name=f"round{r}_rnn",
                 commands=[[py, "rnn_train.py", "--series", rj("series", "series.npz"), "--out_dir", rj("tf_rnn"),
                            "--steps", str(s["round_rnn_steps"]), "--init_from", rnn, *rnn_flags]],
                 inputs=[rj("series", "series.npz"), rnn], outputs=[round_rnn, rj("tf_rnn", "initial_z.json")],
                 fresh=[rj("tf_rnn")])]
        rnn, initial_z = round_rnn, rj("tf_rnn", "initial_z.json")
        stages_r, best = dream_stages(f"round{r}_", rj("series", "series.npz"), rnn, initial_z, rj())
        rounds += stages_r
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
                                       "--out", j("series", "series.npz"), *item_frames]],
             inputs=[j("record"), j("tf_vae", "vae.json")], outputs=[j("series", "series.npz")]),
        dict(name="rnn", commands=[[py, "rnn_train.py", "--series", j("series", "series.npz"), "--out_dir", j("tf_rnn"),
                                    "--steps", str(s["rnn_steps"]), *rnn_flags]],
             inputs=[j("series", "series.npz")], outputs=[j("tf_rnn", "rnn.json"), j("tf_rnn", "initial_z.json")],
             fresh=[j("tf_rnn")]),
        dict(name="copy", commands=[[py, "copy_models.py", "--vae", j("tf_vae", "vae.json"), "--rnn",
                                     j("tf_rnn", "rnn.json"), "--initial_z", j("tf_rnn", "initial_z.json"),
                                     "--out_root", w]],
             inputs=[j("tf_vae", "vae.json"), j("tf_rnn", "rnn.json"), j("tf_rnn", "initial_z.json")],
             outputs=[vae, j("rnn", "rnn.json"), j("initial_z", "initial_z.json")]),
        *dream,
        *rounds,
        dict(name="evaluation", commands=[[py, "model.py", "norender", best, "--vae", vae, "--rnn", rnn,
                                           "--episodes", str(s["final_episodes"]), "--seed", str(seed), *horizon],
                                          [py, "baseline_best_fit.py", "--episodes", str(s["final_episodes"]),
                                           "--seed", str(seed), *horizon]],
             inputs=[best, rnn], outputs=[j("evaluation.json")], capture=j("evaluation.json")),
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


# Rough per-unit costs on one core of a 2-core machine, from the timed SCALE=small runs
# (docs/experiments.md, "The whole pipeline at SCALE=small"): only for --dry_run's estimate.
# The dream measures (docs/experiments.md, "The transition recipe from scratch"): the imitation
# stage at its fixed flags, and the fidelity stage per held-out episode (its one-step reads dominate).
UNIT_SECONDS = dict(rollout_step=2.75e-5, vae_frame=1.9e-3, series_step=1.7e-4, rnn_window_step=2.0e-5,
                    dream_step=1.5e-5, real_step=2.4e-4, final_step=1.4e-4, controller_rollout_step=7.1e-4,
                    imitate=270.0, fidelity_episode=10.9)


def validation_steps(s: dict) -> int:
    """Real steps one C seed plays on its validation episodes while it trains."""
    return (s["generations"] // s["eval_steps"]) * s["eval_episodes"] * (s["eval_horizon"] or s["horizon"] or 1000)


def estimate(s: dict) -> dict:
    """Seconds per stage for s["workers"] cores, from UNIT_SECONDS (V, series and M on one process)."""
    T = s["horizon"] or 1000
    episodes = sum(n for n, _, _ in s["rollouts"])
    frames = (s["vae_rollout_sets"] and sum(n for n, _, _ in s["rollouts"][:s["vae_rollout_sets"]]) or episodes)
    frames *= s["frames_per_episode"] or T
    dream = s["dream_horizon"] or T
    generation = s["popsize"] * s["num_episode"] * dream * UNIT_SECONDS["dream_step"] * s.get("dream_step_factor", 1)
    evaluations = validation_steps(s) * UNIT_SECONDS["real_step"]
    K = s["workers"]
    window = s.get("rnn_batch", 100) * s["seq_len"] * s.get("rnn_window_step", UNIT_SECONDS["rnn_window_step"])
    controller = s["c_seeds"] * (s["generations"] * generation + evaluations) / K   # train.py shares both over K
    rounds = sum(s["round_episodes"] * T * UNIT_SECONDS["controller_rollout_step"] / 2           # 2 processes
                 + (episodes + r * s["round_episodes"]) * T * UNIT_SECONDS["series_step"]
                 + s["round_rnn_steps"] * window + controller for r in range(1, s["rounds"] + 1))
    return {"rollouts": episodes * T * UNIT_SECONDS["rollout_step"],
            "vae": s["vae_epochs"] * frames * UNIT_SECONDS["vae_frame"],
            "series": episodes * T * UNIT_SECONDS["series_step"],
            "rnn": s["rnn_steps"] * window,
            "controller": controller,
            "dream measures": (1 + s["rounds"]) * (UNIT_SECONDS["imitate"]
                                                   + s["fidelity_episodes"] * UNIT_SECONDS["fidelity_episode"]),
            **({f"{s['rounds']} round(s)": rounds} if s["rounds"] else {}),
            "evaluation": s["final_episodes"] * T * UNIT_SECONDS["final_step"]}


def real_steps(s: dict) -> dict:
    """Steps of the real problem each part of the pipeline takes (the final evaluation aside):
    the rollouts, C's validation episodes while it trains, and each round's episodes of C."""
    T = s["horizon"] or 1000
    validation = s["c_seeds"] * validation_steps(s)
    steps = {"rollouts": sum(n for n, _, _ in s["rollouts"]) * T, "controller_validation": validation}
    for r in range(1, s["rounds"] + 1):
        steps[f"round{r}_rollouts"] = s["round_episodes"] * T
        steps[f"round{r}_controller_validation"] = validation
    return {**steps, "total": sum(steps.values())}


def dream_measures(path: str) -> dict:
    """The measures of one dream_fidelity.json that say whether the dream obeys the rules and ranks
    right: M's legal one-step moves from real states (and V's own ceiling), Best Fit's legal steps
    in closed-loop dreams, and the Sum of Squares imitation minus Best Fit, paired in the dream
    (its standard error) and in the real problem."""
    with open(path) as f:
        r = json.load(f)
    legal, ranking = r["one_step_legal"], r.get("policy_ranking") or {}
    out = {"one_step_legal": legal.get("m_z_noise", legal["m"]), "v_one_step_legal": legal["v"]}
    if "coherence" in ranking:
        out["closed_loop_legal"] = ranking["coherence"]["legal_steps"]
    imitation = [name for name in ranking.get("real", {}) if name.endswith(".json")]
    rows = [row for row in ranking.get("horizons", []) if "minus_best_fit" in row]
    if imitation and rows:
        name, row = imitation[0], rows[-1]
        out.update(ranking_horizon=row["horizon"], imitation_minus_best_fit=row["minus_best_fit"][name],
                   imitation_minus_best_fit_stderr=row["minus_best_fit_stderr"][name],
                   real_imitation_minus_best_fit=ranking["real"][name] - ranking["real"][ranking["policies"][0]])
    return {k: round(float(v), 4) if isinstance(v, float) else v for k, v in out.items()}


def dry_run(s: dict, work_dir: str, seed: int) -> dict:
    """Print the commands of every stage and the estimate; run nothing."""
    for stage in stages(s, work_dir, seed):
        for cmd in stage.get("parallel", []) + stage["commands"]:
            print(f"[{stage['name']}] {' '.join(cmd[1:])}")
    times = estimate(s)
    print(f"\nrough wall time with {s['workers']} worker(s) (CPU only; V on a GPU is far faster):")
    for name, sec in times.items():
        print(f"  {name:<14} {sec / 3600:8.2f} h")
    print(f"  {'total':<14} {sum(times.values()) / 3600:8.2f} h")
    return times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=sorted(SCALES), default="small", help="how much: data, epochs, workers")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default=DEFAULT_RECIPE,
                        help=f"how: the rollouts, V's and M's losses, the dream (default: {DEFAULT_RECIPE}, the best "
                             "so far; original: World Models as published)")
    parser.add_argument("--dry_run", action="store_true",
                        help="print every stage's commands and a rough wall-time estimate, run nothing")
    parser.add_argument("--work_dir", default=None, help="default: runs/<scale>")
    parser.add_argument("--seed", type=bounded_int(0, SEED_MAX - 10, " (the stages' seeds are --seed plus a few)"),
                        default=0)
    parser.add_argument("--force", action="store_true", help="redo every finished stage from scratch")
    parser.add_argument("--workers", type=bounded_int(1, 4096), default=None,
                        help="MPI workers for CMA-ES (default: the scale's)")
    parser.add_argument("--rounds", type=bounded_int(0, 20), default=0,
                        help="rounds of World Models' iterative procedure after the first C: play C in the real "
                             "problem, add those episodes to M's data, train M on, train C again (default: 0)")
    args = parser.parse_args(argv)
    scale = plan(args.scale, args.recipe, args.workers, args.rounds)
    default_dir = args.scale if args.recipe == DEFAULT_RECIPE else f"{args.scale}_{args.recipe}"
    work_dir = args.work_dir or os.path.join("runs", default_dir)
    if args.dry_run:
        return dry_run(scale, work_dir, args.seed)
    check_output_dir(parser, work_dir, "--work_dir")
    os.makedirs(os.path.join(work_dir, ".stamps"), exist_ok=True)
    summary = {"scale": args.scale, "recipe": args.recipe, "seed": args.seed, "rounds": args.rounds,
               "real_steps": real_steps(scale), "stages": []}
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
    summary["dreams"] = {f"round{r}": dream_measures(os.path.join(work_dir, f"round{r}" if r else "",
                                                                  "dream_fidelity.json"))
                         for r in range(args.rounds + 1)}
    atomic_write_json(os.path.join(work_dir, "pipeline_summary.json"), summary, indent=1)
    print("\n| stage | status | wall s |\n| --- | --- | --- |")
    for row in summary["stages"]:
        print(f"| {row['stage']} | {row['status']} | {row['wall_s']} |")
    print("\n| dream | M one step legal (V's own) | closed loop legal | Sum of Squares imitation minus Best Fit, "
          "dream (real) |\n| --- | --- | --- | --- |")
    for name, d in summary["dreams"].items():
        ranking = (f"{d['imitation_minus_best_fit']:+.2f} +- {d['imitation_minus_best_fit_stderr']:.2f} "
                   f"({d['real_imitation_minus_best_fit']:+.2f})" if "imitation_minus_best_fit" in d else "")
        print(f"| {name} | {d['one_step_legal']:.1%} ({d['v_one_step_legal']:.1%}) | "
              f"{format(d['closed_loop_legal'], '.1%') if 'closed_loop_legal' in d else ''} | {ranking} |")
    for r in summary["evaluation"]:
        print(f"{r['policy']}: {r['mean_reward']:.2f} +- {r['stderr']:.2f} over {r['episodes']} episodes")
    print(f"total {summary['wall_s']:.0f} s; summary in {work_dir}/pipeline_summary.json")
    return summary


if __name__ == "__main__":
    main()
