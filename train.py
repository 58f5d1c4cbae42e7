"""Stage 6: train the controller C with CMA-ES, in the dream (default) or in the real environment.

Each generation, CMA-ES proposes `--popsize` parameter vectors; each is scored by the mean total
reward of `--num_episode` episodes, all members and episodes rolled out together in numpy. With
K workers (MPI), each worker scores a share of the population. Every `--eval_steps` generations
the distribution mean is scored on the real environment (validation seeds, never the final
evaluation's; each worker plays a share of them) and the best so far is kept in
log/binpacking.cma.16.64.best.json.

    python train.py                         # one process, no MPI needed
    python train.py --num_worker 4          # re-launches itself under mpiexec
    mpiexec -n 4 python train.py            # the same, launched by hand

Logs (World Models' names, in --log_dir), all rewritten atomically every generation:
  binpacking.cma.<E>.<P>.json       [mean parameters, generation]
  binpacking.cma.<E>.<P>.hist.json  per generation [gen, wall_s, mean, min, max, std, sigma, real_steps]
  binpacking.cma.<E>.<P>.hist_best.json  per real evaluation [gen, wall_s, real_mean, stderr, best, real_steps]
  binpacking.cma.<E>.<P>.best.json  [parameters, real mean reward] of the best real evaluation
  binpacking.cma.<E>.<P>.es.pkl     the CMA-ES state; a re-run with the same flags resumes from it
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import sys
import time

import numpy as np

from bin_packing_environment import PRESETS, episode_seeds, make_config
from controller import DEFAULT_INITIAL_Z, DEFAULT_RNN, DEFAULT_VAE, Controller, load_rnn, load_vae, rollout_real
from dream_env import DreamSpec, add_dream_arguments, dream_spec
from stages_common import (atomic_write_json, atomic_write_pickle, bounded_int, changed_flags, check_output_dir,
                           episode_count, non_negative_float, positive_float, positive_int,
                           remove_stale_temps, seed_int, sha256_file)

# Flags that define what CMA-ES optimises: a resumed run must keep them.
OBJECTIVE_FLAGS = ("env", "popsize", "num_episode", "weight_decay", "temperature", "time_horizon", "preset",
                   "seed", "rnn", "initial_z", "dream_starts", "common_random_numbers", "dream_reward",
                   "picture_every", "full_covariance", "empty_start_fraction", "z_noise")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", choices=["dream", "real"], default="dream", help="where candidates are scored")
    p.add_argument("--num_worker", type=bounded_int(1, 4096), default=1, help="MPI workers (1: no MPI; original: 64)")
    p.add_argument("--popsize", type=bounded_int(2, 10 ** 4), default=64,
                   help="CMA-ES population (original: 64)")
    p.add_argument("--num_episode", type=bounded_int(1, 10 ** 4), default=16,
                   help="episodes per candidate (original: 16)")
    p.add_argument("--sigma_init", type=positive_float, default=0.1, help="CMA-ES initial step size (original: 0.1)")
    p.add_argument("--weight_decay", type=non_negative_float, default=0.01,
                   help="CMA-ES minimises -(reward - weight_decay * mean(params**2)), as the original's estool "
                        "CMAES (0.01); much larger values slow the controller's exploitation of M's errors")
    p.add_argument("--generations", type=positive_int, default=200, help="total generations (resumed runs count on)")
    p.add_argument("--eval_steps", type=positive_int, default=25,
                   help="score the mean on the real env every N generations")
    p.add_argument("--eval_episodes", type=episode_count, default=100,
                   help="real episodes per evaluation (original: 1024)")
    p.add_argument("--time_horizon", type=positive_int, default=None,
                   help="episode length while training (default: the preset's); evaluations use the preset's")
    p.add_argument("--eval_horizon", type=positive_int, default=None,
                   help="episode length of the real evaluations (default: the preset's)")
    p.add_argument("--full_covariance", action="store_true",
                   help="full CMA-ES (default: diagonal; a full 8,670^2 covariance is 600 MB and O(n^3) to update)")
    p.add_argument("--preset", default="perfect_pack", choices=sorted(PRESETS))
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--log_dir", default="log")
    p.add_argument("--vae", default=DEFAULT_VAE)
    p.add_argument("--rnn", default=DEFAULT_RNN)
    p.add_argument("--initial_z", default=DEFAULT_INITIAL_Z)
    add_dream_arguments(p)     # --temperature --z_noise --dream_reward --dream_starts ... (dream_env.py)
    args = p.parse_args(argv)
    dream_spec(p, args)        # refuses flag combinations that describe no dream
    return p, args


# ---------------------------------------------------------------- files

def log_paths(args):
    base = os.path.join(args.log_dir, f"binpacking.cma.{args.num_episode}.{args.popsize}")
    return {k: base + ext for k, ext in (("params", ".json"), ("hist", ".hist.json"),
                                          ("hist_best", ".hist_best.json"), ("best", ".best.json"),
                                          ("es", ".es.pkl"))}


# ---------------------------------------------------------------- MPI

def under_mpi() -> bool:
    return any(k in os.environ for k in ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK"))


def relaunch_with_mpiexec(num_worker, argv):
    """Run this script again under mpiexec with num_worker processes (as the original did)."""
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
    if mpiexec is None:
        sys.exit("error: --num_worker > 1 needs mpiexec (pip install mpich mpi4py), or use --num_worker 1")
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [mpiexec, "-n", str(num_worker), sys.executable, os.path.abspath(__file__)] + list(argv)
    os.execve(mpiexec, cmd, env)


class Workers:
    """Scatter a population over the MPI ranks (or score it all here without MPI)."""

    def __init__(self):
        self.comm = None
        if under_mpi():
            from mpi4py import MPI
            self.comm = MPI.COMM_WORLD
        self.rank = self.comm.Get_rank() if self.comm else 0
        self.size = self.comm.Get_size() if self.comm else 1

    def bcast(self, obj):
        return self.comm.bcast(obj, root=0) if self.comm else obj

    def gather(self, obj):
        return self.comm.gather(obj, root=0) if self.comm else [obj]

    def abort(self, message):
        print(f"error (worker {self.rank}): {message}", file=sys.stderr, flush=True)
        if self.comm and self.size > 1:
            self.comm.Abort(1)       # ends every rank: a dead worker never leaves the others waiting
        sys.exit(1)


# ---------------------------------------------------------------- scoring

class Scorer:
    """Scores parameter vectors in the dream or the real environment; one per worker."""

    def __init__(self, args):
        from dream_env import load_initial_z
        self.args = args
        self.config = make_config(dict(PRESETS[args.preset], time_horizon=args.eval_horizon
                                       or PRESETS[args.preset]["time_horizon"]))
        self.rnn = load_rnn(args.rnn)
        self.controller = Controller(self.rnn.z_size, self.rnn.hidden_size, self.rnn.action_size)
        self.vae = load_vae(args.vae)     # every worker plays a share of the validation episodes
        horizon = args.time_horizon or self.config.time_horizon
        self.train_config = dict(PRESETS[args.preset], time_horizon=horizon)
        if args.env == "dream":
            self.dream = DreamSpec.from_args(args).batch_dream(self.rnn, load_initial_z(args.initial_z), horizon, args.rnn)

    def score(self, solutions, generation, rank):
        """Mean reward per solution and the real-environment steps it consumed."""
        if os.environ.get("TRAIN_FAULT_RANK") == str(rank):      # fault injection for the tests
            os._exit(3)
        if len(solutions) == 0:
            return np.zeros(0), 0
        # common random numbers: every rank draws the same dreams, so members on other ranks share them too
        rng = np.random.default_rng([self.args.seed, generation] if self.args.common_random_numbers
                                    else [self.args.seed, generation, rank])
        if self.args.env == "dream":
            totals, _ = DreamSpec.from_args(self.args).rollout(self.controller, solutions, self.dream, self.args.num_episode, rng,
                                               vae=self.vae)
            return totals.mean(1), 0
        seeds = episode_seeds((self.args.seed, generation, rank), self.args.num_episode, "train")
        totals, steps = rollout_real(self.controller, solutions, self.vae, self.rnn, self.train_config, seeds)
        return totals.mean(1), steps

    def validate(self, params, generation, rank=0, size=1):
        """This worker's share of the validation episodes (every size-th one from rank on): with K
        workers a validation takes 1/K of the time, and the same episodes whatever K is."""
        seeds = episode_seeds((self.args.seed, generation), self.args.eval_episodes, "validation")[rank::size]
        if len(seeds) == 0:
            return np.zeros(0), 0
        totals, steps = rollout_real(self.controller, params, self.vae, self.rnn, self.config, seeds,
                                     progress=rank == 0)
        return totals[0], steps

    def validate_on_every_worker(self, workers: Workers, params, generation):
        """Every rank calls this with the same generation (params matter on rank 0 only): each plays
        its share, and rank 0 gets (mean, standard error, real steps); the others get None."""
        params = workers.bcast(params)
        shares = workers.gather(self.validate(params, generation, workers.rank, workers.size))
        return join_shares(shares) if workers.rank == 0 else None


def join_shares(shares) -> tuple[float, float, int]:
    """Mean reward, its standard error and the real steps of a validation from the workers' shares,
    the episodes back in their order (Scorer.validate)."""
    totals = np.zeros(sum(len(t) for t, _ in shares))
    for rank, (t, _) in enumerate(shares):
        totals[rank::len(shares)] = t
    se = float(totals.std(ddof=1) / np.sqrt(len(totals))) if len(totals) > 1 else 0.0
    return float(totals.mean()), se, sum(steps for _, steps in shares)


# ---------------------------------------------------------------- the loop

def new_state(args, num_params):
    import cma
    opts = {"popsize": args.popsize, "seed": args.seed + 1, "verbose": -9,
            "CMA_diagonal": not args.full_covariance}
    es = cma.CMAEvolutionStrategy(np.zeros(num_params), args.sigma_init, opts)
    return {"es": es, "generation": 0, "hist": [], "hist_best": [], "best": None, "best_reward": -np.inf,
            "wall_s": 0.0, "real_steps": 0, "flags": vars(args), "inputs": input_hashes(args)}


def resume_cma_draws(state: dict):
    """Put the unpickled CMA-ES back on numpy's global generator, in the state it had when saved.

    cma draws its candidates with np.random.randn, and its TPA step-size rule (CMAAdaptSigmaTPA,
    which cma picks from 300 parameters on) draws np.random.randint from the same global generator
    in every tell (check_consistency). Pickling es turns its np.random.randn into a private copy of
    that generator: after a resume the candidates came from the copy while TPA's draws went to the
    process's generator, so the candidates no longer skipped TPA's draws, and the run left the
    uninterrupted one's path two generations on. The checkpoint keeps the global generator's state
    ("np_random"); a resume restores it and binds es to it again, so nothing random is lost.
    """
    es = state["es"]
    saved = state.get("np_random")
    if saved is None:     # a checkpoint from before "np_random": its private copy was taken at the same moment
        saved = es.opts["randn"].__self__.get_state()
    np.random.set_state(saved)
    es.opts["randn"] = np.random.randn
    es.sm.randn = np.random.randn


def input_hashes(args) -> dict:
    """The dream's files (M, its first frames, its start states): new content under the same path is
    another objective."""
    hashes = {"rnn": sha256_file(args.rnn), "initial_z": sha256_file(args.initial_z)}
    if args.dream_starts:
        hashes["dream_starts"] = sha256_file(args.dream_starts)
    return hashes


def check_resume_flags(args, state: dict, path: str):
    saved = state["flags"]
    changed = changed_flags(saved, {k: getattr(args, k) for k in OBJECTIVE_FLAGS if k in saved})
    now = input_hashes(args)
    changed += [f"another --{k} file (same path, new content)" for k, digest in state.get("inputs", {}).items()
                if now.get(k) != digest]
    if changed:
        raise ValueError(f"{path} was trained with " + ", ".join(changed)
                         + ": pass the same values to resume, or use a new --log_dir")


def train(args, workers: Workers):
    paths = log_paths(args)
    state = None
    if workers.rank == 0:
        os.makedirs(args.log_dir, exist_ok=True)
        for path in remove_stale_temps(paths.values()):
            print(f"removed {path}, left by a killed run", flush=True)
        if os.path.exists(paths["es"]):
            with open(paths["es"], "rb") as f:
                state = pickle.load(f)
            check_resume_flags(args, state, paths["es"])
            print(f"resuming from {paths['es']} at generation {state['generation']}", flush=True)
    scorer = Scorer(args)
    resumed = state is not None
    if workers.rank == 0 and state is None:
        state = new_state(args, scorer.controller.num_params)
    generation = workers.bcast(state["generation"] if state else None)
    bar = None
    if workers.rank == 0:
        if resumed:
            resume_cma_draws(state)          # last, so that nothing else draws from the restored generator
        from tqdm import tqdm
        bar = tqdm(total=args.generations, initial=generation, desc=f"CMA-ES in the {args.env}", unit="gen")
    while generation < args.generations:
        start = time.time()
        solutions = workers.bcast(np.asarray(state["es"].ask()) if workers.rank == 0 else None)
        mine = np.arange(len(solutions))[workers.rank::workers.size]
        rewards, steps = scorer.score(solutions[mine], generation, workers.rank)
        gathered = workers.gather((mine, rewards, steps))
        generation += 1
        validating = generation % args.eval_steps == 0 or generation == args.generations
        if workers.rank != 0:
            if validating:
                scorer.validate_on_every_worker(workers, None, generation)
            continue
        fitness = np.zeros(len(solutions))
        for idx, r, s in gathered:
            fitness[idx] = r
            state["real_steps"] += s
        es = state["es"]
        penalty = args.weight_decay * np.mean(np.square(solutions), axis=1)
        es.tell(list(solutions), list(penalty - fitness))  # cma minimises; logs keep the raw rewards
        state["generation"] = generation
        state["wall_s"] += time.time() - start
        state["hist"].append([generation, round(state["wall_s"], 1), float(fitness.mean()), float(fitness.min()),
                              float(fitness.max()), float(fitness.std()), float(es.sigma), state["real_steps"]])
        mean_params = np.asarray(es.result.xfavorite)
        if validating:
            t0 = time.time()
            real_mean, real_se, steps = scorer.validate_on_every_worker(workers, mean_params, generation)
            state["wall_s"] += time.time() - t0
            state["real_steps"] += steps
            if real_mean > state["best_reward"]:
                state["best_reward"], state["best"] = real_mean, mean_params.round(4).tolist()
                atomic_write_json(paths["best"], [state["best"], real_mean])
            state["hist_best"].append([generation, round(state["wall_s"], 1), real_mean, real_se,
                                       state["best_reward"], state["real_steps"]])
            bar.write(f"generation {generation}: real reward of the mean {real_mean:.2f} +- {real_se:.2f} "
                      f"(best {state['best_reward']:.2f})")
        atomic_write_json(paths["params"], [mean_params.round(4).tolist(), generation])
        atomic_write_json(paths["hist"], state["hist"])
        atomic_write_json(paths["hist_best"], state["hist_best"])
        state["np_random"] = np.random.get_state()      # cma's generator (see resume_cma_draws)
        atomic_write_pickle(paths["es"], state)
        bar.set_postfix(mean=f"{fitness.mean():.1f}", best=f"{fitness.max():.1f}", sigma=f"{es.sigma:.3f}")
        bar.update(1)
    if workers.rank == 0:
        bar.close()
        starts = scorer.dream.starts if args.env == "dream" else None   # their real steps count too
        summary = {"env": args.env, "generations": state["generation"], "wall_s": round(state["wall_s"], 1),
                   "real_steps": state["real_steps"], "best_real_reward": state["best_reward"],
                   "dream_starts_real_steps": int(starts["real_steps"]) if starts is not None else 0,
                   "best_file": paths["best"]}
        print(json.dumps(summary))
        return summary
    return None


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser, args = parse_args(argv)
    check_output_dir(parser, args.log_dir, "--log_dir")
    for path in (args.rnn, args.initial_z, args.vae):
        if not os.path.exists(path):
            parser.error(f"{path} not found: train V and M first (vae_train.py, series.py, rnn_train.py, "
                         f"copy_models.py)")
    if args.num_worker > 1 and not under_mpi():
        relaunch_with_mpiexec(args.num_worker, argv)
    workers = Workers()
    try:
        return train(args, workers)
    except KeyboardInterrupt:
        if workers.rank == 0:
            print("interrupted: the logs hold the last finished generation; re-run to resume", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # any failure on any rank ends the whole run, never a hang
        workers.abort(f"{type(e).__name__}: {e}")


if __name__ == "__main__":
    main()
