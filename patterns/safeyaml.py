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
- no duplicate key in a mapping;
- no control character in the text (C0 and C1 controls other than tab, line feed and carriage
  return, DEL; NEL, LINE SEPARATOR and PARAGRAPH SEPARATOR, line breaks in YAML 1.1 only) and no
  lone surrogate, in the text or produced by an escape in a quoted scalar
  (`check_text`); mapping keys must be printable;
- one reading of every plain scalar, the YAML 1.2 core schema (`CoreResolver`), not PyYAML's YAML
  1.1 one: ``null``/``~``/empty is null, ``true``/``false`` (three spellings each) are booleans,
  ``[-+]?[0-9]+`` integers, ``1.5``/``1e3``/``.inf``/``.nan`` floats, everything else a string. So
  ``1:30`` (1.1: sexagesimal 90), ``yes``/``no``/``on``/``off`` (1.1: booleans), ``1_000`` (1.1:
  1000), ``0b101`` and dates are strings, and the field that wanted a number says so. Numbers are
  decimal only: ``0o17`` and ``0x1F`` (1.2 core integers) and a decimal integer with a leading
  zero (``0200``: 128 in YAML 1.1, 200 in 1.2) are refused with one line, since the two readings
  disagree or a length in another base is a typo; write the decimal value, or quote it for a
  string. Only the core schema's tags are allowed (``!!str``, ``!!int``, ``!!float``, ``!!bool``,
  ``!!null``, ``!!seq``, ``!!map``; no ``!!binary``, ``!!timestamp``, ``!!set``, ``!!python/...``),
  and merge keys (``<<``, YAML 1.1 only) are plain keys.

Every problem raises `YAMLInputError`, a `patterns.errors.InputError` (so a ``ValueError``) whose
message is one line ``SOURCE: WHERE: problem`` (``WHERE`` is ``line N`` or ``(file)``). This module
needs only PyYAML: both the deployment reader (`kernels.tuned`) and the autotuner's space loader use it.
"""

from __future__ import annotations

import codecs
import math
import re
from pathlib import Path
from typing import Any, Union

import yaml
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from .errors import InputError

__all__ = ["YAMLInputError", "CoreDumper", "load_yaml", "load_yaml_file", "check_text", "MAX_BYTES", "MAX_DEPTH", "MAX_ALIASES", "MAX_NODES"]

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


#: what PyYAML's reader refuses, plus the lone surrogates a str may hold (a file read as UTF-8 cannot)
_NON_PRINTABLE = re.compile("[^\x09\x0A\x0D\x20-\x7E\x85\xA0-\uD7FF\uE000-\uFFFD\U00010000-\U0010FFFF]")
_SURROGATE = re.compile("[\uD800-\uDFFF]")
#: NEL, LINE SEPARATOR, PARAGRAPH SEPARATOR: line breaks in YAML 1.1 (and PyYAML), characters in 1.2,
#: so a comment or a plain scalar holding one has two readings
_BREAKS_11 = re.compile("[\x85\u2028\u2029]")
#: the tags of the YAML 1.2 core schema, the only ones a file may use (explicitly or resolved)
CORE_TAGS = frozenset(f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "seq", "map"))
_DECIMAL = re.compile(r"[-+]?(?:0|[1-9][0-9]*)")
_CORE_INT = re.compile(r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+")
_CORE_FLOAT = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
                         r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)")
_CORE_BOOL = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}


def check_text(text: str, source: str) -> None:
    """Refuse ``text`` holding a character YAML does not allow (C0/C1 controls but tab, line feed
    and carriage return; DEL; U+FFFE/U+FFFF) or a lone surrogate, naming its line and code point;
    PyYAML's reader would raise its own ``ReaderError`` (or a later encode a ``UnicodeEncodeError``)."""
    m = _NON_PRINTABLE.search(text) or _BREAKS_11.search(text)
    if m is None:
        return
    c, i = m.group(), m.start()
    line, col = text.count("\n", 0, i) + 1, i - (text.rfind("\n", 0, i) + 1) + 1
    what = ("a lone surrogate (not UTF-8 text)" if _SURROGATE.match(c) else
            "a NUL byte" if c == "\x00" else
            "a line break of YAML 1.1 only (1.2 reads it as a character)" if _BREAKS_11.match(c) else
            "a control character")
    raise YAMLInputError(source, f"line {line}", f"{what} U+{ord(c):04X} at column {col}: refused")


class CoreResolver(yaml.resolver.BaseResolver):
    """Plain scalars read by the YAML 1.2 core schema (module docstring): null, bool, int, float;
    everything else is a string."""


CoreResolver.add_implicit_resolver("tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"),
                                   ["~", "n", "N", ""])
CoreResolver.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                   list("tTfF"))
CoreResolver.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(f"^(?:{_CORE_INT.pattern})$"),
                                   list("-+0123456789"))
CoreResolver.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(f"^(?:{_CORE_FLOAT.pattern})$"),
                                   list("-+.0123456789"))


class CoreDumper(yaml.SafeDumper):
    """PyYAML's safe dumper that quotes every string YAML 1.1 or the 1.2 core schema would read as
    something else (``1e3``, ``0o17``, ``1.5e3`` as well as ``yes``, ``0200``), so a file written with
    it reads back with `load_yaml` as written (a tuned file of a study named ``1e3``)."""


for _first, _resolvers in CoreResolver.yaml_implicit_resolvers.items():
    for _tag, _regexp in _resolvers:
        CoreDumper.add_implicit_resolver(_tag, _regexp, [_first])


class _StrictLoader(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser, yaml.composer.Composer,
                    yaml.constructor.SafeConstructor, CoreResolver):
    """PyYAML's safe loader on the YAML 1.2 core schema, with depth, alias and expanded-size
    budgets, core tags only, and duplicate-key detection."""

    def __init__(self, stream: str, source: str) -> None:
        yaml.reader.Reader.__init__(self, stream)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)
        yaml.composer.Composer.__init__(self)
        yaml.constructor.SafeConstructor.__init__(self)
        CoreResolver.__init__(self)
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
        if node.tag not in CORE_TAGS:
            self._fail(_line(node), f"the tag {node.tag.replace('tag:yaml.org,2002:', '!!')} is refused: not valid YAML "
                                    "for this file (the YAML 1.2 core schema's tags only: !!str, !!int, !!float, "
                                    "!!bool, !!null, !!seq, !!map)")
        if isinstance(node, ScalarNode):
            if _SURROGATE.search(node.value):  # from an escape such as "\\ud800": cannot be written anywhere
                self._fail(_line(node), "a lone surrogate in a quoted scalar: refused (not UTF-8 text)")
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
                if isinstance(key, str) and not key.isprintable():
                    self._fail(_line(key_node), f"a mapping key must be printable, got {_short(key)}")
                if key in seen:
                    self._fail(_line(key_node), f"duplicate key {key!r} (first at {_line(seen[key])})")
                seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


    def construct_core_int(self, node: Any) -> int:
        """A decimal integer; the other forms of an integer are refused (module docstring)."""
        value = str(self.construct_scalar(node))
        if _DECIMAL.fullmatch(value):
            if len(value) > 100:  # no count or length has 100 digits; int() of 4300 digits raises
                self._fail(_line(node), f"{_short(value)}: an integer of {len(value)} digits is refused")
            return int(value)
        if re.fullmatch(r"[-+]?0[0-9]+", value):
            self._fail(_line(node), f"{_short(value)}: an integer with a leading zero is refused (octal in YAML 1.1, "
                                    f"decimal in YAML 1.2); write {int(value) if len(value) < 40 else 'it without the zeros'}, "
                                    "or quote it for a string")
        if _CORE_INT.fullmatch(value):
            self._fail(_line(node), f"{_short(value)}: only decimal numbers are read (no 0o or 0x forms); write "
                                    f"{int(value, 0) if len(value) < 40 else 'it in decimal'}, or quote it for a string")
        self._fail(_line(node), f"{_short(value)} is not a decimal integer")

    def construct_core_float(self, node: Any) -> float:
        """A YAML 1.2 core float (``.inf``, ``.nan`` included); a leading-zero integer part is an
        integer's refusal."""
        value = str(self.construct_scalar(node))
        if re.fullmatch(r"[-+]?0[0-9]+", value):
            return float(self.construct_core_int(node))
        if not _CORE_FLOAT.fullmatch(value):
            self._fail(_line(node), f"{_short(value)} is not a number")
        if value.lstrip("+-").lower() == ".inf":
            return -math.inf if value.startswith("-") else math.inf
        if value.lower() == ".nan":
            return math.nan
        return float(value)

    def construct_core_bool(self, node: Any) -> bool:
        """``true`` / ``false`` (``True``, ``TRUE``, ...) only; ``yes``, ``on``, ``y`` are not booleans."""
        value = str(self.construct_scalar(node))
        if value not in _CORE_BOOL:
            self._fail(_line(node), f"{_short(value)} is not a boolean (true or false)")
        return _CORE_BOOL[value]


_StrictLoader.add_constructor("tag:yaml.org,2002:int", _StrictLoader.construct_core_int)
_StrictLoader.add_constructor("tag:yaml.org,2002:float", _StrictLoader.construct_core_float)
_StrictLoader.add_constructor("tag:yaml.org,2002:bool", _StrictLoader.construct_core_bool)


def _short(v: Any) -> str:
    """repr of ``v`` cut to 40 characters (one-line messages)."""
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


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
    check_text(text, source)
    loader = None
    try:
        loader = _StrictLoader(text, source)  # PyYAML's reader checks the text here: inside the handling
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
        if loader is not None:
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
