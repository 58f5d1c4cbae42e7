"""The main job: score the shipped agent and the baselines on the real environment.

Every policy plays the same episodes (the 'eval' seed stream, never used in training) and
the script prints a table of mean total reward with its standard error, writes the rows to
results/evaluation.json and a bar chart to results/evaluation.png.
"""
import argparse
import os
import time

import quiet  # noqa: F401  (first: gym's banner hidden before anything imports gym)
import baselines
from bin_packing_environment import PRESETS
from stages_common import (MAX_EPISODES, atomic_write_json, bounded_int, check_output_dir, episode_count, fail,
                           seed_int)


# Published results on perfect_pack (final waste = minus the mean total reward): reference lines.
PUBLISHED = {"perfect_pack": [("World Models, published", 104.48), ("Rainbow, published", 96.0)]}
NAMES = {"world_model": "World Models agent (ours)", "best_fit": "Best Fit", "sum_of_squares": "Sum of Squares",
         "random": "random valid action"}


def bar_chart(rows, path):
    """Final waste (= -mean reward) of each row, +- 1 stderr, lowest on top, written to path (PNG).

    Wastes far above the best (random play) go to a second panel of a broken axis, with the published
    results, so that the differences between the good policies fill the first. Returns
    {"pixels_per_waste": {panel: horizontal pixels per unit of waste}, "far": [policies in the far panel]}.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: -r["mean_reward"])
    waste = [-r["mean_reward"] for r in rows]
    err = [r["stderr"] if r["stderr"] == r["stderr"] else 0 for r in rows]        # nan (1 episode): none
    refs = PUBLISHED.get(rows[0]["preset"], [])
    cut = 3 * max(min(waste), 0) + 5                      # wastes beyond this go to the far panel
    far = [w > cut for w in waste]
    near_max = max([w + e for w, e, f in zip(waste, err, far) if not f], default=cut)
    far_values = [w for w, f in zip(waste, far) if f] + [v for _, v in refs]
    dpi = 120
    if far_values:
        fig, (ax, ax_far) = plt.subplots(1, 2, sharey=True, figsize=(9, 1.3 + 0.55 * len(rows)), dpi=dpi,
                                         gridspec_kw={"width_ratios": [3, 2], "wspace": 0.06})
        axes = (ax, ax_far)
    else:
        fig, ax = plt.subplots(figsize=(7, 1.3 + 0.55 * len(rows)), dpi=dpi)
        axes, ax_far = (ax,), None
    y = list(range(len(rows)))
    colours = ["#e8892b" if r["policy"] == "world_model" else "#9a9a9a" if f else "#4a90c2"
               for r, f in zip(rows, far)]
    for a in axes:
        a.barh(y, waste, xerr=err, color=colours, capsize=4, error_kw={"elinewidth": 1.2})
        a.grid(axis="x", color="#dddddd", linewidth=0.8)
        a.set_axisbelow(True)
    near_hi = near_max * 1.3
    ax.set_xlim(0, near_hi)
    ax.set_yticks(y, [NAMES.get(r["policy"], r["policy"]) for r in rows])
    ax.invert_yaxis()
    if ax_far is not None:
        lo, hi = min(far_values), max(w + e for w, e in zip(waste + [v for _, v in refs], err + [0] * len(refs)))
        ax_far.set_xlim(lo - 0.12 * (hi - lo + 10), hi + 0.12 * (hi - lo + 10))
    for k, (w, e, f) in enumerate(zip(waste, err, far)):
        label = f"{w:.2f} \u00b1 {e:.2f}"
        span = ax_far.get_xlim() if f else None
        if f and w - span[0] > 0.45 * (span[1] - span[0]):  # long far bars carry their value inside
            ax_far.text(w - e - 0.02 * (ax_far.get_xlim()[1] - ax_far.get_xlim()[0]), k, label, va="center",
                        ha="right", fontsize=9, color="white")
        else:
            (ax_far if f else ax).text(w + e + (0.01 * (span[1] - span[0]) if f else near_hi * 0.01), k, label,
                                       va="center", fontsize=9)
    if ax_far is not None:
        for (name, value), style in zip(refs, ("--", ":", "-.")):
            ax_far.axvline(value, color="#b03030", linestyle=style, linewidth=1.4, label=f"{name}: {value:g}")
        if refs:
            ax_far.legend(loc="upper right", fontsize=8, frameon=True, framealpha=0.9)
        ax.spines["right"].set_visible(False)
        ax_far.spines["left"].set_visible(False)
        ax_far.tick_params(left=False)
        d = 0.015                                          # the break: two slashes on each side
        for a, x in ((ax, 1), (ax_far, 0)):
            kw = dict(transform=a.transAxes, color="k", clip_on=False, linewidth=1)
            a.plot((x - d * (2 if x else 3), x + d * (2 if x else 3)), (-d * 2, d * 2), **kw)
            a.plot((x - d * (2 if x else 3), x + d * (2 if x else 3)), (1 - d * 2, 1 + d * 2), **kw)
    episodes = sorted({r["episodes"] for r in rows})
    fig.suptitle(f"{rows[0]['preset']}: final waste per episode (= minus the total reward), lower is better",
                 fontsize=11)
    fig.supxlabel(f"mean final waste over {' / '.join(map(str, episodes))} evaluation episodes, "
                  f"bars \u00b1 1 standard error" + ("; the axis is broken" if ax_far is not None else ""),
                  fontsize=9)
    height = fig.get_figheight()
    fig.subplots_adjust(left=0.25, right=0.98, top=1 - 0.45 / height, bottom=0.55 / height)
    fig.canvas.draw()
    per = {name: float(a.transData.transform((1, 0))[0] - a.transData.transform((0, 0))[0])
           for name, a in zip(("near", "far"), axes)}
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    os.replace(tmp, path)
    return {"pixels_per_waste": per, "far": [r["policy"] for r, f in zip(rows, far) if f]}


DEFAULT_AGENT = {"agent": "log/binpacking.cma.16.64.best.json", "vae": "vae/vae.json", "rnn": "rnn/rnn.json"}


def evaluate_agent(args):
    """The world-model agent (V + M + C) on the real environment, same seed stream as the baselines."""
    from bin_packing_environment import preset_config
    from controller import Controller, check_bin_size, evaluate_real, load_params, load_rnn, load_vae
    start = time.time()
    rnn, vae = load_rnn(args.rnn), load_vae(args.vae)            # ValueError naming the file if unusable
    check_bin_size(rnn, args.rnn, preset_config(args.preset), args.preset)
    controller = Controller(rnn.z_size, rnn.hidden_size, rnn.action_size)
    params = load_params(args.agent, controller)
    totals = evaluate_real(controller, params, vae, rnn, args.preset, args.agent_episodes, args.seed,
                           progress="world_model")
    return baselines.summarise("world_model", args.preset, totals, wall_time_s=round(time.time() - start, 1))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--episodes", type=episode_count, default=1000)
    parser.add_argument("--seed", type=seed_int, default=0)
    parser.add_argument("--preset", default="perfect_pack", choices=sorted(PRESETS))
    parser.add_argument("--out_dir", default="results")
    parser.add_argument("--agent", default=None, help=f"controller parameters (default: {DEFAULT_AGENT['agent']})")
    parser.add_argument("--agent_episodes", type=bounded_int(0, MAX_EPISODES), default=1000,
                        help="episodes for the world-model agent (V encodes ~5,000 frames/s on 2 cores)")
    parser.add_argument("--vae", default=None, help=f"default: {DEFAULT_AGENT['vae']}")
    parser.add_argument("--rnn", default=None, help=f"default: {DEFAULT_AGENT['rnn']}")
    args = parser.parse_args()
    # a file named on the command line must be there; without the shipped files: baselines only
    for flag, default in DEFAULT_AGENT.items():
        path = getattr(args, flag)
        if path is not None and not os.path.isfile(path):
            fail(parser, f"--{flag} {path} " + ("is a directory, not a file" if os.path.isdir(path) else "not found"))
        setattr(args, flag, path or default)
    check_output_dir(parser, args.out_dir, "--out_dir")
    rows = []
    agent = f"the world-model agent on {args.agent_episodes} episodes, " if args.agent_episodes else ""
    print(f"{args.preset}, seed {args.seed}: {agent}each baseline on {args.episodes}", flush=True)
    if args.agent_episodes:
        if all(os.path.exists(p) for p in (args.agent, args.vae, args.rnn)):
            try:
                rows.append(evaluate_agent(args))
            except ValueError as e:
                fail(parser, str(e))
        else:
            print(f"no shipped agent found ({args.agent}, {args.vae}, {args.rnn}): baselines only", flush=True)
    for name, policy in baselines.POLICIES.items():
        start = time.time()
        totals = baselines.evaluate_policy(policy, args.preset, args.episodes, args.seed, progress=name)
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
