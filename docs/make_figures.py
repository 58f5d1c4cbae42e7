"""Draw the pictures of docs/walkthrough.md from the shipped models and logs.

    python docs/make_figures.py [--vae vae/vae.json --rnn rnn/rnn.json --log log/binpacking.cma.16.64]

Writes docs/environment.png, docs/vae_reconstruction.png, docs/dream_vs_real.png and
docs/training_curve.png. Needs only the files a fresh clone has.
"""
import argparse
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import baselines  # noqa: E402
from bin_packing_environment import BatchBinPacking, decode_pictures, episode_seeds  # noqa: E402
from controller import load_rnn, load_vae  # noqa: E402

OUT = os.path.join(ROOT, "docs")


def play_best_fit(steps, seed=0, epsilon=0.2):
    """Pictures, states and actions of one real episode of epsilon-Best Fit."""
    rng = np.random.default_rng(seed)
    env = BatchBinPacking("perfect_pack", 1, pictures=True)
    obs = env.reset(episode_seeds(seed, 1, "eval"))
    frames, states, actions = [], [], []
    for _ in range(steps):
        a = baselines.best_fit(obs["state"], obs["action_mask"])
        if rng.random() < epsilon:
            a = baselines.random_valid(obs["state"], obs["action_mask"], rng)
        frames.append(obs["picture"][0]), states.append(obs["state"][0]), actions.append(int(a[0]))
        obs, *_ = env.step(a)
    return np.array(frames), np.array(states), np.array(actions)


def save(fig, name):
    fig.tight_layout()
    fig.savefig(os.path.join(OUT, name), dpi=110)
    plt.close(fig)
    print("wrote", os.path.join("docs", name))


def environment(frames, states):
    fig, axes = plt.subplots(1, 4, figsize=(12, 3.4))
    for ax, t in zip(axes, (0, 20, 200, 999)):
        ax.imshow(frames[t], interpolation="nearest")
        counts = {h: int(c) for h, c in enumerate(states[t][1:-1], 1) if c}
        ax.set_title(f"step {t}: item {states[t][-1]}\n{len(counts)} levels in use, {sum(counts.values())} bins",
                     fontsize=9)
        ax.axis("off")
    fig.suptitle("the picture: one band per level (bottom = level 1), arriving item in the bottom row")
    save(fig, "environment.png")


def reconstruction(vae, frames, states):
    picks = [5, 50, 300, 999]
    mu, _ = vae.encode_mu_logvar(frames[picks])
    recon = vae.decode(mu)
    decoded = decode_pictures(recon)
    fig, axes = plt.subplots(2, 4, figsize=(12, 6.2))
    for k, t in enumerate(picks):
        axes[0, k].imshow(frames[t], interpolation="nearest")
        axes[0, k].set_title(f"real, step {t}", fontsize=9)
        ok = (decoded[k] == states[t]).all()
        axes[1, k].imshow(recon[k], interpolation="nearest")
        axes[1, k].set_title(f"V reconstruction: state {'exact' if ok else 'not exact'}", fontsize=9)
    for ax in axes.ravel():
        ax.axis("off")
    save(fig, "vae_reconstruction.png")


def dream_vs_real(vae, rnn, frames, actions, start=100, steps=(0, 1, 5, 20, 50)):
    """Open loop: M is fed the real actions from `start`, its dreamed z decoded by V."""
    mu, _ = vae.encode_mu_logvar(frames[start:start + 1])
    z, (h, c) = mu, rnn.initial_state(1)
    # warm M's memory on the real frames before the start, as in a rollout
    real_mu, _ = vae.encode_mu_logvar(frames[:start])
    for t in range(start):
        h, c, _ = rnn.step(real_mu[t:t + 1], actions[t:t + 1], h, c)
    rng = np.random.default_rng(0)
    dreamed = {0: z}
    for k in range(1, max(steps) + 1):
        h, c, out = rnn.step(z, actions[start + k - 1:start + k], h, c)
        z = rnn.sample_next_z(out, 1.0, rng)
        dreamed[k] = z
    fig, axes = plt.subplots(2, len(steps), figsize=(2.6 * len(steps), 5.6))
    for i, k in enumerate(steps):
        axes[0, i].imshow(frames[start + k], interpolation="nearest")
        axes[0, i].set_title(f"real, +{k}", fontsize=9)
        axes[1, i].imshow(vae.decode(dreamed[k])[0], interpolation="nearest")
        axes[1, i].set_title(f"dreamed, +{k}", fontsize=9)
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle(f"the dream fed the real actions from step {start} on (temperature 1)")
    save(fig, "dream_vs_real.png")


def training_curve(log_base):
    hist = np.array(json.load(open(log_base + ".hist.json")), float)
    best = np.array(json.load(open(log_base + ".hist_best.json")), float).reshape(-1, 6)
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    axes[0].plot(hist[:, 0], hist[:, 2], label="population mean")
    axes[0].plot(hist[:, 0], hist[:, 4], label="population best")
    axes[0].set_xlabel("generation")
    axes[0].set_ylabel("dreamed reward per episode")
    axes[0].legend()
    axes[1].errorbar(best[:, 0], best[:, 2], yerr=best[:, 3], marker="o", label="CMA-ES mean, real env")
    for name, style in (("best_fit", "--"), ("sum_of_squares", ":")):
        value = baselines.evaluate_policy(baselines.POLICIES[name], "perfect_pack", 200, seed=0).mean()
        axes[1].axhline(value, color="k", linestyle=style, label=f"{name} ({value:.1f})")
    axes[1].set_xlabel("generation")
    axes[1].set_ylabel("real reward per episode")
    low = best[:, 2].min()
    if low < -150:   # an early mean that opens a bin for every item would flatten the rest
        axes[1].set_ylim(-150, 0)
        axes[1].set_title(f"(off the scale: {int((best[:, 2] < -150).sum())} early point(s), lowest {low:.0f})",
                          fontsize=9)
    axes[1].legend()
    save(fig, "training_curve.png")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vae", default=os.path.join(ROOT, "vae", "vae.json"))
    parser.add_argument("--rnn", default=os.path.join(ROOT, "rnn", "rnn.json"))
    parser.add_argument("--log", default=os.path.join(ROOT, "log", "binpacking.cma.16.64"))
    args = parser.parse_args()
    frames, states, actions = play_best_fit(1000)
    environment(frames, states)
    vae, rnn = load_vae(args.vae), load_rnn(args.rnn)
    reconstruction(vae, frames, states)
    dream_vs_real(vae, rnn, frames, actions)
    training_curve(args.log)


if __name__ == "__main__":
    main()
