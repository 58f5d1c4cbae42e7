"""Stage 4: train M, the MDN-RNN, on the encoded episodes (series/series.npz).

    python rnn_train.py [--series series/series.npz --out_dir tf_rnn --steps 4000 --batch_size 100
                         --seq_len 100 --learning_rate 1e-3 --grad_clip 1.0 --hidden_size 256
                         --num_mixtures 5 --holdout 5% --seed 0]

World Models (rnn_train.py) trains an LSTM of 256 units with 5 Gaussians per z dimension by Adam
(lr 1e-3, no decay, gradients clipped to 1.0) for 4000 steps of batch 100, on whole 1000-step
episodes (sequence length 999). Here the defaults are the same except --seq_len 100: one step of
batch 100 x 100 takes about 0.3 s on 2 CPU cores (4000 steps: about 20 minutes), whole episodes
would take ten times as long, and the picture holds the whole packing state, so M needs no long
memory. A window is drawn uniformly over (episode, start) with starts from -(seq_len-1), so every
recorded step is equally likely to be trained on and windows that begin at an episode's start (as
every dream does) are common; a window that runs past the episode's end is padded (weight 0).

As in World Models, z_t is sampled from V's mu/logvar afresh for every batch, and the target for
z_{t+1} is the same sample the next input uses (--z_input mean: V's mu instead, the z the
controller reads in the real environment). --mixture shared replaces the mixture per z dimension
by one mixture over the whole z (rnn/rnn.py); both are departures, off by default. Inputs
(z_t, a_t); targets z_{t+1}, reward r_t, done_t and the next valid-action mask m_{t+1}. The last
step of an episode has no z_{t+1} and no m_{t+1}, but it must stay in the batch for the reward and
done targets (its done is the only positive one), and MDNRNN.train_step has a single weight mask
for all heads: so for that step the z target is z_t and the mask target is m_t (one step in an
episode's length; documented approximation). The held-out report leaves those steps out of the
z and mask scores.

Writes out_dir/rnn.json, out_dir/initial_z.json (mu, logvar and action mask of the first frame of
up to --initial_z_max training episodes, for dream_env.load_initial_z), out_dir/provenance.json
(sha256 of the VAE behind the series and of the files written, for copy_models.py) and
out_dir/rnn_report.json (held-out next-z NLL, reward MAE, mask and done accuracy). A checkpoint
(weights, Adam state, step) goes to out_dir/checkpoint/ every --checkpoint_every steps: a killed
run started again with the same flags continues from it and ends with the same weights.
With `--init_from tf_rnn/rnn.json` a fresh run starts from that M's weights with a new optimizer,
so a trained M can be trained on at a lower --learning_rate (its steps count from 0 again).

--transition mlp (a departure; rnn/rnn.py) replaces the mixture heads by an item head on h and a
deep MLP (--transition_layers x --transition_hidden, SiLU) on [z_t, one-hot a_t, one-hot next
item] predicting z_{t+1} - z_t (MSE on V's means: it needs --z_input mean). The next item's label
is the series' item key (series.py --item_frames: read off V's decoded pictures, never the
recorded state); steps without a label (an episode's last, or no item in V's picture) get no z or
item target. Its losses add z_mse and item_nll (z_nll is then the Gaussian NLL of the MLP's
residuals under its learned noise scale), and the report's next-z NLL is for the true next item.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
from tqdm import tqdm

from rnn.rnn import MIXTURES, MLP_HPARAMS, TRANSITIONS, Z_INPUTS, z_nll
from series import Series
from stages_common import (atomic_write_json, atomic_write_npz, check_output_dir, fail, holdout_mask,
                           non_negative_float, non_negative_int, parse_fraction, positive_float, positive_int,
                           read_checkpoint, remove_stale_temps, require_file, restore_optimizer, seed_int, sha256_file)

CHECKPOINT = os.path.join("checkpoint", "rnn_checkpoint.npz")
RESUME_FLAGS = ("seed", "seq_len", "batch_size", "learning_rate", "grad_clip", "hidden_size",
                "num_mixtures", "mixture", "reward_scale", "holdout", "z_input", "init_from", "transition",
                "transition_hidden", "transition_layers", "transition_input_noise")
# checkpoints written before the flag existed started from scratch / had M's mixture transition
ADDED_FLAGS = {"init_from": None, "transition": "mdn", "transition_hidden": MLP_HPARAMS["transition_hidden"],
               "transition_layers": MLP_HPARAMS["transition_layers"], "transition_input_noise": 0.0}
LOSS_KEYS = ("z_nll", "reward_mse", "done_bce", "mask_bce", "total")
MLP_LOSS_KEYS = ("z_mse", "item_nll")      # added by --transition mlp


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train M (MDN-RNN) on series.npz; see the module docstring.")
    p.add_argument("--series", default="series/series.npz")
    p.add_argument("--out_dir", default="tf_rnn")
    p.add_argument("--steps", type=positive_int, default=4000, help="World Models: 4000")
    p.add_argument("--batch_size", type=positive_int, default=100, help="World Models: 100")
    p.add_argument("--seq_len", type=positive_int, default=100,
                   help="steps per training window (World Models: 999, whole episodes)")
    p.add_argument("--learning_rate", type=positive_float, default=1e-3, help="Adam, constant; World Models: 1e-3")
    p.add_argument("--grad_clip", type=positive_float, default=1.0, help="clip by value; World Models: 1.0")
    p.add_argument("--hidden_size", type=positive_int, default=256, help="LSTM units; World Models: 256")
    p.add_argument("--num_mixtures", type=positive_int, default=5, help="Gaussians per z dim; World Models: 5")
    p.add_argument("--mixture", choices=MIXTURES, default="per_dim",
                   help="per_dim: a mixture per z dimension, each sampled on its own (World Models); shared: one "
                        "component chosen for the whole z (use more --num_mixtures, e.g. 16)")
    p.add_argument("--z_input", choices=Z_INPUTS, default="sample",
                   help="z fed to and predicted by M: sampled from V's mu/logvar afresh for every batch (World "
                        "Models) or V's mean, the z the controller sees in the real environment")
    p.add_argument("--transition", choices=TRANSITIONS, default="mdn",
                   help="mdn: z_{t+1} from the mixture heads on h (World Models); mlp: an item head on h draws the "
                        "next item and a deep MLP on [z, action, item] gives z_{t+1} - z_t (needs --z_input mean and "
                        "a series with items: series.py --item_frames)")
    p.add_argument("--transition_hidden", type=positive_int, default=MLP_HPARAMS["transition_hidden"],
                   help="width of the mlp transition's layers")
    p.add_argument("--transition_layers", type=positive_int, default=MLP_HPARAMS["transition_layers"],
                   help="hidden layers of the mlp transition")
    p.add_argument("--transition_input_noise", type=non_negative_float, default=0.0,
                   help="mlp only: Gaussian noise of this sd added to M's input z in training, the target still the "
                        "clean next z, so that the transition learns to pull a drifting dream back (0: off)")
    p.add_argument("--reward_scale", type=positive_float, default=10.0, help="reward head predicts r / scale")
    p.add_argument("--holdout", type=parse_fraction, default=0.05,
                   help="share of episodes held out for the report, e.g. 5%% (same split as vae_train)")
    p.add_argument("--eval_episodes", type=positive_int, default=100, help="held-out episodes scored at most")
    p.add_argument("--eval_every", type=non_negative_int, default=1000,
                   help="score held-out every N steps (0: at the end only)")
    p.add_argument("--checkpoint_every", type=positive_int, default=250)
    p.add_argument("--initial_z_max", type=positive_int, default=1000, help="rows of initial_z.json at most")
    p.add_argument("--init_from", default=None,
                   help="start from this M's weights (rnn.json) with a new optimizer (e.g. to go on at a lower "
                        "--learning_rate); it must have the same sizes, --mixture and --z_input")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint and start afresh")
    p.add_argument("--seed", type=seed_int, default=0)
    return p


# ---------------------------------------------------------------- evaluation


def evaluate(model, series: Series, episodes, seed: int, chunk: int = 16, sample_z: bool = True) -> dict:
    """M on whole held-out episodes from a zero state (as in a dream), z sampled with a fixed rng."""
    rng = np.random.default_rng([seed, 1 << 20])
    s = dict.fromkeys(("z_nll", "reward_abs", "reward_exact", "done_right", "done_pos", "done_hit",
                       "mask_right", "mask_exact", "steps", "next_steps"), 0.0)
    for i in range(0, len(episodes), chunk):
        pick = np.asarray(episodes[i:i + chunk])
        L = series.lengths[pick]
        w = series.windows(pick, np.zeros_like(L), L, int(L.max()), rng, sample_z)
        p = model.predict(w["z"], w["actions"], w["next_z"], w.get("next_items"))
        valid, nxt = w["weights"] > 0, w["has_next"]
        nll = z_nll(p["logmix"], p["mu"], p["logsigma"], w["next_z"])       # (B, T), per z dim
        s["z_nll"] += float(nll[nxt].sum())
        s["reward_abs"] += float(np.abs(p["reward"] - w["rewards"])[valid].sum())
        s["reward_exact"] += float((np.round(p["reward"]) == w["rewards"])[valid].sum())
        done_pred = p["done_prob"] > 0.5
        s["done_right"] += float((done_pred == (w["dones"] > 0.5))[valid].sum())
        s["done_pos"] += float((w["dones"] > 0.5)[valid].sum())
        s["done_hit"] += float((done_pred & (w["dones"] > 0.5))[valid].sum())
        mask_pred = p["mask_prob"] > 0.5
        mask_pred[..., 0] = True                    # opening a new bin is always valid (as in the dream)
        right = mask_pred == (w["next_masks"] > 0.5)
        s["mask_right"] += float(right[nxt].mean(-1).sum())
        s["mask_exact"] += float(right.all(-1)[nxt].sum())
        s["steps"] += float(valid.sum())
        s["next_steps"] += float(nxt.sum())
    n, m = max(s["steps"], 1), max(s["next_steps"], 1)
    return {"episodes": len(episodes), "steps": int(s["steps"]),
            "next_z_nll": s["z_nll"] / m, "reward_mae": s["reward_abs"] / n,
            "reward_exact": s["reward_exact"] / n, "done_accuracy": s["done_right"] / n,
            "done_recall": s["done_hit"] / s["done_pos"] if s["done_pos"] else None,
            "mask_action_accuracy": s["mask_right"] / m, "mask_exact": s["mask_exact"] / m}


def format_eval(e: dict) -> str:
    return (f"next-z NLL {e['next_z_nll']:.3f}, "
            f"reward MAE {e['reward_mae']:.3f} (exact {100 * e['reward_exact']:.1f}%), "
            f"mask per-action {100 * e['mask_action_accuracy']:.2f}% / exact {100 * e['mask_exact']:.1f}%, "
            f"done accuracy {100 * e['done_accuracy']:.2f}%")


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(path, model, step, meta, history):
    arrays = {f"w/{name}": values for name, values in model.get_weights().items()}
    for i, v in enumerate(model.optimizer.variables):
        arrays[f"opt_{i}"] = np.asarray(v.numpy())
    atomic_write_npz(path, step=np.int64(step), meta=np.array(json.dumps(meta)),
                     history=np.array(json.dumps(history)), **arrays)


def load_checkpoint(path, model, meta):
    """Restore a checkpoint into `model`; returns (step, history). ValueError if unusable."""
    data = read_checkpoint(path, meta, ADDED_FLAGS)
    model.set_weights({k[2:]: v for k, v in data.items() if k.startswith("w/")})
    restore_optimizer(model.optimizer, data, path)
    return int(data["step"]), json.loads(str(data["history"]))


def init_weights(model, path):
    """Copy the weights of the M saved at `path` into `model`; ValueError if it is another kind of M."""
    from rnn.rnn import read_json
    if not os.path.isfile(path):
        raise ValueError(f"--init_from {path}: no such file")
    hp, weights = read_json(path)
    keys = ("z_size", "action_size", "hidden_size", "num_mixtures", "mixture", "z_input", "reward_scale", "transition")
    for key in keys + (tuple(MLP_HPARAMS) if model.hp["transition"] == "mlp" else ()):
        if hp[key] != model.hp[key]:
            raise ValueError(f"--init_from {path} has {key} {hp[key]}, this run has {model.hp[key]}")
    model.set_weights(weights)


# ---------------------------------------------------------------- outputs


def initial_z(series: Series, episodes, limit: int, seed: int) -> dict:
    """First frames of (up to `limit` of) the training episodes, for dream_env.load_initial_z."""
    episodes = np.asarray(episodes)
    if len(episodes) > limit:
        episodes = np.sort(np.random.default_rng([seed, 2 << 20]).choice(episodes, limit, replace=False))
    rows = series.offsets[episodes]
    return {"mu": series.mu[rows].astype(np.float32).tolist(),
            "logvar": series.logvar[rows].astype(np.float32).tolist(),
            "action_mask": series.action_mask[rows].astype(int).tolist()}


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    check_output_dir(parser, args.out_dir, "--out_dir")
    remove_stale_temps([os.path.join(args.out_dir, name) for name in
                        ("rnn.json", "initial_z.json", "provenance.json", "rnn_report.json", CHECKPOINT)])
    require_file(parser, args.series, "series file")
    try:
        series = Series(args.series)
        held = holdout_mask(series.names, args.holdout, args.seed)
    except ValueError as e:
        fail(parser, str(e))
    if args.transition == "mlp" and args.z_input != "mean":
        parser.error("--transition mlp needs --z_input mean (it learns z_{t+1} - z_t of V's means)")
    if args.transition_input_noise and args.transition != "mlp":
        parser.error("--transition_input_noise is for --transition mlp")
    if args.transition == "mlp" and series.item is None:
        fail(parser, f"{args.series} has no item labels, which --transition mlp needs: "
                     "run series.py with --item_frames (or --add_items)")
    train_eps, held_eps = np.flatnonzero(~held), np.flatnonzero(held)
    print(f"{len(series.names)} episodes ({int(series.lengths.sum())} steps) in {args.series}: "
          f"{len(train_eps)} for training, {len(held_eps)} held out; z_size {series.z_size}, "
          f"{series.action_size} actions")

    import tensorflow as tf
    from rnn.rnn import MDNRNN
    tf.random.set_seed(args.seed)
    model = MDNRNN(z_size=series.z_size, action_size=series.action_size, hidden_size=args.hidden_size,
                   num_mixtures=args.num_mixtures, mixture=args.mixture, z_input=args.z_input,
                   learning_rate=args.learning_rate, grad_clip=args.grad_clip, reward_scale=args.reward_scale,
                   seed=args.seed, transition=args.transition, transition_hidden=args.transition_hidden,
                   transition_layers=args.transition_layers,
                   **({"num_items": max(int(series.item.max()), 1)} if args.transition == "mlp" else {}))

    meta = {k: getattr(args, k) for k in RESUME_FLAGS}
    meta["series"] = series.fingerprint()
    ck_path = os.path.join(args.out_dir, CHECKPOINT)
    start_step, history, resumed = 0, [], None
    if os.path.exists(ck_path) and not args.restart:
        try:
            start_step, history = load_checkpoint(ck_path, model, meta)
        except ValueError as e:
            fail(parser, str(e))
        resumed = start_step
        print(f"resuming from checkpoint {ck_path} at step {start_step} of {args.steps}")
    elif args.init_from:
        try:
            init_weights(model, args.init_from)
        except ValueError as e:
            fail(parser, str(e))
        print(f"starting from the weights of {args.init_from}")

    eval_eps = held_eps[:args.eval_episodes]
    sample_z = args.z_input == "sample"
    loss_keys = LOSS_KEYS + (MLP_LOSS_KEYS if args.transition == "mlp" else ())
    sums, count = np.zeros(len(loss_keys)), 0
    train_seconds, trained = 0.0, 0
    bar = tqdm(total=args.steps, initial=min(start_step, args.steps), desc="M steps", unit="step")
    for step in range(start_step, args.steps):
        batch = series.sample(train_eps, args.batch_size, args.seq_len, np.random.default_rng([args.seed, step]),
                              sample_z=sample_z)
        if args.transition_input_noise:
            noise = np.random.default_rng([args.seed, step, 3]).normal(size=batch["z"].shape)
            batch["z"] = batch["z"] + args.transition_input_noise * noise
        t0 = time.time()
        losses = model.train_step(batch["z"], batch["actions"], batch["rewards"], batch["dones"],
                                  batch["next_masks"], batch["next_z"], batch["weights"], batch.get("next_items"))
        train_seconds += time.time() - t0
        trained += 1
        sums += [losses[k] for k in loss_keys]
        count += 1
        bar.update(1)
        bar.set_postfix(nll=f"{losses['z_nll']:.3f}", r=f"{losses['reward_mse']:.4f}",
                        mask=f"{losses['mask_bce']:.4f}", sps=f"{trained / train_seconds:.2f}",
                        **({"mse": f"{losses['z_mse']:.4f}"} if "z_mse" in losses else {}))
        done_steps = step + 1
        checkpoint_now = done_steps % args.checkpoint_every == 0 or done_steps == args.steps
        eval_now = bool(args.eval_every) and done_steps % args.eval_every == 0
        if checkpoint_now or eval_now:
            # mean training losses since the last entry (+ held-out scores): the learning curve
            entry = {"step": done_steps, **{k: round(float(v), 5) for k, v in zip(loss_keys, sums / count)}}
            if eval_now:
                entry["heldout"] = evaluate(model, series, eval_eps, args.seed, sample_z=sample_z)
                bar.write(f"step {done_steps}: held-out {format_eval(entry['heldout'])}")
            history.append(entry)
            sums, count = np.zeros(len(loss_keys)), 0
        if checkpoint_now:
            save_checkpoint(ck_path, model, done_steps, meta, history)
    bar.close()

    os.makedirs(args.out_dir, exist_ok=True)
    rnn_path = os.path.join(args.out_dir, "rnn.json")
    model.save_json(rnn_path)
    iz_path = os.path.join(args.out_dir, "initial_z.json")
    iz = initial_z(series, train_eps, args.initial_z_max, args.seed)
    atomic_write_json(iz_path, iz)
    heldout = evaluate(model, series, eval_eps, args.seed, sample_z=sample_z)
    sps = trained / train_seconds if train_seconds else None
    provenance = {"vae_sha256": series.vae_sha256, "series": os.path.abspath(args.series),
                  "series_fingerprint": meta["series"], "rnn_sha256": sha256_file(rnn_path),
                  "initial_z_sha256": sha256_file(iz_path), "z_size": series.z_size,
                  "action_size": series.action_size, "steps": max(args.steps, start_step), "seed": args.seed,
                  "holdout": args.holdout, "z_input": args.z_input, "train_episodes": len(train_eps),
                  "heldout_episodes": [series.names[i] for i in held_eps]}
    atomic_write_json(os.path.join(args.out_dir, "provenance.json"), provenance, indent=1)
    report = {"rnn": rnn_path, "initial_z": iz_path, "initial_z_rows": len(iz["mu"]),
              "steps": max(args.steps, start_step), "resumed_from_step": resumed, "steps_this_run": trained,
              "steps_per_s": round(sps, 3) if sps else None, "train_episodes": len(train_eps),
              "heldout": heldout, "history": history, "flags": vars(args)}
    atomic_write_json(os.path.join(args.out_dir, "rnn_report.json"), report, indent=1)
    print(f"wrote {rnn_path}, {iz_path} ({len(iz['mu'])} first frames), provenance.json, rnn_report.json")
    print(f"held-out ({heldout['episodes']} episodes, {heldout['steps']} steps): {format_eval(heldout)}")
    if sps:
        print(f"trained {trained} steps at {sps:.2f} steps/s "
              f"({sps * args.batch_size * args.seq_len:.0f} sequence steps/s)")
    return report


if __name__ == "__main__":
    main()
