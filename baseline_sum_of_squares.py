"""Evaluate the sum_of_squares baseline:

    python baseline_sum_of_squares.py --episodes 1000 --seed 0 [--preset perfect_pack]
"""
from baselines import main

if __name__ == "__main__":
    main("sum_of_squares")
