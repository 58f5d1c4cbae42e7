"""Quiet output: gym's banner and TensorFlow's start-up lines hidden (quiet.py), one progress bar per policy."""
import os
import subprocess
import sys

import numpy as np

import baselines
from bin_packing_environment import PRESETS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHORT = dict(PRESETS["perfect_pack"], time_horizon=20)


def terminal_lines(text):
    return [segs[-1] for segs in ([s for s in line.split("\r") if s.strip()] for line in text.split("\n")) if segs]


def python(code, **env):
    environ = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    environ.update(env)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=environ)


def test_gym_banner_is_hidden_and_other_output_is_not():
    assert "unmaintained" in python("import gym").stderr               # gym does print it ...
    proc = python("import quiet, gym, sys; print('kept', file=sys.stderr)")
    assert proc.returncode == 0 and "unmaintained" not in proc.stderr and "kept" in proc.stderr


FAKE_TF = """
import os
os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n")
os.write(2, b"I0000 00:00:1.0 1 cudart_stub.cc:31] Could not find cuda drivers on your machine\\n")
os.write(2, b"E0000 00:00:1.0 1 something.cc:1] a real error\\n")
if os.environ.get("FAKE_TF_FAILS"):
    raise ImportError("fake tensorflow is broken")
class config:
    @staticmethod
    def list_physical_devices():
        os.write(2, b"E0000 00:00:1.0 1 cuda_platform.cc:52] failed call to cuInit: UNKNOWN ERROR (303)\\n")
        return []
"""


def test_import_tensorflow_drops_start_up_noise_but_not_errors(tmp_path):
    (tmp_path / "tensorflow").mkdir()
    (tmp_path / "tensorflow" / "__init__.py").write_text(FAKE_TF)
    code = f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import quiet; quiet.import_tensorflow(); print('ok')"
    proc = python(code)
    assert proc.stdout.strip() == "ok" and proc.stderr.strip() == "E0000 00:00:1.0 1 something.cc:1] a real error"
    proc = python(code, FAKE_TF_FAILS="1")                              # a failed import shows everything
    assert proc.returncode == 1 and "absl" in proc.stderr and "fake tensorflow is broken" in proc.stderr
    proc = python(code, TF_CPP_MIN_LOG_LEVEL="0")                       # the user's choice: untouched
    assert "absl" in proc.stderr and "cudart_stub" in proc.stderr


def test_one_progress_bar_over_all_batches(capsys):
    baselines.evaluate_policy(baselines.best_fit, SHORT, 5, seed=0, batch=2, progress="best_fit")
    bars = terminal_lines(capsys.readouterr().err)
    assert len(bars) == 1 and bars[0].startswith("best_fit ") and "5/5 episodes" in bars[0], bars


class FakeV:
    def encode_mu_logvar(self, pictures):
        return np.zeros((len(pictures), 2)), np.zeros((len(pictures), 2))


class FakeM:
    def initial_state(self, n):
        return np.zeros((n, 3)), np.zeros((n, 3))

    def step(self, z, actions, h, c):
        return h, c, None


def test_the_agents_bar_spans_its_batches(capsys):
    from controller import Controller, evaluate_real
    c = Controller(2, 3, 30)
    params = np.zeros(c.num_params)
    params[-30:] = np.arange(30)                                         # Best Fit
    totals = evaluate_real(c, params, FakeV(), FakeM(), SHORT, 5, seed=0, batch=2, progress="world_model")
    bars = terminal_lines(capsys.readouterr().err)
    assert len(bars) == 1 and bars[0].startswith("world_model ") and "5/5 episodes" in bars[0], bars
    assert len(totals) == 5


# Every script that reaches TensorFlow: importing it must set TF_ENABLE_ONEDNN_OPTS (read by
# TensorFlow's own import) before anything can import TensorFlow.
TF_SCRIPTS = ["vae_train", "series", "rnn_train", "copy_models", "dream_starts", "train", "model", "evaluate",
              "dream_env", "extract", "run_evaluation_dopamine", "analysis.dream_fidelity", "analysis.imitate",
              "analysis.window_signal", "analysis.seed_table"]


def test_every_script_turns_on_onednn_before_tensorflow_unless_the_user_chose():
    code = ("import importlib, os, sys; m = sys.argv[1]; importlib.import_module(m); "
            "print(m, os.environ.get('TF_ENABLE_ONEDNN_OPTS'), 'tensorflow' in sys.modules)")
    environ = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    procs = [subprocess.Popen([sys.executable, "-c", code, m], cwd=ROOT, env=environ, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for m in TF_SCRIPTS]
    for m, proc in zip(TF_SCRIPTS, procs):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
        assert out.split()[:2] == [m, "1"], out + err[-2000:]
    assert python("import quiet, os; print(os.environ['TF_ENABLE_ONEDNN_OPTS'])",
                  TF_ENABLE_ONEDNN_OPTS="0").stdout.strip() == "0"          # the user's choice: untouched
