import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_main_job_scores_the_shipped_agent_and_the_baselines(tmp_path):
    out = tmp_path / "results"
    run = subprocess.run([sys.executable, "evaluate.py", "--episodes", "3", "--agent_episodes", "2",
                          "--out_dir", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = json.loads((out / "evaluation.json").read_text())
    assert [r["policy"] for r in rows] == ["world_model", "best_fit", "sum_of_squares", "random"]
    assert [r["episodes"] for r in rows] == [2, 3, 3, 3]
    assert all(r["mean_reward"] < 0 for r in rows)           # minus the final waste
    assert "| world_model |" in run.stdout
    assert sorted(os.listdir(out)) == ["evaluation.json", "evaluation.png"]   # no temp file left
