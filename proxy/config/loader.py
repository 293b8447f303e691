"""Loading a config file: YAML to the schema's dataclasses, `${VAR}` references, and every
problem collected with its file, line and key.

The loader walks the YAML node tree (not the plain parsed dict) so that every error can
name the file, the line and the dotted key. All problems in a file are collected and
reported together: an operator fixing a broken config should not have to run the check
five times to find five typos.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from proxy.config.checks import resolve
from proxy.config.issues import ENV_REF_PREFIX, ConfigError, ConfigIssue
from proxy.config.schema import Config, ConfigSpec

__all__ = ["load_config", "parse_config"]


# ${VAR}, ${VAR:-default}, or ${file:/path} (a secret file, e.g. a mounted Kubernetes Secret,
# read again by every reload: a vendor key is rotated by rewriting the file and reloading).
_ENV_RE = re.compile(r"\$\{(?:file:([^}]+)|([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?)\}")
_REF_RE = re.compile(re.escape(ENV_REF_PREFIX) + r"(\d+)__")
_MISSING = object()


class _Loader:
    """Converts a YAML node tree into the schema dataclasses, collecting issues."""

    def __init__(self, file: str, env: Mapping[str, str]) -> None:
        self.file = file
        self.env = env
        self.issues: list[ConfigIssue] = []
        # (file path, None, None) or (None, variable, default) per reference, in text order
        self.refs: list[tuple[str | None, str | None, str | None]] = []
        self.file_errors: dict[str, str] = {}  # ${file:...} path -> why it could not be read

    def protect_refs(self, text: str) -> str:
        """Swap each ${VAR} for a YAML-neutral token before parsing.

        `${VAR}` is not valid inside YAML flow mappings (`{api_key: ${KEY}}`, the style of
        DESIGN.md's examples), and substituting the raw text would let a secret containing
        `: ` or `#` change the document's structure. Tokens keep both problems away.
        """

        def token(m: re.Match[str]) -> str:
            self.refs.append((m.group(1), m.group(2), m.group(3)))
            return f"{ENV_REF_PREFIX}{len(self.refs) - 1}__"

        return _ENV_RE.sub(token, text)

    def read_secret_file(self, path: str) -> str | None:
        """A ${file:...} reference's value: the file's text without surrounding whitespace
        (`echo KEY > file` adds a newline). A relative path is relative to the config file."""
        p = Path(path)
        if not p.is_absolute() and not self.file.startswith("<"):
            p = Path(self.file).parent / p
        try:
            return p.read_text(encoding="utf-8").strip()
        except OSError as exc:
            self.file_errors[path] = exc.strerror or str(exc)
        except UnicodeDecodeError:
            self.file_errors[path] = "the file is not UTF-8 text"
        return None

    def references(self, node: yaml.Node | None) -> str:
        """The ${...} references written in a scalar, as written (for messages)."""
        if not isinstance(node, yaml.ScalarNode):
            return ""
        out = []
        for m in _REF_RE.finditer(str(node.value)):
            path, name, _ = self.refs[int(m.group(1))]
            out.append(f"${{file:{path}}}" if path is not None else f"${{{name}}}")
        return ", ".join(out)

    def issue(self, node: yaml.Node | None, key: str, message: str) -> None:
        line = node.start_mark.line + 1 if node is not None else None
        self.issues.append(ConfigIssue(self.file, line, key, message))

    # Scalars -----------------------------------------------------------------

    def scalar(self, node: yaml.Node, key: str) -> tuple[bool, Any]:
        """Resolve a scalar node to a Python value, substituting ${VAR} in strings."""
        if not isinstance(node, yaml.ScalarNode):
            return False, None
        value = yaml.SafeLoader("").construct_object(node)
        if isinstance(value, str) and ENV_REF_PREFIX in value:
            missing: list[str] = []
            unreadable: list[str] = []

            def sub(m: re.Match[str]) -> str:
                path, name, default = self.refs[int(m.group(1))]
                if path is not None:
                    secret = self.read_secret_file(path)
                    if secret is None:
                        unreadable.append(path)
                    return secret or ""
                assert name is not None
                if name in self.env:
                    return self.env[name]
                if default is not None:
                    return default
                missing.append(name)
                return ""

            value = _REF_RE.sub(sub, value)
            if missing:
                names = ", ".join(missing)
                self.issue(
                    node,
                    key,
                    f"environment variable {names} is not set (export it, or write ${{{names}:-default}})",
                )
            for path in unreadable:
                self.issue(node, key, f"cannot read ${{file:{path}}}: {self.file_errors[path]}")
            if missing or unreadable:
                return True, _MISSING
            # A value that came from the environment is typed by the field it lands in.
            return True, _EnvString(value)
        return True, value

    def convert(self, node: yaml.Node, tp: Any, key: str) -> Any:
        origin = get_origin(tp)
        if origin in (Union, types.UnionType):
            args = [a for a in get_args(tp) if a is not type(None)]
            if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
                return None
            return self.convert(node, args[0], key)
        if dataclasses.is_dataclass(tp):
            return self.dataclass(node, tp, key)
        if origin is dict:
            return self.mapping(node, get_args(tp)[1], key)
        if origin is list:
            if not isinstance(node, yaml.SequenceNode):
                self.issue(node, key, f"must be a list, got {_kind(node)}")
                return []
            return [
                self.convert(n, get_args(tp)[0], f"{key}[{i}]") for i, n in enumerate(node.value)
            ]
        ok, value = self.scalar(node, key)
        if not ok:
            self.issue(node, key, f"must be {_type_name(tp)}, got {_kind(node)}")
            return None
        if value is _MISSING:
            return None  # already reported
        return self.coerce(node, value, tp, key)

    def coerce(self, node: yaml.Node, value: Any, tp: Any, key: str) -> Any:
        from_env = isinstance(value, _EnvString)
        if get_origin(tp) is Literal:
            allowed = get_args(tp)
            if value in allowed:
                return str(value)
            choices = ", ".join(repr(a) for a in allowed)
            self.issue(node, key, f"must be one of {choices}, got {value!r}")
            return None
        if tp is bool:
            if isinstance(value, bool):
                return value
            if from_env and value.lower() in ("true", "false"):
                return value.lower() == "true"
        elif tp is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if from_env and re.fullmatch(r"-?\d+", value.strip()):
                return int(value)
        elif tp is float:
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
            if from_env:
                try:
                    return float(value)
                except ValueError:
                    pass
        elif tp is str:
            if isinstance(value, str):
                return str(value)
            if isinstance(value, int | float) and not isinstance(value, bool):
                return str(value)  # e.g. api_version: 2024-10-21 written unquoted as a number
        self.issue(node, key, f"must be {_type_name(tp)}, got {value!r}")
        return None

    # Collections -------------------------------------------------------------

    def pairs(self, node: yaml.Node, key: str) -> list[tuple[yaml.Node, str, yaml.Node]]:
        if not isinstance(node, yaml.MappingNode):
            self.issue(node, key, f"must be a mapping, got {_kind(node)}")
            return []
        out: list[tuple[yaml.Node, str, yaml.Node]] = []
        seen: set[str] = set()
        for k, v in node.value:
            name = str(k.value)
            sub = f"{key}.{name}" if key else name
            if name in seen:
                self.issue(k, sub, "is given twice")
                continue
            seen.add(name)
            out.append((k, name, v))
        return out

    def mapping(self, node: yaml.Node, value_tp: Any, key: str) -> dict[str, Any]:
        return {
            name: self.convert(v, value_tp, f"{key}.{name}" if key else name)
            for _, name, v in self.pairs(node, key)
        }

    def dataclass(self, node: yaml.Node, cls: Any, key: str) -> Any:
        hints = get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("derived")}
        values: dict[str, Any] = {}
        for knode, name, vnode in self.pairs(node, key):
            sub = f"{key}.{name}" if key else name
            if name not in fields:
                known = ", ".join(sorted(fields))
                self.issue(knode, sub, f"unknown key (expected one of: {known})")
                continue
            value = self.convert(vnode, hints[name], sub)
            check_fn = fields[name].metadata.get("check")
            if value is not None and check_fn is not None and (msg := check_fn(value)):
                self.issue(vnode, sub, f"{msg}, got {value!r}")
                continue
            if value is not None or _optional(hints[name]):
                values[name] = value
        for name, f in fields.items():
            if name in values:
                continue
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                if isinstance(node, yaml.MappingNode):
                    self.issue(node, f"{key}.{name}" if key else name, "is required")
                return None
        try:
            return cls(**values)
        except TypeError as exc:  # pragma: no cover - defensive, reported rather than raised
            self.issue(node, key, str(exc))
            return None


class _EnvString(str):
    """A string that came from ${VAR}: it may be converted to the field's type."""

    __slots__ = ()


def _optional(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType) and type(None) in get_args(tp)


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return repr(node.value) if node.value != "" else "nothing"


def _type_name(tp: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    if tp in names:
        return names[tp]
    if dataclasses.is_dataclass(tp) or get_origin(tp) is dict:
        return "a mapping"
    return str(tp)


def parse_config(
    text: str, *, file: str = "<config>", env: Mapping[str, str] | None = None
) -> Config:
    """Parse and validate config text. Raises ConfigError listing every problem found."""
    loader = _Loader(file, os.environ if env is None else env)
    try:
        root = yaml.compose(loader.protect_refs(text), Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([ConfigIssue(file, line, "", f"invalid YAML: {problem}")]) from None
    if root is None:
        raise ConfigError([ConfigIssue(file, None, "", "the file is empty")])
    spec = loader.dataclass(root, ConfigSpec, "")
    config = resolve(spec, root, loader) if spec is not None else None
    if config is None or loader.issues:
        if not loader.issues:  # pragma: no cover - defensive
            loader.issue(root, "", "invalid config")
        raise ConfigError(sorted(loader.issues, key=lambda i: i.line or 0))
    version = hashlib.sha256(text.encode()).hexdigest()[:12]
    return dataclasses.replace(config, version=version)


def load_config(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a YAML config file. Raises ConfigError (with file and line) on any problem."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            [ConfigIssue(str(p), None, "", f"cannot read the file: {exc.strerror}")]
        ) from None
    except UnicodeDecodeError:
        raise ConfigError([ConfigIssue(str(p), None, "", "the file is not UTF-8 text")]) from None
    return parse_config(text, file=str(p), env=env)
