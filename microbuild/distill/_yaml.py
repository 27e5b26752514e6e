"""A safe YAML loader for CI files: GitLab's ``!reference`` tags, one-line errors with a line."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from microbuild.distill.files import leads_outside
from microbuild.errors import ConfigError


class Reference(list[str]):
    """GitLab ``!reference [.job, script]``: resolved by the GitLab reader."""


class _Loader(yaml.SafeLoader):
    pass


def _reference(loader: yaml.SafeLoader, node: yaml.Node) -> Reference:
    if not isinstance(node, yaml.SequenceNode):
        raise yaml.constructor.ConstructorError(
            None, None, "!reference needs a list like [.job, script]", node.start_mark
        )
    return Reference(str(item) for item in loader.construct_sequence(node))


def _unknown(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node)
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node)
    return loader.construct_scalar(node)  # type: ignore[arg-type]


_Loader.add_constructor("!reference", _reference)
_Loader.add_multi_constructor("!", _unknown)
# CircleCI and GitHub files use "on:" / "yes": keep them strings, not YAML 1.1 booleans.
_Loader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def load_yaml(path: Path, rel: str, project: Path) -> Any:
    """The document in ``path`` (``rel`` in ``project``); a :class:`ConfigError` naming ``rel``
    and the line if broken, or if the file links outside the project (then it is not read)."""
    if leads_outside(path, project):
        raise ConfigError(
            f"{rel}: leads outside the project, so it is not read; make it a file of the project"
        )
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise ConfigError(f"{rel}: cannot read the file: {err.strerror or err}") from None
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        where = f"{rel}:{mark.line + 1}" if mark is not None else rel
        raise ConfigError(
            f"{where}: invalid YAML: {problem}; fix it, or run `microbuild init --no-ci` "
            "to detect the project without its CI files"
        ) from None


def as_dict(value: object) -> dict[str, Any]:
    """``value`` if it is a mapping (keys as strings), else an empty one: CI files vary."""
    return {str(k): v for k, v in value.items()} if isinstance(value, dict) else {}
