"""YAML: a list of job mappings (or `jobs:` holding it), read whole and walked node by node.

Working on PyYAML's composed nodes, not its constructed objects, keeps each
key's line for messages, the text the user wrote for every key and scalar, and
repeated keys visible; `_YamlWalker` turns the nodes into what `_Checker.job`
expects.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Final

import yaml

from launcher.manifest.records import Problem, _Record, _Scalar
from launcher.manifest.rules import _Checker, _show, _unknown

__all__ = ["MAX_YAML_BYTES", "MAX_YAML_EXPANSION", "_scan_yaml", "_too_large"]

# YAML is composed whole in memory by a pure-Python parser (~1.3 s a MiB): a
# larger manifest belongs in JSONL or CSV, which stream.
MAX_YAML_BYTES: Final = 16 << 20
# Keys and items the walk may visit beyond one per byte of the file: aliases and
# `<<` merges re-visit what they point to, and nested merges multiply (568 bytes
# of merges eight deep are 10^8 keys); a real manifest stays far below.
MAX_YAML_EXPANSION: Final = 100_000


class _Expanded(Exception):
    """The walk visited more keys and items than the file's budget."""


def _too_large(path: str) -> Problem:
    return Problem(
        path,
        1,
        "yaml",
        f"larger than {MAX_YAML_BYTES >> 20} MiB; YAML is read whole: give a large "
        "manifest as JSONL or CSV",
    )


_YAML_KINDS: Final[Mapping[str, str]] = {
    "tag:yaml.org,2002:int": "number",
    "tag:yaml.org,2002:float": "number",
    "tag:yaml.org,2002:bool": "boolean",
    "tag:yaml.org,2002:null": "null",
    "tag:yaml.org,2002:timestamp": "date",
    "tag:yaml.org,2002:binary": "binary",
}
_YAML_STR: Final = "tag:yaml.org,2002:str"
_YAML_MERGE: Final = "tag:yaml.org,2002:merge"


def _scan_yaml(data: bytes, path: str, check: _Checker) -> Iterator[_Record | Problem]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        begin = data.rfind(b"\n", 0, exc.start) + 1
        yield Problem(
            path,
            line,
            "line",
            f"invalid UTF-8 (byte 0x{data[exc.start]:02x} at column {exc.start - begin + 1})",
        )
        return
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = "; ".join(str(s) for s in (exc.context, exc.problem) if s) or str(exc)
        if mark is not None:
            yield Problem(path, mark.line + 1, "yaml", f"{what} (column {mark.column + 1})")
        else:
            yield Problem(path, 1, "yaml", what)
        return
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        yield Problem(path, line, "yaml", f"character U+{exc.character:04X} is not allowed")
        return
    except yaml.YAMLError as exc:  # pragma: no cover - every PyYAML error is one of the above
        yield Problem(path, 1, "yaml", str(exc))
        return
    except RecursionError:
        # PyYAML composes recursively: `[[[[...` a thousand deep exhausts the stack.
        yield Problem(path, 1, "yaml", "nested too deeply")
        return
    if root is None:
        return
    walker = _YamlWalker(path, MAX_YAML_EXPANSION + len(data))
    try:
        yield from _walk(root, walker, path, check)
    except _Expanded:
        yield Problem(
            path,
            1,
            "yaml",
            f"expands to more than {walker.limit} keys and items (aliases and << merges "
            "count each time they are used): refused",
        )


def _walk(
    root: yaml.Node, walker: _YamlWalker, path: str, check: _Checker
) -> Iterator[_Record | Problem]:
    items: yaml.Node = root
    if isinstance(root, yaml.MappingNode):
        top = walker.mapping(root, "")
        for key, (_, key_line) in top.items():
            if key != "jobs" and not key.startswith("x-"):
                message = _unknown(key, ("jobs",), "top-level key")
                walker.problems.append(
                    Problem(path, key_line, _show(key), f"{message} (anchors go under x-... keys)")
                )
        yield from walker.take()
        if "jobs" not in top:
            yield Problem(path, _line(root), "jobs", "required: the list of jobs")
            return
        items = top["jobs"][0]
        if _yaml_kind(items) == "null":
            return
    if not isinstance(items, yaml.SequenceNode):
        yield Problem(
            path,
            _line(items),
            "jobs",
            f"expected a list of jobs, got {_yaml_kind(items)}",
        )
        return
    for node in items.value:
        walker.spend(1)
        if not isinstance(node, yaml.MappingNode):
            yield Problem(path, _line(node), "job", f"expected a mapping, got {_yaml_kind(node)}")
            continue
        obj, at = walker.job(node)
        structural = walker.take()
        result = check.job(obj, _line(node), at)
        if structural:
            yield from structural
            if isinstance(result, list):
                yield from result
        elif isinstance(result, list):
            yield from result
        else:
            yield result


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _yaml_kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "object"
    if isinstance(node, yaml.SequenceNode):
        return "array"
    if node.tag == _YAML_STR:
        return "string"
    return _YAML_KINDS.get(node.tag, f"value tagged {node.tag}")


class _YamlWalker:
    """Turns YAML nodes into the plain values `_Checker` expects, with a line per field.

    Only the levels a job has are converted (job → params → entry → scalar);
    deeper values become empty containers, which is all a "must be a string"
    message needs, and which keeps recursive alias graphs from looping.
    """

    def __init__(self, path: str, limit: int) -> None:
        self.path = path
        self.problems: list[Problem] = []
        self.limit = limit
        self._left = limit

    def spend(self, count: int) -> None:
        """Count keys or items visited; raise `_Expanded` past the limit."""
        self._left -= count
        if self._left < 0:
            raise _Expanded

    def take(self) -> list[Problem]:
        problems, self.problems = self.problems, []
        return problems

    def job(self, node: yaml.MappingNode) -> tuple[dict[str, Any], dict[str, int]]:
        obj: dict[str, Any] = {}
        at: dict[str, int] = {}
        for key, (value, line) in self.mapping(node, "").items():
            at[key] = line
            if key == "params":
                obj[key] = self.params(value, at)
            else:
                obj[key] = self.leaf(value, key)
        return obj, at

    def params(self, node: yaml.Node, at: dict[str, int]) -> Any:
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for key, (value, line) in self.mapping(node, "params").items():
                field = f"params.{key}"
                at[field] = line
                out[key] = self.leaf(value, field)
            return out
        if isinstance(node, yaml.SequenceNode):
            entries: list[Any] = []
            self.spend(len(node.value))
            for i, item in enumerate(node.value):
                prefix = f"params[{i}]"
                at[prefix] = _line(item)
                if isinstance(item, yaml.MappingNode):
                    entry: dict[str, Any] = {}
                    for key, (value, line) in self.mapping(item, prefix).items():
                        field = f"{prefix}.{key}"
                        at[field] = line
                        entry[key] = self.leaf(value, field)
                    entries.append(entry)
                else:
                    entries.append(self.leaf(item, prefix))
            return entries
        return self.leaf(node, "params")

    def leaf(self, node: yaml.Node, field: str) -> Any:
        if isinstance(node, yaml.MappingNode):
            return {}
        if isinstance(node, yaml.SequenceNode):
            return []
        value = str(node.value)
        if node.tag != _YAML_STR:
            return _Scalar(_yaml_kind(node), value)
        try:
            value.encode()
        except UnicodeEncodeError:
            # A "\ud800" escape in a double-quoted scalar: no UTF-8 form to send.
            self.problems.append(
                Problem(self.path, _line(node), _show(field), "contains a lone surrogate")
            )
            return value.encode(errors="replace").decode()
        return value

    def mapping(
        self, node: yaml.MappingNode, prefix: str, depth: int = 0
    ) -> dict[str, tuple[yaml.Node, int]]:
        """The mapping's keys (as written) → (value node, key line), merges applied.

        PyYAML's own constructor would silently keep the last of two equal keys
        and type keys (`yes:` → True); here a repeated key is an error and a key
        is the text the user wrote.
        """
        own: dict[str, tuple[yaml.Node, int]] = {}
        merges: list[yaml.Node] = []
        self.spend(len(node.value))
        for key_node, value_node in node.value:
            line = _line(key_node)
            if key_node.tag == _YAML_MERGE:
                merges.append(value_node)
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self.problems.append(
                    Problem(self.path, line, prefix or "job", "a key must be plain text")
                )
                continue
            key = str(key_node.value)
            if key in own:
                self.problems.append(
                    Problem(
                        self.path,
                        line,
                        _show(f"{prefix}.{key}" if prefix else key),
                        f"duplicate key (first on line {own[key][1]})",
                    )
                )
                continue
            own[key] = (value_node, line)
        if not merges:
            return own
        # YAML merge keys as PyYAML applies them: the mapping's own keys win,
        # then earlier merge sources over later ones.
        sources: list[yaml.Node] = []
        for merge in merges:
            sources.extend(merge.value if isinstance(merge, yaml.SequenceNode) else [merge])
        merged: dict[str, tuple[yaml.Node, int]] = {}
        for source in reversed(sources):
            if not isinstance(source, yaml.MappingNode) or depth > 20:
                self.problems.append(
                    Problem(
                        self.path,
                        _line(source),
                        prefix or "job",
                        "<< must merge a mapping (or a list of mappings)",
                    )
                )
                continue
            merged.update(self.mapping(source, prefix, depth + 1))
        merged.update(own)
        return merged
