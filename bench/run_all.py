"""Every benchmark of the project in one command: python bench/run_all.py (or make bench).

    python bench/run_all.py [--pipeline_summary runs/small/pipeline_summary.json]

Runs bench_env.py, bench_rollouts.py, bench_dream.py, bench_rainbow.py and bench_models.py (V's
training, encoding and decoding frames/s and M's training steps/s, TensorFlow's oneDNN kernels off
and on) as they are, and collects the stage timings and final rewards that
the training runs recorded (runs/small/*, results/evaluation.json) when they exist. Writes
bench/results.json and bench/results.md (the table the README quotes).
"""
import argparse
import json
import os
import platform
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)


def run_script(name):
    subprocess.run([sys.executable, os.path.join(HERE, name)], cwd=ROOT, check=True)
    with open(os.path.join(HERE, name.replace("bench_", "results_").replace(".py", ".json"))) as f:
        return json.load(f)


def recorded_runs(pipeline_summary):
    """What the real training runs wrote down, if they are on this machine."""
    out = {}
    for key, path in (("vae_report", "runs/small/tf_vae/vae_report.json"),
                      ("rnn_report", "runs/small/tf_rnn/rnn_report.json"),
                      ("pipeline_small", pipeline_summary),
                      ("evaluation", "results/evaluation.json")):
        full = os.path.join(ROOT, path)
        if os.path.exists(full):
            with open(full) as f:
                out[key] = json.load(f)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description="Run every benchmark; write bench/results.json and results.md.")
    parser.add_argument("--pipeline_summary", default="runs/small/pipeline_summary.json",
                        help="summary of a `pipeline.py --scale small` run (relative to the repo root)")
    args = parser.parse_args(argv)
    results = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
               "environment": run_script("bench_env.py"),
               "rollouts": run_script("bench_rollouts.py"),
               "dream": run_script("bench_dream.py"),
               "rainbow": run_script("bench_rainbow.py"),
               "models": run_script("bench_models.py"),
               "recorded": recorded_runs(args.pipeline_summary)}
    with open(os.path.join(HERE, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    env, dream, models = results["environment"], results["dream"], results["models"]
    rows = [("single gym env with pictures, steps/s", env["single_env_pictures_steps_per_s"]),
            ("batch env with pictures, steps/s (ratio)",
             f"{env['batch_pictures_steps_per_s']:,} ({env['ratio_batch_pictures']}x)"),
            ("batch env without pictures, steps/s (ratio)",
             f"{env['batch_no_pictures_steps_per_s']:,} ({env['ratio_batch_no_pictures']}x)")]
    rows += [(f"{r['what']}, episodes/s", r["episodes_per_s"]) for r in results["rollouts"]["rollouts"]]
    rows += [("Rainbow training steps/s", results["rollouts"]["rainbow_training"]["steps_per_s"])]
    for r in results["rainbow"]["results"]:
        name = os.path.basename(r["config"])
        rows.append((f"Rainbow training steps/s ({name}), Dopamine's replay vs components/replay.py",
                     f"{r['old']['steps_per_s']} vs {r['new']['steps_per_s']} ({r['speedup_steps_per_s']}x)"))
        if "checkpoint" in r:
            ck = r["checkpoint"]
            rows.append((f"Rainbow checkpoint save, full {ck['pictures']}-picture replay ({name}), s",
                         f"{ck['old']['save_s']} vs {ck['new']['save_s']} ({ck['save_speedup']}x)"))
        if "iteration_estimate_s" in r:
            it = r["iteration_estimate_s"]
            rows.append((f"Rainbow iteration ({name}: {it['what']}), s",
                         f"{it['old']} vs {it['new']} ({it['speedup']}x)"))
    rows += [(f"{k}, oneDNN off vs on (our scripts' setting)", f"{models['off'][k]} vs {models['on'][k]}"
              + (f" ({models['ratio_on_over_off'][k]}x)" if k in models["ratio_on_over_off"] else ""))
             for k in models["on"]]
    rows += [(f"dream steps/s, {dream['popsize']}x{dream['num_episode']} batched", dream["batched_dream_steps_per_s"]),
             (f"CMA-ES generation in the dream, {dream['horizon']} steps: batched vs one at a time (s)",
              f"{dream['batched_generation_s']} vs {dream['one_at_a_time_generation_s']} ({dream['speedup']}x)")]
    if "validation" in dream:
        v = dream["validation"]
        rows.append((f"C's validation in train.py, {v['episodes']} real episodes: 1 worker vs {v['workers']} (s)",
                     f"{v['one_worker_s']} vs {v['shared_s']} ({v['speedup']}x)"))
    pipeline = results["recorded"].get("pipeline_small")
    if pipeline:
        skipped = [st["stage"] for st in pipeline.get("stages", []) if st["status"] == "skipped"]
        note = f", {len(skipped)} skipped stages not counted" if skipped else ""
        rows.append((f"whole pipeline at SCALE=small ({args.pipeline_summary}{note}), s", pipeline["wall_s"]))
    for r in results["recorded"].get("evaluation", []):
        rows.append((f"final reward, {r['policy']} ({r['episodes']} episodes)", f"{r['mean_reward']} +- {r['stderr']}"))
    table = "| measure | value |\n| --- | --- |\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
    with open(os.path.join(HERE, "results.md"), "w") as f:
        f.write(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
