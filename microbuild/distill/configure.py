"""`microbuild init` end to end: detect the project, render the plan, load it back, and write
``microbuild.toml`` (or replace pyproject.toml's [tool.microbuild] tables)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from microbuild.config import CONFIG_FILENAME, PYPROJECT_FILENAME
from microbuild.distill.files import parse_toml, read_project_file
from microbuild.distill.plan import Decision, InitError, validate_rendering
from microbuild.distill.project import detect
from microbuild.distill.worktree import require_work_tree
from microbuild.distill.write import replace_microbuild_table, write_atomic

__all__ = ["InitResult", "init_project"]


@dataclass(frozen=True)
class InitResult:
    """What `microbuild init` did (or, for a dry run, would do), for the CLI to print."""

    path: Path
    """The file written (or that would be): ``microbuild.toml`` or ``pyproject.toml``."""
    written: bool
    config: str
    """The microbuild configuration text (for pyproject.toml, its [tool.microbuild] tables)."""
    decisions: tuple[Decision, ...]
    notes: tuple[str, ...] = ()


def init_project(
    root: Path, *, force: bool = False, dry_run: bool = False, use_ci: bool = True
) -> InitResult:
    """Detect the project at ``root`` and write its configuration (unless ``dry_run``).

    Raises :class:`InitError` when ``root`` is not a directory inside a git work tree, or when
    a configuration exists and ``force`` is not set (a dry run only notes it).
    """
    root = root.resolve()
    if not root.is_dir():
        raise InitError(f"{root} is not a directory")
    require_work_tree(root)

    config_file = root / CONFIG_FILENAME
    pyproject = root / PYPROJECT_FILENAME
    pyproject_text = read_project_file(pyproject, root) if pyproject.is_file() else None
    pyproject_data = parse_toml(pyproject, pyproject_text) if pyproject_text is not None else {}
    has_table = isinstance(pyproject_data.get("tool"), dict) and (
        "microbuild" in pyproject_data["tool"]
    )
    existing: list[tuple[Path, str]] = []
    if config_file.exists():
        existing.append((config_file, f"{config_file} already exists; --force overwrites it"))
    if has_table:
        existing.append(
            (pyproject, f"{pyproject} already has a [tool.microbuild] table; --force replaces it")
        )
    if existing and not force and not dry_run:
        raise InitError(existing[0][1])
    notes = tuple(message for _, message in existing if not force)

    plan = detect(root, use_ci=use_ci)
    writes: dict[Path, str] = {}
    if has_table and not config_file.exists():
        # The project keeps its configuration in pyproject.toml: replace the table there.
        assert pyproject_text is not None
        target = pyproject
        config_text = plan.render("tool.microbuild")
        writes[pyproject] = replace_microbuild_table(pyproject, pyproject_text, config_text)
        validate_rendering(plan, writes[pyproject], PYPROJECT_FILENAME)
    else:
        target = config_file
        config_text = plan.render()
        validate_rendering(plan, config_text, CONFIG_FILENAME)
        writes[config_file] = config_text
        if has_table:  # both existed (which find_project refuses): keep only microbuild.toml
            assert pyproject_text is not None
            writes[pyproject] = replace_microbuild_table(pyproject, pyproject_text, "")

    if not dry_run:
        for path, text in writes.items():
            write_atomic(path, text)
    return InitResult(target, not dry_run, config_text, plan.decisions, notes)
