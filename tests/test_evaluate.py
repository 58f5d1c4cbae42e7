import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def terminal_lines(text):
    """The lines a terminal shows of text: of each line, what its last carriage return leaves."""
    return [segs[-1] for segs in ([s for s in line.split("\r") if s.strip()] for line in text.split("\n")) if segs]


def test_main_job_scores_the_shipped_agent_and_the_baselines(tmp_path):
    out = tmp_path / "results"
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}      # as `make evaluate` runs
    run = subprocess.run([sys.executable, "evaluate.py", "--episodes", "3", "--agent_episodes", "2",
                          "--out_dir", str(out)], cwd=ROOT, capture_output=True, timeout=600, env=env)
    stdout, stderr = run.stdout.decode(), run.stderr.decode()          # bytes: the bars' carriage returns kept
    assert run.returncode == 0, stderr[-2000:]
    shown = terminal_lines(stdout) + terminal_lines(stderr)
    noise = [line for line in shown if re.search(r"Gym has been unmaintained|Gymnasium|absl|cuda|cuInit|"
                                                 r"^[IWE]\d{4} |tensorflow|TensorFlow|oneDNN|pygame", line)]
    assert not noise, noise                                  # only our own progress and table
    bars = terminal_lines(stderr)
    for policy, n in [("world_model", 2), ("best_fit", 3), ("sum_of_squares", 3), ("random", 3)]:
        assert len([b for b in bars if b.startswith(policy + " ")]) == 1, bars      # one bar per policy
        assert any(b.startswith(policy + " ") and f"{n}/{n} episodes" in b for b in bars)
    assert len(shown) <= 15, shown                           # one screen
    rows = json.loads((out / "evaluation.json").read_text())
    assert [r["policy"] for r in rows] == ["world_model", "best_fit", "sum_of_squares", "random"]
    assert [r["episodes"] for r in rows] == [2, 3, 3, 3]
    assert all(r["mean_reward"] < 0 for r in rows)           # minus the final waste
    assert "| world_model |" in stdout
    assert sorted(os.listdir(out)) == ["evaluation.json", "evaluation.png"]   # no temp file left


# ---------------------------------------------------------------- the chart

def rows(preset="perfect_pack", **means):
    means = means or {"world_model": -25.12, "best_fit": -26.98, "sum_of_squares": -21.22, "random": -291.4}
    return [{"policy": k, "preset": preset, "episodes": 1000, "mean_reward": v, "stderr": 0.4}
            for k, v in means.items()]


def test_chart_spreads_the_good_policies_and_puts_random_play_apart(tmp_path):
    from evaluate import bar_chart
    path = tmp_path / "evaluation.png"
    out = bar_chart(rows(), str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size < 200_000
    assert out["far"] == ["random"]
    assert (26.98 - 21.22) * out["pixels_per_waste"]["near"] >= 50       # Best Fit vs Sum of Squares: visible
    assert (25.12 - 21.22) * out["pixels_per_waste"]["near"] >= 35
    assert not os.path.exists(str(path) + ".tmp.png")


def test_chart_with_no_far_policy_and_no_published_results(tmp_path):
    from evaluate import bar_chart
    out = bar_chart(rows("small", best_fit=-3.1, sum_of_squares=-2.5), str(tmp_path / "e.png"))
    assert out["far"] == [] and list(out["pixels_per_waste"]) == ["near"]
    assert (tmp_path / "e.png").stat().st_size > 0
