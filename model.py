"""Evaluate (norender) or watch (render) a trained controller on the real problem.

    python model.py norender log/binpacking.cma.16.64.best.json [--episodes 1000 --seed 0]
    python model.py render log/binpacking.cma.16.64.best.json

The controller itself, V's and M's loaders and the real rollout live in controller.py.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from bin_packing_environment import PRESETS, BatchBinPacking, episode_seeds, preset_config
from controller import (DEFAULT_RNN, DEFAULT_VAE, Controller, check_bin_size, evaluate_real, load_params, load_rnn,
                        load_vae)
from stages_common import episode_count, positive_int, seed_int


def render(controller, params, vae, rnn, config, seed, fps=20, max_frames=None):
    """Play one real episode with the agent and show it in the pygame window."""
    from play import watch
    env = BatchBinPacking(config, 1, pictures=True)
    obs = env.reset(episode_seeds(seed, 1, "eval"))
    h, c = rnn.initial_state(1)
    frames, captions, total, done = [], [], 0.0, False
    states, masks, actions = [], [], []
    while not done:
        z, _ = vae.encode_mu_logvar(obs["picture"])
        action = controller.act(params, np.concatenate([z, h], 1)[None], obs["action_mask"][None])[0]
        frames.append(obs["picture"][0])
        states.append(obs["state"][0])
        masks.append(obs["action_mask"][0])
        actions.append(int(action[0]))
        item = int(obs["state"][0, -1])
        obs, reward, dones, _ = env.step(action)
        h, c, _ = rnn.step(z, action, h, c)
        total += reward[0]
        done = dones[0]
        where = "a new bin" if action[0] == 0 else f"level {int(action[0])}"
        captions.append([f"step {len(frames)}   item {item}   the agent puts it on {where} (outlined): "
                         f"reward {reward[0]:+.0f}", f"total reward {total:.0f}", "q quits"])
    watch(frames, captions, fps=fps, max_frames=max_frames, states=states, masks=masks, actions=actions)
    return {"total_reward": total, "steps": len(frames)}


def main(argv=None):
    parser = argparse.ArgumentParser(description="Evaluate (norender) or watch (render) a trained controller.")
    parser.add_argument("mode", choices=["norender", "render"])
    parser.add_argument("params_file", help="e.g. log/binpacking.cma.16.64.best.json")
    parser.add_argument("--episodes", type=episode_count, default=100)
    parser.add_argument("--seed", type=seed_int, default=0, help="evaluation seed (episodes from the 'eval' stream)")
    parser.add_argument("--preset", default="perfect_pack", choices=sorted(PRESETS))
    parser.add_argument("--time_horizon", type=positive_int, default=None, help="override the preset's horizon")
    parser.add_argument("--batch", type=positive_int, default=500,
                        help="episodes stepped together (V encodes them in one call)")
    parser.add_argument("--vae", default=DEFAULT_VAE)
    parser.add_argument("--rnn", default=DEFAULT_RNN)
    args = parser.parse_args(argv)
    config = preset_config(args.preset, args.time_horizon)
    try:
        rnn = load_rnn(args.rnn)
        check_bin_size(rnn, args.rnn, config, args.preset)
        controller = Controller(rnn.z_size, rnn.hidden_size, rnn.action_size)
        params = load_params(args.params_file, controller)
        vae = load_vae(args.vae)
    except ValueError as e:
        parser.exit(2, f"error: {e}\n")
    if args.mode == "render":
        return render(controller, params, vae, rnn, config, args.seed)
    from baselines import summarise
    start = time.time()
    totals = evaluate_real(controller, params, vae, rnn, config, args.episodes, args.seed, args.batch)
    result = summarise("world_model", args.preset, totals, wall_time_s=round(time.time() - start, 1))
    print(f"world model agent on {args.preset}: {result['mean_reward']:.2f} +- {result['stderr']:.2f} "
          f"over {args.episodes} episodes ({result['wall_time_s']} s)")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
