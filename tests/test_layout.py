"""The layout the README promises: no import circle, and no stage script imports another one."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The scripts a user runs as stages. series.py is one, and also the one writer and reader of the
# series file, so the stages that read that file (rnn_train, dream_starts) import it for that.
STAGES = {"extract", "run_evaluation_dopamine", "vae_train", "series", "rnn_train", "copy_models", "dream_starts",
          "train", "model", "evaluate", "pick_controller", "pipeline", "baseline_best_fit",
          "baseline_sum_of_squares", "baseline_random"}
FORMAT_OWNERS = {"series"}


def our_modules():
    names = {f[:-3] for f in os.listdir(ROOT) if f.endswith(".py")}
    for pkg in ("analysis", "components", "vae", "rnn"):
        names |= {f"{pkg}.{f[:-3]}" for f in os.listdir(os.path.join(ROOT, pkg)) if f.endswith(".py")}
    return names


def imports_of(module, known):
    """Our modules that `module` imports anywhere in its file (top level or inside functions)."""
    path = os.path.join(ROOT, *module.split(".")) + ".py"
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        found |= {n for n in names if n in known and n != module}
    return found


def test_no_import_circle():
    known = our_modules()
    graph = {m: imports_of(m, known) for m in known}
    state = {}

    def visit(m, path):
        if state.get(m) == "done":
            return
        assert state.get(m) != "open", "import circle: " + " -> ".join(path + [m])
        state[m] = "open"
        for n in sorted(graph[m]):
            visit(n, path + [m])
        state[m] = "done"
    for m in sorted(graph):
        visit(m, [])


def test_no_stage_script_imports_another():
    known = our_modules()
    for stage in sorted(STAGES & known):
        others = (imports_of(stage, known) & STAGES) - FORMAT_OWNERS
        assert not others, f"{stage}.py imports the stage script(s) {sorted(others)}"


def test_the_checks_can_fail():
    assert imports_of("train", our_modules()) >= {"controller", "dream_env"}
