"""Evaluate the best_fit baseline:

    python baseline_best_fit.py --episodes 1000 --seed 0 [--preset perfect_pack]
"""
from baselines import main

if __name__ == "__main__":
    main("best_fit")
