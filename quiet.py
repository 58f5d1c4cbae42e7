"""A quiet start for our scripts: no gym banner, no TensorFlow C++ start-up lines.

- `hide_gym_banner()` (run when this module is imported): gym prints, at `import gym`, the
  gym_notices entry for its version ("Gym has been unmaintained since 2022 ..."). That one
  entry is dropped before gym is imported; other notices, warnings and errors still show.
  Import this module before anything that imports gym (evaluate.py does).
- `import_tensorflow()`: TensorFlow with TF_CPP_MIN_LOG_LEVEL=2 unless the user has set it,
  and the lines its C++ side writes before its logging is set up (absl's "All log messages
  before absl::InitializeLog()", "Could not find cuda drivers", "failed call to cuInit" on a
  machine without a GPU) dropped; any other line it writes is passed on, and everything is
  passed on if the import fails. vae/vae.py imports TensorFlow through it.
- TensorFlow's oneDNN kernels are turned on (TF_ENABLE_ONEDNN_OPTS=1) unless the user has set
  the variable: on CPUs where TensorFlow leaves them off by default, V's decoder runs ~7x
  faster with them (100 pictures: 0.30 s against 2.10 s on one core) and its encoder ~1.2x.
  The variable is read when TensorFlow is imported, so it is set when this module is
  imported; bin_packing_environment imports it first thing, and so every script here does.
  Floats differ from the default kernels' in the last bits (TF_ENABLE_ONEDNN_OPTS=0 gives
  those back).
"""
from __future__ import annotations

import os
import re
import sys
import tempfile

# Lines TensorFlow writes at start-up on a machine with no GPU: harmless, and not errors of ours.
_TF_NOISE = re.compile(r"All log messages before absl::InitializeLog\(\)|^[IW]\d{4} |cuda_platform\.cc.*cuInit|"
                       r"^To enable the following instructions|Unable to register cu(DNN|FFT|BLAS) factory")


os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


def hide_gym_banner() -> None:
    """Drop gym's "unmaintained" notice for the installed gym version (gym_notices), if gym is not imported yet."""
    if "gym" in sys.modules:
        return
    try:
        from importlib.metadata import version

        import gym_notices.notices as notices
        installed = version("gym")
        if "unmaintained" in notices.notices.get(installed, ""):
            del notices.notices[installed]
    except Exception:       # no gym or no gym_notices: nothing to hide
        pass


def import_tensorflow():
    """`import tensorflow` without its start-up lines (see the module's docstring); returns the module."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    if "TF_CPP_MIN_LOG_LEVEL" in os.environ:     # the user chose what to see
        import tensorflow as tf
        return tf
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        failed = True
        try:
            import tensorflow as tf
            tf.config.list_physical_devices()   # the GPU probe (and its cuInit line) happens here, not later
            failed = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines(keepends=True)
            passed_on = lines if failed else [line for line in lines if not _TF_NOISE.search(line)]
            if passed_on:
                sys.stderr.write("".join(passed_on))
                sys.stderr.flush()
    return tf


hide_gym_banner()
