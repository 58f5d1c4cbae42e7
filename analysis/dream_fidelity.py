"""How faithful is the dream? Replay held-out real episodes open loop inside M and compare.

    python -m analysis.dream_fidelity [--record_dir record --vae vae/vae.json --rnn rnn/rnn.json
                                         --episodes 20 --temperature 1.0 --seed 0 --out dream_fidelity.json
                                         --initial_z initial_z/initial_z.json --ranking_horizons 100,1000]

The controller is trained only in the dream, so what matters is whether M, fed the actions a
real episode took, imagines the packing that really happened. For each episode the dream starts
from V's encoding of the real first frame (z sampled from mu/logvar, or mu for an M trained on
means, as dream_env does), feeds the real actions one by one and samples every next z from M's
mixture at --temperature, never looking at the real pictures again. For horizons k (--horizons,
default 1, 10, 100, 1000; those beyond the longest episode are left out) it reports how often,
over dreamed steps 1..k and at step k itself:

  (a) the mask of the dreamed picture (V decodes z, decode_pictures reads it) equals the real
      valid-action mask exactly,
  (b) M's mask head (mask_prob > 0.5, opening a new bin forced valid, as in dream_env) does,
  (c) M's reward (rounded) equals the real reward of the same action (steps 0..k-1),

and, across episodes, the correlation of the dreamed and the real total reward. Episodes are
held-out ones: those listed in provenance.json next to --rnn (written by rnn_train.py, copied by
copy_models.py), or, without one, the --holdout split that vae_train/rnn_train make with
--split_seed. All episodes are stepped together (RNNNumpy works on a batch).

Policy ranking: CMA-ES can only learn in the dream what the dream ranks right, so two fixed
controllers (W = 0, bias only) are also scored closed loop: Best Fit (bias rising with the
level) and Worst Fit (the emptiest open bin that fits). Each plays --ranking_episodes dreams
per --ranking_horizons length (started from --initial_z, default: initial_z/ beside rnn/ of
--rnn) and --ranking_real_episodes real episodes of --preset on the 'validation' seed stream;
the check is whether the dream orders them as the real environment does ("" turns it off).
With --ranking_paired every policy plays on the same random numbers, as CMA-ES's candidates do
under train.py --common_random_numbers, and the report adds each policy's dream-by-dream
difference from Best Fit, whose spread says how many dreams it takes to tell two candidates apart.
The same real episodes are also fed to M step by step (V's z of each real picture, the action
taken) and its predicted rewards summed: "M on the real episodes" tells M's one-step heads
apart from the drift of the open-loop dream. Then Best Fit plays --coherence_dreams closed-loop
dreams of --coherence_horizon steps, every dreamed picture read: does the dream stay a packing
(M's mask equal to the mask its own picture shows, the pictured waste steady, each step a legal
move of the packing)? Legal moves are also counted one step from each real state of the replayed
episodes, for V alone (the ceiling of any dream) and for M's sampled step.
Prints markdown tables and writes --out (JSON).
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict

import numpy as np
from tqdm import tqdm

from baselines import evaluate_policy
from bin_packing_environment import MAX_TIME_HORIZON, PRESETS, action_masks, decode_pictures, place_items, waste
from dream_env import add_dream_arguments, dream_spec
from stages_common import (MAX_EPISODES, EpisodeReader, atomic_write_json, bounded_int, check_output_file,
                           episode_count, episode_name, fail, holdout_mask, int_list, parse_fraction,
                           positive_int, remove_stale_temps, require_file, seed_int, sha256_file)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Replay held-out episodes open loop in M; see the module docstring.")
    p.add_argument("--record_dir", default="record")
    p.add_argument("--vae", default="vae/vae.json")
    p.add_argument("--rnn", default="rnn/rnn.json")
    p.add_argument("--provenance", default=None,
                   help="rnn_train.py's provenance.json (default: next to --rnn); gives the held-out episodes")
    p.add_argument("--no_provenance", action="store_true", help="ignore provenance.json; use --holdout/--split_seed")
    p.add_argument("--holdout", type=parse_fraction, default=0.05, help="split used without provenance.json")
    p.add_argument("--split_seed", type=seed_int, default=0,
                   help="--seed of vae_train/rnn_train, without provenance.json")
    p.add_argument("--episodes", type=episode_count, default=20, help="held-out episodes replayed at most")
    p.add_argument("--horizons", default="1,10,100,1000", help="comma-separated step counts")
    p.add_argument("--out", default="dream_fidelity.json")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--initial_z", default=None,
                   help="first-frame encodings the ranking dreams start from "
                        "(default: initial_z/initial_z.json beside the directory of --rnn)")
    p.add_argument("--ranking_horizons", default="100,1000",
                   help='comma-separated dream lengths of the policy ranking ("" turns it off)')
    p.add_argument("--ranking_episodes", type=episode_count, default=64, help="dreams per policy and horizon")
    p.add_argument("--ranking_real_episodes", type=episode_count, default=50,
                   help="real episodes per policy (validation seeds, --ranking_real_horizon steps)")
    p.add_argument("--ranking_real_horizon", type=bounded_int(1, MAX_TIME_HORIZON), default=None,
                   help="steps of those real episodes (default: the preset's horizon; a smoke test's "
                        "tiny models need no 1000-item episodes)")
    p.add_argument("--preset", default="perfect_pack", choices=sorted(PRESETS), help="real environment of the ranking")
    p.add_argument("--ranking_controllers", nargs="*", default=[],
                   help="controller files (train.py logs) ranked too, in the dream and on the same real "
                        "episodes: does the dream order trained controllers as the real environment does?")
    p.add_argument("--ranking_paired", dest="common_random_numbers", action="store_true",
                   help="the same as --common_random_numbers: every policy plays the same dreams, as CMA-ES's "
                        "candidates do, and the report adds each policy's dreamed reward minus Best Fit's, "
                        "dream by dream: how far apart can 16 dreams tell two candidates?")
    p.add_argument("--coherence_dreams", type=bounded_int(0, MAX_EPISODES), default=200,
                   help="with the ranking on, Best Fit plays this many closed-loop dreams and every dreamed "
                        "picture is read: does the dream stay a packing? (0: off)")
    p.add_argument("--coherence_horizon", type=positive_int, default=100, help="steps of those dreams")
    add_dream_arguments(p)     # the dream measured: the same flags as train.py's (dream_env.DreamSpec)
    return p


def dream(vae, rnn, episodes: list, temperature: float, rng: np.random.Generator) -> dict:
    """Open-loop replay of all `episodes` at once: dreamed z, mask head and reward per step."""
    E = len(episodes)
    lengths = np.array([len(ep["action"]) for ep in episodes])
    T = int(lengths.max())
    actions = np.zeros((E, T), np.int64)
    for i, ep in enumerate(episodes):
        actions[i, :lengths[i]] = ep["action"]
    mu, logvar = vae.encode_mu_logvar(np.stack([ep["obs"][0] for ep in episodes]))
    z = rnn.first_z(mu, logvar, rng)
    h, c = rnn.initial_state(E)
    dream_z = np.zeros((E, T, rnn.z_size), np.float32)       # [:, t]: dreamed frame t + 1
    head_mask = np.zeros((E, T, rnn.action_size), np.uint8)  # [:, t]: M's mask for frame t + 1
    reward = np.zeros((E, T))                                # [:, t]: M's reward for action t
    for t in tqdm(range(T), desc="dreaming", unit="step", leave=False):
        h, c, out = rnn.step(z, actions[:, t], h, c)
        reward[:, t] = out["reward"]
        z = rnn.sample_next_z(out, temperature, rng)
        mask = (rnn.mask_prob(h, z) > 0.5).astype(np.uint8)
        mask[:, 0] = 1
        head_mask[:, t] = mask
        dream_z[:, t] = z
    return {"lengths": lengths, "dream_z": dream_z, "head_mask": head_mask, "reward": reward}


def one_step_legality(vae, rnn, episodes: list, temperature: float, rng: np.random.Generator,
                      chunk: int = 2000, z_noise: float = 1.0) -> dict:
    """How often one step obeys the packing's rules (legal_moves), as V reads the real pictures.

    "v": V's reading of a real frame and of the next one (the real action between them): the
    ceiling for any dream drawn with this V. "m": M fed the real z and actions along each episode
    (teacher-forced), one step sampled from a real state and read off its picture, against V's
    reading of that real state: M's transition on its own, before any drift. With z_noise other
    than 1, "m_z_noise" is the same with M's Gaussian noise scaled by it (as the dream C trains in
    draws), from the same step outputs. For an M with the mlp transition the sample draws the
    next item from its item head and runs its MLP.
    """
    def read(z):
        return np.concatenate([decode_pictures(vae.decode(z[i:i + chunk]), rnn.action_size)
                               for i in range(0, len(z), chunk)])
    v_ok, m_ok = [], []
    lengths = np.array([len(ep["action"]) for ep in episodes])
    T = int(lengths.max())
    mu = np.zeros((len(episodes), T, rnn.z_size), np.float32)
    z = np.zeros_like(mu)
    actions = np.zeros((len(episodes), T), np.int64)
    for i, (ep, n) in enumerate(zip(episodes, lengths)):
        mu[i, :n], logvar = vae.encode_mu_logvar(ep["obs"][:n])
        z[i, :n] = rnn.first_z(mu[i, :n], logvar, rng)                  # V's z as M was trained on it
        actions[i, :n] = ep["action"]
    h, c = rnn.initial_state(len(episodes))
    sampled = np.zeros_like(z)                                  # [:, t]: M's sample of frame t + 1
    quiet = np.zeros_like(z) if z_noise != 1.0 else None       # the same at z_noise
    for t in range(T - 1):
        h, c, out = rnn.step(z[:, t], actions[:, t], h, c)
        sampled[:, t] = rnn.sample_next_z(out, temperature, rng)
        if quiet is not None:
            quiet[:, t] = rnn.sample_next_z(out, temperature, rng, z_noise)
    q_ok = []
    for i, n in enumerate(lengths):
        seen = read(mu[i, :n])
        v_ok.append(legal_moves(seen[:-1], actions[i, :n - 1], seen[1:]))
        m_ok.append(legal_moves(seen[:-1], actions[i, :n - 1], read(sampled[i, :n - 1])))
        if quiet is not None:
            q_ok.append(legal_moves(seen[:-1], actions[i, :n - 1], read(quiet[i, :n - 1])))
    out = {"v": float(np.concatenate(v_ok).mean()), "m": float(np.concatenate(m_ok).mean()),
           "steps": int(sum(len(ok) for ok in v_ok))}
    if quiet is not None:
        out.update(m_z_noise=float(np.concatenate(q_ok).mean()), z_noise=float(z_noise))
    return out


def decoded_masks(vae, dream_z, lengths, upto: int, bin_size: int, chunk: int = 2000) -> np.ndarray:
    """Masks (E, upto, A) read from V's pictures of the dreamed z (only real frames decoded)."""
    E = len(lengths)
    steps = np.arange(upto)
    need = steps[None, :] + 1 < lengths[:, None]             # frame t+1 exists in the real episode
    flat = dream_z[:, :upto][need]
    masks = np.zeros((E, upto, bin_size), np.uint8)
    out = []
    for i in tqdm(range(0, len(flat), chunk), desc="decoding dreams", unit="chunk", leave=False):
        states = decode_pictures(vae.decode(flat[i:i + chunk]), bin_size=bin_size)
        out.append(action_masks(states))
    if out:
        masks[need] = np.concatenate(out)
    return masks


def score(episodes, d, decoded, horizons) -> list[dict]:
    E, lengths = len(episodes), d["lengths"]
    upto = decoded.shape[1]
    real_mask = np.zeros_like(decoded)                      # [:, t]: real mask of frame t + 1
    real_reward = np.zeros((E, upto))
    for i, ep in enumerate(episodes):
        n = lengths[i]
        real_mask[i, :min(n - 1, upto)] = ep["action_mask"][1:upto + 1]
        real_reward[i, :min(n, upto)] = ep["reward"][:upto]
    steps = np.arange(upto)
    has_frame = steps[None, :] + 1 < lengths[:, None]
    has_action = steps[None, :] < lengths[:, None]
    dec_ok = (decoded == real_mask).all(-1)
    head_ok = (d["head_mask"][:, :upto] == real_mask).all(-1)
    rew_ok = np.round(d["reward"][:, :upto]) == real_reward
    rows = []
    for k in horizons:
        frames = has_frame[:, :k]
        acts = has_action[:, :k]
        at_frame = has_frame[:, k - 1] if k - 1 < upto else np.zeros(E, bool)
        at_action = has_action[:, k - 1] if k - 1 < upto else np.zeros(E, bool)

        def share(ok, where):
            return float(ok[where].mean()) if where.any() else None
        rows.append({"horizon": k, "episodes_with_frame_k": int(at_frame.sum()), "frames": int(frames.sum()),
                     "decoded_mask_exact": share(dec_ok[:, :k], frames),
                     "decoded_mask_exact_at_k": share(dec_ok[:, k - 1], at_frame) if k - 1 < upto else None,
                     "head_mask_exact": share(head_ok[:, :k], frames),
                     "head_mask_exact_at_k": share(head_ok[:, k - 1], at_frame) if k - 1 < upto else None,
                     "reward_exact": share(rew_ok[:, :k], acts),
                     "reward_exact_at_k": share(rew_ok[:, k - 1], at_action) if k - 1 < upto else None})
    return rows


def markdown(rows, totals) -> str:
    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}%"
    lines = ["| horizon k | frames (steps 1..k) | episodes at k | decoded dream mask exact: 1..k (at k) "
             "| M mask head exact: 1..k (at k) | M reward exact: 1..k (at k) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['horizon']} | {r['frames']} | {r['episodes_with_frame_k']} "
                     f"| {pct(r['decoded_mask_exact'])} ({pct(r['decoded_mask_exact_at_k'])}) "
                     f"| {pct(r['head_mask_exact'])} ({pct(r['head_mask_exact_at_k'])}) "
                     f"| {pct(r['reward_exact'])} ({pct(r['reward_exact_at_k'])}) |")
    corr = "n/a" if totals["correlation"] is None else f"{totals['correlation']:.3f}"
    lines.append("")
    lines.append(f"total reward over {totals['episodes']} episodes: real {totals['real_mean']:.2f}, "
                 f"dreamed {totals['dream_mean']:.2f} (mean abs. difference {totals['mae']:.2f}), "
                 f"correlation {corr}")
    return "\n".join(lines)


RANKED = ("best_fit", "worst_fit")


def fixed_policies(controller) -> np.ndarray:
    """(2, num_params): Best Fit and Worst Fit as bias-only controllers (W = 0).

    Action a >= 1 puts the item in a bin at level a and 0 opens a new bin (always valid), so
    under the masked argmax a bias rising in a picks the fullest bin that fits (Best Fit), and
    one that is 0 for a new bin and falling in a >= 1 the emptiest (Worst Fit).
    """
    A = controller.num_actions
    params = np.zeros((2, controller.num_params), np.float32)
    params[0, -A:] = np.arange(A)
    params[1, -A:] = np.r_[0, 2 * A - np.arange(1, A)]
    return params


def fixed_policy(controller, params):
    """A bias-only controller as a baselines policy: with W = 0, z and h cannot change an action,
    so the real env is stepped without V and M (minutes of picture encoding saved)."""
    W, _ = controller.split(params)
    if W.any():
        raise ValueError("fixed_policy is for bias-only controllers (W = 0)")
    x = np.zeros((1, 1, controller.input_size), np.float32)

    def policy(states, masks, rng=None):
        return controller.act(params[None], np.broadcast_to(x, (1, len(masks), x.shape[2])), masks[None])[0]
    return policy


def with_m_reward(policy, vae, rnn, n: int):
    """Wrap a baselines policy so that M, fed V's z of each real picture and the action taken,
    sums the reward it predicts; returns (wrapped policy for pictures=True, the (n,) sums)."""
    state = dict(zip("hc", rnn.initial_state(n)))
    total = np.zeros(n)

    def wrapped(states, masks, rng, pictures):
        actions = policy(states, masks, rng)
        z, _ = vae.encode_mu_logvar(pictures)
        state["h"], state["c"], out = rnn.step(z, actions, state["h"], state["c"])
        total[:] += out["reward"]
        return actions
    return wrapped, total


def pairs_in_order(dream: np.ndarray, real: np.ndarray) -> float:
    """Share of policy pairs the dream orders as the real environment does."""
    i, j = np.triu_indices(len(real), 1)
    return float(np.mean(np.sign(dream[i] - dream[j]) == np.sign(real[i] - real[j])))


def rank_policies(rnn, initial_z: dict, horizons, dream_episodes: int, real_episodes: int, config,
                  temperature: float = 1.0, seed: int = 0, vae=None, starts: dict | None = None, z_noise: float = 1.0,
                  dream_reward: str = "m", picture_every: int = 0, controllers: dict | None = None,
                  paired: bool = False, empty_start_fraction: float = 0.0) -> dict:
    """Best Fit vs Worst Fit in the dream (per horizon) and in the real env: same order?

    With a VAE, M also sums its predicted rewards along the real episodes ("M on real"): its
    one-step heads, without the drift of an open-loop dream. `controllers` ({name: params}) are
    scored too, in the same dreams' batch and on the same real episodes (through V and M).
    With `paired`, all policies play the same dreams' random numbers (as CMA-ES's candidates do
    under common random numbers) and each row also holds every policy's dream-by-dream
    difference from Best Fit: its mean, standard error and spread.
    """
    from dream_env import BatchDream, rollout_dream
    from controller import Controller, rollout_real
    from bin_packing_environment import episode_seeds
    controller = Controller(rnn.z_size, rnn.hidden_size, rnn.action_size)
    params = fixed_policies(controller)
    controllers = controllers or {}
    real, m_on_real = [], []
    for p in params:
        policy = fixed_policy(controller, p)
        if vae is None:
            real.append(evaluate_policy(policy, config, real_episodes, seed, stream="validation").mean())
            continue
        policy, predicted = with_m_reward(policy, vae, rnn, real_episodes)
        real.append(evaluate_policy(policy, config, real_episodes, seed, batch=real_episodes, pictures=True,
                                    stream="validation").mean())
        m_on_real.append(float(predicted.mean()))
    real = np.array(real)
    real_sign = np.sign(real[0] - real[1])
    names = list(RANKED) + list(controllers)
    if controllers:
        if vae is None:
            raise ValueError("ranking controllers needs a VAE (they read V's z of the real pictures)")
        extra = np.stack(list(controllers.values())).astype(np.float32)
        totals, _ = rollout_real(controller, extra, vae, rnn, config,
                                 episode_seeds(seed, real_episodes, "validation"))
        real = np.concatenate([real, totals.mean(1)])
        params = np.concatenate([params, extra])
    rng = np.random.default_rng(seed)
    rows = []
    for k in horizons:
        dream = BatchDream(rnn, initial_z, temperature, k, starts, empty_start_fraction, z_noise=z_noise)
        totals, _ = rollout_dream(controller, params, dream, dream_episodes, rng, common_random_numbers=paired,
                                  picture_vae=vae if dream_reward == "picture" else None, picture_every=picture_every,
                                  rules_vae=vae if dream_reward == "rules" else None)
        means, spread = totals.mean(1), totals.std(1)
        row = {"horizon": int(k), "dream": dict(zip(names, map(float, means))),
               "agrees": bool(np.sign(means[0] - means[1]) == real_sign)}
        if paired:
            diff = totals - totals[:1]
            diff_spread = diff.std(1)
            row["minus_best_fit"] = dict(zip(names, map(float, diff.mean(1))))
            row["minus_best_fit_sd"] = dict(zip(names, map(float, diff_spread)))
            row["minus_best_fit_stderr"] = dict(zip(names, map(float, diff_spread / np.sqrt(dream_episodes))))
            row["sd"] = dict(zip(names, map(float, spread)))
        if controllers:
            row["dream_stderr"] = dict(zip(names, map(float, spread / np.sqrt(dream_episodes))))
            row["pairs_in_real_order"] = pairs_in_order(means, real)
        rows.append(row)
    out = {"policies": names, "real": dict(zip(names, map(float, real))), "paired": bool(paired),
           "real_episodes": real_episodes, "real_horizon": int(config["time_horizon"]),
           "dream_episodes": dream_episodes, "temperature": temperature, "seed": seed, "horizons": rows}
    if m_on_real:
        out["m_on_real"] = dict(zip(RANKED, m_on_real))
        out["m_on_real_agrees"] = bool(np.sign(m_on_real[0] - m_on_real[1]) == real_sign)
    return out


COHERENCE_STEPS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


def legal_moves(before, actions, after, allowed=None) -> np.ndarray:
    """Whether each `after` shows exactly the bins that `before` and the action lead to (the item
    is the environment's new draw, not compared); a row not `allowed` must keep its bins."""
    expected, _ = place_items(before, actions, act=allowed)
    return (np.asarray(after)[:, 1:-1] == expected[:, 1:-1]).all(1)


def dream_coherence(vae, rnn, initial_z: dict, horizon: int, dreams: int, temperature: float = 1.0,
                    seed: int = 0, starts: dict | None = None, z_noise: float = 1.0,
                    empty_start_fraction: float = 0.0) -> dict:
    """Does a closed-loop dream stay a packing? Best Fit plays `dreams` dreams and every dreamed z
    is decoded (V, then decode_pictures) into the packing it shows.

    Open-loop scores (above) compare the dream with one real future; this needs none. Per step it
    reports how often M's mask head (what the controller acts on) equals the mask read off the
    dreamed picture, how often Best Fit's action is invalid by that picture, and the waste the
    pictures show: a dream whose samples leave the pictures' manifold fills with phantom bins
    (the waste climbs) and offers moves the picture does not allow. A legal step is one whose
    picture shows exactly the bins that the previous picture and Best Fit's action lead to (an
    action the picture does not allow leaves that picture's bins as they were, so the step can
    still be legal only if M leaves them too): how often M's transitions obey the rules. The
    pictured waste's change per step is split into what the actions explain (bin size - item for
    a new bin, -item into an open one) and what the illegal steps add; the picture reward of
    train.py --dream_reward picture is the sum of both.
    """
    from dream_env import BatchDream
    from controller import Controller
    controller = Controller(rnn.z_size, rnn.hidden_size, rnn.action_size)
    best_fit = fixed_policies(controller)[:1]
    dream = BatchDream(rnn, initial_z, temperature, horizon, starts, empty_start_fraction, z_noise=z_noise)
    obs = dream.reset(dreams, np.random.default_rng(seed))
    rows, agree, invalid, new_bins, legal, explained, added = [], [], [], [], [], [], []
    for t in range(horizon + 1):
        states = decode_pictures(vae.decode(obs["z"]), rnn.action_size)
        pictured = action_masks(states)
        same = (pictured == obs["action_mask"]).all(1)
        row = {"step": t, "mask_agrees": float(same.mean()), "waste": float(waste(states).mean())}
        if t > 0:
            legal.append(legal_moves(before, actions, states, allowed).mean())
            row["legal_step"] = float(legal[-1])
            # the waste a legal step adds: bin size - item for a new bin, -item into an open one
            by_actions = np.where(allowed, np.where(actions == 0, rnn.action_size - before[:, -1], -before[:, -1]), 0)
            explained.append(by_actions.mean())
            added.append((waste(states) - waste(before) - by_actions).mean())
        if t in COHERENCE_STEPS or t == horizon:
            rows.append(row)
        if t == horizon:
            break
        x = np.concatenate([obs["z"], obs["h"]], 1)[None]
        actions = controller.act(best_fit, x, obs["action_mask"][None])[0]
        agree.append(same.mean())
        allowed = pictured[np.arange(dreams), actions] > 0
        invalid.append(float((~allowed).mean()))
        new_bins.append(float((actions == 0).mean()))
        before = states
        obs, _, _, _ = dream.step(actions)
    return {"dreams": dreams, "horizon": horizon, "temperature": temperature, "steps": rows,
            "mask_agrees": float(np.mean(agree)), "invalid_by_picture": float(np.mean(invalid)),
            "new_bins_per_step": float(np.mean(new_bins)), "legal_steps": float(np.mean(legal)),
            "waste_by_actions_per_step": float(np.mean(explained)),
            "waste_by_illegal_steps_per_step": float(np.mean(added))}


def coherence_markdown(c) -> str:
    lines = ["| dream step | M mask = mask of the dreamed picture | waste the picture shows | legal step |",
             "| --- | --- | --- | --- |"]
    lines += [f"| {r['step']} | {r['mask_agrees']:.1%} | {r['waste']:.1f} | "
              f"{format(r['legal_step'], '.1%') if 'legal_step' in r else ''} |" for r in c["steps"]]
    lines.append(f"\nBest Fit in {c['dreams']} dreams of {c['horizon']} steps: M's mask equals the picture's on "
                 f"{c['mask_agrees']:.1%} of steps, {c['invalid_by_picture']:.1%} of its actions are invalid by the "
                 f"picture, {c['new_bins_per_step']:.3f} new bins per step; {c['legal_steps']:.1%} of its steps are legal moves "
                 f"of the packing; per step the pictured waste changes by {c['waste_by_actions_per_step']:+.2f} "
                 f"as the actions explain and {c['waste_by_illegal_steps_per_step']:+.2f} by the illegal steps")
    return "\n".join(lines)


def ranking_markdown(r) -> str:
    lines = ["| dream horizon | dream Best Fit | dream Worst Fit | order as real? |", "| --- | --- | --- | --- |"]
    for row in r["horizons"]:
        lines.append(f"| {row['horizon']} | {row['dream']['best_fit']:.2f} | {row['dream']['worst_fit']:.2f} "
                     f"| {'yes' if row['agrees'] else 'NO'} |")
    if "m_on_real" in r:
        lines.append(f"| M on the real episodes | {r['m_on_real']['best_fit']:.2f} | {r['m_on_real']['worst_fit']:.2f} "
                     f"| {'yes' if r['m_on_real_agrees'] else 'NO'} |")
    lines.append("")
    lines.append(f"real ({r['real_episodes']} validation episodes of {r['real_horizon']} steps): "
                 f"Best Fit {r['real']['best_fit']:.2f}, Worst Fit {r['real']['worst_fit']:.2f}; "
                 f"dream means over {r['dream_episodes']} dreams each")
    if len(r["policies"]) > len(RANKED):
        ks = [row["horizon"] for row in r["horizons"]]
        lines += ["", "| policy | real | " + " | ".join(f"dream, {k} steps" for k in ks) + " |",
                  "| --- | --- | " + " | ".join("---" for _ in ks) + " |"]
        for name in r["policies"]:
            lines.append(f"| {name} | {r['real'][name]:.2f} | " + " | ".join(
                f"{row['dream'][name]:.2f} +- {row['dream_stderr'][name]:.2f}" for row in r["horizons"]) + " |")
        lines.append("| pairs in the real order | | " + " | ".join(
            f"{row['pairs_in_real_order']:.0%}" for row in r["horizons"]) + " |")
    if r.get("paired"):
        ks = [row["horizon"] for row in r["horizons"]]
        lines += ["", "paired with Best Fit on common random numbers: mean difference +- standard error "
                  "(spread of one dream's difference; spread of one dream's reward)",
                  "| policy | real minus Best Fit | " + " | ".join(f"dream, {k} steps" for k in ks) + " |",
                  "| --- | --- | " + " | ".join("---" for _ in ks) + " |"]
        for name in r["policies"]:
            lines.append(f"| {name} | {r['real'][name] - r['real']['best_fit']:.2f} | " + " | ".join(
                f"{row['minus_best_fit'][name]:.2f} +- {row['minus_best_fit_stderr'][name]:.2f} "
                f"({row['minus_best_fit_sd'][name]:.1f}; {row['sd'][name]:.1f})" for row in r["horizons"]) + " |")
    return "\n".join(lines)


def ranking_initial_z(args, parser, horizons) -> tuple[list[int], str | None]:
    """Ranking horizons and the initial z path, or ([], None) when the ranking is off."""
    if not horizons:
        return [], None
    # copy_models.py installs rnn/ and initial_z/ side by side (pipeline.py: in its work_dir)
    path = args.initial_z or os.path.normpath(os.path.join(os.path.dirname(args.rnn), "..", "initial_z",
                                                           "initial_z.json"))
    if not os.path.isfile(path):
        if args.initial_z:
            fail(parser, f"initial z file {path} not found (--initial_z)")
        print(f"note: no policy ranking: initial z file {path} not found (pass --initial_z)")
        return [], None
    return horizons, path


def load_ranking_z(parser, path: str, rnn, config) -> dict:
    """initial_z.json checked against M and the preset, or a parser error naming the mismatch."""
    from dream_env import load_initial_z
    try:
        iz = load_initial_z(path)
    except ValueError as e:
        fail(parser, str(e))
    if iz["mu"].shape[1] != rnn.z_size:
        fail(parser, f"initial z file {path} has z size {iz['mu'].shape[1]} but M has z_size {rnn.z_size} "
                     "(pass the --initial_z written with this M)")
    if "action_mask" in iz and iz["action_mask"].shape[1] != rnn.action_size:
        fail(parser, f"initial z file {path} has masks of {iz['action_mask'].shape[1]} actions "
                     f"but M has action_size {rnn.action_size}")
    if config["bin_size"] != rnn.action_size:
        fail(parser, f"--preset has bin_size {config['bin_size']} but M has action_size {rnn.action_size}")
    return iz


def heldout_names(args, parser) -> tuple[list | None, str]:
    """Held-out episode names from provenance.json, or None to use the fallback split."""
    prov_path = args.provenance or os.path.join(os.path.dirname(args.rnn), "provenance.json")
    if args.no_provenance or not os.path.exists(prov_path):
        if args.provenance and not args.no_provenance:
            fail(parser, f"provenance file {prov_path} not found")
        return None, f"--holdout {args.holdout} split with --split_seed {args.split_seed}"
    try:
        with open(prov_path) as f:
            prov = json.load(f)
        names, vae_sha, rnn_sha = prov["heldout_episodes"], prov["vae_sha256"], prov["rnn_sha256"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        fail(parser, f"cannot read provenance file {prov_path}: {type(e).__name__}: {e}")
    if rnn_sha != sha256_file(args.rnn):
        fail(parser, f"{prov_path} describes another rnn.json than {args.rnn} (pass --no_provenance to ignore it)")
    if vae_sha != sha256_file(args.vae):
        fail(parser, f"{args.rnn} was trained on encodings of another VAE than {args.vae} (per {prov_path})")
    return list(names), f"held-out episodes of {prov_path}"


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        horizons = int_list(args.horizons, "--horizons")
        ranking_horizons = (int_list(args.ranking_horizons, "--ranking_horizons")
                            if args.ranking_horizons.strip() else [])
    except ValueError as e:
        parser.error(str(e))
    spec = dream_spec(parser, args)         # the dream measured, as train.py would build it
    check_output_file(parser, args.out, "--out")
    remove_stale_temps([args.out])
    for path in args.ranking_controllers:
        require_file(parser, path, "controller file")
    if not os.path.isdir(args.record_dir):
        fail(parser, f"record directory {args.record_dir} not found")
    require_file(parser, args.vae, "VAE file")
    require_file(parser, args.rnn, "MDN-RNN file")
    ranking_horizons, initial_z_path = ranking_initial_z(args, parser, ranking_horizons)
    names, source = heldout_names(args, parser)

    reader = EpisodeReader(args.record_dir)
    if names is None:
        # split the usable files, as vae_train and series/rnn_train do
        headers = reader.scan()
        usable = [p for p in reader.paths if p in headers]
        if len(usable) < 2:
            fail(parser, f"need at least 2 usable episode files in {args.record_dir} to find held-out ones")
        candidates = [p for p, h in zip(usable, holdout_mask(usable, args.holdout, args.split_seed)) if h]
    else:
        wanted = set(names)
        headers = reader.scan([p for p in reader.paths if episode_name(p) in wanted])
        candidates = [p for p in reader.paths if p in headers]
    rng = np.random.default_rng(args.seed)
    chosen = [candidates[i] for i in sorted(rng.permutation(len(candidates))[:args.episodes])]
    episodes = [(p, ep) for p in chosen if (ep := reader.load(p)) is not None]
    skipped = reader.report()
    if not episodes:
        fail(parser, f"no usable held-out episodes ({source}) in {args.record_dir}")

    from rnn.rnn import RNNNumpy
    from vae.vae import ConvVAE
    try:
        rnn = RNNNumpy.from_json(args.rnn)
        vae = ConvVAE.from_json(args.vae)
    except ValueError as e:
        fail(parser, str(e))
    if rnn.z_size != vae.z_size:
        fail(parser, f"{args.rnn} has z_size {rnn.z_size} but {args.vae} has z_size {vae.z_size}")
    widths = {ep["action_mask"].shape[1] for _, ep in episodes}
    if widths != {rnn.action_size}:
        fail(parser, f"episodes have {sorted(widths)} actions but {args.rnn} has action_size {rnn.action_size}")
    config = dict(PRESETS[args.preset])
    if args.ranking_real_horizon is not None:
        config["time_horizon"] = args.ranking_real_horizon
    initial_z = load_ranking_z(parser, initial_z_path, rnn, config) if ranking_horizons else None

    eps = [ep for _, ep in episodes]
    print(f"replaying {len(eps)} episodes ({source}) open loop at temperature {args.temperature}")
    d = dream(vae, rnn, eps, args.temperature, rng)
    horizons = [k for k in horizons if k <= d["lengths"].max()]
    upto = max(horizons)
    decoded = decoded_masks(vae, d["dream_z"], d["lengths"], upto, rnn.action_size)
    rows = score(eps, d, decoded, horizons)
    legality = one_step_legality(vae, rnn, eps, args.temperature, rng, z_noise=args.z_noise)

    real = np.array([ep["reward"].sum() for ep in eps])
    dreamed = np.array([d["reward"][i, :n].sum() for i, n in enumerate(d["lengths"])])
    corr = None
    if len(eps) > 1 and real.std() > 0 and dreamed.std() > 0:
        corr = float(np.corrcoef(real, dreamed)[0, 1])
    totals = {"episodes": len(eps), "real_mean": float(real.mean()), "dream_mean": float(dreamed.mean()),
              "mae": float(np.abs(real - dreamed).mean()), "correlation": corr,
              "real": real.tolist(), "dreamed": dreamed.tolist()}
    table = markdown(rows, totals)
    table += (f"\nlegal moves of the packing, one step from each real state of these episodes ({legality['steps']} "
              f"steps): V's reading of the real step {legality['v']:.1%}, M's sampled step {legality['m']:.1%}"
              + (f" ({legality['m_z_noise']:.1%} at --z_noise {args.z_noise:g})" if "m_z_noise" in legality else ""))
    print(table)

    ranking = None
    if ranking_horizons:
        print(f"\nranking Best Fit vs Worst Fit: {args.ranking_episodes} dreams per horizon from {initial_z_path}, "
              f"{args.ranking_real_episodes} real {args.preset} episodes")
        starts = None
        if args.dream_starts:
            from dream_env import load_dream_starts
            try:
                starts = load_dream_starts(args.dream_starts, rnn, args.rnn)
            except ValueError as e:
                fail(parser, str(e))
            print(f"the ranking dreams begin at the {len(starts['z'])} real states of {args.dream_starts}")
        from controller import Controller, load_params
        controller = Controller(rnn.z_size, rnn.hidden_size, rnn.action_size)
        try:
            controllers = {path: load_params(path, controller) for path in args.ranking_controllers}
        except ValueError as e:
            fail(parser, str(e))
        ranking = rank_policies(rnn, initial_z, ranking_horizons, args.ranking_episodes,
                                args.ranking_real_episodes, config, args.temperature, args.seed, vae=vae,
                                starts=starts, dream_reward=args.dream_reward,
                                picture_every=args.picture_every, controllers=controllers,
                                paired=spec.common_random_numbers, z_noise=spec.z_noise,
                                empty_start_fraction=spec.empty_start_fraction)
        ranking.update(initial_z=initial_z_path, preset=args.preset, dream_starts=args.dream_starts, z_noise=args.z_noise,
                       dream_reward=args.dream_reward, picture_every=args.picture_every, dream=asdict(spec))
        ranking["table"] = ranking_markdown(ranking)
        print(ranking["table"])
        if args.coherence_dreams:
            c = dream_coherence(vae, rnn, initial_z, args.coherence_horizon, args.coherence_dreams,
                                args.temperature, args.seed, starts, args.z_noise, spec.empty_start_fraction)
            c["table"] = coherence_markdown(c)
            print("\ndoes the dream stay a packing? (Best Fit, closed loop)\n" + c["table"])
            ranking["coherence"] = c
    result = {"episodes": [episode_name(p) for p, _ in episodes], "episodes_source": source,
              "temperature": args.temperature, "seed": args.seed, "vae": args.vae, "rnn": args.rnn,
              "skipped_files": skipped, "horizons": rows, "total_reward": totals, "one_step_legal": legality,
              "table": table,
              "policy_ranking": ranking}
    atomic_write_json(args.out, result, indent=1)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
