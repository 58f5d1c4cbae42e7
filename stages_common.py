"""Helpers shared by the training stages (vae_train, series, rnn_train, copy_models, dream_fidelity).

They exist so that every stage writes its files the same way (atomically: a temp file in the
target directory, then os.replace, so a killed run never leaves a half-written artifact),
skips unusable episode files the same way (counted and named, never a crash), and holds out
the same episodes (chosen by file name, so V, M and the dream fidelity check agree on them).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import uuid
import zipfile

import numpy as np

from bin_packing_environment import PICTURE_SHAPE, RECORD_KEYS, list_episodes, load_episode_npz

# ---------------------------------------------------------------- errors


def fail(parser, message: str):
    """Exit with status 2 and one line naming the problem, like argparse does for bad flags."""
    parser.exit(2, f"{parser.prog}: error: {message}\n")


# ---------------------------------------------------------------- atomic files


def _temp_path(path: str) -> str:
    """A fresh name next to `path` (same file system, so os.replace is atomic), ending in .tmp."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    return os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex[:12]}.tmp")


def _atomic_write(path: str, write):
    """Call write(file object) on a temp file next to `path`, then rename it over `path`."""
    tmp = _temp_path(path)
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_json(path: str, obj, indent=None):
    _atomic_write(path, lambda f: f.write(json.dumps(obj, indent=indent).encode()))


def atomic_write_pickle(path: str, obj):
    import pickle
    _atomic_write(path, lambda f: pickle.dump(obj, f))


def atomic_write_npz(path: str, **arrays):
    """Uncompressed npz (fast to load; float16 latents barely compress), written atomically."""
    _atomic_write(path, lambda f: np.savez(f, **arrays))


def atomic_copy(src: str, dst: str) -> str:
    """Copy src to a temp file next to dst; returns the temp path (rename it with os.replace)."""
    tmp = _temp_path(dst)
    try:
        with open(tmp, "xb") as f, open(src, "rb") as s:
            shutil.copyfileobj(s, f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return tmp


def changed_flags(saved: dict, now: dict, added: dict | None = None) -> list[str]:
    """'--flag saved (now value)' for each flag in `now` whose saved value differs: why a resume is refused.

    `added` maps flags newer than some saved files to the value those files were made with.
    """
    saved = {**(added or {}), **saved}
    return [f"--{k} {saved.get(k)} (now {v})" for k, v in now.items() if saved.get(k) != v]


def read_checkpoint(path: str, meta: dict, added: dict | None = None) -> dict:
    """A training checkpoint's arrays, once its recorded flags are checked against `meta`.

    ValueError (suggesting --restart) if the file is unreadable or was made with other flags.
    """
    try:
        with np.load(path) as ck:
            data = {k: ck[k] for k in ck.files}
    except Exception as e:
        raise ValueError(f"checkpoint {path} is unreadable ({type(e).__name__}: {e}); "
                         "delete it or pass --restart") from None
    saved = json.loads(str(data["meta"]))
    diff = changed_flags(saved, meta, added)
    if diff:
        raise ValueError(f"checkpoint {path} was made with {', '.join(diff)}; "
                         "rerun with the same flags and data or pass --restart")
    return data


def restore_optimizer(optimizer, data: dict, path: str):
    """Put back the Adam state saved as opt_0, opt_1, ... in a checkpoint."""
    variables = optimizer.variables
    if sum(k.startswith("opt_") for k in data) != len(variables):
        raise ValueError(f"checkpoint {path} does not match the optimizer; pass --restart")
    for i, v in enumerate(variables):
        v.assign(data[f"opt_{i}"])


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------- flags


def parse_fraction(text: str) -> float:
    """'5%' or '0.05' -> 0.05; for argparse `type=`."""
    import argparse
    try:
        value = float(text[:-1]) / 100 if str(text).endswith("%") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction like 5% or 0.05, got {text!r}") from None
    if not 0 < value <= 0.5:
        raise argparse.ArgumentTypeError(f"must be in (0, 50%], got {text!r}")
    return value


def positive_int(text: str) -> int:
    import argparse
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    import argparse
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _finite_float(text: str, ok, requirement: str) -> float:
    """argparse type: a finite number for which ok(value) holds, else an error naming `requirement`."""
    import argparse
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not np.isfinite(value) or not ok(value):
        raise argparse.ArgumentTypeError(f"must be {requirement}, got {text!r}")
    return value


def positive_float(text: str) -> float:
    return _finite_float(text, lambda v: v > 0, "a positive number")


def non_negative_float(text: str) -> float:
    return _finite_float(text, lambda v: v >= 0, "a number >= 0")


def finite_float(text: str) -> float:
    """Any finite number (nan and inf refused): for flags whose range is checked after parsing."""
    return _finite_float(text, lambda v: True, "a finite number")


def unit_float(text: str) -> float:
    """A probability or share: a number in [0, 1] (nan refused)."""
    return _finite_float(text, lambda v: 0 <= v <= 1, "a number in [0, 1]")


# Every --seed: numpy's legacy seeding (cma seeds it with --seed + 1) takes integers below 2**32.
SEED_MAX = 2 ** 32 - 2
# Episode counts: 10**7 episodes' seeds and totals are a few hundred MB; more cannot be allocated.
MAX_EPISODES = 10 ** 7


def _bounded_int(text: str, minimum: int, maximum: int, why: str = "") -> int:
    import argparse
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
    if value > maximum:
        raise argparse.ArgumentTypeError(f"must be <= {maximum}{why}, got {value}")
    return value


def bounded_int(minimum: int, maximum: int, why: str = ""):
    """argparse type: an integer in [minimum, maximum]; `why` explains the upper bound."""
    def parse(text: str) -> int:
        return _bounded_int(text, minimum, maximum, why)
    return parse


def seed_int(text: str) -> int:
    """argparse type of every --seed: an integer in [0, SEED_MAX]."""
    return _bounded_int(text, 0, SEED_MAX)


def episode_count(text: str) -> int:
    """argparse type of episode counts: 1 .. MAX_EPISODES."""
    return _bounded_int(text, 1, MAX_EPISODES, " (more episodes do not fit in memory)")


# ---------------------------------------------------------------- output locations


def _unwritable(directory: str) -> str | None:
    """Why no file can be written in `directory`, or None: it is created if missing and a real temp
    file is written in it. What the probe created is removed again (the stage's writers create their
    directories), so a run that stops on a later check leaves nothing behind."""
    import tempfile
    if os.path.exists(directory) and not os.path.isdir(directory):
        return "it is a file, not a directory"
    missing, d = [], os.path.abspath(directory)
    while not os.path.exists(d) and os.path.dirname(d) != d:
        missing.append(d)
        d = os.path.dirname(d)
    try:
        os.makedirs(directory, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".write_probe.", suffix=".tmp")
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        return e.strerror or str(e)
    finally:
        for d in missing:                        # deepest first; a directory someone filled meanwhile stays
            try:
                os.rmdir(d)
            except OSError:
                pass
    return None


def check_output_dir(parser, path: str, flag: str):
    """Exit with one line naming `flag` unless `path` is (or can be made) a directory we can write in."""
    why = _unwritable(path)
    if why:
        fail(parser, f"{flag} {path} is not a writable directory: {why}")


def check_output_file(parser, path: str, flag: str):
    """Exit with one line naming `flag` unless the file `path` can be written (not a directory; its
    directory, created if missing, writable)."""
    if os.path.isdir(path):
        fail(parser, f"{flag} {path} is a directory; give a file name")
    directory = os.path.dirname(path) or "."
    why = _unwritable(directory)
    if why:
        fail(parser, f"{flag} {path}: cannot write in {directory}: {why}")


# ---------------------------------------------------------------- leftovers of killed writers


def remove_stale_temps(paths) -> list[str]:
    """Remove the temp files that a killed writer of `paths` left next to them: ours only (the
    atomic writers' `.<name>.<12 hex>.tmp`, weights_json's `<name>.tmp`, and the write probes).
    Call it at a stage's start, for the files that stage alone writes. Returns the removed paths."""
    import re
    removed = []
    by_dir: dict[str, list[str]] = {}
    for path in paths:
        directory, name = os.path.split(os.path.abspath(path))
        by_dir.setdefault(directory, []).append(re.escape(name))
    for directory, names in by_dir.items():
        names = "|".join(names)
        pattern = re.compile(rf"\.({names})\.[0-9a-f]{{12}}\.tmp|({names})\.tmp|\.write_probe\.\w{{8}}\.tmp")
        removed += _remove_matching(directory, pattern)
    return removed


def remove_stale_record_temps(record_dir: str, min_age_s: float = 60.0) -> list[str]:
    """Remove the `tmpXXXXXXXX.npz.tmp` files a killed episode writer (write_episode_npz) left in
    record_dir. Several recorders may share a record directory, so only files untouched for
    min_age_s are removed (a live writer's file is seconds old)."""
    import re
    import time
    return _remove_matching(record_dir, re.compile(r"tmp[a-z0-9_]{8}\.npz\.tmp"),
                            lambda p: time.time() - os.path.getmtime(p) >= min_age_s)


def _remove_matching(directory: str, pattern, keep_unless=None) -> list[str]:
    removed = []
    try:
        entries = os.listdir(directory)
    except OSError:
        return removed
    for entry in entries:
        path = os.path.join(directory, entry)
        try:
            if pattern.fullmatch(entry) and os.path.isfile(path) and (keep_unless is None or keep_unless(path)):
                os.remove(path)
                removed.append(path)
        except OSError:                  # gone meanwhile, or not ours to remove: leave it
            pass
    return removed



def int_list(text: str, flag: str, minimum: int = 1) -> list[int]:
    """'100,10,100' -> [10, 100]: comma-separated integers >= minimum, sorted, each once."""
    try:
        values = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated integers, got {text!r}") from None
    if not values or values[0] < minimum:
        kind = "positive" if minimum == 1 else f">= {minimum}"
        raise ValueError(f"{flag} must be {kind} integers, got {text!r}")
    return values


# ---------------------------------------------------------------- held-out split


def episode_name(path: str) -> str:
    """An episode's identity across stages: its file name without .npz."""
    base = os.path.basename(path)
    return base[:-4] if base.endswith(".npz") else base


def _split_score(name: str, seed: int) -> float:
    digest = hashlib.sha256(f"{int(seed)}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def holdout_mask(names, fraction: float, seed: int) -> np.ndarray:
    """True for the held-out episodes among `names` (episode names or paths).

    An episode is held out when a hash of (seed, name) falls below `fraction`, so the choice
    of one episode does not depend on which other files exist or are corrupt: vae_train
    (on record files), rnn_train (on series.npz) and dream_fidelity agree. At least one
    episode is held out (the lowest score) and at least one is kept for training.
    """
    names = [episode_name(n) for n in names]
    if len(names) < 2:
        raise ValueError(f"need at least 2 episodes to hold one out, got {len(names)}")
    scores = np.array([_split_score(n, seed) for n in names])
    held = scores < fraction
    if not held.any():
        held[scores.argmin()] = True
    if held.all():
        held[scores.argmax()] = False
    return held


# ---------------------------------------------------------------- episode files


def _npy_header(zf: zipfile.ZipFile, key: str):
    with zf.open(key + ".npy") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    return shape, dtype


def episode_header(path: str) -> dict:
    """Shapes and dtypes of a recorded episode's arrays, read without decompressing them.

    Raises ValueError naming the file when it is missing keys, truncated, empty or
    inconsistent. A file whose compressed data is damaged further in is only caught when
    it is loaded (see `EpisodeReader`).
    """
    try:
        with zipfile.ZipFile(path) as zf:
            members = set(zf.namelist())
            missing = [k for k in RECORD_KEYS if k + ".npy" not in members]
            if missing:
                raise ValueError(f"missing arrays {missing}")
            header = {k: _npy_header(zf, k) for k in RECORD_KEYS}
    except ValueError as e:
        raise ValueError(f"corrupt episode file {path}: {e}") from None
    except Exception as e:  # BadZipFile, EOFError, OSError...: all mean an unusable file
        raise ValueError(f"corrupt episode file {path}: {type(e).__name__}: {e}") from None
    n = header["action"][0][0] if header["action"][0] else 0
    if n == 0 or any(not shape or shape[0] != n for shape, _ in header.values()):
        raise ValueError(f"corrupt episode file {path}: empty or arrays of different lengths")
    if header["obs"][0][1:] != PICTURE_SHAPE or header["obs"][1] != np.uint8:
        raise ValueError(f"corrupt episode file {path}: obs must be uint8 (N,64,64,3), "
                         f"got {header['obs'][1]} {header['obs'][0]}")
    mask_shape, state_shape = header["action_mask"][0], header["state"][0]
    if len(mask_shape) != 2 or len(state_shape) != 2 or state_shape[1] != mask_shape[1] + 1:
        raise ValueError(f"corrupt episode file {path}: action_mask {mask_shape} and state {state_shape} "
                         "do not fit together")
    return {"length": int(n), "num_actions": int(mask_shape[1])}


class EpisodeReader:
    """Lists and loads episode files, skipping unusable ones and remembering why."""

    def __init__(self, record_dir: str | list[str]):
        dirs = [record_dir] if isinstance(record_dir, str) else record_dir
        self.paths = [p for d in dirs for p in list_episodes(d)]  # ValueError if a directory is missing
        self.skipped: dict[str, str] = {}
        self._reported = 0

    def skip(self, path: str, reason: str):
        if path not in self.skipped:
            self.skipped[path] = reason

    def scan(self, paths=None) -> dict:
        """{path: header} of the usable files among `paths` (default: all)."""
        good = {}
        for path in self.paths if paths is None else paths:
            try:
                good[path] = episode_header(path)
            except ValueError as e:
                self.skip(path, str(e))
        return good

    def load(self, path: str):
        """The episode dict, or None (and the file counted as skipped) if it is unusable."""
        if path in self.skipped:
            return None
        try:
            return load_episode_npz(path)
        except ValueError as e:
            self.skip(path, str(e))
            return None

    def report(self, stream=None) -> int:
        """Print how many files were skipped (and why, for the first few) if that changed since
        the last report; returns the total count."""
        stream = stream or sys.stdout
        if len(self.skipped) > self._reported:
            print(f"skipped {len(self.skipped)} unusable episode file(s):", file=stream)
            for path, reason in list(self.skipped.items())[:5]:
                print(f"  {reason}", file=stream)
            if len(self.skipped) > 5:
                print(f"  ... and {len(self.skipped) - 5} more", file=stream)
            self._reported = len(self.skipped)
        return len(self.skipped)


def require_file(parser, path: str, what: str):
    if not os.path.isfile(path):
        fail(parser, f"{what} {path} not found")
