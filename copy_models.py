"""Stage 5: install a trained V and M where the controller stages look for them.

    python copy_models.py [--vae tf_vae/vae.json --rnn tf_rnn/rnn.json --initial_z tf_rnn/initial_z.json]

copies them to vae/vae.json, rnn/rnn.json and initial_z/initial_z.json (under --out_root, default
the repository), plus tf_rnn/provenance.json to rnn/provenance.json. It first checks that they
belong together, because a controller trained on an M that was fitted to another V's latents
would be meaningless: V, M and initial_z must agree on z_size, M and initial_z on the number of
actions (--action_size, the environment's bin size), and provenance.json (written by
rnn_train.py) must name the sha256 of exactly this vae.json (the one series.py encoded with),
rnn.json and initial_z.json. Every file is first copied to a temp file next to its destination
and only then renamed into place, so a failure never leaves a half-copied or mixed set.
"""
from __future__ import annotations

import argparse
import json
import os

from stages_common import (atomic_copy, check_output_dir, fail, positive_int, remove_stale_temps, require_file,
                           sha256_file)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Check that V, M and initial_z belong together and install them.")
    p.add_argument("--vae", default="tf_vae/vae.json")
    p.add_argument("--rnn", default="tf_rnn/rnn.json")
    p.add_argument("--initial_z", default="tf_rnn/initial_z.json")
    p.add_argument("--provenance", default=None, help="default: provenance.json next to --rnn")
    p.add_argument("--no_provenance", action="store_true",
                   help="copy without provenance.json (hand-made models); the size checks still apply")
    p.add_argument("--action_size", type=positive_int, default=30, help="actions M must have (the bin size)")
    p.add_argument("--out_root", default=".", help="directory holding vae/, rnn/, initial_z/")
    return p


def check(args) -> dict:
    """Validate the set; returns {source: destination}. ValueError names the first problem."""
    from dream_env import load_initial_z
    from rnn.rnn import read_json
    from vae.vae import ConvVAE

    vae = ConvVAE.from_json(args.vae)                 # full load: catches truncated weights too
    hp, _ = read_json(args.rnn)
    iz = load_initial_z(args.initial_z)
    if hp["z_size"] != vae.z_size:
        raise ValueError(f"{args.rnn} has z_size {hp['z_size']} but {args.vae} has z_size {vae.z_size}")
    if hp["action_size"] != args.action_size:
        raise ValueError(f"{args.rnn} has action_size {hp['action_size']}, expected {args.action_size} (--action_size)")
    if iz["mu"].shape[1] != vae.z_size:
        raise ValueError(f"{args.initial_z} has z size {iz['mu'].shape[1]} but {args.vae} has z_size {vae.z_size}")
    if "action_mask" not in iz:
        raise ValueError(f"{args.initial_z} has no action_mask (make it with rnn_train.py)")
    if iz["action_mask"].ndim != 2 or iz["action_mask"].shape != (len(iz["mu"]), hp["action_size"]):
        raise ValueError(f"{args.initial_z}: action_mask has shape {iz['action_mask'].shape}, "
                         f"expected ({len(iz['mu'])}, {hp['action_size']})")
    copies = {args.vae: os.path.join(args.out_root, "vae", "vae.json"),
              args.rnn: os.path.join(args.out_root, "rnn", "rnn.json"),
              args.initial_z: os.path.join(args.out_root, "initial_z", "initial_z.json")}
    if args.no_provenance:
        print("warning: --no_provenance: not checking that M was trained on this V's encodings")
        return copies
    with open(args.provenance) as f:
        try:
            prov = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{args.provenance} is not valid JSON: {e}") from None
    for key, path in (("vae_sha256", args.vae), ("rnn_sha256", args.rnn), ("initial_z_sha256", args.initial_z)):
        if key not in prov:
            raise ValueError(f"{args.provenance} lacks {key}")
        if prov[key] != sha256_file(path):
            what = {"vae_sha256": "M was trained on a series encoded with another VAE than",
                    "rnn_sha256": "it was written for another rnn.json than",
                    "initial_z_sha256": "it was written for another initial_z.json than"}[key]
            raise ValueError(f"{args.provenance}: {what} {path} "
                             f"({key} {prov[key][:12]}... != {sha256_file(path)[:12]}...)")
    copies[args.provenance] = os.path.join(args.out_root, "rnn", "provenance.json")
    return copies


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.provenance is None:
        args.provenance = os.path.join(os.path.dirname(args.rnn), "provenance.json")
    check_output_dir(parser, args.out_root, "--out_root")
    for sub in ("vae", "rnn", "initial_z"):
        check_output_dir(parser, os.path.join(args.out_root, sub), "--out_root")
    remove_stale_temps([os.path.join(args.out_root, *name) for name in
                        (("vae", "vae.json"), ("rnn", "rnn.json"), ("rnn", "provenance.json"),
                         ("initial_z", "initial_z.json"))])
    require_file(parser, args.vae, "VAE file")
    require_file(parser, args.rnn, "MDN-RNN file")
    require_file(parser, args.initial_z, "initial z file")
    if not args.no_provenance:
        require_file(parser, args.provenance, "provenance file (written by rnn_train.py; or pass --no_provenance)")
    try:
        copies = check(args)
    except ValueError as e:
        fail(parser, str(e))
    temps = {}
    try:
        for src, dst in copies.items():
            temps[dst] = atomic_copy(src, dst)
        for dst, tmp in temps.items():
            os.replace(tmp, dst)
    finally:
        for tmp in temps.values():
            if os.path.exists(tmp):
                os.remove(tmp)
    stale = os.path.join(args.out_root, "rnn", "provenance.json")
    if args.no_provenance and os.path.exists(stale):
        os.remove(stale)                  # it describes the M just replaced
        print(f"removed {stale}, which described the previous M")
    for src, dst in copies.items():
        print(f"copied {src} -> {dst}")
    return copies


if __name__ == "__main__":
    main()
