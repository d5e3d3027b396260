"""The shape of the package: imports point one way (stages → objectives → leaves), no cycles, no private names
across modules, reading a config loads no torch, and the objective is chosen in one place."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "t3s"

# Each module's layer: a module may import modules of its own layer or below, never above.
LAYERS = [
    {"__init__", "fields", "modes", "artifacts", "config", "estimate"},  # leaves without torch
    {
        "dist",
        "data",
        "models",
        "generation",
        "ledger",
        "summary",
        "launch",
        "graders",
        "trackers",
        "smollm",
        "tinyllada2",
    },  # leaves
    # pure functions of score sets (and the cross-tokenizer Δc projection), the per-token losses; the vLLM engine
    {"score", "select", "verdict", "objectives.projection", "objectives.token_losses", "vllm_backend"},
    {"objectives", "objectives.base", "objectives.ar", "objectives.masked", "objectives.diffusion"},  # objectives
    {"train", "probe", "evaluate", "harness", "rrt", "report", "traces", "cost"},  # stages and their readers
    {"stages"},  # the stage builders
    {"mixture", "pipeline", "tiny", "testbed", "api"},  # orchestration, built-in worlds, the public API
    {"cli", "__main__", "reference"},  # the command line; the generated configuration reference
]
LAYER = {m: i for i, layer in enumerate(LAYERS) for m in layer}


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(imported t3s module, names, line) for every import in the file, lazy ones included, except those under
    `if TYPE_CHECKING:` (annotations only)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for n in ast.walk(node)}
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "t3s":
            target = node.module.removeprefix("t3s").removeprefix(".") or "__init__"
            for alias in node.names:  # `from t3s import dist`: the module t3s.dist
                sub = f"{target}.{alias.name}" if target != "__init__" else alias.name
                if (PKG / f"{sub.replace('.', '/')}.py").exists() or (PKG / sub.replace(".", "/")).is_dir():
                    out.append((sub, [], node.lineno))
                else:
                    out.append((target, [alias.name], node.lineno))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "t3s":
                    out.append((alias.name.removeprefix("t3s").removeprefix(".") or "__init__", [], node.lineno))
    return out


def graph() -> dict[str, list[tuple[str, list[str], int]]]:
    return {module_name(p): imports(p) for p in sorted(PKG.rglob("*.py"))}


def test_every_module_has_a_layer():
    assert sorted(set(graph()) - set(LAYER)) == []


def test_imports_point_one_way_and_no_private_names():
    bad = []
    for mod, edges in graph().items():
        for target, names, line in edges:
            if LAYER[target] > LAYER[mod]:
                bad.append(f"t3s/{mod}:{line} imports {target} (layer {LAYER[target]} above {LAYER[mod]})")
            bad += [
                f"t3s/{mod}:{line} imports the private name {target}.{n}"
                for n in names
                if n.startswith("_") and not n.startswith("__")
            ]
    assert bad == []


def test_no_import_cycle():
    g = {mod: {t for t, _, _ in edges if t != mod} for mod, edges in graph().items()}
    cycles, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for t in sorted(g.get(node, ())):
            if state.get(t) == "open":
                cycles.append(" -> ".join(path[path.index(t) :] + [t]))
            elif t not in state:
                visit(t, path + [t])
        state[node] = "done"

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_the_checks_above_can_fail(tmp_path):
    """The layer and cycle checks see a lazy import inside a function, and skip TYPE_CHECKING blocks."""
    f = tmp_path / "m.py"
    f.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from t3s.train import X\n"
        "def f():\n    from t3s.pipeline import _private\n    from t3s import dist\n"
    )
    got = imports(f)
    assert ("pipeline", ["_private"], 5) in got and ("dist", [], 6) in got
    assert not any(t == "train" for t, _, _ in got)


def test_reading_a_config_loads_no_torch_and_no_stage():
    code = (
        "import sys, t3s.config as c; c.load_config(None, ['learning_rate=1e-4']); "
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('t3s.')))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "['t3s.artifacts', 't3s.config', 't3s.fields', 't3s.modes']"


# The objective is chosen in t3s/objectives/__init__.py; outside the implementations no code asks which objective
# it has (the config names it and holds its settings' section, and asks nothing).
OBJECTIVE_HOMES = {
    "objectives/__init__.py",
    "objectives/base.py",
    "objectives/ar.py",
    "objectives/masked.py",
    "objectives/diffusion.py",
}
BRANCH = re.compile(
    r"objective[\"']?\)?\s*[!=]=|\.objective\s+in\b|diffusion\s+is\s+(not\s+)?None|is_mask_predictor\(|"
    r"objective\.name\s*[!=]=|isinstance\([^)]*(MaskedDiffusion|Autoregressive|DiffusionConfig)"
)


def branches(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if BRANCH.search(line) and not line.lstrip().startswith("#")]


def test_no_objective_branches_outside_the_objectives():
    found = {}
    for p in sorted(PKG.rglob("*.py")):
        rel = p.relative_to(PKG).as_posix()
        if rel not in OBJECTIVE_HOMES and branches(p.read_text(encoding="utf-8")):
            found[rel] = branches(p.read_text(encoding="utf-8"))
    assert found == {}


def test_the_pipeline_reads_the_selector_record_and_calls_one_builder_per_stage():
    """run_single is short (the stages are t3s/stages.py's builders, shared with the mixture and the plan) and never
    asks the objective what it is: what it needs comes in the `Selector` record."""
    tree = ast.parse((PKG / "pipeline.py").read_text(encoding="utf-8"))
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "run_single")
    assert fn.end_lineno - fn.lineno + 1 <= 150
    for mod in ("pipeline.py", "mixture.py", "stages.py"):
        text = (PKG / mod).read_text(encoding="utf-8")
        assert "needs_selector" not in text and "Autoregressive(" not in text and "MaskedDiffusion(" not in text, mod
    called = {n.func.id for n in ast.walk(fn) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert {"probe_stages", "score_stages", "select_stages", "train_stages", "rrt_stages", "eval_stages"} <= called


def test_an_objective_is_one_line_in_the_table(tmp_path):
    """Each objective of t3s.objectives.OBJECTIVES builds itself from a run config and checks the run; `t3s run`
    refuses a name not in the table, naming the config file, before it writes anything."""
    from conftest import t3s_here

    from t3s.config import RunConfig
    from t3s.objectives import OBJECTIVES

    for name, cls in OBJECTIVES.items():
        objective = cls.from_config(RunConfig(objective=name, student="s", selector="a", train_data="d"))
        assert objective.name == name and "sft" in objective.modes
    (tmp_path / "run.yaml").write_text("objective: block\nstudent: s\ntrain_data: d\n")
    r = t3s_here("run", tmp_path / "run.yaml", "--out", tmp_path / "run")
    assert r.returncode == 2 and "run.yaml: objective must be one of ar, diffusion, got 'block'" in r.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "line",
    [
        'if cfg.objective == "diffusion":',
        "if diffusion is None:",
        "x = MaskedDiffusion(c) if is_mask_predictor(m) else None",
        'if objective.name != "ar":',
        'if meta.get("objective") == "diffusion":',
    ],
)
def test_the_branch_pattern_finds_branches(line):
    assert branches(line) == [line]


def test_the_configuration_reference_is_generated_and_complete():
    """docs/config.md is what `python -m t3s.reference` prints (regenerate it after changing a config field), and
    every key has help text."""
    import dataclasses

    from t3s.config import SECTIONS, RunConfig
    from t3s.reference import reference

    page = (PKG.parent / "docs" / "config.md").read_text(encoding="utf-8")
    assert page == reference(), "docs/config.md is stale: python -m t3s.reference > docs/config.md"
    for cls in (RunConfig, *SECTIONS.values()):
        for f in dataclasses.fields(cls):
            if f.name not in SECTIONS:
                assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help text"
                assert f"`{f.name}`" in page or f".{f.name}`" in page


def test_every_diffusion_key_is_read_by_some_stage():
    """A `diffusion` key that no stage's fingerprint holds would change results without re-running anything."""
    import dataclasses

    from t3s.config import (
        DIFFUSION_SAMPLER_DEFAULTS,
        DIFFUSION_SAMPLER_KEYS,
        DIFFUSION_SELECTION_KEYS,
        DIFFUSION_TRAINING_KEYS,
        DiffusionConfig,
    )

    read = {*DIFFUSION_SAMPLER_KEYS, *DIFFUSION_SAMPLER_DEFAULTS, *DIFFUSION_SELECTION_KEYS, *DIFFUSION_TRAINING_KEYS}
    assert {f.name for f in dataclasses.fields(DiffusionConfig)} == read


OUTSIDE = [PKG.parent / d for d in ("bench", "experiments", "tests", "examples")]
# The objectives' own machinery imports their classes from where they are defined; everything else imports them
# from the package (t3s.objectives), their one public path.
OBJECTIVES_INSIDE = ("objectives",)


def defined_names(mod: str) -> set[str]:
    """The names a t3s module binds itself (def, class, assignment at any top-level block), not by importing."""
    path = PKG / f"{mod.replace('.', '/')}.py"
    if not path.exists():
        path = PKG / mod.replace(".", "/") / "__init__.py"
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        for sub in ast.walk(node) if isinstance(node, (ast.If, ast.Try)) else [node]:
            if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(sub.name)
            elif isinstance(sub, (ast.Assign, ast.AnnAssign)):
                targets = sub.targets if isinstance(sub, ast.Assign) else [sub.target]
                names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    return names


def every_python_file() -> list[Path]:
    return sorted(PKG.rglob("*.py")) + [p for d in OUTSIDE for p in sorted(d.rglob("*.py"))]


def test_one_import_path_per_public_name():
    """A name is imported from the module that defines it (no re-export shims), except the objective classes,
    imported from t3s.objectives outside the objectives' own modules."""
    public = {n: "objectives" for n in ("Autoregressive", "MaskedDiffusion", "Objective", "Prepared")}
    bad = []
    for path in every_python_file():
        here = module_name(path) if path.is_relative_to(PKG) else None
        inside = here is not None and here.split(".")[0] in OBJECTIVES_INSIDE
        for target, names, line in imports(path):
            for n in names:
                if n in public and not inside:
                    ok = target == public[n]
                else:
                    ok = n in defined_names(target) or n == "*"
                if not ok:
                    bad.append(f"{path.relative_to(PKG.parent)}:{line} imports {n} from t3s.{target}")
    assert bad == []


def test_scripts_import_no_private_names_and_experiments_no_benchmarks():
    bad = []
    for d in OUTSIDE[:2]:  # bench/, experiments/ (tests may reach into internals)
        for path in sorted(d.rglob("*.py")):
            where = path.relative_to(PKG.parent)
            bad += [
                f"{where}:{line} imports the private name t3s.{t}.{n}"
                for t, names, line in imports(path)
                for n in names
                if n.startswith("_") and not n.startswith("__")
            ]
            if d.name == "experiments":
                tree = ast.parse(path.read_text(encoding="utf-8"))
                bad += [
                    f"{where}:{node.lineno} imports bench"
                    for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "bench"
                ]
    assert bad == []


def test_the_import_path_check_can_fail(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("from t3s.train import TrainConfig\nfrom t3s.config import TrainConfig\n")
    got = imports(f)
    assert ("train", ["TrainConfig"], 1) in got and "TrainConfig" not in defined_names("train")
    assert "TrainConfig" in defined_names("config")
