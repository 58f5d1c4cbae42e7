"""End-to-end smoke test: every stage at tiny scale, so a broken hand-off fails CI."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pipeline(work_dir, *extra):
    return subprocess.run([sys.executable, "pipeline.py", "--scale", "tiny", "--work_dir", str(work_dir), *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_tiny_pipeline_runs_every_stage_then_skips_them(tmp_path):
    proc = pipeline(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.load(open(tmp_path / "pipeline_summary.json"))
    names = [s["stage"] for s in summary["stages"]]
    assert names == ["rollouts", "vae", "series", "rnn", "copy", "dream_fidelity", "dream_starts", "controller",
                     "evaluation"]
    assert all(s["status"] == "ran" for s in summary["stages"])
    policies = [r["policy"] for r in summary["evaluation"]]
    assert policies == ["world_model", "best_fit"] and all(r["episodes"] == 3 for r in summary["evaluation"])
    for path in ("vae/vae.json", "rnn/rnn.json", "initial_z/initial_z.json", "series/series.npz",
                 "log/binpacking.cma.2.4.best.json", "dream_fidelity.json", "starts/dream_starts.npz"):
        assert (tmp_path / path).exists(), path

    # nothing changed: every stage is skipped
    proc = pipeline(tmp_path)
    assert proc.returncode == 0
    summary = json.load(open(tmp_path / "pipeline_summary.json"))
    assert all(s["status"] == "skipped" for s in summary["stages"])

    # --force redoes every stage from scratch: nothing resumes, the same seed gives the same agent
    best = (tmp_path / "log" / "binpacking.cma.2.4.best.json").read_text()
    proc = pipeline(tmp_path, "--force")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert all(s["status"] == "ran" for s in json.load(open(tmp_path / "pipeline_summary.json"))["stages"])
    assert "resuming" not in proc.stdout + proc.stderr
    assert (tmp_path / "log" / "binpacking.cma.2.4.best.json").read_text() == best

    # a broken hand-off stops the pipeline at the stage that reads it, with its error
    (tmp_path / "tf_vae" / "vae.json").write_text("{ not json")
    proc = pipeline(tmp_path)
    assert proc.returncode == 1
    assert "stage series failed" in proc.stderr
