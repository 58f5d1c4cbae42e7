"""Stage 3: encode every recorded episode with V, once, for M's training.

    python series.py [--record_dir record [more record dirs] --vae tf_vae/vae.json --out series/series.npz
                      --batch 1000 --z_size 32]

As in World Models (series.py), M is trained on V's mu and logvar rather than on pictures, and
rnn_train.py samples z from them afresh for every batch. All episodes are concatenated along
the first axis:

    mu, logvar       float16 (T, z_size)     V's encoding of the picture before each action
    action           int16   (T,)
    reward           float32 (T,)
    done             bool    (T,)
    action_mask      uint8   (T, num_actions) valid actions before each action
    episode_lengths  int64   (E,)            split points of the above
    episode_names    str     (E,)            record file names without .npz (the held-out split uses them)
    vae_sha256       str     ()              sha256 of the vae.json used, checked downstream
    record_dir       str     ()              the record directories, joined by os.pathsep
    item             int8    (T,)            only with --item_frames: the item size each frame's
                                             picture shows as V reads it (0: none), for M's mlp
                                             transition (rnn_train.py --transition mlp)
    item_probe       str     ()              with item: the probe's report (JSON)

Frames go through V --batch at a time; unusable episode files are skipped and counted. The
encoding is deterministic (mu and logvar only), so there is no --seed.

The item labels come from V alone, never from the recorded state: decoding every frame through
V is too slow on a CPU (5 to 50 frames/s), so --item_frames frames drawn at random (a fixed
seed) are decoded, their item read off V's picture (decode_pictures), and a small network on
mu (the probe: one tanh layer) labels every frame; its accuracy on a fifth of the decoded frames it did not
fit is printed and stored. --add_items adds the labels to an existing --out series without
encoding it again.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import time

import numpy as np
from tqdm import tqdm

from stages_common import (EpisodeReader, atomic_write_npz, check_output_file, episode_name, fail, non_negative_int,
                           positive_int, remove_stale_temps, require_file, sha256_file)

PICTURE_SHAPE = [64, 64, 3]
# What series.npz must hold (Series refuses a file without one of them).
SERIES_KEYS = ("mu", "logvar", "action", "reward", "done", "action_mask", "episode_lengths",
               "episode_names", "vae_sha256")
OPTIONAL_KEYS = ("item",)         # absent from files written without --item_frames


class Series:
    """series.npz in memory (mu/logvar stay float16) with per-episode offsets."""

    def __init__(self, path: str):
        try:
            with np.load(path) as data:
                d = {k: data[k] for k in SERIES_KEYS + OPTIONAL_KEYS if k in data.files}
        except Exception as e:                # numpy's own errors (not a zip, truncated, ...) name no file
            raise ValueError(f"cannot read series file {path}: {type(e).__name__}: {e}") from None
        missing = [k for k in SERIES_KEYS if k not in d]
        if missing:
            raise ValueError(f"series file {path} lacks {missing}; make it with series.py")
        self.lengths = d["episode_lengths"].astype(np.int64)
        total = int(self.lengths.sum())
        if len(self.lengths) == 0 or (self.lengths < 1).any():
            raise ValueError(f"series file {path} has no episodes or empty ones")
        for k in ("mu", "logvar", "action", "reward", "done", "action_mask"):
            if len(d[k]) != total:
                raise ValueError(f"series file {path}: {k} has {len(d[k])} rows, episode_lengths sum to {total}")
        if d["mu"].ndim != 2 or d["mu"].shape != d["logvar"].shape or d["action_mask"].ndim != 2:
            raise ValueError(f"series file {path}: mu/logvar must be (T, z) and action_mask (T, actions)")
        for k in ("mu", "logvar", "reward"):
            if not np.isfinite(d[k]).all():
                raise ValueError(f"series file {path}: {k} holds non-finite values (nan or inf); "
                                 "encode it again with a sound VAE (series.py)")
        if len(d["episode_names"]) != len(self.lengths):
            raise ValueError(f"series file {path}: {len(d['episode_names'])} names for {len(self.lengths)} episodes")
        self.mu, self.logvar = d["mu"], d["logvar"]
        self.action = d["action"].astype(np.int32)
        self.reward = d["reward"].astype(np.float32)
        self.done = d["done"].astype(np.float32)
        self.action_mask = d["action_mask"].astype(np.uint8)
        self.names = [str(n) for n in d["episode_names"]]
        self.vae_sha256 = str(d["vae_sha256"])
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)[:-1]])
        self.z_size, self.action_size = self.mu.shape[1], self.action_mask.shape[1]
        if self.action.min() < 0 or self.action.max() >= self.action_size:
            raise ValueError(f"series file {path}: actions outside 0..{self.action_size - 1}")
        self.item = d["item"].astype(np.int32) if "item" in d else None   # the item V reads in each frame
        if self.item is not None and len(self.item) != total:
            raise ValueError(f"series file {path}: item has {len(self.item)} rows, episode_lengths sum to {total}")

    def fingerprint(self) -> str:
        """Identifies the data (VAE and episodes) cheaply, to tie checkpoints to it."""
        h = hashlib.sha256(self.vae_sha256.encode())
        h.update("\n".join(self.names).encode())
        h.update(self.lengths.tobytes())
        return h.hexdigest()

    def windows(self, pick, first, n_real, seq_len, rng, sample_z=True):
        """Padded arrays (B, seq_len, ...) of episodes `pick` from step `first`, n_real real steps.

        z is sampled from mu/logvar (or is mu itself without sample_z); next_z at step t is the z
        used as input at t+1, or z_t on an episode's last step (see the module docstring); same for
        next_masks. With the item key, next_items is the next frame's item size - 1 (-1 where
        there is no next frame or V's picture shows no item).
        """
        L, off = self.lengths[pick][:, None], self.offsets[pick][:, None]
        pos = np.asarray(first)[:, None] + np.arange(seq_len + 1)
        gidx = off + np.minimum(pos, L - 1)
        mu = self.mu[gidx].astype(np.float32)
        zs = mu + np.exp(self.logvar[gidx].astype(np.float32) / 2) * rng.standard_normal(mu.shape, np.float32) \
            if sample_z else mu
        valid = np.arange(seq_len) < np.asarray(n_real)[:, None]
        has_next = valid & (pos[:, 1:] < L)
        cur = gidx[:, :seq_len]
        nxt = np.where(has_next, gidx[:, 1:], cur)
        out = {"z": zs[:, :seq_len], "actions": self.action[cur], "rewards": self.reward[cur],
               "dones": self.done[cur], "next_masks": self.action_mask[nxt].astype(np.float32),
               "next_z": np.where(has_next[..., None], zs[:, 1:], zs[:, :seq_len]),
               "weights": valid.astype(np.float32), "has_next": has_next}
        if self.item is not None:
            out["next_items"] = np.where(has_next, self.item[nxt] - 1, -1)
        return out

    def sample(self, episodes, batch_size, seq_len, rng, sample_z=True):
        """A training batch: windows uniform over (episode, start), start in [-(seq_len-1), L-1]."""
        L = self.lengths[episodes]
        starts = L + seq_len - 1
        pick = rng.choice(episodes, size=batch_size, p=starts / starts.sum())
        L = self.lengths[pick]
        raw = rng.integers(-(seq_len - 1), L)
        first = np.maximum(raw, 0)
        n_real = np.minimum(raw + seq_len, L) - first
        return self.windows(pick, first, n_real, seq_len, rng, sample_z)



def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Encode recorded episodes with V into one series.npz for M.")
    p.add_argument("--record_dir", nargs="+", default=["record"],
                   help="one or more record directories (e.g. the rollouts and C's own episodes of later rounds)")
    p.add_argument("--vae", default="tf_vae/vae.json")
    p.add_argument("--out", default="series/series.npz")
    p.add_argument("--batch", type=positive_int, default=1000, help="frames per call to V")
    p.add_argument("--z_size", type=positive_int, default=32, help="the z size the VAE must have (World Models: 32)")
    p.add_argument("--max_episodes", type=positive_int, default=None, help="encode at most this many files")
    p.add_argument("--item_frames", type=non_negative_int, default=0,
                   help="decode this many frames through V to label every frame's item by a probe on mu (the "
                        "item key, for rnn_train.py --transition mlp; 0: no item key; e.g. 6000)")
    p.add_argument("--add_items", action="store_true",
                   help="add the item key (--item_frames) to the existing --out series, encoded with --vae, "
                        "instead of encoding the records again")
    return p


def item_labels(vae, mu, bin_size: int, frames: int, seed: int = 0, hidden: int = 64) -> tuple[np.ndarray, dict]:
    """The item (size, 0: none) of every frame as V's decoded picture shows it, int8 (T,).

    `frames` rows of mu, drawn at random, are decoded (V, then decode_pictures); a small network
    (standardised mu -> `hidden` tanh units -> softmax; L-BFGS, a little L2) fitted to four fifths
    of them labels all rows, and the remaining fifth gives its accuracy (the report)."""
    from bin_packing_environment import decode_pictures
    rng = np.random.default_rng([seed, 3 << 20])
    pick = rng.choice(len(mu), size=min(frames, len(mu)), replace=False)
    read = decode_pictures(vae.decode(mu[pick].astype(np.float32)), bin_size)[:, -1]
    fit = np.arange(len(pick)) % 5 != 0
    probe = fit_item_probe(mu[pick[fit]], read[fit], seed, hidden)
    test = probe(mu[pick[~fit]])
    items = np.concatenate([probe(mu[i:i + 100_000]) for i in range(0, len(mu), 100_000)])
    classes = max(int(read.max()), int(items.max())) + 1
    report = {"decoded_frames": int(len(pick)), "fitted": int(fit.sum()),
              "heldout_accuracy": float((test == read[~fit]).mean()) if (~fit).any() else None,
              "items_read": np.bincount(read, minlength=classes).tolist(),
              "items_labelled": np.bincount(items, minlength=classes).tolist()}
    return items.astype(np.int8), report


def fit_item_probe(mu, read, seed: int = 0, hidden: int = 64):
    """item_labels' probe fitted to rows mu (n, z) whose pictures show items `read` (n,): a
    function from rows of mu to items."""
    from scipy.optimize import minimize

    classes = int(read.max()) + 1
    center, scale = mu.astype(np.float32).mean(0), mu.astype(np.float32).std(0) + 1e-6
    d = mu.shape[1]
    shapes = [(d, hidden), (hidden,), (hidden, classes), (classes,)]
    ends = np.cumsum([int(np.prod(s)) for s in shapes])[:-1]

    def unpack(w):
        return [part.reshape(s) for part, s in zip(np.split(w, ends), shapes)]

    def logits(w, m):
        w1, b1, w2, b2 = unpack(w)
        a = np.tanh(((np.asarray(m, np.float32) - center) / scale).astype(np.float64) @ w1 + b1)
        return a, a @ w2 + b2
    x = mu
    onehot = np.eye(classes)[read]
    xs = ((np.asarray(x, np.float32) - center) / scale).astype(np.float64)

    def loss(w):
        w1, _, w2, _ = unpack(w)
        a, z = logits(w, x)
        z -= z.max(1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(1, keepdims=True)
        nll = -np.log(np.maximum((p * onehot).sum(1), 1e-300)).mean() + 1e-5 * (w ** 2).sum()
        dz = (p - onehot) / len(x)
        da = (dz @ w2.T) * (1 - a ** 2)
        grad = np.concatenate([(xs.T @ da).ravel(), da.sum(0), (a.T @ dz).ravel(), dz.sum(0)])
        return nll, grad + 2e-5 * w
    w0 = np.concatenate([np.random.default_rng([seed, 4 << 20]).standard_normal(ends[0]) / np.sqrt(d),
                         np.zeros(hidden), np.random.default_rng([seed, 5 << 20]).standard_normal(
                             hidden * classes) / np.sqrt(hidden), np.zeros(classes)])
    w = minimize(loss, w0, jac=True, method="L-BFGS-B", options={"maxiter": 3000}).x
    return lambda rows: logits(w, rows)[1].argmax(1)


def check_vae_header(path: str, z_size: int):
    """Refuse a VAE file of another z size or picture size before loading its weights."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read VAE file {path}: {e}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"VAE file {path} is not a VAE (convvae-v1) file")
    if doc.get("z_size") != z_size:
        raise ValueError(f"VAE {path} has z_size {doc.get('z_size')}, expected {z_size} (--z_size)")
    if list(doc.get("picture_shape", [])) != PICTURE_SHAPE:
        raise ValueError(f"VAE {path} has picture_shape {doc.get('picture_shape')}, expected {PICTURE_SHAPE}")


def encode_all(vae, reader: EpisodeReader, paths: list, batch: int):
    """Episodes encoded in groups of about `batch` frames; returns per-key lists and names."""
    out = {k: [] for k in ("mu", "logvar", "action", "reward", "done", "action_mask")}
    names, lengths = [], []
    pending, pending_frames = [], 0
    num_actions = None

    def flush():
        nonlocal pending, pending_frames
        if not pending:
            return
        mu, logvar = vae.encode_mu_logvar(np.concatenate([ep["obs"] for _, ep in pending]))
        if not (np.isfinite(mu).all() and np.isfinite(logvar).all()):
            raise ValueError("V produced non-finite mu/logvar; the VAE file is broken")
        mu16, lv16 = mu.astype(np.float16), logvar.astype(np.float16)
        if not (np.isfinite(mu16).all() and np.isfinite(lv16).all()):
            raise ValueError("V's mu/logvar overflow float16; the VAE is badly trained")
        out["mu"].append(mu16)
        out["logvar"].append(lv16)
        for path, ep in pending:
            out["action"].append(ep["action"].astype(np.int16))
            out["reward"].append(ep["reward"].astype(np.float32))
            out["done"].append(ep["done"].astype(bool))
            out["action_mask"].append(ep["action_mask"].astype(np.uint8))
            names.append(episode_name(path))
            lengths.append(len(ep["action"]))
        pending, pending_frames = [], 0

    bar = tqdm(paths, desc="encoding", unit="ep")
    frames, start = 0, time.time()
    for path in bar:
        ep = reader.load(path)
        if ep is None:
            continue
        if num_actions is None:
            num_actions = ep["action_mask"].shape[1]
        elif ep["action_mask"].shape[1] != num_actions:
            reader.skip(path, f"{path}: {ep['action_mask'].shape[1]} actions, the others have {num_actions}")
            continue
        pending.append((path, ep))
        pending_frames += len(ep["obs"])
        frames += len(ep["obs"])
        if pending_frames >= batch:
            flush()
            bar.set_postfix(fps=f"{frames / (time.time() - start):.0f}")
    flush()
    bar.close()
    return out, names, lengths


def with_items(vae, arrays: dict, frames: int) -> dict:
    """The arrays plus item and item_probe (item_labels), the probe's report printed."""
    items, report = item_labels(vae, arrays["mu"], arrays["action_mask"].shape[1], frames)
    print(f"item labels: a probe on mu fitted to {report['fitted']} frames decoded by V reads "
          f"{100 * report['heldout_accuracy']:.2f}% of {report['decoded_frames'] - report['fitted']} others "
          f"as V's picture does; labels per item size {report['items_labelled']}")
    return {**arrays, "item": items, "item_probe": np.array(json.dumps(report))}


def add_items(parser, args):
    """--add_items: the existing --out series with the item key added, written in place."""
    require_file(parser, args.out, "series file (--add_items)")
    if not args.item_frames:
        parser.error("--add_items needs --item_frames")
    with np.load(args.out) as data:
        arrays = {k: data[k] for k in data.files if k not in ("item", "item_probe")}
    from vae.vae import ConvVAE
    try:
        vae = ConvVAE.from_json(args.vae)
    except ValueError as e:
        fail(parser, str(e))
    if str(arrays.get("vae_sha256")) != sha256_file(args.vae):
        fail(parser, f"{args.out} was not encoded with {args.vae}")
    atomic_write_npz(args.out, **with_items(vae, arrays, args.item_frames))
    print(f"added item labels to {args.out}")


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    check_output_file(parser, args.out, "--out")
    remove_stale_temps([args.out])
    if args.add_items:
        return add_items(parser, args)
    for record_dir in args.record_dir:
        if not os.path.isdir(record_dir):
            fail(parser, f"record directory {record_dir} not found")
    require_file(parser, args.vae, "VAE file")
    try:
        check_vae_header(args.vae, args.z_size)
    except ValueError as e:
        fail(parser, str(e))
    reader = EpisodeReader(args.record_dir)
    listed = reader.paths[:args.max_episodes]
    where = " ".join(args.record_dir)
    if not listed:
        fail(parser, f"no episode files (*.npz) in {where}")
    names = [episode_name(p) for p in listed]
    if len(set(names)) < len(names):  # the held-out split goes by name
        twice = sorted({n for n in names if names.count(n) > 1})
        fail(parser, f"episode names repeat across the record directories ({', '.join(twice[:3])}); "
                     "record each set with its own --seed")
    headers = reader.scan(listed)
    paths = [p for p in listed if p in headers]

    from vae.vae import ConvVAE
    try:
        vae = ConvVAE.from_json(args.vae)
    except ValueError as e:
        fail(parser, str(e))
    vae_sha = sha256_file(args.vae)

    start = time.time()
    try:
        out, names, lengths = encode_all(vae, reader, paths, args.batch)
    except ValueError as e:
        fail(parser, str(e))
    seconds = time.time() - start
    skipped = reader.report()
    if not names:
        fail(parser, f"no usable episode files in {where}")
    arrays = {k: np.concatenate(v) for k, v in out.items()}
    if args.item_frames:
        arrays = with_items(vae, arrays, args.item_frames)
    atomic_write_npz(args.out, **arrays, episode_lengths=np.array(lengths, np.int64),
                     episode_names=np.array(names), vae_sha256=np.array(vae_sha),
                     record_dir=np.array(os.pathsep.join(os.path.abspath(d) for d in args.record_dir)))
    total = int(sum(lengths))
    print(f"wrote {args.out}: {len(names)} episodes, {total} frames, z_size {vae.z_size} "
          f"({total / seconds:.0f} frames/s); skipped {skipped} file(s)")
    return {"out": args.out, "episodes": len(names), "frames": total, "skipped_files": skipped,
            "frames_per_s": total / seconds, "vae_sha256": vae_sha}


if __name__ == "__main__":
    main()
