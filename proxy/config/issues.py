"""Config problems, located well enough for an operator to fix them: the file, the line
and the dotted key."""

from __future__ import annotations

from dataclasses import dataclass

import yaml

__all__ = ["ENV_REF_PREFIX", "ConfigError", "ConfigIssue", "find", "from_env", "line_of"]

# A `${VAR}` reference becomes this token, numbered, before the YAML is parsed (see
# `loader._Loader.protect_refs`); it tells a value that came from the environment.
ENV_REF_PREFIX = "__llmproxy_env_"


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem in a config file, located well enough for an operator to fix it."""

    file: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class ConfigError(Exception):
    """The config could not be loaded. `issues` lists every problem found, each with its line."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


def line_of(node: yaml.Node | None) -> int | None:
    return node.start_mark.line + 1 if node is not None else None


def find(root: yaml.Node, *path: str | int) -> yaml.Node | None:
    """The node at a path (for locating problems found after conversion)."""
    node: yaml.Node | None = root
    for part in path:
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            node = next((v for k, v in node.value if k.value == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            node = node.value[part] if part < len(node.value) else None
        else:
            return None
    return node


def from_env(root: yaml.Node, *path: str | int) -> bool:
    """Whether the value at `path` was written as a ${VAR} reference (not a literal)."""
    node = find(root, *path)
    return isinstance(node, yaml.ScalarNode) and ENV_REF_PREFIX in str(node.value)
