"""A YAML reader for files a user hands us: bounded work, strict input, one-line errors.

PyYAML's ``safe_load`` never runs code, but it accepts inputs that hurt in other ways: duplicate
keys (the last one silently wins), alias bombs ("billion laughs": a few hundred bytes of nested
``&a [*b, *b, ...]`` that expand to billions of nodes once anything walks the data), arbitrarily
deep nesting (Python's recursion limit, after minutes of parsing), and bytes that are not UTF-8
(PyYAML decodes UTF-16 transparently). `load_yaml` reads with PyYAML's pure-Python ``SafeLoader``
and adds these limits:

- the bytes must be UTF-8 (a UTF-8 byte-order mark is allowed); a UTF-16/32 byte-order mark or an
  invalid UTF-8 sequence is rejected with the byte offset;
- at most ``MAX_BYTES`` bytes;
- nesting at most ``MAX_DEPTH`` collections deep (checked while composing, before recursing);
- at most ``MAX_ALIASES`` alias references (``*name``), and the document, with every alias
  expanded, at most ``MAX_NODES`` nodes (each node's expanded size is computed bottom-up while
  composing: a scalar is 1, a collection 1 + the sizes of its children, an alias the size of the
  node it refers to), so a bomb is refused after reading it once, without expanding it;
- no duplicate key in a mapping (merge keys ``<<`` excepted).

Every problem raises `YAMLInputError`, a `patterns.errors.InputError` (so a ``ValueError``) whose
message is one line ``SOURCE: WHERE: problem`` (``WHERE`` is ``line N`` or ``(file)``). This module
needs only PyYAML: both the deployment reader (`kernels.tuned`) and the autotuner's space loader use it.
"""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import Any, Union

import yaml
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from .errors import InputError

__all__ = ["YAMLInputError", "load_yaml", "load_yaml_file", "MAX_BYTES", "MAX_DEPTH", "MAX_ALIASES", "MAX_NODES"]

MAX_BYTES = 4 << 20
MAX_DEPTH = 64
MAX_ALIASES = 64
MAX_NODES = 100_000

_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16"),
)


class YAMLInputError(InputError):
    """A file the safe reader refuses; ``str()`` is one line ``SOURCE: WHERE: problem``."""

    def __init__(self, source: str, where: str, problem: str) -> None:
        self.source, self.where, self.problem = source, where, problem
        super().__init__(f"{source}: {where}: {problem}")


def _line(node_or_mark: Any) -> str:
    mark = getattr(node_or_mark, "start_mark", node_or_mark)
    line = getattr(mark, "line", None)
    return f"line {line + 1}" if line is not None else "(file)"


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader with depth, alias and expanded-size budgets and duplicate-key detection."""

    def __init__(self, stream: str, source: str) -> None:
        super().__init__(stream)
        self._source = source
        self._depth = 0
        self._aliases = 0
        self._sizes: dict[int, int] = {}

    def _fail(self, where: str, problem: str) -> None:
        raise YAMLInputError(self._source, where, problem)

    def compose_node(self, parent: Any, index: Any) -> Any:  # noqa: D401 - PyYAML hook
        if self.check_event(AliasEvent):
            event = self.peek_event()
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                self._fail(_line(event), f"more than {MAX_ALIASES} aliases (*{event.anchor}): refused "
                                         "(an alias bomb, or write the values out)")
            return super().compose_node(parent, index)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            self._fail(_line(self.peek_event()), f"nested more than {MAX_DEPTH} levels deep")
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if isinstance(node, ScalarNode):
            size = 1
        elif isinstance(node, SequenceNode):
            size = 1 + sum(self._sizes.get(id(c), 1) for c in node.value)
        else:
            size = 1 + sum(self._sizes.get(id(k), 1) + self._sizes.get(id(v), 1) for k, v in node.value)
        if size > MAX_NODES:
            self._fail(_line(node), f"expands to more than {MAX_NODES} values (aliases counted expanded): refused")
        self._sizes[id(node)] = size
        return node

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    hash(key)
                except TypeError:
                    self._fail(_line(key_node), f"a mapping key must be a scalar, got {type(key).__name__}")
                if key in seen:
                    self._fail(_line(key_node), f"duplicate key {key!r} (first at {_line(seen[key])})")
                seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def _decode(data: bytes, source: str) -> str:
    for bom, name in _BOMS:
        if data.startswith(bom):
            raise YAMLInputError(source, "(file)", f"encoded as {name}; save it as UTF-8")
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise YAMLInputError(source, "(file)", f"not UTF-8 text (invalid byte 0x{data[e.start]:02x} at offset {e.start})") from None
    if "\x00" in text:
        raise YAMLInputError(source, "(file)", f"not UTF-8 text (NUL byte at offset {text.index(chr(0))})")
    return text


def load_yaml(data: Union[bytes, str], source: str = "<yaml>") -> Any:
    """Parse one YAML document from ``data`` under the limits of the module docstring."""
    if isinstance(data, bytes):
        if len(data) > MAX_BYTES:
            raise YAMLInputError(source, "(file)", f"{len(data)} bytes: larger than the {MAX_BYTES >> 20} MiB limit")
        text = _decode(data, source)
    else:
        text = data
    loader = _StrictLoader(text, source)
    try:
        return loader.get_single_data()
    except YAMLInputError:
        raise
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = " ".join(str(x) for x in (e.context, e.problem) if x) or type(e).__name__
        raise YAMLInputError(source, _line(mark), f"not valid YAML: {problem}") from None
    except yaml.YAMLError as e:
        raise YAMLInputError(source, "(file)", f"not valid YAML: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    except RecursionError:
        raise YAMLInputError(source, "(file)", "nested too deeply") from None
    finally:
        loader.dispose()


def load_yaml_file(path: Union[str, Path], source: str | None = None) -> Any:
    """Read ``path`` (a regular file, at most ``MAX_BYTES``) and parse it with `load_yaml`."""
    source = str(path) if source is None else source
    p = Path(path)
    try:
        if p.is_dir():
            raise YAMLInputError(source, "(file)", "is a directory, not a file")
        if p.exists() and not p.is_file():
            raise YAMLInputError(source, "(file)", "not a regular file")
        size = p.stat().st_size
        if size > MAX_BYTES:
            raise YAMLInputError(source, "(file)", f"{size} bytes: larger than the {MAX_BYTES >> 20} MiB limit")
        data = p.read_bytes()
    except FileNotFoundError:
        raise YAMLInputError(source, "(file)", "no such file") from None
    except PermissionError:
        raise YAMLInputError(source, "(file)", "permission denied") from None
    except OSError as e:
        raise YAMLInputError(source, "(file)", f"cannot read: {e.strerror or e}") from None
    return load_yaml(data, source)
