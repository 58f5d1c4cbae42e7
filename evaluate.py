"""The main job: score the shipped agent and the baselines on the real environment.

Every policy plays the same episodes (the 'eval' seed stream, never used in training) and
the script prints a table of mean total reward with its standard error, writes the rows to
results/evaluation.json and a bar chart to results/evaluation.png.
"""
import argparse
import os
import time

import baselines
from bin_packing_environment import PRESETS
from stages_common import atomic_write_json


def bar_chart(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    names = [r["policy"] for r in rows]
    means = [r["mean_reward"] for r in rows]
    ax.barh(names, means, xerr=[1.96 * r["stderr"] for r in rows], color="#4a90c2")
    for y, m in enumerate(means):
        inside = m < -60                     # long bars carry their value inside, short ones beside
        ax.text(m, y, f"  {m:.1f}" if inside else f"{m:.1f}  ", va="center", ha="left" if inside else "right",
                color="white" if inside else "black")
    ax.set_xlabel("mean total reward per episode (= minus final waste); bars: 95% interval")
    ax.set_title(f"{rows[0]['preset']}, {rows[0]['episodes']} episodes each")
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, path)


def evaluate_agent(args):
    """The world-model agent (V + M + C) on the real environment, same seed stream as the baselines."""
    from model import Controller, evaluate_real, load_params, load_rnn, load_vae
    start = time.time()
    rnn, vae = load_rnn(args.rnn), load_vae(args.vae)
    controller = Controller(rnn.z_size, rnn.hidden_size, rnn.action_size)
    params = load_params(args.agent, controller)
    totals = evaluate_real(controller, params, vae, rnn, args.preset, args.agent_episodes, args.seed)
    return baselines.summarise("world_model", args.preset, totals, wall_time_s=round(time.time() - start, 1))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", default="perfect_pack", choices=sorted(PRESETS))
    parser.add_argument("--out_dir", default="results")
    parser.add_argument("--agent", default="log/binpacking.cma.16.64.best.json", help="controller parameters")
    parser.add_argument("--agent_episodes", type=int, default=1000,
                        help="episodes for the world-model agent (V encodes ~5,000 frames/s on 2 cores)")
    parser.add_argument("--vae", default="vae/vae.json")
    parser.add_argument("--rnn", default="rnn/rnn.json")
    args = parser.parse_args()
    if args.episodes < 1 or args.agent_episodes < 0:
        parser.error("--episodes must be >= 1 and --agent_episodes >= 0")
    rows = []
    if args.agent_episodes:
        if all(os.path.exists(p) for p in (args.agent, args.vae, args.rnn)):
            rows.append(evaluate_agent(args))
        else:
            print(f"no shipped agent found ({args.agent}, {args.vae}, {args.rnn}): baselines only")
    for name, policy in baselines.POLICIES.items():
        start = time.time()
        totals = baselines.evaluate_policy(policy, args.preset, args.episodes, args.seed)
        rows.append(baselines.summarise(name, args.preset, totals, wall_time_s=round(time.time() - start, 1)))
    print(f"| policy | mean reward | stderr | episodes |\n| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['policy']} | {r['mean_reward']:.2f} | {r['stderr']:.2f} | {r['episodes']} |")
    os.makedirs(args.out_dir, exist_ok=True)
    atomic_write_json(os.path.join(args.out_dir, "evaluation.json"), rows, indent=1)
    bar_chart(rows, os.path.join(args.out_dir, "evaluation.png"))
    print(f"wrote {args.out_dir}/evaluation.json and {args.out_dir}/evaluation.png")


if __name__ == "__main__":
    main()
