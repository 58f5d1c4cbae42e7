"""Could the World Models controller pack better than Best Fit at all? A check of C's capacity.

C is linear in [z, h] (V's z of the picture, M's hidden state) with invalid actions masked. Here it
is fitted by imitation (DAgger) of a heuristic teacher on real states: the real environment is
played (first round by Best Fit written as a controller, then by the fitted C), every state is
labelled with the teacher's action, and W, b are fitted by masked softmax cross-entropy on all
states so far. This uses the real environment and a teacher, so it is *not* a World Models agent
and is never shipped: it asks whether a controller as good as Sum of Squares exists in C's
parameter space, which tells whether C or the dream limits the dream-trained agent.

    python -m analysis.imitate [--teacher sum_of_squares --rounds 4 --episodes 32 --seed 0 --out runs/imitate/controller.json]

Each round prints the fitted C's mean reward on --validation_episodes real episodes (validation
seed stream); --out gets the best round's parameters in the format model.py and dream_fidelity.py
--ranking_controllers read.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from baselines import POLICIES, evaluate_policy
from bin_packing_environment import PRESETS, episode_seeds, preset_config
from analysis.dream_fidelity import fixed_policies
from controller import DEFAULT_RNN, DEFAULT_VAE, Controller, load_rnn, load_vae, rollout_real
from stages_common import (atomic_write_json, check_output_file, episode_count, non_negative_float, positive_float,
                           positive_int, require_file, seed_int)

TEACHERS = ("best_fit", "sum_of_squares")


class Labeller:
    """Collects [z, h], the mask and the teacher's action of every live state rollout_real shows it."""

    def __init__(self, teacher):
        self.teacher, self.x, self.mask, self.label = teacher, [], [], []

    def __call__(self, t, z, h, c, mask, alive, state):
        self.x.append(np.concatenate([z, h], axis=1)[alive].astype(np.float32))
        self.mask.append(np.asarray(mask)[alive].astype(bool))
        self.label.append(self.teacher(state, mask)[alive])


def fit_controller(x, mask, label, num_actions, steps=1500, learning_rate=0.01, l2=1e-4):
    """W, b minimising the masked softmax cross-entropy of the labels (+ l2 |W|^2); full batch Adam.

    Returns (params in Controller's layout, training loss, training accuracy).
    """
    import tensorflow as tf
    xt, mt, yt = tf.constant(x), tf.constant(mask), tf.constant(label, tf.int32)
    W = tf.Variable(tf.zeros((x.shape[1], num_actions)))
    b = tf.Variable(tf.zeros(num_actions))
    optimizer = tf.keras.optimizers.Adam(learning_rate)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            logits = tf.where(mt, xt @ W + b, -1e9)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(yt, logits))
            loss += l2 * tf.reduce_sum(W * W)
        optimizer.apply_gradients(zip(tape.gradient(loss, [W, b]), [W, b]))
        return loss

    for _ in range(steps):
        loss = step()
    logits = np.where(mask, x @ W.numpy() + b.numpy(), -np.inf)
    params = np.concatenate([W.numpy().T.reshape(-1), b.numpy()])   # W is (actions, inputs) row-major
    return params, float(loss), float((logits.argmax(1) == label).mean())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vae", default=DEFAULT_VAE)
    parser.add_argument("--rnn", default=DEFAULT_RNN)
    parser.add_argument("--teacher", default="sum_of_squares", choices=TEACHERS)
    parser.add_argument("--rounds", type=positive_int, default=4, help="DAgger rounds")
    parser.add_argument("--episodes", type=episode_count, default=32, help="real episodes played per round")
    parser.add_argument("--steps", type=positive_int, default=1500, help="optimiser steps per fit")
    parser.add_argument("--learning_rate", type=positive_float, default=0.01)
    parser.add_argument("--l2", type=non_negative_float, default=1e-4, help="weight of |W|^2 in the loss")
    parser.add_argument("--validation_episodes", type=episode_count, default=200)
    parser.add_argument("--preset", default="perfect_pack", choices=sorted(PRESETS))
    parser.add_argument("--time_horizon", type=positive_int, default=None, help="override the preset's horizon")
    parser.add_argument("--seed", type=seed_int, default=0)
    parser.add_argument("--out", default="runs/imitate/controller.json")
    args = parser.parse_args(argv)
    require_file(parser, args.vae, "--vae")
    require_file(parser, args.rnn, "--rnn")
    check_output_file(parser, args.out, "--out")
    vae, rnn = load_vae(args.vae), load_rnn(args.rnn)
    controller = Controller(rnn.z_size, rnn.hidden_size, rnn.action_size)
    config = preset_config(args.preset, args.time_horizon)
    labeller = Labeller(POLICIES[args.teacher])
    behaviour = fixed_policies(controller)[0]                 # round 0 plays Best Fit
    validation = episode_seeds(args.seed, args.validation_episodes, "validation")
    references = {name: round(float(evaluate_policy(POLICIES[name], config, args.validation_episodes, args.seed,
                                                    stream="validation").mean()), 3) for name in TEACHERS}
    print("the same validation episodes played by " + ", ".join(f"{k}: {v:.2f}" for k, v in references.items()))
    best, rounds = None, []
    for r in range(args.rounds):
        start = time.time()
        rollout_real(controller, behaviour, vae, rnn, config, episode_seeds((args.seed, r), args.episodes),
                     on_step=labeller)
        x, mask, label = (np.concatenate(v) for v in (labeller.x, labeller.mask, labeller.label))
        params, loss, accuracy = fit_controller(x, mask, label, controller.num_actions, args.steps,
                                                args.learning_rate, args.l2)
        rewards = rollout_real(controller, params, vae, rnn, config, validation)[0][0]
        row = {"round": r, "states": int(len(x)), "loss": round(loss, 4), "accuracy": round(accuracy, 4),
               "validation_reward": round(float(rewards.mean()), 3),
               "stderr": round(float(rewards.std(ddof=1) / np.sqrt(len(rewards))), 3)
               if len(rewards) > 1 else None, "seconds": round(time.time() - start, 1)}
        rounds.append(row)
        print(f"round {r}: {len(x)} states, agrees with {args.teacher} on {accuracy:.1%}; validation "
              f"{row['validation_reward']:.2f} +- {row['stderr'] or 0:.2f} ({row['seconds']:.0f} s)", flush=True)
        if best is None or row["validation_reward"] > best[1]["validation_reward"]:
            best = (params, row)
        behaviour = params
    atomic_write_json(args.out, {"params": best[0].tolist(), "teacher": args.teacher, "vae": args.vae,
                                 "rnn": args.rnn, "seed": args.seed, "best_round": best[1]["round"],
                                 "rounds": rounds, "heuristics_on_validation": references})
    print(f"best round {best[1]['round']}: {best[1]['validation_reward']:.2f}; wrote {args.out}")
    return rounds


if __name__ == "__main__":
    main()
