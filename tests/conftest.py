import os
import sys

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TensorFlow's oneDNN kernels: V's transposed convolutions decode ~20x faster with them on these
# CPUs (200 pictures: 1.2 s against 22.6 s). The tests check properties, not the shipped numbers,
# so they may use them; the stages keep TensorFlow's default.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
