"""Evaluate the random baseline: python baseline_random.py --episodes 1000 --seed 0 [--preset perfect_pack]."""
from baselines import main

if __name__ == "__main__":
    main("random")
