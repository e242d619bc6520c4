"""Import direction between the layers of ``mrsr`` (read from the source with ``ast``, nothing
imported): the command tasks (``mrsr/tasks``) import library modules only, never another task,
no library module imports a task or the command line (``mrsr.run``), and no experiment script
imports another (what they share is in the library, or in ``experiments/_bench.py``)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mrsr"
# python -m mrsr.run and python -m mrsr.report: above everything but the tasks.
COMMANDS = ("run.py", "report/tables.py", "report/__main__.py")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, text: str | None = None) -> set[str]:
    """Every module ``path`` (or ``text`` as the module at ``path``) imports, at the top or inside
    functions (``from a import b`` counts as ``a`` and ``a.b``; relative imports are resolved)."""
    tree = ast.parse(path.read_text() if text is None else text, filename=str(path))
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def reaches(names: set[str], target: str) -> list[str]:
    return sorted(n for n in names if n == target or n.startswith(target + "."))


def all_but(*where: str) -> list[Path]:
    """Every module of the package outside ``where``."""
    above = set(modules(*where))
    return [p for p in sorted(PACKAGE.rglob("*.py")) if p not in above]


def modules(*where: str) -> list[Path]:
    paths: list[Path] = []
    for w in where:
        p = PACKAGE / w
        paths += sorted(p.rglob("*.py")) if p.is_dir() else [p]
    return paths


def test_the_layers_hold_modules() -> None:
    """The scan below sees the modules it is about (a rename would make it pass vacuously)."""
    below = all_but("tasks", *COMMANDS)
    assert len(modules("tasks")) >= 5 and len(modules("stages")) >= 4
    assert {PACKAGE / "dispatch.py", PACKAGE / "protocols" / "unseen.py"} <= set(below)
    assert all(p.exists() for p in modules(*COMMANDS))


def test_no_task_imports_another_task() -> None:
    found = {module_name(p): reaches(imported(p), "mrsr.tasks") for p in modules("tasks")}
    assert not {k: v for k, v in found.items() if v}, (
        "a task imports a task; move what they share to a library module"
    )


def test_report_imports_no_task() -> None:
    """The report reads the runs' own records (results rows), not the tasks that wrote them."""
    assert all(reaches(imported(p), "mrsr.tasks") == [] for p in modules("report"))


# What builds, runs and dispatches the stages: a LightningModule never reaches up to it, nor to
# the extractors' loaders (conf/stage/sr.yaml names them by _target_).
ABOVE_STAGES = (
    "mrsr.tasks",
    "mrsr.run",
    "mrsr.dispatch",
    "mrsr.training",
    "mrsr.building",
    "mrsr.extractors",
    "mrsr.report.tables",
)


# The running layer and what sits above it; the library is every other module of the package.
RUNNING = ("dispatch.py", "training.py", "building.py", "stage_process.py", "protocols")
NOT_LIBRARY = (*COMMANDS, "tasks", "stages", *RUNNING)


def test_the_library_imports_no_stage_nor_the_running_layer() -> None:
    """Below the stages: no LightningModule, nothing that builds, runs or dispatches them."""
    targets = ["mrsr.stages", "mrsr.tasks", "mrsr.run", "mrsr.report.tables"]
    targets += ["mrsr." + r.removesuffix(".py") for r in RUNNING]
    paths = all_but(*NOT_LIBRARY)
    assert len(paths) > 40 and PACKAGE / "losses" / "terms.py" in paths
    found = {module_name(p): [n for t in targets for n in reaches(imported(p), t)] for p in paths}
    assert not {k: v for k, v in found.items() if v}, "library code imports up the layers"


def test_stages_import_nothing_above_them() -> None:
    found = {
        module_name(p): [n for target in ABOVE_STAGES for n in reaches(imported(p), target)]
        for p in modules("stages")
    }
    assert not {k: v for k, v in found.items() if v}, "a stage module imports up the layers"


def test_library_imports_no_task_nor_the_command_line() -> None:
    found = {
        module_name(p): reaches(imported(p), "mrsr.tasks") + reaches(imported(p), "mrsr.run")
        for p in all_but("tasks", *COMMANDS)
    }
    assert not {k: v for k, v in found.items() if v}, "library code imports up the layers"


def test_the_scan_sees_imports_inside_functions() -> None:
    text = (
        "def f():\n    from mrsr.tasks import predict\n"
        "    from . import train\n    import mrsr.run\n"
    )
    names = imported(PACKAGE / "tasks" / "probe.py", text)
    assert reaches(names, "mrsr.tasks") == ["mrsr.tasks", "mrsr.tasks.predict", "mrsr.tasks.train"]
    assert reaches(names, "mrsr.run") == ["mrsr.run"]


INFERENCE = ("tasks/predict.py", "generators.py", "inference.py", "study.py", "receipt.py")


def module_path(name: str) -> Path | None:
    """The source file of an ``mrsr`` module name (None outside the package or for a name that
    is an attribute, e.g. ``mrsr.inference.upsampled_affine``)."""
    parts = name.split(".")
    if parts[0] != "mrsr" or len(parts) < 2:
        return None
    rel = Path(*parts[1:])
    for candidate in (PACKAGE / rel.with_suffix(".py"), PACKAGE / rel / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def closure(paths: list[Path]) -> set[str]:
    """Every module reached from ``paths`` through ``mrsr`` modules (imports inside functions
    included), and the outside modules they name."""
    seen: set[Path] = set()
    names: set[str] = set()
    todo = list(paths)
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imported(path):
            names.add(name)
            found = module_path(name)
            if found is not None:
                todo.append(found)
    return names


def test_inference_never_imports_lightning_or_a_stage() -> None:
    """Predicting loads a generator through ``mrsr.generators``: nothing it reaches imports
    Lightning, a LightningModule (``mrsr.stages``) or the training code."""
    names = closure(modules(*INFERENCE))
    assert "mrsr.generators" in names and "mrsr.inference" in names  # the scan sees the chain
    found = [
        n
        for target in ("lightning", "mrsr.stages", "mrsr.training", "mrsr.building")
        for n in reaches(names, target)
    ]
    assert not found, f"inference reaches {found}"


EXPERIMENTS = PACKAGE.parent / "experiments"
SHARED_BY_EXPERIMENTS = {"_bench"}  # the benchmarks' private helpers


def scripts_imported(path: Path, text: str | None = None) -> list[str]:
    """The experiment scripts (``experiments/<name>.py``, :data:`SHARED_BY_EXPERIMENTS` left
    out) that ``path`` (or ``text`` as it) imports, at the top or inside functions."""
    scripts = {p.stem for p in EXPERIMENTS.glob("*.py")} - SHARED_BY_EXPERIMENTS
    tree = ast.parse(path.read_text() if text is None else text, filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return sorted(names & scripts)


def test_no_experiment_imports_another() -> None:
    """Logic two experiments share lives in the library (or ``experiments/_bench.py``)."""
    paths = sorted(EXPERIMENTS.glob("*.py"))
    assert len(paths) >= 10 and (EXPERIMENTS / "_bench.py").exists()
    found = {p.name: scripts_imported(p) for p in paths}
    assert not {k: v for k, v in found.items() if v}, "an experiment imports another experiment"


def test_the_experiment_scan_sees_imports_inside_functions() -> None:
    text = (
        "from _bench import write_result\n"
        "def f():\n    from eval_unseen import evaluate\n    import throughplane_eval.x\n"
    )
    found = scripts_imported(EXPERIMENTS / "probe.py", text)
    assert found == ["eval_unseen", "throughplane_eval"]


def test_every_subpackage_is_in_the_wheel() -> None:
    """``pyproject.toml`` lists the packages explicitly: a new subpackage must be listed, or an
    installed (non-editable) mrsr lacks it."""
    import tomllib

    listed = set(
        tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"][
            "packages"
        ]
    )
    found = {module_name(p) for p in PACKAGE.rglob("__init__.py")}
    assert found <= listed, f"add to pyproject.toml's packages: {sorted(found - listed)}"
