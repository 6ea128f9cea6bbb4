"""The wire between the trusted test process and the learner worker.

A message is one frame on a stream socket::

    header length (4 bytes) | buffer count (4 bytes) | JSON header | (8-byte length | bytes) per buffer

Each side writes what it trusts the other to read:

* trusted -> worker: the header is ``{"pickle": 0}`` and buffer 0 is a pickle. The worker
  is the untrusted side, so it may unpickle what the tests send (tensors, plain objects);
  remote handles travel as pickle persistent ids.
* worker -> trusted: JSON only, never a pickle. :func:`encode` (worker side) turns a value
  into JSON-ready data plus raw buffers; :func:`decode` (trusted side) rebuilds plain
  values from it: None, bool, int, float, str, bytes, Path, slice, list, tuple, dict, set, plain
  ``torch.Tensor`` (rebuilt from raw bytes + dtype + shape), dtype, device, ``torch.Size``.
  Anything else stays in the worker and crosses as a handle id.

This module is loaded by the worker straight from its file (not as ``grader.remote``),
so it imports nothing from the grader.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import struct
import sys
import time
import weakref

HEAD = struct.Struct("!II")
BUFFER_LEN = struct.Struct("!Q")
MAX_HEADER = 256 * 2**20
MAX_BUFFER = 16 * 2**30
MAX_MESSAGE = 2000   # characters kept of an exception's message or traceback
MAX_DEPTH = 64       # containers nested deeper than this cross as handles
PLAIN = (type(None), bool, int, float, str)
HANDLE_TAGS = ("h", "t", "exc", "stop")  # records the trusted side's handle() turns into values


class WireError(RuntimeError):
    """The other side sent something that is not a well-formed message, or hung up."""


#: Bytes read from each socket ahead of what was asked (a frame's parts come in one recv call).
_PENDING: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
READ_AHEAD = 1 << 16
#: The header of every trusted -> worker frame, and its encoding (made once).
PICKLE_HEADER = {"pickle": 1}
_PICKLE_HEADER_TEXT = json.dumps(PICKLE_HEADER).encode()
#: Headers are written compactly, without the check for containers that hold themselves (what is
#: sent is built fresh for each message, never cyclic: a cycle would only fail later, in ``decode``).
_ENCODER = json.JSONEncoder(check_circular=False, separators=(",", ":"))
_DECODER = json.JSONDecoder()


def _fill(sock: socket.socket, pending: bytearray, size: int) -> None:
    """Read until ``pending`` holds at least ``size`` bytes (WireError when the socket closes first).

    Small frames come whole with the first read (read-ahead): one system call, not one per part.
    The wait for a new frame polls briefly before it sleeps (``_spin_recv``).
    """
    while len(pending) < size:
        want = max(size - len(pending), READ_AHEAD)
        chunk = _spin_recv(sock, want) if not pending and SPIN_SECONDS > 0 and _may_poll() else None
        if chunk is None:
            chunk = sock.recv(want)
        if not chunk:
            raise WireError("the other side closed the connection")
        pending += chunk


#: How long a reader polls the socket before it sleeps in ``recv`` (seconds). The other side
#: usually answers within tens of microseconds (a request of a Hypothesis state machine, the
#: next request after a reply); a process put to sleep and woken for each message costs more
#: than that on an idle machine. Between polls the reader yields its CPU, and it does not poll at
#: all while the machine is busy (``_may_poll``). ``AIOS_WIRE_SPIN_US`` (a measurement) changes it.
SPIN_SECONDS = float(os.environ.get("AIOS_WIRE_SPIN_US", "200")) / 1e6


#: (when to look at the load again, whether to poll): polling only pays while a CPU is free.
_POLLING = [0.0, True]


def _may_poll() -> bool:
    """Whether the machine has a CPU to spare (1-minute load average below the CPUs this process
    may use, looked at every half second): on a busy machine, polling takes CPU time from the
    other side and from everything else, and sleeping in ``recv`` is faster."""
    now = time.monotonic()
    if now >= _POLLING[0]:
        _POLLING[0] = now + 0.5
        try:
            _POLLING[1] = os.getloadavg()[0] < len(os.sched_getaffinity(0))
        except (OSError, AttributeError):
            _POLLING[1] = True
    return _POLLING[1]


def _spin_recv(sock: socket.socket, size: int) -> bytes | None:
    """What arrives on ``sock`` within ``SPIN_SECONDS`` (up to ``size`` bytes), polled without
    sleeping; None when nothing came (the caller then waits in ``recv``)."""
    deadline = time.perf_counter() + SPIN_SECONDS
    while True:
        try:
            return sock.recv(size, socket.MSG_DONTWAIT)
        except BlockingIOError:
            if time.perf_counter() > deadline:
                return None
            os.sched_yield()


def _read_large(sock: socket.socket, pending: bytearray, size: int) -> bytes:
    """The next ``size`` bytes, a large buffer: what is pending, then read straight into place."""
    data = bytearray(size)
    have = min(len(pending), size)
    data[:have] = pending[:have]
    del pending[:have]
    view = memoryview(data)
    while have < size:
        got = sock.recv_into(view[have:], min(size - have, 2**22))
        if not got:
            raise WireError("the other side closed the connection")
        have += got
    return bytes(data)


def _read_exact(sock: socket.socket, size: int) -> bytes:
    """Exactly ``size`` bytes from the socket (WireError when it closes first)."""
    pending = _pending(sock)
    if size > READ_AHEAD:
        return _read_large(sock, pending, size)
    _fill(sock, pending, size)
    data = bytes(pending[:size])
    del pending[:size]
    return data


def _pending(sock: socket.socket) -> bytearray:
    pending = _PENDING.get(sock)
    if pending is None:
        pending = _PENDING[sock] = bytearray()
    return pending


def send(sock: socket.socket, header: dict, buffers: list[bytes] = ()) -> None:
    """Write one frame: the JSON header and its raw buffers, with one system call."""
    text = _PICKLE_HEADER_TEXT if header is PICKLE_HEADER else _ENCODER.encode(header).encode()
    parts = [HEAD.pack(len(text), len(buffers)), text]
    for buffer in buffers:
        parts += [BUFFER_LEN.pack(len(buffer)), buffer]
    sock.sendall(b"".join(parts))


def recv(sock: socket.socket) -> tuple[dict, list[bytes]]:
    """Read one frame; sizes are checked before anything is allocated."""
    pending = _pending(sock)
    _fill(sock, pending, HEAD.size)
    size, count = HEAD.unpack_from(pending)
    if size > MAX_HEADER or count > 2**20:
        raise WireError(f"oversized frame ({size} bytes of header, {count} buffers)")
    del pending[:HEAD.size]
    text = _read_exact(sock, size)
    try:
        header = dict(PICKLE_HEADER) if text == _PICKLE_HEADER_TEXT else _DECODER.decode(text.decode())
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise WireError(f"malformed header: {exc}") from None
    if not isinstance(header, dict):
        raise WireError("a frame's header must be a JSON object")
    buffers = []
    for _ in range(count):
        _fill(sock, pending, BUFFER_LEN.size)
        (length,) = BUFFER_LEN.unpack_from(pending)
        if length > MAX_BUFFER:
            raise WireError(f"oversized buffer ({length} bytes)")
        del pending[:BUFFER_LEN.size]
        buffers.append(_read_exact(sock, length))
    return header, buffers


def version(tensor) -> int:
    """The tensor's in-place write counter (-1 for an inference tensor, which keeps none)."""
    return -1 if tensor.is_inference() else tensor._version


def clip(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` cut to ``limit`` characters (the end kept, where tracebacks say the most)."""
    text = str(text)
    return text if len(text) <= limit else "..." + text[-limit:]


# ------------------------------------------------------------------ worker side: encode


def _dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def encode(value, handle, buffers: list[bytes], depth: int = 0, tensors=None):
    """``value`` as JSON-ready data; raw bytes go to ``buffers``; ``handle(obj)`` names the rest.

    Only exact builtin types count as data (a ``str`` subclass is an object); every
    tensor, subclass or not, crosses as its bytes, so its class never does. ``tensors``
    (the worker's ``Tensors``) numbers tensor objects, so that the trusted side can give back
    the same copy for the same unchanged tensor (``a.weight is b.weight`` for tied weights),
    and names the tests' own tensors (sent with their contents all the same).
    """
    kind = type(value)
    if kind in PLAIN:
        return value if kind is not float or value == value and abs(value) != float("inf") \
            else {"$": "float", "v": repr(value)}
    if depth > MAX_DEPTH:
        return handle(value)
    if kind in (list, tuple, set, frozenset):
        return {"$": kind.__name__, "v": [encode(v, handle, buffers, depth + 1, tensors) for v in value]}
    if kind is dict:
        return {"$": "dict", "k": [encode(k, handle, buffers, depth + 1, tensors) for k in value],
                "v": [encode(v, handle, buffers, depth + 1, tensors) for v in value.values()]}
    if kind in (bytes, bytearray):
        buffers.append(bytes(value))
        return {"$": "bytes", "b": len(buffers) - 1}
    if kind in (pathlib.PosixPath, pathlib.PurePosixPath):
        return {"$": "path", "v": str(value)}
    if kind is slice:
        return {"$": "slice", "v": [encode(v, handle, buffers, depth + 1, tensors)
                                    for v in (value.start, value.stop, value.step)]}
    if value is Ellipsis:
        return {"$": "ellipsis"}
    torch = _torch()
    if torch is not None:
        if isinstance(value, torch.Tensor):
            record = _encode_tensor(torch, value, buffers)
            shared = tensors.shared_id(value) if tensors is not None else None
            if shared is not None:
                return {"$": "tt", "id": shared, "data": record}
            if tensors is not None and not value.is_inference():
                record.update(oid=tensors.key(value), ver=version(value), ptr=value.data_ptr())
            extra = {k: v for k, v in getattr(value, "__dict__", {}).items()
                     if type(k) is str and not k.startswith("_")}
            if extra:
                record["attrs"] = encode(extra, handle, buffers, depth + 1, tensors)
            return record
        if kind is torch.Size:
            return {"$": "size", "v": [int(v) for v in value]}
        if kind is torch.dtype:
            return {"$": "dtype", "v": _dtype_name(value)}
        if kind is torch.device:
            return {"$": "device", "v": str(value)}
    return handle(value)


def _encode_tensor(torch, tensor, buffers: list[bytes]) -> dict:
    """A tensor's raw bytes (contiguous, on the CPU) and what is needed to rebuild it."""
    with torch._C.DisableTorchFunction():
        plain = torch.Tensor.as_subclass(tensor, torch.Tensor).detach()
        device, requires_grad = str(plain.device), bool(plain.requires_grad)
        flat = plain.to("cpu").contiguous().reshape(-1)
        raw = flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""
    buffers.append(raw)
    return {"$": "tensor", "b": len(buffers) - 1, "dtype": _dtype_name(plain.dtype),
            "shape": list(plain.shape), "device": device, "grad": requires_grad}


def _torch():
    """torch when it is already imported (the worker never imports it just to encode)."""
    return sys.modules.get("torch")


# ----------------------------------------------------------------- trusted side: decode


def decode(data, buffers: list[bytes], handle, depth: int = 0, tensors=None):
    """Rebuild a value from :func:`encode`'s output; ``handle(record)`` makes remote handles.

    Whatever the worker sent, the result is built only from builtin containers, plain
    tensors and what ``handle`` returns. ``tensors`` (a weak-valued mapping with a list
    ``recent``) keeps the copies made of numbered tensors: the same tensor, unchanged,
    decodes to the same copy, whose ``data_ptr()`` answers the worker tensor's.
    """
    if type(data) in PLAIN:
        return data
    if depth > MAX_DEPTH + 2 or type(data) is not dict:
        raise WireError(f"unexpected value on the wire: {type(data).__name__}")
    tag = data.get("$")
    if tag in ("list", "tuple", "set", "frozenset"):
        items = [decode(v, buffers, handle, depth + 1, tensors) for v in _list(data["v"])]
        return {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}[tag](items)
    if tag == "dict":
        keys = [decode(k, buffers, handle, depth + 1, tensors) for k in _list(data["k"])]
        values = [decode(v, buffers, handle, depth + 1, tensors) for v in _list(data["v"])]
        return dict(zip(keys, values, strict=True))
    if tag == "float":
        return float(str(data["v"]))
    if tag == "bytes":
        return bytes(buffers[int(data["b"])])
    if tag == "path":
        return pathlib.Path(str(data["v"]))
    if tag == "slice":
        return slice(*[decode(v, buffers, handle, depth + 1, tensors) for v in _list(data["v"])[:3]])
    if tag == "ellipsis":
        return Ellipsis
    if tag == "tt":  # the test's own tensor (its contents, should the test have dropped it)
        own = handle(data)
        return own if own is not None else decode(data["data"], buffers, handle, depth + 1, tensors)
    if tag == "tensor":
        numbered = tensors is not None and "oid" in data
        tensor = _decode_numbered(data, buffers, tensors) if numbered else _decode_torch(tag, data, buffers)
        if "attrs" in data:
            set_tensor_attributes(tensor, decode(data["attrs"], buffers, handle, depth + 1, tensors))
        return tensor
    if tag in ("size", "dtype", "device"):
        return _decode_torch(tag, data, buffers)
    if tag in HANDLE_TAGS:
        return handle(data)
    raise WireError(f"unknown tag {tag!r} on the wire")


def _list(value) -> list:
    if type(value) is not list:
        raise WireError("expected a JSON list")
    return value


def _dtype(torch, name):
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype):
        raise WireError(f"unknown dtype {name!r}")
    return dtype


def _decode_numbered(data: dict, buffers: list[bytes], tensors):
    """A numbered tensor: the copy already made of it when its version has not moved."""
    key = (int(data["oid"]), int(data["ver"]))
    tensor = tensors.get(key)
    if tensor is None:
        tensor = _decode_torch("tensor", data, buffers)
        ptr = int(data["ptr"])
        tensor.data_ptr = lambda: ptr
        tensor._aios_origin = (key[0], version(tensor), key[1])
        tensors[key] = tensor
    tensors.recent.append(tensor)
    return tensor


def _decode_torch(tag: str, data: dict, buffers: list[bytes]):
    """A plain ``torch.Tensor`` (a fresh copy), ``torch.Size``, dtype or device."""
    import torch

    if tag == "size":
        return torch.Size([int(v) for v in _list(data["v"])])
    if tag == "dtype":
        return _dtype(torch, data["v"])
    if tag == "device":
        return torch.device(str(data["v"]))
    dtype, shape = _dtype(torch, data["dtype"]), [int(v) for v in _list(data["shape"])]
    tensor = rebuild_tensor(buffers[int(data["b"])], dtype, shape, str(data.get("device", "cpu")),
                            data.get("grad") is True)
    assert type(tensor) is torch.Tensor
    return tensor


def set_tensor_attributes(tensor, attrs: dict) -> None:
    """The learner's own attributes of a tensor (a Parameter's ``weight_loader``) on its copy."""
    import torch

    for name, value in attrs.items():
        if type(name) is str and not name.startswith("_") and not hasattr(torch.Tensor, name):
            setattr(tensor, name, value)


def rebuild_tensor(raw: bytes, dtype, shape: list[int], device: str, requires_grad: bool):
    """A new plain tensor holding ``raw`` (the bytes of a contiguous tensor)."""
    import torch

    if isinstance(dtype, str):
        dtype = _dtype(torch, dtype)
    tensor = torch.empty(shape, dtype=dtype)  # not a view: a test may take views of it
    if raw:
        tensor.view(-1).view(torch.uint8).copy_(torch.frombuffer(bytearray(raw), dtype=torch.uint8))
    if device != "cpu":
        tensor = tensor.to(device)
    if requires_grad and (dtype.is_floating_point or dtype.is_complex):
        tensor.requires_grad_(True)
    return tensor


def reduce_tensor(tensor):
    """A pickle reduction of a trusted plain tensor that is quicker than torch's own (a copy of its bytes)."""
    import torch

    plain = tensor.detach()
    flat = plain.to("cpu").contiguous().reshape(-1)
    raw = flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""
    return rebuild_tensor, (raw, _dtype_name(plain.dtype), list(plain.shape), str(plain.device),
                            bool(tensor.requires_grad))


# The worker loads this file as ``_aios_remote_protocol``; pickles name rebuild_tensor so.
ALIAS = "_aios_remote_protocol"
rebuild_tensor.__module__ = ALIAS
sys.modules.setdefault(ALIAS, sys.modules[__name__])
