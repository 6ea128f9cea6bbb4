"""The learner worker: imports the learner's ``aios`` and computes what the tests ask, nothing else.

Started by the trusted side (:mod:`grader.remote.client`) as::

    python -I grader/remote/worker.py --fd N --tree DIR [--block-hf-models]

It never imports pytest and never sees the report file. ``DIR`` (the folder holding the
learner's ``aios/``) is the only project folder on its ``sys.path``. It serves requests
read from the socket on file descriptor ``N`` one at a time: import a module, get or set
an attribute, call something, apply an operator. Results go back through
``protocol.encode``: plain data as data, everything else as a handle id into
``Worker.objects``. A trusted value that cannot be pickled (a test's lambda or fake class)
arrives as a :class:`TrustedProxy`, whose use is a callback to the trusted side.
"""

from __future__ import annotations

import argparse
import builtins
import collections
import contextlib
import dis
import enum
import gc
import importlib
import importlib.util
import inspect
import io
import marshal
import operator
import os
import pickle
import socket
import sys
import threading
import traceback
import types
import weakref
from pathlib import Path


def _load_protocol():
    """``protocol.py`` from this folder, under a private name (the grader is not on sys.path)."""
    spec = importlib.util.spec_from_file_location("_aios_remote_protocol", Path(__file__).with_name("protocol.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


protocol = _load_protocol()

OPERATORS = {name: getattr(operator, name) for name in (
    "lt", "le", "gt", "ge", "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul",
    "and_", "or_", "xor", "lshift", "rshift", "neg", "pos", "abs", "invert", "index",
    "getitem", "setitem", "delitem")}
OPERATORS.update(eq=lambda a, b: bool(a == b), ne=lambda a, b: bool(a != b), contains=lambda a, b: bool(b in a),
                 len=len, bool=bool, hash=hash, repr=repr, str=str, format=format, int=int, float=float,
                 iter=lambda a: _iterate(a), fspath=os.fspath, dir=lambda a: sorted(dir(a)), reversed=reversed,
                 round=round)
#: Builtin containers whose items ``iter`` sends all at once (one round trip instead of one per item).
BATCHED_ITERABLES = (list, tuple, set, frozenset, dict, collections.deque, collections.OrderedDict,
                     collections.defaultdict, collections.Counter, type({}.keys()), type({}.values()),
                     type({}.items()), range)
BATCH_LIMIT = 100_000
#: At most this many plain values in the snapshot of one object's attributes (see ``snapshot``),
#: and in one attribute of it: a snapshot is sent again with every request naming the object, so
#: it stays small (a block table, a counter), never a whole token list or cache index.
SNAPSHOT_ITEMS = 256
SNAPSHOT_ATTRIBUTE_ITEMS = 64
#: At most this many objects named by a request get a fresh snapshot in its reply.
SNAPSHOT_OBJECTS = 8
#: At most this many snapshots the trusted side asks for are checked or sent again after a request.
WANTED_SNAPSHOTS = 32
#: Builtin containers (held by learner code, so crossing as handles) whose snapshot holds their
#: items (under ``ITEMS``) when those are plain data or learner objects the trusted side holds
#: handles to: iterating it, taking its length or testing membership then costs no round trip.
ITEM_SNAPSHOT_TYPES = (collections.deque,)
ITEM_SNAPSHOT_LIMIT = 4096
ITEMS = "$items"  # not an identifier: no attribute can have this name in a snapshot
#: At most this many members of a learner Enum class come with the class's handle.
ENUM_MEMBERS = 64
PRINTED_LIMIT = 64_000
STOP = object()  # what ``next`` answers at the end of an iterator
HF_MODEL_MODULES = "transformers.modeling_utils"
PROFILE_ENV = "AIOS_WORKER_PROFILE"


class HFModelBlocker:
    """A meta-path finder refusing Hugging Face's model code (every lesson but 0 and 2 builds its own).

    The tokenizer stays importable: the engine uses ``AutoTokenizer`` from lesson 8 on.
    """

    def find_spec(self, name, path=None, target=None):
        parts = name.split(".")
        blocked = name == HF_MODEL_MODULES or (
            name.startswith("transformers.models.") and len(parts) >= 4
            and parts[3].startswith("modeling_") and parts[2] != "auto")
        if blocked:
            raise ImportError(f"{name}: Hugging Face's model code is not available when grading this lesson "
                              "(outside lessons 0 and 2, aios runs the model itself)")
        return None


class TrustedProxy:
    """Stands in for a trusted value the worker cannot rebuild (a test's function or fake object)."""

    __slots__ = ("_tid",)

    def __init__(self, tid: int):
        self._tid = tid

    def __call__(self, *args, **kwargs):
        return WORKER.callback(self._tid, "call", "", args, kwargs)

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return WORKER.callback(self._tid, "getattr", name, (), {})

    def __iter__(self):
        return iter(WORKER.callback(self._tid, "list", "", (), {}))

    def __len__(self):
        return WORKER.callback(self._tid, "len", "", (), {})

    def __next__(self):
        return WORKER.callback(self._tid, "next", "", (), {})

    def __getitem__(self, index):
        return WORKER.callback(self._tid, "getitem", "", (index,), {})

    def __repr__(self):
        return f"<trusted object {self._tid}>"


def _iterate(value):
    """``iter(value)``; for a builtin container, the list of its items (the trusted side iterates that)."""
    if type(value) in BATCHED_ITERABLES and len(value) <= BATCH_LIMIT:
        return list(value)
    return iter(value)


class Layout(collections.namedtuple("Layout", "cls mro sizes readable names getters")):
    """What ``snapshot`` needs to know of a class, worked out once: ``readable`` (reading an
    attribute found in an instance's ``__dict__`` runs no code of the learner's: no
    ``__getattribute__`` of its class's or metaclass's own, the usual ``__dict__``), ``names``
    (every name a class in its MRO defines: an instance attribute of such a name is shadowed, a
    property would win) and ``getters`` (those of ``_pure_getters`` whose code is pure, as ``(name,
    attribute, defining class, descriptor, getter, its code, PureCode)``). ``mro`` and ``sizes`` (the sizes of
    the ``__dict__`` of each class in the MRO and of its metaclass's) tell when it is out of date:
    a name added to or removed from one of those classes changes a size."""


_LAYOUTS: dict[int, Layout] = {}  # id(class) -> its Layout
#: Counts the times learner code may have run (each request, each callback; see ``learner_ran``).
#: What only learner code can change (a class's names, the threads running) is looked at once per
#: count: a stale read and its 30 snapshots cost one look at each class, not 30.
LEARNER_RUNS = [0]
_LAYOUT_CHECKED: dict[int, int] = {}  # id(class) -> LEARNER_RUNS when its Layout was last found current
_THREADS_CHECKED = [-1, False]  # [LEARNER_RUNS, whether other threads ran then]


def learner_ran() -> None:
    """Learner code may have run since the last look (see ``LEARNER_RUNS``)."""
    LEARNER_RUNS[0] += 1


def _layout(cls: type) -> Layout:
    """``cls``'s Layout, worked out again when a class of its MRO (or metaclass) gained or lost a name."""
    layout = _LAYOUTS.get(id(cls))
    if layout is not None and layout.cls is cls and _LAYOUT_CHECKED.get(id(cls)) == LEARNER_RUNS[0]:
        return layout
    if layout is not None and layout.cls is cls and layout.mro is cls.__mro__ and layout.sizes == _sizes(cls):
        _LAYOUT_CHECKED[id(cls)] = LEARNER_RUNS[0]
        return layout
    meta = type(cls)
    readable = not (meta is not type and any("__getattribute__" in m.__dict__ for m in meta.__mro__
                                             if m not in (type, object)))  # reading its attributes runs its code
    readable = readable and not issubclass(cls, (type, types.ModuleType)) \
        and cls.__getattribute__ is object.__getattribute__
    slot = next((k.__dict__["__dict__"] for k in cls.__mro__ if "__dict__" in k.__dict__), None)
    readable = readable and type(slot) is types.GetSetDescriptorType
    names = frozenset().union(*(k.__dict__.keys() for k in cls.__mro__))
    getters = []
    for name, klass, descriptor, getter, _ in _pure_getters(cls):
        pure = _pure_code(getter)
        if pure is not None:
            getters.append((name, "__len__" if name == LEN else name, klass, descriptor, getter, getter.__code__, pure))
    layout = _LAYOUTS[id(cls)] = Layout(cls, cls.__mro__, _sizes(cls), readable, names, tuple(getters))
    _LAYOUT_CHECKED[id(cls)] = LEARNER_RUNS[0]
    return layout


def _sizes(cls: type) -> tuple:
    return (*map(len, map(vars, cls.__mro__)), *map(len, map(vars, type(cls).__mro__)))


def _other_threads() -> bool:
    """Whether a thread other than the one serving requests runs, one that could change learner
    objects between requests. tqdm's monitor (started by the first progress bar, then alive for
    good) only watches its progress bars: it does not count."""
    if _THREADS_CHECKED[0] == LEARNER_RUNS[0]:
        return _THREADS_CHECKED[1]
    current = threading.current_thread()
    found = threading.active_count() > 1 and any(thread is not current and not _library_thread(thread)
                                                 for thread in threading.enumerate())
    _THREADS_CHECKED[:] = [LEARNER_RUNS[0], found]
    return found


def _library_thread(thread) -> bool:
    cls = type(thread)
    return cls.__module__ == "tqdm._monitor" and cls.__qualname__ == "TMonitor"


def _plain_left(value, left: int, depth: int = 0) -> int:
    """``left`` less the number of values in ``value`` when it is plain data (builtin scalars and
    builtin containers of them); below 0 when it is not, or is bigger than ``left``."""
    kind = type(value)
    if kind in protocol.PLAIN:
        return left - 1
    if depth > 8 or kind not in (list, tuple, set, frozenset, dict):
        return -1
    left -= 1
    for item in (value.items() if kind is dict else value):
        if kind is dict:
            left = _plain_left(item[1], _plain_left(item[0], left, depth + 1), depth + 1)
        else:
            left = _plain_left(item, left, depth + 1)
        if left < 0:
            return -1
    return left


#: Scalars that ``protocol.encode`` sends as themselves (a float may not be: nan is tagged).
_AS_THEMSELVES = frozenset({type(None), bool, int, str})
_FLAT_CONTAINERS = {list: "list", tuple: "tuple", set: "set", frozenset: "frozenset"}
#: Types ``protocol.encode`` sends as data (never as a handle), tensors aside (see ``Worker.handled``).
_NOT_HANDLES = frozenset({*protocol.PLAIN, list, tuple, set, frozenset, dict, bytes, bytearray, slice})


def _encoded_plain(value, budget: int, handled=None):
    """``(protocol.encode(value), number of values in it)`` when ``value`` is plain data of at most
    ``budget`` values (see ``_plain_left``); None otherwise. Flat containers of scalars, the
    usual attributes, are checked and encoded without a call per item. With ``handled`` (the
    worker's ``handled``), a list or tuple of learner objects that all have a handle already
    (``manager.blocks``) is ``{"$": "hl", "t": "list", "v": [handle ids]}``."""
    kind = type(value)
    if kind in _AS_THEMSELVES:
        return (value, 1) if budget >= 1 else None
    tag = _FLAT_CONTAINERS.get(kind)
    if tag is not None and len(value) < budget and _AS_THEMSELVES.issuperset(map(type, value)):
        return {"$": tag, "v": list(value)}, len(value) + 1
    if handled is not None and kind in (list, tuple) and 0 < len(value) < budget:
        hids = handled(value)
        if hids is not None:
            return {"$": "hl", "t": tag, "v": hids}, len(value) + 1
    if handled is not None and budget >= 1 and kind not in _NOT_HANDLES:
        hids = handled((value,))
        if hids is not None:  # a learner object the trusted side holds (``seq.status``, ``scheduler.running``)
            return {"$": "ho", "v": hids[0]}, 1
    if kind is dict and 2 * len(value) < budget and _AS_THEMSELVES.issuperset(map(type, value)) \
            and _AS_THEMSELVES.issuperset(map(type, value.values())):
        return {"$": "dict", "k": list(value), "v": list(value.values())}, 2 * len(value) + 1
    rest = _plain_left(value, budget)
    return (protocol.encode(value, None, []), budget - rest) if rest >= 0 else None


def snapshot(obj, handled=None) -> dict | None:
    """The encoded plain-data attributes of ``obj`` that the tests read (``DEMANDED``; a few, small),
    for the trusted side to read without a round trip until its next request that may change
    anything. None when reading them could run learner code (see ``_readable_attributes``).
    ``handled``: see ``_encoded_plain``."""
    if type(obj) in ITEM_SNAPSHOT_TYPES:
        return _item_snapshot(obj, handled)
    attrs, layout = _readable_attributes(obj)
    if attrs is None:
        return None
    found = {}
    demanded = DEMANDED.get(type(obj))
    if not demanded:
        return found
    left, shadowed = SNAPSHOT_ITEMS, layout.names
    for name in demanded:
        value = attrs.get(name, _ABSENT)
        if value is _ABSENT or name in shadowed:
            continue
        kind = type(value)
        if kind in _AS_THEMSELVES:  # what most attributes hold: as _encoded_plain would do it
            if left >= 1:
                found[name], left = value, left - 1
            continue
        tag = _FLAT_CONTAINERS.get(kind)
        if tag is not None and len(value) < min(left, SNAPSHOT_ATTRIBUTE_ITEMS) \
                and _AS_THEMSELVES.issuperset(map(type, value)):  # a block table: as _encoded_plain
            found[name], left = {"$": tag, "v": list(value)}, left - len(value) - 1
            continue
        encoded = _encoded_plain(value, min(left, SNAPSHOT_ATTRIBUTE_ITEMS), handled)
        if encoded is not None:
            found[name], left = encoded[0], left - encoded[1]
    if layout.getters:
        _add_pure_values(found, left, obj, attrs, layout, demanded)
    return found


def _readable_attributes(obj) -> tuple[dict | None, Layout]:
    """``(obj``'s instance ``__dict__``, its class's Layout``)``. The ``__dict__`` is None when reading
    it could run learner code (a ``__getattribute__`` or ``__dict__`` of its class's own, see
    ``Layout``), when another thread of the learner's could change it between requests, or when a
    key of it is not a ``str`` (looking a name up could then call that key's ``__eq__``)."""
    layout = _layout(type(obj))
    if not layout.readable or _other_threads():
        return None, layout
    attrs = object.__getattribute__(obj, "__dict__")
    if type(attrs) is not dict or not _ONLY_STR.issuperset(map(type, attrs)):
        return None, layout
    return attrs, layout


_ABSENT = object()  # a demanded attribute an instance does not have
_ONLY_STR = frozenset({str})


# ------------------------------------------------- pure properties (computed from plain attributes)
#
# ``seq.num_blocks`` or ``manager.num_free_blocks`` is a property: reading it runs learner code,
# so it would be one round trip every time. When the getter's bytecode can only read plain-data
# attributes of ``self`` (builtin scalars and flat builtin containers of them, straight from the
# instance ``__dict__``), combine them with operators and a few builtins (``len``, ``min``...) and
# return (no stores, calls of anything else, loops, imports or nested functions), it runs no other
# code, changes nothing and gives the same value for the same attributes: the snapshot holds its
# value, taken with the plain attributes. Anything else (an unknown opcode included) stays a
# request. The same holds for ``__len__`` (under ``LEN``).

LEN = "$len"  # not an identifier: no attribute can have this name in a snapshot
PURE_BUILTINS = frozenset({"len", "min", "max", "abs", "sum", "any", "all", "bool", "int", "float", "round",
                           "divmod"})
PURE_OPCODES = frozenset({
    "RESUME", "NOP", "CACHE", "EXTENDED_ARG", "LOAD_CONST", "LOAD_FAST", "LOAD_FAST_CHECK", "STORE_FAST",
    "LOAD_ATTR", "LOAD_GLOBAL", "PUSH_NULL", "PRECALL", "CALL", "KW_NAMES", "BINARY_OP", "BINARY_SUBSCR",
    "BINARY_SLICE", "COMPARE_OP", "IS_OP", "CONTAINS_OP", "UNARY_NOT", "UNARY_NEGATIVE", "UNARY_INVERT",
    "TO_BOOL", "POP_TOP", "COPY", "SWAP", "BUILD_TUPLE", "BUILD_SLICE", "RETURN_VALUE", "RETURN_CONST",
    "JUMP_FORWARD", "POP_JUMP_FORWARD_IF_FALSE", "POP_JUMP_FORWARD_IF_TRUE", "POP_JUMP_FORWARD_IF_NONE",
    "POP_JUMP_FORWARD_IF_NOT_NONE", "POP_JUMP_IF_FALSE", "POP_JUMP_IF_TRUE", "POP_JUMP_IF_NONE",
    "POP_JUMP_IF_NOT_NONE", "JUMP_IF_FALSE_OR_POP", "JUMP_IF_TRUE_OR_POP"})
#: ``**`` and ``<<`` (and in place) could make huge numbers from small ones: not computed ahead.
COSTLY_BINARY_OPS = frozenset({"**", "<<", "**=", "<<="})
PURE_VALUE_LIMIT = 4096
_PURE_SCALARS = frozenset({type(None), bool, int, float, str})
_PURE_CONTAINERS = (list, tuple, set, frozenset, collections.deque)
_PURE_CODE: dict[int, tuple] = {}  # id(code) -> (code, attribute names read, or None when not pure)
_PURE_GETTERS: dict[int, tuple] = {}  # id(class) -> (class, [(name, defining class, descriptor, function)])
#: The attributes and properties (and ``LEN``) the tests have read, by class, in the order first read:
#: only those go into snapshots (and their states, see ``_state``). A name read for the first time
#: costs one request; an object's snapshot then holds it.
DEMANDED: dict[type, dict[str, None]] = {}
DEMANDED_NAMES = 64  # at most this many names per class


def note_demand(op: str, args: tuple, plain: bool = False) -> None:
    """Remember that a test read a plain attribute (``plain``: one in the instance's ``__dict__``) or
    a property of an object's class (``getattr``), or its length."""
    if op == "getattr" and len(args) == 2 and type(args[1]) is str:
        cls, name = type(args[0]), args[1]
        if name in DEMANDED.get(cls, ()):
            return
        if plain or type(inspect.getattr_static(cls, name, None)) is property:
            _demand(cls, name)
    elif op == "op" and args[0] == "len" and len(args[1]) == 1:
        _demand(type(args[1][0]), LEN)


def _demand(cls: type, name: str) -> None:
    names = DEMANDED.setdefault(cls, {})
    if name not in names and len(names) < DEMANDED_NAMES:
        names[name] = None


class PureCode(collections.namedtuple("PureCode", "names plain members builtins")):
    """What a pure getter reads: ``names`` (attributes of ``self``, all from its ``__dict__``),
    ``plain`` (those that must hold plain data: all but the ones only compared with ``is``),
    ``members`` (``(global, name)`` pairs: Enum members it compares with ``is``) and ``builtins``
    (the builtins it calls, which its module must not redefine)."""


def _pure_code(function) -> PureCode | None:
    """What a getter reads when its code is pure (see above); None otherwise."""
    if type(function) is not types.FunctionType:
        return None
    code = function.__code__
    cached = _PURE_CODE.get(id(code))
    if cached is None or cached[0] is not code:
        cached = _PURE_CODE[id(code)] = (code, _analyse(code))
    pure = cached[1]
    if pure is None or function.__closure__ or getattr(function, "__builtins__", None) is not builtins.__dict__:
        return None
    if pure.builtins and any(name in function.__globals__ for name in pure.builtins):
        return None  # ``len`` redefined in the learner's module
    return pure


def _is_member_patterns(instructions: list) -> dict[int, tuple]:
    """``{index of an IS_OP: (self attribute, (global, member name))}`` for each ``self.a is G.M`` (or
    ``G.M is self.a``, ``is not`` alike) made of five instructions in a row that no jump lands inside:
    the two values loaded go straight to the ``is``, which runs no code whatever they are."""
    found = {}
    for j, instruction in enumerate(instructions):
        if instruction.opname != "IS_OP" or j < 4:
            continue
        window = instructions[j - 4:j]
        if any(getattr(i, "is_jump_target", True) for i in (*window[1:], instruction)):
            continue
        for own, member in ((window[:2], window[2:]), (window[2:], window[:2])):
            if own[0].opname in ("LOAD_FAST", "LOAD_FAST_CHECK") and own[0].arg == 0 and _attribute_load(own[1]) \
                    and member[0].opname == "LOAD_GLOBAL" and not (sys.version_info >= (3, 11) and member[0].arg & 1) \
                    and member[0].argval not in PURE_BUILTINS and _attribute_load(member[1]):
                found[j] = (own[1].argval, (member[0].argval, member[1].argval))
                break
    return found


def _attribute_load(instruction) -> bool:
    """A LOAD_ATTR of a value (not the method-loading form of Python 3.12 on)."""
    return instruction.opname == "LOAD_ATTR" and type(instruction.argval) is str \
        and not (sys.version_info >= (3, 12) and instruction.arg & 1)


def _analyse(code) -> PureCode | None:
    if code.co_argcount != 1 or code.co_kwonlyargcount or code.co_flags & (inspect.CO_GENERATOR | inspect.CO_COROUTINE
                                                                         | inspect.CO_ASYNC_GENERATOR
                                                                         | inspect.CO_VARARGS | inspect.CO_VARKEYWORDS):
        return None
    instructions = [i for i in dis.get_instructions(code) if i.opname != "CACHE"]
    patterns = _is_member_patterns(instructions)
    in_pattern = {j - k for j in patterns for k in range(5)}
    names, plain, members, previous = [], [], [], None
    for index, instruction in enumerate(instructions):
        op = instruction.opname
        if op not in PURE_OPCODES:
            return None
        if index in patterns:
            attribute, member = patterns[index]
            names.append(attribute)
            members.append(member)
        elif index in in_pattern:
            pass  # checked by _is_member_patterns
        elif op == "LOAD_ATTR":
            if previous is None or previous.opname not in ("LOAD_FAST", "LOAD_FAST_CHECK") or previous.arg != 0 \
                    or sys.version_info >= (3, 12) and instruction.arg & 1:
                return None  # only ``self.name``, never a method load or an attribute of something else
            names.append(instruction.argval)
            plain.append(instruction.argval)
        elif op == "LOAD_GLOBAL" and instruction.argval not in PURE_BUILTINS:
            return None
        elif op == "STORE_FAST" and instruction.arg == 0:
            return None  # ``self`` rebound
        elif op == "LOAD_CONST" and not _pure_value(instruction.argval):
            return None
        elif op == "BINARY_OP" and instruction.argrepr in COSTLY_BINARY_OPS:
            return None
        previous = instruction
    used = tuple(name for name in dict.fromkeys(code.co_names) if name in PURE_BUILTINS)
    return PureCode(tuple(dict.fromkeys(names)), tuple(dict.fromkeys(plain)), tuple(dict.fromkeys(members)), used)


def _pure_value(value) -> bool:
    """Whether ``value`` is a builtin scalar or a flat builtin container of them (not too big)."""
    kind = type(value)
    if kind in _PURE_SCALARS:
        return True
    if kind in _PURE_CONTAINERS:
        return len(value) <= PURE_VALUE_LIMIT and _PURE_SCALARS.issuperset(map(type, value))
    if kind is dict:
        return len(value) <= PURE_VALUE_LIMIT and _PURE_SCALARS.issuperset(map(type, value.values())) \
            and _PURE_SCALARS.issuperset(map(type, value))
    return False


def _plain_enum_member(namespace: dict, name: str, member: str) -> bool:
    """Whether reading ``name.member`` in a getter of module ``namespace`` runs no code: ``name`` is a
    global there holding an Enum class (the standard metaclass, nothing of it named ``member``) whose
    own ``__dict__`` holds ``member`` as one of its members, of a class without ``__get__``."""
    cls = namespace.get(name)
    if type(cls) is not enum.EnumType or any(member in k.__dict__ for k in type(cls).__mro__):
        return False
    found = cls.__dict__.get(member)
    members = cls.__dict__.get("_member_map_")
    if type(found) is not cls or type(members) is not dict or members.get(member) is not found:
        return False
    return not any("__get__" in k.__dict__ for k in cls.__mro__)


def _pure_getters(cls: type) -> list:
    """``[(name, defining class, descriptor, getter, classes before it in the MRO)]``: the properties of
    ``cls`` (and ``__len__``, as ``LEN``) whose getters are plain functions, each as found first along
    the MRO."""
    cached = _PURE_GETTERS.get(id(cls))
    if cached is not None and cached[0] is cls:
        return cached[1]
    getters, seen, mro = [], set(), cls.__mro__
    for index, klass in enumerate(mro[:-1]):
        for name, value in list(vars(klass).items()):
            if name in seen:
                continue
            seen.add(name)
            if type(value) is property and value.fset is None and value.fdel is None:
                getters.append((name, klass, value, value.fget, mro[:index]))
            elif name == "__len__" and type(value) is types.FunctionType:
                getters.append((LEN, klass, value, value, mro[:index]))
    _PURE_GETTERS[id(cls)] = (cls, getters)
    return getters


def _add_pure_values(found: dict, left: int, obj, attrs: dict, layout: Layout, demanded: set) -> None:
    """Put the encoded values of ``obj``'s pure properties (and ``LEN``) that the tests read
    (``demanded``) and whose inputs are plain attributes into ``found`` (``left``: see ``snapshot``)."""
    shadowed = layout.names
    for name, real, klass, descriptor, getter, code, pure in layout.getters:
        if name not in demanded:
            continue
        if klass.__dict__.get(real) is not descriptor or getter.__code__ is not code:
            continue  # changed since the class was looked at
        if pure.builtins and any(n in getter.__globals__ for n in pure.builtins):
            continue  # ``len`` redefined in the learner's module
        if not _pure_inputs(pure, attrs, shadowed, getter.__globals__):
            continue
        try:
            value = getter(obj)
        except Exception:  # noqa: BLE001 - the test's own read raises it, in a request
            continue
        if name == LEN and not (type(value) is int and value >= 0):
            continue
        if type(value) in _AS_THEMSELVES:
            if left >= 1:
                found[name], left = value, left - 1
            continue
        encoded = _encoded_plain(value, min(left, SNAPSHOT_ATTRIBUTE_ITEMS))
        if encoded is not None:
            found[name], left = encoded[0], left - encoded[1]


def _pure_inputs(pure: PureCode, attrs: dict, shadowed: set, namespace: dict) -> bool:
    """Whether what a pure getter reads is there and runs no code: its attributes in ``attrs`` (not
    shadowed by the class), plain data where it does more than compare them with ``is``, and
    its Enum members plain ones."""
    for name in pure.names:
        if name not in attrs or name in shadowed:
            return False
    for name in pure.plain:
        value = attrs[name]
        if type(value) not in _PURE_SCALARS and not _pure_value(value):
            return False
    for name, member in pure.members:
        if not _plain_enum_member(namespace, name, member):
            return False
    return True


def _item_snapshot(container, handled=None) -> dict | None:
    """``{ITEMS: the encoded items}`` of a builtin container (a deque) when they are plain data or
    learner objects the trusted side holds handles to (``scheduler.waiting``); None otherwise.
    Reading them runs no code of the learner's (a builtin container), unless another thread could
    change them meanwhile."""
    if _other_threads() or len(container) >= ITEM_SNAPSHOT_LIMIT:
        return None
    items = list(container)
    encoded = _encoded_plain(items, ITEM_SNAPSHOT_LIMIT, handled)
    if encoded is None or type(encoded[0]) is not dict or encoded[0].get("$") not in ("list", "hl"):
        return None
    return {ITEMS: encoded[0]}


def _identity_equality(cls: type) -> bool:
    """Whether ``==`` and ``!=`` on instances of ``cls`` are plain identity (object's own, no
    ``__eq__``/``__ne__`` of a class of the learner's): the trusted side then compares two such
    handles itself (``seq in waiting``). Whatever this says, the answer is still a bool about
    objects the learner's code controls."""
    return getattr(cls, "__eq__", None) is object.__eq__ and getattr(cls, "__ne__", None) is object.__ne__


def _pure_read(obj, name) -> bool:
    """Whether ``getattr(obj, name)`` only reads ``obj``'s own ``__dict__`` (changes nothing)."""
    attrs, layout = _readable_attributes(obj)
    return attrs is not None and type(name) is str and name in attrs and name not in layout.names


def _builtin_bases(cls: type) -> list[str]:
    """Names of the builtin exception classes in ``cls``'s MRO, nearest first."""
    return [c.__name__ for c in cls.__mro__ if c.__module__ == "builtins" and getattr(builtins, c.__name__, None) is c]


def _qualname(obj) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"


def _raw(tensor) -> bytes:
    return protocol.reduce_tensor(tensor)[1][0]


#: Requests that set or deleted an attribute (a test patching a learner module or class): part of
#: every ``_state``, since a pure getter reads a module's globals (an Enum class).
PATCHES = [0]


def _state(obj, ids: dict) -> tuple | None:
    """``(layout, what a snapshot of obj is made of)``, to tell cheaply that a snapshot taken again
    would be the same one (``_same_state``): its class's Layout, the number of names the tests
    read, ``PATCHES``, and each attribute a snapshot reads (``_state_names``) as builtin values
    only: a scalar with its type (a float as its ``hex()``, which tells ``-0.0`` from ``0.0``), a
    flat builtin container of scalars (not floats, at most SNAPSHOT_ATTRIBUTE_ITEMS) as a tuple of
    them and one of their types, a learner object by ``id`` with the handle id it has here (its
    entry in a snapshot names that handle), a container of learner objects likewise. None
    (compare snapshots instead) for anything else, or when a snapshot could not be taken.
    Comparing two states runs no code of the learner's."""
    cls = type(obj)
    if cls in ITEM_SNAPSHOT_TYPES:
        return _items_state(obj, ids)
    attrs, layout = _readable_attributes(obj)
    if attrs is None:
        return None
    demanded = DEMANDED.get(cls)
    if not demanded:
        return layout, (0, PATCHES[0])
    parts = [len(demanded), PATCHES[0]]
    for name in _state_names(layout, demanded):
        value = attrs.get(name, _ABSENT)
        kind = type(value)
        if kind in _AS_THEMSELVES:
            parts += (name, kind, value)
        elif kind is float:
            parts += (name, kind, value.hex())
        elif value is _ABSENT:
            parts += (name, None, None)
        elif kind in _STATE_CONTAINERS:
            if len(value) > SNAPSHOT_ATTRIBUTE_ITEMS:
                return None  # a long token list or cache index: taking the snapshot again costs less
            if kind is dict:
                keys, values = tuple(value), tuple(value.values())
                kinds = (*map(type, keys), *map(type, values))
                if not _AS_THEMSELVES.issuperset(kinds):
                    return None
                parts += (name, kind, keys, values, kinds)
                continue
            items = tuple(value)
            kinds = tuple(map(type, items))
            if kind is collections.deque:  # in a snapshot as the handle the trusted side holds to it, if any
                parts += (id(value), ids.get(id(value)))
            if _AS_THEMSELVES.issuperset(kinds):
                parts += (name, kind, items, kinds)
            elif kind in (list, tuple, collections.deque) and _NOT_HANDLES.isdisjoint(kinds):
                held = tuple(map(id, items))
                parts += (name, kind, held, tuple(map(ids.get, held)))
            else:
                return None
        elif kind in _NOT_HANDLES:
            return None
        else:  # a learner object (or a tensor: never in a snapshot)
            parts += (name, id(value), ids.get(id(value)))
    return layout, tuple(parts)


_STATE_NAMES: dict[int, tuple] = {}  # id(Layout) -> (Layout, number of names demanded, the names)


def _state_names(layout: Layout, demanded: dict) -> tuple:
    """The attributes a snapshot of an instance reads: the names the tests read, and what the
    pure getters among them read (see ``_add_pure_values``)."""
    cached = _STATE_NAMES.get(id(layout))
    if cached is not None and cached[0] is layout and cached[1] == len(demanded):
        return cached[2]
    names = dict.fromkeys(demanded)
    for name, _real, _klass, _descriptor, _getter, _code, pure in layout.getters:
        if name in demanded:
            names.pop(name, None)
            names.update(dict.fromkeys(pure.names))
    names.pop(LEN, None)
    _STATE_NAMES[id(layout)] = (layout, len(demanded), tuple(names))
    return _STATE_NAMES[id(layout)][2]


_STATE_CONTAINERS = frozenset({list, tuple, set, frozenset, dict, collections.deque})


def _items_state(container, ids: dict) -> tuple | None:
    """``_state`` of a builtin container whose snapshot holds its items (a deque): its items by
    ``id`` and handle id, when each is an immutable scalar or a learner object (the same objects in
    the same order give the same snapshot); None otherwise."""
    if _other_threads() or len(container) >= ITEM_SNAPSHOT_LIMIT:
        return None
    items = tuple(container)
    kinds = frozenset(map(type, items))
    if kinds & _NOT_HANDLES and not _AS_THEMSELVES.issuperset(kinds):
        return None
    return type(container), (tuple(map(id, items)), tuple(ids.get(id(item)) for item in items))


def _same_state(state, last) -> bool:
    return state is not None and state[0] is last[0] and state[1] == last[1]


def _exact(snap) -> bytes:
    """A snapshot as bytes that tell apart values ``==`` takes as equal (``1``, ``1.0``, ``True``):
    marshal's format 2, which writes each value whole (no back-references to equal objects)."""
    return marshal.dumps(snap, 2)


def _printed(out: io.StringIO, err: io.StringIO) -> dict:
    """What learner code printed during a request (the end of it), for the test's own output."""
    printed = {}
    for key, stream in (("out", out), ("err", err)):
        text = stream.getvalue()
        if text:
            printed[key] = protocol.clip(text, PRINTED_LIMIT)
    return printed


def _learner_frames(tb):
    """The traceback without the worker's own frames at its start."""
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return tb


class Tensors:
    """The worker's book of tensors that cross the wire.

    * Its own tensors get a number (``key``) when sent, so that the tests can give them
      back: a copy the test did not change stands for the original (``original``), and
      what the test changed in its copy is written into the original (``update_original``).
    * The tests' tensors (``shared``) are copied in once and kept in step: learner code
      writing into them in place is reported back (``changed_shared``), and a shared tensor
      learner code returns goes back as the test's own tensor (``shared_id``).
    """

    def __init__(self):
        self.serials: dict[int, tuple] = {}  # id(tensor) -> (weakref, key)
        self.by_key: dict[int, weakref.ref] = {}
        self.next_key = 1
        self.shared: dict[int, list] = {}  # test tensor id -> [our copy, version, bytes] when last synced
        self.shared_ids: dict[int, tuple] = {}  # id(our copy) -> (our copy, test tensor id)
        self.touched: set[int] = set()  # shared tensors named by the current request

    def key(self, tensor) -> int:
        """A number for this tensor object, the same as long as it lives."""
        entry = self.serials.get(id(tensor))
        if entry is None or entry[0]() is not tensor:
            oid, key = id(tensor), self.next_key
            self.next_key += 1

            def forget(_, oid=oid, key=key):
                self.by_key.pop(key, None)
                if self.serials.get(oid, (None, None))[1] == key:
                    del self.serials[oid]

            entry = (weakref.ref(tensor, forget), key)
            self.serials[oid], self.by_key[key] = entry, entry[0]
        return entry[1]

    def numbered(self, key: int):
        ref = self.by_key.get(key)
        return ref() if ref is not None else None

    def original(self, kind: str, key: int, fallback: list):
        """The tensor the test's copy was made of ("ts"), or the same view of it ("tv")."""
        original = self.numbered(key)
        if kind == "tv":
            (base_shape, shape, stride, offset), fallback = fallback[0], fallback[1:]
            if original is not None and list(original.shape) == base_shape and original.is_contiguous():
                return original.as_strided(shape, stride, original.storage_offset() + offset)
            original = None
        return original if original is not None else protocol.rebuild_tensor(*fallback)

    def update_original(self, key: int, contents: list) -> None:
        """Write what the test changed in its copy of tensor ``key`` into the tensor itself."""
        original, fresh = self.numbered(key), protocol.rebuild_tensor(*contents)
        if original is not None and original.shape == fresh.shape and original.dtype == fresh.dtype:
            with sys.modules["torch"].no_grad():
                original.copy_(fresh)

    def shared_tensor(self, tid: int, fallback: list):
        """Our copy of the test's tensor ``tid``, updated in place when new bytes came with it."""
        self.touched.add(tid)
        entry = self.shared.get(tid)
        if not fallback:
            return entry[0]
        fresh = protocol.rebuild_tensor(*fallback)
        if entry is not None and entry[0].shape == fresh.shape and entry[0].dtype == fresh.dtype:
            with sys.modules["torch"].no_grad():
                entry[0].copy_(fresh)
            fresh = entry[0]
        self.shared[tid] = [fresh, protocol.version(fresh), fallback[0]]
        self.shared_ids[id(fresh)] = (fresh, tid)
        return fresh

    def shared_id(self, tensor) -> int | None:
        """The test's id for ``tensor`` when it is our copy of a test tensor."""
        entry = self.shared_ids.get(id(tensor))
        return entry[1] if entry is not None and entry[0] is tensor else None

    def forget_shared(self, tids) -> None:
        for tid in tids:
            entry = self.shared.pop(tid, None)
            if entry is not None:
                self.shared_ids.pop(id(entry[0]), None)

    def changed_shared(self) -> list:
        """[[test tensor id, our copy], ...] for the shared tensors learner code changed."""
        changed = []
        for tid, entry in self.shared.items():
            # A Triton kernel writes without bumping the version: compare the bytes of those named.
            if protocol.version(entry[0]) != entry[1] or tid in self.touched and _raw(entry[0]) != entry[2]:
                entry[1], entry[2] = protocol.version(entry[0]), _raw(entry[0])
                changed.append([tid, entry[0]])
        self.touched.clear()
        return changed


class Worker:
    """The handle table and the request loop of one worker process."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.objects: dict[int, object] = {}
        self.records: dict[int, dict] = {}  # handle id -> its record (see _record)
        self.last_snaps: dict[int, tuple] = {}  # handle id -> (snapshot last sent, _exact of it or None, _state)
        self.ids: dict[int, int] = {}
        self.sent: dict[int, int] = {}
        self.types_sent: set[int] = set()
        self.next_id = 1
        self.tensors = Tensors()
        self.loop = None
        self.helper_dir: str | None = None
        self.helpers: dict[str, str] = {}  # test helper module name -> its source
        self.serving = threading.get_ident()

    # ------------------------------------------------------------ values out

    def handle(self, obj) -> dict:
        """The record naming ``obj`` on the trusted side; the object stays here until released."""
        if obj is STOP:
            return {"$": "stop"}
        if isinstance(obj, TrustedProxy):
            return {"$": "t", "id": obj._tid}
        if isinstance(obj, type) and issubclass(obj, BaseException):
            return {"$": "exc", "name": obj.__qualname__, "module": obj.__module__, "bases": _builtin_bases(obj)}
        hid = self.ids.get(id(obj))
        if hid is None:
            hid, self.next_id = self.next_id, self.next_id + 1
            self.objects[hid], self.ids[id(obj)], self.sent[hid] = obj, hid, 0
            self.records[hid] = self._record(obj, hid)
        self.sent[hid] += 1
        record = dict(self.records[hid])
        cls = type(obj)
        if id(cls) not in self.types_sent:
            self.types_sent.add(id(cls))
            record["methods"] = self._methods(cls)
            if _identity_equality(cls):
                record["ident"] = True
        if record["kind"] in ("object", "callable"):
            try:
                snap = snapshot(obj, self.handled)
            except Exception:  # noqa: BLE001 - an object too odd to tell: no snapshot
                snap = None
            self.sent_snapshot(hid, snap, obj)
            if snap is not None:
                record["snap"] = snap
        elif record["kind"] == "class":
            members = self._enum_members(obj)
            if members:
                record["members"] = members
        return record

    def _enum_members(self, cls) -> dict | None:
        """``{name: handle record}`` of a learner Enum class's members (``SequenceStatus.RUNNING``),
        sent with the class's handle: Enum members are fixed when the class is made (its metaclass
        refuses to reassign or delete one), so the trusted side reads them without a round trip and
        holds their handles (a snapshot names ``seq.status`` by its handle id)."""
        if type(cls) is not enum.EnumType or not issubclass(cls, enum.Enum):
            return None
        members = cls.__dict__.get("_member_map_")
        if type(members) is not dict or not 0 < len(members) <= ENUM_MEMBERS:
            return None
        if any(type(name) is not str or getattr(cls, name, None) is not member for name, member in members.items()):
            return None
        return {name: self.handle(member) for name, member in members.items()}

    def sent_snapshot(self, hid: int, snap: dict | None, obj=None) -> None:
        """Remember the snapshot of ``hid`` the trusted side holds now (see ``refresh``), with the
        state of ``obj`` it was taken from (see ``_state``)."""
        if snap is None:
            self.last_snaps.pop(hid, None)
        else:
            self.last_snaps[hid] = (snap, None, _state(obj, self.ids) if obj is not None else None)

    def refresh(self, hid: int, obj, snaps: list, kept: list | None, state_only: bool = False) -> None:
        """After a request: a fresh snapshot of ``obj`` (handle id ``hid``) appended to ``snaps`` as
        ``[hid, snapshot]``; or, with ``kept`` (the trusted side holds the last one sent and asked
        for it to be checked), ``hid`` appended to ``kept`` when the new one is exactly that one
        (equal, then compared as marshal's bytes, so that ``1``, ``1.0`` and ``True`` differ): the
        trusted side's copy is then still valid. With ``state_only``, only the cheap check of its
        state is made: ``hid`` is kept when that shows it unchanged, otherwise left stale."""
        last = self.last_snaps.get(hid) if kept is not None else None
        if last is not None and last[2] is not None and _same_state(_state(obj, self.ids), last[2]):
            kept.append(hid)  # nothing it was taken from changed: the same snapshot, not taken again
            return
        if state_only:
            return
        try:
            snap = snapshot(obj, self.handled)
        except Exception:  # noqa: BLE001 - as in handle()
            snap = None
        if snap is None:
            self.last_snaps.pop(hid, None)
            return
        if last is not None and last[0] == snap:
            exact = _exact(snap)
            if (last[1] if last[1] is not None else _exact(last[0])) == exact:
                self.last_snaps[hid] = (last[0], exact, _state(obj, self.ids))
                kept.append(hid)
                return
        snaps.append([hid, snap])
        self.sent_snapshot(hid, snap, obj)

    def _record(self, obj, hid: int) -> dict:
        """What the trusted side is told of a new handle (kept with it: the same each time it is sent)."""
        record = {"$": "h", "id": hid, "kind": self._kind(obj), "type": _qualname(type(obj))}
        if inspect.ismodule(obj):
            record["name"], record["package"] = obj.__name__, hasattr(obj, "__path__")
        elif isinstance(obj, type) or callable(obj):
            record["name"] = _qualname(obj)
        record["tkey"] = f"{_qualname(type(obj))}#{id(type(obj))}"
        return record

    def handled(self, items) -> list[int] | None:
        """The handle ids of ``items`` when each is a learner object (not a module, class or
        coroutine) the trusted side holds a handle to; None otherwise. A snapshot may name them
        by id: while the trusted side holds their handles, they stay in ``objects``."""
        hids = []
        torch = sys.modules.get("torch")
        for item in items:
            if torch is not None and isinstance(item, torch.Tensor):
                return None  # a tensor read as an attribute crosses as its bytes, never as a handle
            hid = self.ids.get(id(item))
            if hid is None or self.objects[hid] is not item or self.records[hid]["kind"] not in ("object", "callable"):
                return None
            hids.append(hid)
        return hids

    @staticmethod
    def _kind(obj) -> str:
        if inspect.ismodule(obj):
            return "module"
        if inspect.iscoroutine(obj):
            return "coroutine"
        if inspect.isasyncgen(obj):
            return "asyncgen"
        if isinstance(obj, type):
            return "class"
        return "callable" if callable(obj) else "object"

    @staticmethod
    def _methods(cls: type) -> list[str]:
        """Public methods defined by the class (a call on them is one round trip)."""
        names = set()
        for klass in cls.__mro__[:-1]:
            for name, value in vars(klass).items():
                if not name.startswith("__") and (isinstance(value, (staticmethod, classmethod))
                                                  or inspect.isfunction(value)):
                    names.add(name)
        return sorted(names)

    def release(self, pairs) -> None:
        """Forget handles the trusted side no longer holds (``(id, times it was received)`` pairs)."""
        for hid, count in pairs:
            if hid in self.sent:
                self.sent[hid] -= count
                if self.sent[hid] <= 0:
                    obj = self.objects.pop(hid)
                    del self.sent[hid], self.ids[id(obj)], self.records[hid]
                    self.last_snaps.pop(hid, None)

    def hold(self, key: int) -> None:
        """Answer with a handle to a numbered tensor itself (not a copy), to set attributes on it."""
        tensor = self.tensors.numbered(key)
        if tensor is None:
            self.reply_error(LookupError("that tensor no longer exists in the learner worker"))
        else:
            protocol.send(self.sock, {"k": "ret", "v": self.handle(tensor)})

    def write_backs(self, header: dict, buffers: list[bytes]) -> None:
        """The test's tensors that learner code changed in place, as ``header["wb"]``: [[id, contents], ...]
        (left out when there are none)."""
        changed = self.tensors.changed_shared()
        if changed:
            header["wb"] = protocol.encode(changed, self.handle, buffers)

    def reply(self, value, printed: dict, read_from=None, involved=(), wanted=(), wide=()) -> None:
        """Send ``value`` back. ``read_from``: the object a pure attribute read was made on; the reply
        then says it changed nothing ("pure"). Fresh snapshots of that object and of the objects
        the request named (``involved``) come with it, valid after this request; so do those of
        the objects in ``wanted`` (handle ids), or, unchanged, just their ids ("kept")."""
        buffers: list[bytes] = []
        data = protocol.encode(value, self.handle, buffers, tensors=self.tensors)
        header = {"k": "ret", "v": data, **printed}
        self.write_backs(header, buffers)
        if read_from is not None and id(read_from) in self.ids and "wb" not in header:
            header["pure"] = True
            involved = (read_from,)
        self.attach_snapshots(header, involved, wanted, wide)
        protocol.send(self.sock, header, buffers)

    def attach_snapshots(self, header: dict, involved, wanted, wide=()) -> None:
        """Fresh snapshots of the objects in ``involved`` and ``wanted`` (see ``reply``); those in
        ``wanted`` (at most WANTED_SNAPSHOTS, handle ids whose snapshots the trusted side holds),
        just their ids when unchanged (see ``refresh``). Those also in ``wide`` (asked for because
        they were read lately, not since the last request) only when their state tells at once
        whether they changed: no new snapshot is taken for them."""
        snaps, done, kept = [], set(), []
        asked = [hid for hid in wanted[:WANTED_SNAPSHOTS] if type(hid) is int] if type(wanted) is list else []
        cheap = {hid for hid in wide if type(hid) is int} if type(wide) is list else set()
        checked = set(asked)
        for obj in involved:
            hid = self.ids.get(id(obj))
            if hid is None or hid in done:
                continue
            done.add(hid)
            self.refresh(hid, obj, snaps, kept if hid in checked else None)
        for hid in asked:
            if hid not in done and hid in self.objects:
                done.add(hid)
                self.refresh(hid, self.objects[hid], snaps, kept, state_only=hid in cheap)
        if kept:
            header["kept"] = kept
        if snaps:
            header["snaps"] = snaps

    def involved(self, args: tuple, skip=()) -> list:
        """The learner objects a request names (its target and arguments, a few levels deep): their
        snapshots are sent again after it, since it may have changed them; not those of the handle
        ids in ``skip`` (the trusted side has not read their last ones)."""
        skip = {hid for hid in skip if type(hid) is int} if type(skip) is list else ()
        found, todo = {}, [(a, 0) for a in args]
        while todo and len(found) < SNAPSHOT_OBJECTS:
            value, depth = todo.pop()
            kind = type(value)
            if kind in (list, tuple) and depth < 2:
                todo.extend((v, depth + 1) for v in value[:32])
            elif kind is dict and depth < 2:
                todo.extend((v, depth + 1) for v in list(value.values())[:32])
            elif kind not in protocol.PLAIN and id(value) in self.ids and self.ids[id(value)] not in skip:
                found[id(value)] = value
        return list(found.values())

    def reply_error(self, exc: BaseException, printed: dict | None = None, involved=(), wanted=(), wide=()) -> None:
        """The exception's class name, builtin bases, plain arguments and learner traceback (and
        the snapshots a reply would bring, see ``reply``)."""
        cls = type(exc)
        args = list(exc.args) if all(type(a) in protocol.PLAIN for a in exc.args) else [str(exc)]
        args = [protocol.clip(a) if isinstance(a, str) else a for a in args[:8]]
        tb = protocol.clip("".join(traceback.format_exception(exc.with_traceback(_learner_frames(exc.__traceback__)))))
        buffers: list[bytes] = []
        header = {"k": "err", "name": cls.__qualname__, "module": cls.__module__, "bases": _builtin_bases(cls),
                  "args": args, "tb": tb, **(printed or {})}
        self.write_backs(header, buffers)
        if cls.__module__ != "builtins":  # its attributes (APIError.status) are read through this handle
            header["obj"] = self.handle(exc)
        if involved or wanted:
            self.attach_snapshots(header, involved, wanted, wide)
        protocol.send(self.sock, header, buffers)

    # ------------------------------------------------------------- values in

    def unpickle(self, raw: bytes):
        """A trusted message: handles become the objects they name, callbacks TrustedProxy."""
        unpickler = self.__dict__.get("_unpickler")
        if unpickler is None:  # one class for the worker's lifetime (making it costs more than a request)
            unpickler = self._unpickler = self._unpickler_class()
        return unpickler(io.BytesIO(raw)).load()

    def _unpickler_class(self) -> type:
        worker = self

        class Unpickler(pickle.Unpickler):
            def persistent_load(self, pid):
                kind, ident, *fallback = pid
                if kind == "tt":
                    return worker.tensors.shared_tensor(ident, fallback)
                if kind in ("ts", "tv"):
                    return worker.tensors.original(kind, ident, fallback)
                if kind == "hm":  # a method of a learner object, the class's own when the test replaced it
                    obj, (name, own) = worker.objects[ident], fallback
                    return inspect.getattr_static(type(obj), name).__get__(obj, type(obj)) if own else getattr(obj, name)
                return worker.objects[ident] if kind == "h" else TrustedProxy(ident)

        return Unpickler

    def receive(self) -> dict:
        header, buffers = protocol.recv(self.sock)
        if "pickle" not in header or len(buffers) != 1:
            raise protocol.WireError("expected a pickled message")
        return self.unpickle(buffers[0])

    # -------------------------------------------------------------- requests

    def serve(self, until_reply: bool = False):
        """Answer requests; with ``until_reply``, return the first reply (to a callback)."""
        while True:
            try:
                message = self.receive()
            except protocol.WireError:
                raise
            except Exception as exc:  # noqa: BLE001 - a request whose arguments cannot be rebuilt here
                self.reply_error(exc)
                continue
            if message["k"] != "req":
                if until_reply:
                    return message
                raise protocol.WireError(f"unexpected {message['k']!r} message")
            self.release(message.get("rel", ()))
            self.tensors.forget_shared(message.get("relt", ()))
            for key, *contents in message.get("orig", ()):
                self.tensors.update_original(key, contents)
            if message["op"] == "exit":
                return None
            if message["op"] == "hold":
                self.hold(*message["a"])
                continue
            learner_ran()  # a released handle's object may have been freed (its ``__del__``)
            out, err = io.StringIO(), io.StringIO()
            args = message["a"]
            try:
                read_from = args[0] if message["op"] == "getattr" and _pure_read(*args[:2]) else None
            except Exception:  # noqa: BLE001 - an object too odd to tell: its read is not pure
                read_from = None
            involved = self.involved(args, message.get("skip", ())) if read_from is None else ()
            if message["op"] in ("getattr", "op"):
                with contextlib.suppress(Exception):  # an object too odd to tell: nothing computed ahead
                    note_demand(message["op"], args, plain=read_from is not None)
            streams, failure = (sys.stdout, sys.stderr), None
            try:
                sys.stdout, sys.stderr = out, err  # what learner code prints goes back with the reply
                with grad_mode(message.get("mode", 0)):
                    value = self.run(message["op"], *args)
            except BaseException as exc:  # noqa: BLE001 - every learner failure goes back to the tests
                failure = exc
            finally:
                sys.stdout, sys.stderr = streams
                learner_ran()
            if failure is not None:
                self.reply_error(failure, _printed(out, err), involved, message.get("want", ()), message.get("wide", ()))
                del failure  # its traceback holds the learner's frames: not kept until the next request
                continue
            try:
                self.reply(value, _printed(out, err), read_from, involved, message.get("want", ()),
                           message.get("wide", ()))
            except Exception as exc:  # noqa: BLE001 - an unencodable value is the learner's failure too
                self.reply_error(exc, _printed(out, err))

    def run(self, op: str, *args):
        """Carry out one request."""
        if op == "import":
            return importlib.import_module(args[0])
        if op == "getattr":
            return getattr(args[0], args[1])
        if op == "setattr":
            PATCHES[0] += 1
            return setattr(args[0], args[1], args[2])
        if op == "delattr":
            PATCHES[0] += 1
            return delattr(args[0], args[1])
        if op == "call":
            return args[0](*args[1], **args[2])
        if op == "method":
            return getattr(args[0], args[1])(*args[2], **args[3])
        if op == "class_method":
            obj, name = args[0], args[1]
            return inspect.getattr_static(type(obj), name).__get__(obj, type(obj))(*args[2], **args[3])
        if op == "op":
            return self.operate(args[0], args[1])
        if op == "isinstance":
            return bool(isinstance(args[0], args[1]))
        if op == "issubclass":
            return bool(issubclass(args[0], args[1]))
        if op == "torch_setting":
            return self.torch_setting(args[0], args[1])
        if op == "spawn":
            return spawn(*args)
        if op == "await":
            return self.run_async(args[0])
        if op == "anext":
            return self.run_async(self._anext(args[0]))
        if op == "helper":
            return self.helper_module(args[0], args[1])
        if op == "ping":
            return os.getpid()
        raise ValueError(f"unknown request {op!r}")

    def helper_module(self, name: str, source: str):
        """Import a test helper module (``l14_rank_tasks``) from its source, on the learner's side.

        Some test code must run where the learner's code runs: functions that
        ``launch_ranks`` calls in each rank process, a slowed engine step called from the
        engine's own thread, coroutines that interleave with learner ones on one event loop.
        The module is written to a folder of its own put on ``sys.path``, so that processes
        started with ``multiprocessing`` (which hands them ``sys.path``) import it too.
        """
        if not name.isidentifier() or name in sys.modules and name not in self.helpers:
            raise ValueError(f"{name!r} cannot be a test helper module name")
        if self.helper_dir is None:
            import tempfile

            self.helper_dir = tempfile.mkdtemp(prefix="aios-helpers-")
            sys.path.insert(1, self.helper_dir)
        if self.helpers.get(name) != source:
            Path(self.helper_dir, f"{name}.py").write_text(source)
            sys.modules.pop(name, None)
            importlib.invalidate_caches()
            self.helpers[name] = source
        return importlib.import_module(name)

    def run_async(self, awaitable):
        """Run a learner coroutine to its end on the worker's event loop (one loop, so that an
        async generator stays on the loop it started on)."""
        import asyncio

        if self.loop is None:
            self.loop = asyncio.new_event_loop()
        return self.loop.run_until_complete(awaitable)

    @staticmethod
    async def _anext(agen):
        try:
            return await agen.__anext__()
        except StopAsyncIteration:
            return STOP

    @staticmethod
    def operate(name: str, operands: tuple):
        """An operator or builtin applied to handles and data; ``next`` says STOP at the end."""
        if name == "next":
            try:
                return next(operands[0])
            except StopIteration:
                return STOP
        return OPERATORS[name](*operands)

    @staticmethod
    def torch_setting(name: str, args: tuple) -> None:
        """What the test just did to its own torch: seed it, set its threads or default dtype."""
        if name not in ("manual_seed", "set_num_threads", "set_default_dtype"):
            raise ValueError(f"not a forwarded torch setting: {name}")
        import torch

        getattr(torch, name)(*args)

    def callback(self, tid: int, op: str, name: str, args: tuple, kwargs: dict):
        """Ask the trusted side to use one of its values; serve nested requests meanwhile.

        Only the thread serving requests may: the trusted side answers callbacks only while
        it waits for a reply, and two threads on the socket would mix their messages.
        """
        learner_ran()
        if threading.get_ident() != self.serving:
            raise RuntimeError("a test's function or object was used from a thread of the learner's code; "
                               "only the thread serving the test's requests can reach the tests")
        buffers: list[bytes] = []
        data = protocol.encode([list(args), kwargs], self.handle, buffers, tensors=self.tensors)
        protocol.send(self.sock, {"k": "cb", "id": tid, "op": op, "name": name, "v": data}, buffers)
        reply = self.serve(until_reply=True)
        if reply["k"] == "ret":
            return reply["v"]
        error = getattr(builtins, reply.get("name", ""), None)
        if not (isinstance(error, type) and issubclass(error, Exception)):
            error = RuntimeError
        raise error(reply.get("message", "the trusted side failed"))


def spawn(argv: list[str], env: dict | None, cwd: str | None, extra: dict):
    """Start a process from the worker (so it runs on the learner's side); return the Popen."""
    import subprocess

    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.Popen(argv, env=full_env, cwd=cwd, **extra)


def _interpret_triton_without_cuda() -> None:
    """Without a CUDA device, Triton kernels run in its interpreter, as in the tests' process (the root
    conftest.py): Triton reads ``TRITON_INTERPRET`` once, when it is first imported, and a preloaded
    library (``transformers.modeling_utils``) may import it before the learner's code could set it."""
    torch = sys.modules.get("torch")
    with contextlib.suppress(Exception):
        if torch is not None and not torch.cuda.is_available():
            os.environ.setdefault("TRITON_INTERPRET", "1")


def preload(modules: list[str]) -> None:
    """Import library modules the learner's code will need (grader.remote.preload_for) before the
    first request, while the tests start up. Whatever fails here (a name another version of the
    library lacks, a module the HF model blocker refuses) is left for the learner's own import.
    The learner's own package is never imported ahead: its import runs learner code."""
    for name in modules:
        if name == "aios" or name.startswith("aios."):
            continue
        with contextlib.suppress(Exception):  # see the docstring
            importlib.import_module(name)


def grad_mode(mode: int):
    """The autograd mode the test was in: 0 as is, 1 no_grad, 2 inference_mode."""
    torch = sys.modules.get("torch")
    if torch is None or mode == 0:
        return contextlib.nullcontext()
    return torch.inference_mode() if mode == 2 else torch.no_grad()


WORKER: Worker | None = None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--tree", required=True)
    parser.add_argument("--block-hf-models", action="store_true")
    parser.add_argument("--preload", default="", help="library modules to import at once, comma-separated")
    args = parser.parse_args(argv)
    sys.path.insert(0, args.tree)
    os.environ["PYTHONPATH"] = args.tree
    os.environ["PYTHONSAFEPATH"] = "1"
    if args.block_hf_models:
        sys.meta_path.insert(0, HFModelBlocker())
    global WORKER
    WORKER = Worker(socket.socket(fileno=args.fd))
    with contextlib.suppress(ImportError):  # the learner's code needs it; meanwhile the tests start up
        import torch  # noqa: F401
    _interpret_triton_without_cuda()
    preload([name for name in args.preload.split(",") if name])
    gc.freeze()  # what the imports made lives as long as the worker: full collections no longer walk it
    with _profiled(os.environ.pop(PROFILE_ENV, "")):
        try:
            WORKER.serve()
        except protocol.WireError:
            pass
    sys.stdout.flush()


@contextlib.contextmanager
def _profiled(prefix: str):
    """With ``AIOS_WORKER_PROFILE=PREFIX`` (a maintainer's measurement), the worker's cProfile
    statistics go to ``PREFIX.<pid>`` when its connection closes (the trusted side waits for that)."""
    if not prefix:
        yield
        return
    import cProfile

    profile = cProfile.Profile()
    profile.enable()
    try:
        yield
    finally:
        profile.disable()
        profile.dump_stats(f"{prefix}.{os.getpid()}")


if __name__ == "__main__":
    main()
