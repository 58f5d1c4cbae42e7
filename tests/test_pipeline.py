"""End-to-end smoke test: every stage at tiny scale, so a broken hand-off fails CI."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pipeline(work_dir, *extra):
    return subprocess.run([sys.executable, "pipeline.py", "--scale", "tiny", "--work_dir", str(work_dir), *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_tiny_pipeline_runs_every_stage_then_skips_them(tmp_path):
    # seed 8: the rollout sets are 9 (Best Fit) and 10 (Sum of Squares), and "10_*" sorts before "9_*"
    proc = pipeline(tmp_path, "--seed", "8")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.load(open(tmp_path / "pipeline_summary.json"))
    names = [s["stage"] for s in summary["stages"]]
    assert names == ["rollouts", "vae", "series", "rnn", "copy", "dream_starts", "imitate", "dream_fidelity",
                     "controller", "evaluation"]
    assert all(s["status"] == "ran" for s in summary["stages"])
    policies = [r["policy"] for r in summary["evaluation"]]
    assert policies == ["world_model", "best_fit"] and all(r["episodes"] == 3 for r in summary["evaluation"])
    for path in ("vae/vae.json", "rnn/rnn.json", "initial_z/initial_z.json", "series/series.npz",
                 "log/binpacking.cma.2.4.best.json", "dream_fidelity.json", "starts/dream_starts.npz"):
        assert (tmp_path / path).exists(), path
    # C was trained from two seeds side by side and the one with the better validation score kept
    runs = [json.load(open(tmp_path / "log" / f"seed{k}" / "binpacking.cma.2.4.best.json")) for k in (8, 9)]
    assert json.load(open(tmp_path / "log" / "binpacking.cma.2.4.best.json")) == max(runs, key=lambda r: r[1])
    assert (tmp_path / "log" / "seed9" / "train.out").stat().st_size > 0
    # V trained on the two Best Fit rollout sets only, whatever the file names' sort order
    assert json.load(open(tmp_path / "tf_vae" / "vae_report.json"))["episodes_per_rollout_set"] == {"10": 2, "9": 2}

    # nothing changed: every stage is skipped
    proc = pipeline(tmp_path, "--seed", "8")
    assert proc.returncode == 0
    summary = json.load(open(tmp_path / "pipeline_summary.json"))
    assert all(s["status"] == "skipped" for s in summary["stages"])

    # a round of World Models' iterative procedure on top: the first C's stages are kept, the
    # round's run, and the evaluation scores the round's C with the round's M
    proc = pipeline(tmp_path, "--seed", "8", "--rounds", "1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.load(open(tmp_path / "pipeline_summary.json"))
    status = {s["stage"]: s["status"] for s in summary["stages"]}
    assert list(status) == names[:-1] + ["round1_rollouts", "round1_series", "round1_rnn", "round1_dream_starts",
                                         "round1_imitate", "round1_dream_fidelity", "round1_controller", "evaluation"]
    assert all(status[n] == "skipped" for n in names[:-1])
    assert all(v == "ran" for n, v in status.items() if n not in names[:-1])
    with np.load(tmp_path / "round1" / "series" / "series.npz") as d:     # the rollouts and C's 3 episodes
        episodes = [str(n) for n in d["episode_names"]]
    assert len(episodes) == 9 and episodes[-3:] == ["29_000000", "29_000001", "29_000002"]
    report = json.load(open(tmp_path / "round1" / "tf_rnn" / "rnn_report.json"))
    assert report["flags"]["init_from"] == str(tmp_path / "rnn" / "rnn.json")
    assert summary["real_steps"]["round1_rollouts"] == 3 * 30 and summary["real_steps"]["rollouts"] == 6 * 30
    trained = [json.loads(open(tmp_path / "round1" / "log" / f"seed{k}" / "train.out").read().strip().splitlines()[-1])
               for k in (8, 9)]
    assert summary["real_steps"]["round1_controller_validation"] == sum(t["real_steps"] for t in trained) > 0
    assert "round1/log/binpacking.cma.2.4.best.json" in proc.stdout.split("[evaluation]")[1]
    # every round's dream is measured like the first, and the summary holds each one's measures
    round1 = json.load(open(tmp_path / "round1" / "dream_fidelity.json"))
    assert round1["rnn"] == str(tmp_path / "round1" / "tf_rnn" / "rnn.json")
    assert list(summary["dreams"]) == ["round0", "round1"]
    for measures in summary["dreams"].values():
        assert 0 <= measures["one_step_legal"] <= 1 and 0 <= measures["closed_loop_legal"] <= 1
        assert measures["ranking_horizon"] == 10 and measures["imitation_minus_best_fit_stderr"] >= 0
    assert summary["dreams"]["round1"]["one_step_legal"] == round(round1["one_step_legal"]["m_z_noise"], 4)
    assert "| round1 |" in proc.stdout

    # --force and changed inputs remove a stage's "fresh" paths before it runs again
    # (test_a_stage_redone_starts_afresh_and_a_killed_one_resumes): every checkpoint lies under them
    from pipeline import DEFAULT_RECIPE, plan, stages
    fresh = [f for stage in stages(plan("tiny", DEFAULT_RECIPE, rounds=1), str(tmp_path), 8)
             for f in stage.get("fresh", [])]
    state = [p for p in tmp_path.rglob("*") if p.name == "checkpoint" or p.name.endswith(".es.pkl")]
    assert len(state) >= 7, state                                         # V, two Ms and C's four seeds
    assert all(any(str(p).startswith(f + os.sep) for f in fresh) for p in state), (state, fresh)
    # a broken hand-off stops the pipeline at the stage that reads it, with its error
    (tmp_path / "tf_vae" / "vae.json").write_text("{ not json")
    proc = pipeline(tmp_path, "--seed", "8")
    assert proc.returncode == 1
    assert "stage series failed" in proc.stderr


def test_a_stage_redone_starts_afresh_and_a_killed_one_resumes(tmp_path):
    from pipeline import run_stage
    inputs, state, out = tmp_path / "in.txt", tmp_path / "state.txt", tmp_path / "out.txt"
    inputs.write_text("a")
    # a stage that resumes: each run adds one line to its state; its output is the state's length
    code = (f"import pathlib; s, o = pathlib.Path({str(state)!r}), pathlib.Path({str(out)!r}); "
            "s.write_text((s.read_text() if s.exists() else '') + 'x'); o.write_text(str(len(s.read_text())))")
    stage = dict(name="fake", commands=[[sys.executable, "-c", code]], inputs=[str(inputs)], outputs=[str(out)],
                 fresh=[str(state)])
    stamp = tmp_path / ".stamps" / "fake.json"
    stamp.parent.mkdir()
    assert run_stage(stage, str(stamp), force=False)[0] == "ran" and out.read_text() == "1"
    assert run_stage(stage, str(stamp), force=False)[0] == "skipped" and out.read_text() == "1"
    assert run_stage(stage, str(stamp), force=True)[0] == "ran" and out.read_text() == "1"       # afresh
    inputs.write_text("bb")
    assert run_stage(stage, str(stamp), force=False)[0] == "ran" and out.read_text() == "1"      # afresh
    stamp.unlink()                                 # killed half way: no stamp, its state kept
    assert run_stage(stage, str(stamp), force=False)[0] == "ran" and out.read_text() == "2"      # resumed


def test_side_by_side_runs_report_the_failing_one_with_its_log(tmp_path):
    from pipeline import run_side_by_side
    ok = [sys.executable, "-c", "print('fine')"]
    bad = [sys.executable, "-c", "import sys; print('the dream went wrong'); sys.exit(3)"]
    logs = [str(tmp_path / "a" / "train.out"), str(tmp_path / "b" / "train.out")]
    try:
        run_side_by_side("controller", [ok, bad], logs)
    except RuntimeError as e:
        assert "exit 3" in str(e) and "the dream went wrong" in str(e) and logs[1] in str(e)
    else:
        raise AssertionError("a failing run must stop the stage")
    assert open(logs[0]).read() == "fine\n"


def test_pick_controller_keeps_the_best_validation_score_and_refuses_bad_runs(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "pick_controller.py", *map(str, args)], cwd=ROOT,
                              capture_output=True, text=True)
    paths = []
    for k, reward in enumerate([-30.5, -24.25, -41.0]):
        paths.append(tmp_path / f"s{k}.best.json")
        paths[-1].write_text(json.dumps([[0.1 * k, 0.2], reward]))
    out = tmp_path / "log" / "best.json"
    out.parent.mkdir()
    proc = run(*paths, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text()) == [[0.1, 0.2], -24.25]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["chosen"] == str(paths[1])

    (tmp_path / "short.json").write_text(json.dumps([[0.1], -20.0]))
    proc = run(paths[0], tmp_path / "short.json", "--out", out)
    assert proc.returncode != 0 and "different parameter counts" in proc.stderr
    proc = run(paths[0], tmp_path / "missing.json", "--out", out)
    assert proc.returncode != 0 and "missing.json not found" in proc.stderr
    (tmp_path / "broken.json").write_text("{ not json")
    proc = run(paths[0], tmp_path / "broken.json", "--out", out)
    assert proc.returncode != 0 and "broken.json is not a train.py .best.json" in proc.stderr


def test_small_scale_trains_c_with_the_shipped_dream_flags(tmp_path):
    from pipeline import plan, stages
    controller = next(st for st in stages(plan("small", "starts"), str(tmp_path), 0) if st["name"] == "controller")
    for command in controller["parallel"]:
        flags = " ".join(command)
        for flag in ("--dream_reward picture", "--common_random_numbers", "--z_noise 0.0", "--time_horizon 300",
                     "--weight_decay 400", "--dream_starts"):
            assert flag in flags, flag


def test_v_data_is_picked_by_rollout_set_not_by_sort_order(tmp_path):
    from pipeline import plan, stages
    from vae_train import select_files
    names = [f"{k}_{i:06d}.npz" for k in (1, 2, 3, 8, 9, 10) for i in range(3)]
    paths = sorted(str(tmp_path / n) for n in names)                 # 10_* sorts before 1_*... and 8_*
    for seed, sets in ((0, "1,2"), (7, "8,9")):
        vae = next(st for st in stages(plan("small", "starts"), str(tmp_path), seed) if st["name"] == "vae")
        command = vae["commands"][0]
        assert command[command.index("--rollout_sets") + 1] == sets
        picked = select_files(paths, sets, 10000)
        assert sorted(os.path.basename(p)[:2] for p in picked) == sorted(f"{k}_" for k in sets.split(",") for _ in range(3))
    assert len(select_files(paths, "8,9", 4)) == 4 and select_files(paths, None, 100) == paths


def test_scale_and_recipe_are_two_knobs(tmp_path):
    from pipeline import DEFAULT_RECIPE, plan, stages
    assert DEFAULT_RECIPE == "starts"
    small = plan("small", "starts")
    assert [n for n, _, _ in small["rollouts"]] == [300, 200, 300]          # the shipped agent's rollouts
    for scale in ("tiny", "small", "paper"):
        original = {st["name"]: st for st in stages(plan(scale, "original"), str(tmp_path), 0)}
        assert "dream_starts" not in original                               # dreams from the empty packing
        train = " ".join(original["controller"]["parallel"][0])
        for flag in ("--dream_reward", "--z_noise", "--dream_starts", "--common_random_numbers"):
            assert flag not in train, (scale, flag)
        assert "--kl_tolerance 0.5" in " ".join(original["vae"]["commands"][0])
        assert "--mixture" not in " ".join(original["rnn"]["commands"][0])
    paper = plan("paper", "original")
    assert [n for n, _, _ in paper["rollouts"]] == [6000, 4000] and paper["generations"] == 1000
    assert plan("paper", "starts")["popsize"] == paper["popsize"] == 64


def test_the_fidelity_stage_measures_the_dream_c_trains_in(tmp_path):
    from pipeline import plan, stages
    for recipe in ("starts", "original"):
        named = {st["name"]: st for st in stages(plan("small", recipe), str(tmp_path), 0)}
        fidelity, train = named["dream_fidelity"]["commands"][0], named["controller"]["parallel"][0]
        for flag in ("--dream_reward", "--z_noise", "--dream_starts"):
            values = [cmd[cmd.index(flag) + 1] if flag in cmd else None for cmd in (fidelity, train)]
            assert values[0] == values[1], (recipe, flag, values)
        if recipe == "starts":
            assert fidelity[fidelity.index("--ranking_horizons") + 1] == train[train.index("--time_horizon") + 1]


def test_dry_run_prints_the_commands_and_an_estimate_and_runs_nothing(tmp_path):
    proc = subprocess.run([sys.executable, "pipeline.py", "--scale", "paper", "--dry_run", "--workers", "16",
                           "--work_dir", str(tmp_path / "paper")], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "train.py" in proc.stdout and "--num_worker 16" in proc.stdout and "total" in proc.stdout
    hours = float(proc.stdout.strip().splitlines()[-1].split()[1])
    assert 1 < hours < 1000
    assert not (tmp_path / "paper").exists()


def test_the_estimate_shares_cmaes_and_its_validation_over_the_workers():
    from pipeline import estimate, plan
    one, many = (estimate(plan("paper", "starts", workers=k))["controller"] for k in (1, 64))
    assert one == pytest.approx(64 * many)


def test_the_transition_recipe_trains_the_mlp_m_on_item_labelled_series(tmp_path):
    from pipeline import plan, stages
    for scale, steps, seq_len in (("small", 2000, 50), ("tiny", 10, 5)):
        named = {st["name"]: st for st in stages(plan(scale, "transition"), str(tmp_path), 0)}
        series, rnn = named["series"]["commands"][0], named["rnn"]["commands"][0]
        assert series[series.index("--item_frames") + 1] == "4000"
        flags = " ".join(rnn)
        for flag in ("--transition mlp", "--z_input mean", "--transition_input_noise 0.1", "--batch_size 64",
                     f"--steps {steps}", f"--seq_len {seq_len}"):
            assert flag in flags, (scale, flag)
        assert "dream_starts" in named and "--dream_reward picture" in " ".join(named["controller"]["parallel"][0])
    starts = {st["name"]: st for st in stages(plan("small", "starts"), str(tmp_path), 0)}
    assert "--item_frames" not in starts["series"]["commands"][0]
    assert "--batch_size" not in starts["rnn"]["commands"][0] and "--steps 4000" in " ".join(starts["rnn"]["commands"][0])


def test_rounds_play_the_last_c_and_train_m_on_from_the_last_m(tmp_path):
    from pipeline import plan, stages
    named = {st["name"]: st for st in stages(plan("small", "transition", rounds=2), str(tmp_path), 0)}
    w = str(tmp_path)
    first_c = f"{w}/log/binpacking.cma.16.64.best.json"
    extract = " ".join(named["round2_rollouts"]["commands"][0])
    assert f"--controller {w}/round1/log/binpacking.cma.16.64.best.json" in extract
    assert f"--rnn {w}/round1/tf_rnn/rnn.json" in extract and "--epsilon 0.1 --episodes 100" in extract
    assert f"--controller {first_c}" in " ".join(named["round1_rollouts"]["commands"][0])
    series = named["round2_series"]["commands"][0]
    assert series[series.index("--record_dir") + 1:series.index("--vae")] == [
        f"{w}/record", f"{w}/round1/record", f"{w}/round2/record"]
    assert "--item_frames" in series
    rnn = " ".join(named["round2_rnn"]["commands"][0])
    assert f"--init_from {w}/round1/tf_rnn/rnn.json" in rnn and "--steps 3000" in rnn
    assert "--transition mlp" in rnn and "--transition_input_noise 0.1" in rnn
    train = named["round2_controller"]["parallel"][0]
    assert train[train.index("--dream_starts") + 1] == f"{w}/round2/starts/dream_starts.npz"
    assert train[train.index("--rnn") + 1] == f"{w}/round2/tf_rnn/rnn.json"
    first = named["controller"]["parallel"][0]
    # the same dream recipe in every round: only the paths differ
    strip = lambda cmd: [a for a in cmd if w not in a]  # noqa: E731
    assert strip(train) == strip(first)
    evaluation = named["evaluation"]["commands"][0]
    assert evaluation[3] == f"{w}/round2/log/binpacking.cma.16.64.best.json"
    fidelity = named["round2_dream_fidelity"]["commands"][0]
    for flag, path in (("--rnn", "round2/tf_rnn/rnn.json"), ("--initial_z", "round2/tf_rnn/initial_z.json"),
                       ("--dream_starts", "round2/starts/dream_starts.npz"), ("--out", "round2/dream_fidelity.json"),
                       ("--ranking_controllers", "round2/imitate/sum_of_squares.json")):
        assert fidelity[fidelity.index(flag) + 1] == f"{w}/{path}", flag
    imitate = named["round2_imitate"]["commands"][0]
    assert imitate[imitate.index("--rnn") + 1] == f"{w}/round2/tf_rnn/rnn.json"
    assert imitate[imitate.index("--out") + 1] == f"{w}/round2/imitate/sum_of_squares.json"
    assert "round1_rollouts" not in {st["name"] for st in stages(plan("small", "transition"), w, 0)}
