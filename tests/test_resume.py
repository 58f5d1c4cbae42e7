"""train.py killed with kill -9 in the middle of a run and started again ends with the files of an
uninterrupted run, and the temp files the killed writer left are removed at the next start."""
import json
import os
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = "binpacking.cma.2.4"
GENERATIONS, KILL_AT = 30, 7

# the random V and small M on disk (48 x 30 + 30 = 1470 controller parameters: cma uses its TPA
# step size, as with the full controller's 8670)
from test_controller import models  # noqa: E402,F401


def train_cmd(models, log_dir):
    return [sys.executable, "train.py", "--rnn", models["rnn"], "--vae", models["vae"],
            "--initial_z", models["initial_z"], "--log_dir", str(log_dir), "--popsize", "4",
            "--num_episode", "2", "--time_horizon", "6", "--eval_horizon", "6", "--eval_episodes", "2",
            "--eval_steps", "3", "--generations", str(GENERATIONS), "--seed", "11"]


def generations_logged(log_dir) -> int:
    try:
        with open(log_dir / f"{BASE}.hist.json") as f:
            return len(json.load(f))
    except (OSError, ValueError):
        return 0


def without_wall_time(rows):
    return [row[:1] + row[2:] for row in rows]      # column 1 is the wall time


def test_train_killed_and_resumed_matches_an_uninterrupted_run(models, tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT, text=True)
    reference = subprocess.Popen(train_cmd(models, whole), **quiet)    # side by side with the killed run
    victim = subprocess.Popen(train_cmd(models, killed), **quiet)
    deadline = time.time() + 300
    while generations_logged(killed) < KILL_AT and victim.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    assert victim.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    done = generations_logged(killed)
    assert KILL_AT <= done < GENERATIONS
    _, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err[-2000:]

    # what a writer killed in os.replace's place leaves, and temp files that are not ours
    ours = [killed / f".{BASE}.hist_best.json.0123456789ab.tmp", killed / f".{BASE}.es.pkl.abcdef012345.tmp"]
    foreign = [killed / "notes.tmp", killed / ".other.json.0123456789ab.tmp", killed / f".{BASE}.json.xyz.tmp"]
    for path in ours + foreign:
        path.write_text("partial")
    proc = subprocess.run(train_cmd(models, killed), capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"resuming from {killed / BASE}.es.pkl at generation" in proc.stdout
    assert not any(p.exists() for p in ours) and all(p.exists() for p in foreign)
    assert f"removed {ours[0]}" in proc.stdout

    for ext in (".json", ".best.json"):                       # mean and best parameters, byte for byte
        assert (killed / f"{BASE}{ext}").read_bytes() == (whole / f"{BASE}{ext}").read_bytes(), ext
    for ext in (".hist.json", ".hist_best.json"):             # every generation's numbers, bar the wall time
        a, b = (json.loads((d / f"{BASE}{ext}").read_text()) for d in (killed, whole))
        assert len(a) == len(b) and without_wall_time(a) == without_wall_time(b), ext
