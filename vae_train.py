"""Stage 2: train V, the ConvVAE, on the recorded pictures.

    python vae_train.py [--record_dir record --epochs 10 --batch_size 100 --learning_rate 1e-4
                         --kl_tolerance 0.5 --z_size 32 --max_episodes 10000 --frames_per_episode 0
                         --holdout 5% --seed 0 --out_dir tf_vae --recon_loss l2]

Defaults are World Models' (vae_train.py: 10 epochs, batch 100, Adam 1e-4, KL tolerance 0.5,
z 32, up to 10000 episodes, squared-error reconstruction; `--recon_loss bce` trades it for the
binary cross-entropy, which keeps the lone bins the mask depends on). Frames are streamed: each
epoch visits the training episodes in an order fixed by (seed, epoch), loads --shuffle_files of
them at a time, shuffles their frames together and trains on them, so only a few episodes are
ever in memory. On 2 CPU cores V trains at a few hundred frames/s (170-520 measured), far too
slow for all of 10000 x 1000 frames, so `--frames_per_episode K` (K random frames per episode
per epoch) keeps an epoch short.

A checkpoint (weights, Adam state, noise generator, epoch and batch) is written to
out_dir/checkpoint/ after every epoch (and every --checkpoint_minutes within one): killing the
run and starting it again with the same flags continues where it stopped and gives the same
weights as an uninterrupted run; raising --epochs trains on from the last epoch. A fresh run
with `--init_from tf_vae/vae.json` starts from that V's weights with a new optimizer, so a
trained V can be fine-tuned at a lower --learning_rate (a resumed run must keep its flags).

At the end V is written to out_dir/vae.json and judged on held-out episodes (--holdout, chosen
by file name and seed, the same ones rnn_train.py holds out): the pictures V reconstructs from
mu are read back with `decode_pictures`, and the shares of frames whose state, valid-action mask
and item size come back exactly are printed and written to out_dir/vae_report.json. The
controller only needs the mask and the item to be right: targets mask >= 99%, item >= 99.9%.
The report also reads the same pictures with `decode_pictures(..., bands="nearest_band")` (each
band as the count whose drawing is nearest), which tells V's errors from the reading's.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np
from tqdm import tqdm

from bin_packing_environment import action_masks, decode_pictures
from stages_common import (EpisodeReader, atomic_write_json, atomic_write_npz, check_output_dir, episode_name, fail,
                           finite_float, holdout_mask, non_negative_float, non_negative_int, parse_fraction,
                           positive_float, positive_int, read_checkpoint, remove_stale_temps, restore_optimizer,
                           seed_int)

CHECKPOINT = os.path.join("checkpoint", "vae_checkpoint.npz")
TARGETS = {"mask_exact": 0.99, "item_exact": 0.999}
# Flags a checkpoint must share with the run that resumes it (they change the data or the model).
RESUME_FLAGS = ("z_size", "seed", "batch_size", "learning_rate", "kl_tolerance", "frames_per_episode",
                "shuffle_files", "holdout", "max_episodes", "recon_loss", "init_from", "rollout_sets")
# Resume flags added later, with the value a checkpoint written before them was made with.
ADDED_FLAGS = {"recon_loss": "l2", "init_from": None, "rollout_sets": None}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train V (ConvVAE) on recorded episodes; see the module docstring.")
    p.add_argument("--record_dir", default="record", help="episode .npz files (default: record)")
    p.add_argument("--out_dir", default="tf_vae", help="vae.json, vae_report.json, checkpoint/ (default: tf_vae)")
    p.add_argument("--epochs", type=positive_int, default=10, help="World Models: 10")
    p.add_argument("--batch_size", type=positive_int, default=100, help="World Models: 100")
    p.add_argument("--learning_rate", type=positive_float, default=1e-4, help="Adam; World Models: 1e-4")
    p.add_argument("--kl_tolerance", type=finite_float, default=0.5,
                   help="free nats per z dim; World Models: 0.5 (16 nats in all), too few for V to draw "
                        "a lone bin: the small scale uses 4 (README, 'More free bits for V')")
    p.add_argument("--recon_loss", choices=("l2", "bce"), default="l2",
                   help="reconstruction term: summed squared error (World Models) or binary cross-entropy, "
                        "which will not let V drop a lone bin (README, 'A sharper loss for V')")
    p.add_argument("--z_size", type=positive_int, default=32, help="World Models: 32")
    p.add_argument("--init_from", default=None,
                   help="start from the weights of this vae.json instead of random ones (fine-tuning, e.g. "
                        "at a lower --learning_rate); it must have the same --z_size and --recon_loss")
    p.add_argument("--max_episodes", type=positive_int, default=10000,
                   help="use at most this many episode files (the first by name); World Models: 10000")
    p.add_argument("--rollout_sets", type=rollout_sets, default=None,
                   help="use only the episodes of these rollout sets, e.g. 1,2: the --seed of the extract.py "
                        "run that recorded them, which starts their file names (1_000000.npz); default: all")
    p.add_argument("--frames_per_episode", type=non_negative_int, default=0,
                   help="random frames per episode per epoch; 0 = all (World Models)")
    p.add_argument("--shuffle_files", type=positive_int, default=8,
                   help="episodes loaded and shuffled together (the shuffle buffer)")
    p.add_argument("--holdout", type=parse_fraction, default=0.05,
                   help="share of episodes held out for the fidelity report, e.g. 5%% (at least one)")
    p.add_argument("--eval_frames", type=positive_int, default=20000,
                   help="at most this many held-out frames in the fidelity report")
    p.add_argument("--checkpoint_minutes", type=non_negative_float, default=10.0,
                   help="also checkpoint within an epoch this often (0: only at epoch ends)")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint and start afresh")
    p.add_argument("--seed", type=seed_int, default=0)
    return p


# ---------------------------------------------------------------- data


def rollout_sets(text: str) -> str:
    """--rollout_sets as a canonical comma-separated list of non-negative integers."""
    try:
        sets = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated rollout seeds like 1,2, got {text!r}") from None
    if not sets or min(sets) < 0:
        raise argparse.ArgumentTypeError(f"expected non-negative rollout seeds, got {text!r}")
    return ",".join(str(x) for x in sorted(set(sets)))


def select_files(paths: list, sets: str | None, max_episodes: int) -> list:
    """The episode files V trains on: those of the chosen rollout sets (by the seed that begins
    each file name, never by sort order: 10_* sorts before 8_*), then at most max_episodes."""
    if sets is not None:
        keep = set(sets.split(","))
        paths = [p for p in paths if os.path.basename(p).split("_", 1)[0] in keep]
    return paths[:max_episodes]


def episodes_per_set(paths: list) -> dict:
    """How many of V's episode files each rollout set gave (the report shows what V saw)."""
    sets = [os.path.basename(p).split("_", 1)[0] for p in paths]
    return {k: sets.count(k) for k in sorted(set(sets))}


def epoch_batches(reader: EpisodeReader, files: list, seed: int, epoch: int, batch_size: int,
                  frames_per_episode: int, shuffle_files: int):
    """uint8 batches of one epoch, in an order fixed by (seed, epoch); streams a few files at a time."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(files))
    carry = np.zeros((0, 64, 64, 3), np.uint8)
    for start in range(0, len(order), shuffle_files):
        pool = [carry]
        for i in order[start:start + shuffle_files]:
            episode = reader.load(files[i])
            if episode is None:
                continue
            obs = episode["obs"]
            if 0 < frames_per_episode < len(obs):
                obs = obs[np.sort(rng.choice(len(obs), frames_per_episode, replace=False))]
            pool.append(obs)
        pool = np.concatenate(pool)
        pool = pool[rng.permutation(len(pool))]
        full = len(pool) // batch_size * batch_size
        for b in range(0, full, batch_size):
            yield pool[b:b + batch_size]
        carry = pool[full:]
    if len(carry):
        yield carry


def frames_per_epoch(headers: dict, files: list, frames_per_episode: int) -> int:
    lengths = [headers[f]["length"] for f in files]
    return sum(min(n, frames_per_episode) if frames_per_episode else n for n in lengths)


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(path, vae, epoch, batch, meta, history):
    """Everything needed to continue exactly: weights, Adam state, noise generator, position."""
    arrays = {"weights": vae.get_weights_flat(), "noise_state": vae._noise.state.numpy(),
              "epoch": np.int64(epoch), "batch": np.int64(batch),
              "meta": np.array(json.dumps(meta)), "history": np.array(json.dumps(history))}
    for i, v in enumerate(vae.optimizer.variables):
        arrays[f"opt_{i}"] = np.asarray(v.numpy())
    atomic_write_npz(path, **arrays)


def load_checkpoint(path, vae, meta):
    """Restore a checkpoint into `vae`; returns (epoch, batch, history). ValueError if unusable."""
    data = read_checkpoint(path, {k: meta[k] for k in RESUME_FLAGS}, ADDED_FLAGS)
    vae.set_weights_flat(data["weights"])
    restore_optimizer(vae.optimizer, data, path)
    vae._noise.reset(data["noise_state"])
    return int(data["epoch"]), int(data["batch"]), json.loads(str(data["history"]))


def init_weights(vae, path):
    """Copy the weights of the V saved at `path` into `vae`; ValueError if it is another kind of V."""
    from vae.vae import ConvVAE
    if not os.path.isfile(path):
        raise ValueError(f"--init_from {path}: no such file")
    source = ConvVAE.from_json(path)
    for flag, have, want in (("z_size", source.z_size, vae.z_size), ("recon_loss", source.recon_loss, vae.recon_loss)):
        if have != want:
            raise ValueError(f"--init_from {path} has {flag} {have}, this run has --{flag} {want}")
    vae.set_weights_flat(source.get_weights_flat())


# ---------------------------------------------------------------- fidelity


def fidelity(vae, reader: EpisodeReader, files: list, max_frames: int, seed: int) -> dict:
    """How well states survive picture -> V -> decode(mu) -> decode_pictures, on `files`."""
    rng = np.random.default_rng([seed, 1 << 20])
    quota = max(1, math.ceil(max_frames / max(len(files), 1)))
    counts = {"frames": 0, "state_exact": 0, "mask_exact": 0, "item_exact": 0,
              "state_exact_nearest_band": 0, "mask_exact_nearest_band": 0}
    r_loss = 0.0
    for path in tqdm(files, desc="held-out fidelity", unit="ep", leave=False):
        episode = reader.load(path)
        if episode is None:
            continue
        obs, state = episode["obs"], episode["state"]
        if quota < len(obs):
            keep = np.sort(rng.choice(len(obs), quota, replace=False))
            obs, state = obs[keep], state[keep]
        mu, _ = vae.encode_mu_logvar(obs)
        pictures = vae.decode(mu)
        decoded = decode_pictures(pictures, bin_size=state.shape[1] - 1)
        counts["frames"] += len(obs)
        counts["state_exact"] += int((decoded == state).all(1).sum())
        counts["mask_exact"] += int((action_masks(decoded) == action_masks(state)).all(1).sum())
        counts["item_exact"] += int((decoded[:, -1] == state[:, -1]).sum())
        # the same pictures read band by band (bands="nearest_band"): how much is the reading's doing
        banded = decode_pictures(pictures, bin_size=state.shape[1] - 1, bands="nearest_band")
        counts["state_exact_nearest_band"] += int((banded == state).all(1).sum())
        counts["mask_exact_nearest_band"] += int((action_masks(banded) == action_masks(state)).all(1).sum())
        diff = pictures.astype(np.float32) / 255 - obs.astype(np.float32) / 255
        r_loss += float((diff ** 2).sum())
    n = counts["frames"]
    out = {"episodes": len(files), "frames": n}
    for key in counts:
        if key != "frames":
            out[key] = counts[key] / n if n else None
    out["r_loss"] = r_loss / n if n else None
    return out


# ---------------------------------------------------------------- main


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.kl_tolerance < 0:
        parser.error(f"--kl_tolerance must be >= 0, got {args.kl_tolerance}")
    check_output_dir(parser, args.out_dir, "--out_dir")
    remove_stale_temps([os.path.join(args.out_dir, name) for name in ("vae.json", "vae_report.json", CHECKPOINT)])
    if not os.path.isdir(args.record_dir):
        fail(parser, f"record directory {args.record_dir} not found (record episodes first, e.g. extract.py)")

    reader = EpisodeReader(args.record_dir)
    paths = select_files(reader.paths, args.rollout_sets, args.max_episodes)
    headers = reader.scan(paths)
    usable = [p for p in paths if p in headers]
    if len(usable) < 2:
        reader.report()
        fail(parser, f"need at least 2 usable episode files in {args.record_dir}, found {len(usable)}")
    held = holdout_mask(usable, args.holdout, args.seed)
    train_files = [p for p, h in zip(usable, held) if not h]
    holdout_files = [p for p, h in zip(usable, held) if h]
    reader.report()
    print(f"{len(train_files)} training and {len(holdout_files)} held-out episodes from {args.record_dir}")

    import tensorflow as tf
    from vae.vae import ConvVAE
    tf.random.set_seed(args.seed)
    vae = ConvVAE(z_size=args.z_size, kl_tolerance=args.kl_tolerance, learning_rate=args.learning_rate,
                  seed=args.seed, recon_loss=args.recon_loss)

    meta = {k: getattr(args, k) for k in RESUME_FLAGS}
    ck_path = os.path.join(args.out_dir, CHECKPOINT)
    start_epoch, start_batch, history, resumed = 0, 0, [], None
    if os.path.exists(ck_path) and not args.restart:
        try:
            start_epoch, start_batch, history = load_checkpoint(ck_path, vae, meta)
        except ValueError as e:
            fail(parser, str(e))
        resumed = {"epoch": start_epoch + 1, "batch": start_batch}
        print(f"resuming from checkpoint {ck_path}: epoch {start_epoch + 1} of {args.epochs}, batch {start_batch}")
    elif args.init_from:
        try:
            init_weights(vae, args.init_from)
        except ValueError as e:
            fail(parser, str(e))
        print(f"starting from the weights of {args.init_from}")

    per_epoch = frames_per_epoch(headers, train_files, args.frames_per_episode)
    batches = math.ceil(per_epoch / args.batch_size)
    trained_frames, train_seconds = 0, 0.0
    last_checkpoint = time.time()
    for epoch in range(start_epoch, args.epochs):
        sums, seen = np.zeros(3), 0
        bar = tqdm(total=batches, initial=start_batch, desc=f"epoch {epoch + 1}/{args.epochs}", unit="batch")
        stream = epoch_batches(reader, train_files, args.seed, epoch, args.batch_size,
                               args.frames_per_episode, args.shuffle_files)
        for b, batch in enumerate(stream):
            if b < start_batch:            # resuming inside an epoch: these were trained already
                continue
            t0 = time.time()
            losses = vae.train_step(batch)
            train_seconds += time.time() - t0
            trained_frames += len(batch)
            sums += [losses["loss"] * len(batch), losses["r_loss"] * len(batch), losses["kl_loss"] * len(batch)]
            seen += len(batch)
            bar.update(1)
            bar.set_postfix(loss=f"{losses['loss']:.1f}", r=f"{losses['r_loss']:.1f}",
                            kl=f"{losses['kl_loss']:.1f}", fps=f"{trained_frames / max(train_seconds, 1e-9):.0f}")
            if args.checkpoint_minutes and time.time() - last_checkpoint > 60 * args.checkpoint_minutes:
                save_checkpoint(ck_path, vae, epoch, b + 1, meta, history)
                last_checkpoint = time.time()
        bar.close()
        mean = sums / max(seen, 1)
        history.append({"epoch": epoch + 1, "frames": seen, "loss": round(float(mean[0]), 4),
                        "r_loss": round(float(mean[1]), 4), "kl_loss": round(float(mean[2]), 4),
                        "resumed_at_batch": start_batch or None})
        print(f"epoch {epoch + 1}/{args.epochs}: loss {mean[0]:.2f} (reconstruction {mean[1]:.2f}, "
              f"KL {mean[2]:.2f}) over {seen} frames")
        start_batch = 0
        save_checkpoint(ck_path, vae, epoch + 1, 0, meta, history)
        last_checkpoint = time.time()
    skipped = reader.report()

    os.makedirs(args.out_dir, exist_ok=True)
    vae_path = os.path.join(args.out_dir, "vae.json")
    vae.save_json(vae_path)
    print(f"wrote {vae_path}")
    # Judge what was saved (float16 weights), exactly as later stages will load it.
    saved = ConvVAE.from_json(vae_path)
    fid = fidelity(saved, reader, holdout_files, args.eval_frames, args.seed)
    met = {k: fid[k] is not None and fid[k] >= v for k, v in TARGETS.items()}
    fps = trained_frames / train_seconds if train_seconds else None
    report = {"vae": vae_path, "epochs": args.epochs, "epochs_completed": max(args.epochs, start_epoch),
              "resumed_from": resumed, "train_episodes": len(train_files),
              "episodes_per_rollout_set": episodes_per_set(train_files + holdout_files),
              "heldout_episodes": [episode_name(p) for p in holdout_files], "skipped_files": skipped,
              "frames_trained_this_run": trained_frames,
              "train_frames_per_s": round(fps, 1) if fps else None,
              "history": history, "fidelity": fid, "targets": TARGETS, "targets_met": met, "flags": vars(args)}
    atomic_write_json(os.path.join(args.out_dir, "vae_report.json"), report, indent=1)

    def pct(x):
        return "n/a" if x is None else f"{100 * x:.2f}%"
    print(f"held-out fidelity over {fid['frames']} frames of {fid['episodes']} episodes: "
          f"state exact {pct(fid['state_exact'])}, mask exact {pct(fid['mask_exact'])} "
          f"(target >= 99%{'' if met['mask_exact'] else ', MISSED'}), item exact {pct(fid['item_exact'])} "
          f"(target >= 99.9%{'' if met['item_exact'] else ', MISSED'}); read band by band: "
          f"state exact {pct(fid['state_exact_nearest_band'])}, mask exact {pct(fid['mask_exact_nearest_band'])}")
    if fps:
        print(f"trained {trained_frames} frames at {fps:.0f} frames/s")
    return report


if __name__ == "__main__":
    main()
