"""Stage 3: encode every recorded episode with V, once, for M's training.

    python series.py [--record_dir record --vae tf_vae/vae.json --out series/series.npz --batch 1000
                      --z_size 32]

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
    record_dir       str     ()

Frames go through V --batch at a time; unusable episode files are skipped and counted. The
encoding is deterministic (mu and logvar only), so there is no --seed.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
from tqdm import tqdm

from stages_common import (EpisodeReader, atomic_write_npz, episode_name, fail, positive_int, require_file,
                           sha256_file)

PICTURE_SHAPE = [64, 64, 3]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Encode recorded episodes with V into one series.npz for M.")
    p.add_argument("--record_dir", default="record")
    p.add_argument("--vae", default="tf_vae/vae.json")
    p.add_argument("--out", default="series/series.npz")
    p.add_argument("--batch", type=positive_int, default=1000, help="frames per call to V")
    p.add_argument("--z_size", type=positive_int, default=32, help="the z size the VAE must have (World Models: 32)")
    p.add_argument("--max_episodes", type=positive_int, default=None, help="encode at most this many files")
    return p


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


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not os.path.isdir(args.record_dir):
        fail(parser, f"record directory {args.record_dir} not found")
    require_file(parser, args.vae, "VAE file")
    try:
        check_vae_header(args.vae, args.z_size)
    except ValueError as e:
        fail(parser, str(e))
    reader = EpisodeReader(args.record_dir)
    listed = reader.paths[:args.max_episodes]
    if not listed:
        fail(parser, f"no episode files (*.npz) in {args.record_dir}")
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
        fail(parser, f"no usable episode files in {args.record_dir}")
    arrays = {k: np.concatenate(v) for k, v in out.items()}
    atomic_write_npz(args.out, **arrays, episode_lengths=np.array(lengths, np.int64),
                     episode_names=np.array(names), vae_sha256=np.array(vae_sha),
                     record_dir=np.array(os.path.abspath(args.record_dir)))
    total = int(sum(lengths))
    print(f"wrote {args.out}: {len(names)} episodes, {total} frames, z_size {vae.z_size} "
          f"({total / seconds:.0f} frames/s); skipped {skipped} file(s)")
    return {"out": args.out, "episodes": len(names), "frames": total, "skipped_files": skipped,
            "frames_per_s": total / seconds, "vae_sha256": vae_sha}


if __name__ == "__main__":
    main()
