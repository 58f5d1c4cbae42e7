"""One description of a dream: train.py, analysis.dream_fidelity and dream_env.py read the same flags."""
import dataclasses

import pytest

from analysis import dream_fidelity
from dream_env import DREAM_FLAGS, DreamSpec
import train

FLAGS = ["--temperature", "1.5", "--z_noise", "0", "--dream_reward", "picture", "--picture_every", "3",
         "--dream_starts", "starts.npz", "--empty_start_fraction", "0.25", "--common_random_numbers"]
EXPECTED = DreamSpec(temperature=1.5, z_noise=0.0, reward="picture", picture_every=3, starts="starts.npz",
                     empty_start_fraction=0.25, common_random_numbers=True)


def test_train_and_dream_fidelity_read_the_same_dream_from_the_same_flags():
    _, args = train.parse_args(FLAGS)
    assert DreamSpec.from_args(args) == EXPECTED
    fidelity = dream_fidelity.build_parser().parse_args(FLAGS)
    assert DreamSpec.from_args(fidelity) == EXPECTED
    # the defaults are World Models' dream, in both
    assert DreamSpec.from_args(train.parse_args([])[1]) == DreamSpec() == \
        DreamSpec.from_args(dream_fidelity.build_parser().parse_args([]))
    assert set(DREAM_FLAGS) == {f.name for f in dataclasses.fields(DreamSpec)}
    # the older name of the paired ranking still means common random numbers
    assert dream_fidelity.build_parser().parse_args(["--ranking_paired"]).common_random_numbers


@pytest.mark.parametrize("flags, message", [
    (["--picture_every", "2"], "--picture_every needs --dream_reward picture"),
    (["--empty_start_fraction", "0.5"], "--empty_start_fraction needs --dream_starts"),
    (["--dream_starts", "s.npz", "--empty_start_fraction", "1.5"], "--empty_start_fraction must be in [0, 1]"),
    (["--z_noise", "nan"], "--z_noise"),
    (["--temperature", "0"], "--temperature"),
])
def test_a_flag_combination_that_describes_no_dream_is_refused(flags, message, capsys):
    with pytest.raises(SystemExit):
        train.parse_args(flags)
    assert message in capsys.readouterr().err


def test_a_picture_scored_dream_needs_v():
    with pytest.raises(ValueError, match="needs V"):
        DreamSpec(reward="picture").rollout(None, [[0.0]], None, 1, None, vae=None)
