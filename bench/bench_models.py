"""V and M speed with TensorFlow's oneDNN kernels off and on, side by side in one run.

    python bench/bench_models.py          # writes bench/results_models.json

Each setting runs in its own process (TF_ENABLE_ONEDNN_OPTS is read when TensorFlow is
imported): V's training frames/s, V's encoding and decoding frames/s and M's training
steps/s on the same batches of real Best Fit pictures, then peak memory. Our scripts turn
the kernels on (quiet.py); on CPUs where TensorFlow leaves them off by default, "off" is
what a script would get without that.
"""
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def measure() -> dict:
    """This process's V and M speeds (TF_ENABLE_ONEDNN_OPTS as set in its environment)."""
    sys.path.insert(0, ROOT)
    import numpy as np

    import baselines
    from bin_packing_environment import BatchBinPacking, episode_seeds
    from rnn.rnn import MDNRNN
    from vae.vae import ConvVAE

    def per_second(work, items, repeats):
        work()                                      # traced and warmed up first
        start = time.perf_counter()
        for _ in range(repeats):
            work()
        return repeats * items / (time.perf_counter() - start)

    env = BatchBinPacking("perfect_pack", 100, pictures=True)
    obs = env.reset(episode_seeds(0, 100))
    for _ in range(300):
        obs, *_ = env.step(baselines.best_fit(obs["state"], obs["action_mask"]))
    frames = obs["picture"]
    vae = ConvVAE(seed=0)
    big = np.repeat(frames, 10, axis=0)
    z = vae.encode_mu_logvar(frames)[0]
    rnn = MDNRNN(seed=0)
    rng = np.random.default_rng(0)
    batch = (rng.normal(size=(100, 100, 32)), rng.integers(30, size=(100, 100)), rng.normal(size=(100, 100)),
             np.zeros((100, 100)), np.ones((100, 100, 30)), rng.normal(size=(100, 100, 32)), np.ones((100, 100)))
    return {"vae_train_frames_per_s": round(per_second(lambda: vae.train_step(frames), len(frames), 10)),
            "vae_encode_frames_per_s": round(per_second(lambda: vae.encode_mu_logvar(big), len(big), 2)),
            "vae_decode_frames_per_s": round(per_second(lambda: vae.decode(z), len(z), 3)),
            "rnn_train_steps_per_s (batch 100 x 100 steps)": round(per_second(lambda: rnn.train_step(*batch), 1, 5), 2),
            "peak_memory_mb (V and M training)": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main():
    results = {}
    for setting in ("0", "1"):
        env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=setting)
        out = subprocess.run([sys.executable, __file__, "--child"], cwd=ROOT, env=env, check=True,
                             capture_output=True, text=True).stdout
        results["on" if setting == "1" else "off"] = json.loads(out.strip().splitlines()[-1])
    results["ratio_on_over_off"] = {k: round(results["on"][k] / results["off"][k], 2)
                                    for k in results["on"] if not k.startswith("peak")}
    with open(os.path.join(HERE, "results_models.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    if sys.argv[1:] == ["--child"]:
        print(json.dumps(measure()))
    else:
        main()
