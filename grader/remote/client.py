"""The trusted side of the learner worker: proxies that make remote ``aios`` look local to the tests.

:func:`install` puts :class:`RemoteFinder` first on ``sys.meta_path``, so ``import aios...``
in a test yields a :class:`RemoteModule` whose attributes are fetched from the worker
(``grader/remote/worker.py``, a separate process). Plain data and tensors come back as
fresh local values rebuilt by ``protocol.decode``; everything else is a :class:`Remote`
handle that forwards attribute access, calls and operators to the worker, one request
each. Learner exceptions are raised here as local classes (:func:`exception_class`):
builtin ones as themselves, the learner's own as local subclasses of their builtin base,
and anything that could pass for a test outcome (``AssertionError``, ``SystemExit``,
pytest's skip/fail) as :class:`LearnerError`.

If a request is interrupted (pytest-timeout) or the worker dies, the worker is killed and
the next request starts a fresh one; handles taken from a module re-resolve there.
"""

from __future__ import annotations

import atexit
import builtins
import contextlib
import functools
import importlib
import importlib.abc
import importlib.util
import io
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import types
import weakref
from pathlib import Path

from grader.remote import protocol

WORKER_FILE = Path(__file__).with_name("worker.py")
STARTUP_TIMEOUT = 120
SHARED_PREFIXES = tuple({os.path.realpath(sysconfig.get_paths()[key]) + os.sep
                         for key in ("stdlib", "platstdlib", "purelib", "platlib")})
LOG_LIMIT = 4000


class LearnerError(Exception):
    """The learner's code raised something a test must not take at face value.

    ``AssertionError``, ``SystemExit``, ``KeyboardInterrupt`` and pytest's own outcome
    exceptions arrive as this, so learner code cannot pass for a test assertion or skip.
    """


class WorkerDied(LearnerError):
    """The learner worker exited (crash, ``os._exit``) or was stopped after a timeout."""


_EXCEPTIONS: dict[tuple[str, str], type] = {}
_NEVER_AS_IS = {"AssertionError"}


def exception_class(module: str, name: str, bases: list[str]) -> type:
    """The local class standing for the learner's exception class ``module.name``.

    Builtin exceptions map to themselves; the learner's classes to a local subclass
    (cached, so ``pytest.raises(aios.x.MyError)`` and the raised error agree) of the
    nearest builtin base it has.
    """
    if module == "builtins" and name not in _NEVER_AS_IS:
        found = getattr(builtins, name, None)
        if isinstance(found, type) and issubclass(found, Exception):
            return found
    key = (str(module), str(name))
    if key not in _EXCEPTIONS:
        base = LearnerError
        for candidate in bases:
            found = getattr(builtins, str(candidate), None)
            if (isinstance(found, type) and issubclass(found, Exception)
                    and str(candidate) not in _NEVER_AS_IS and found is not Exception):
                base = found
                break
        cls = type(str(name).rsplit(".", 1)[-1], (base,), {"__module__": str(module), "__qualname__": str(name),
                                                            "__getattr__": _learner_attribute})
        _EXCEPTIONS[key] = cls
    return _EXCEPTIONS[key]


def _learner_attribute(exc: BaseException, name: str):
    """An attribute of the learner's exception object (``APIError.status``, ``body()``), read in the worker."""
    remote = exc.__dict__.get("_aios_remote")
    if remote is None or name.startswith("_"):
        raise AttributeError(name)
    try:
        return getattr(remote, name)
    except WorkerDied:  # the original is gone with its worker: as if it had no such attribute
        raise AttributeError(f"{name} (the learner worker that raised this exception was stopped)") from None


def _trusted_only(obj) -> bool:
    """Whether ``obj`` must stay here (the worker gets a callback handle): test code, lambdas, locals."""
    if isinstance(obj, (types.GeneratorType, types.CoroutineType)):
        return True
    if type(obj).__module__.startswith("transformers.") and isinstance(obj, _module_type()):
        return True  # a Hugging Face model: its code may be refused in the worker; it runs here
    target = obj if isinstance(obj, (type, types.FunctionType, types.MethodType)) else type(obj)
    if isinstance(obj, types.MethodType):
        return _trusted_only(obj.__self__) or _trusted_only(obj.__func__)
    qualname = getattr(target, "__qualname__", "")
    if "<locals>" in qualname or "<lambda>" in qualname:
        return True
    return _trusted_module(getattr(target, "__module__", None) or "")


@functools.lru_cache(maxsize=None)
def _trusted_module(name: str) -> bool:
    """Whether module ``name`` is test code: not a library the worker can import itself."""
    if name == protocol.ALIAS:
        return False
    module = sys.modules.get(name)
    if module is None:
        return True
    path = getattr(module, "__file__", None)
    return bool(path) and not os.path.realpath(path).startswith(SHARED_PREFIXES)


class Worker:
    """One learner worker process and the connection to it."""

    def __init__(self, tree: Path, block_hf_models: bool, log_path: Path, preload: list[str] = ()):
        self.sock, theirs = socket.socketpair()
        argv = [sys.executable, "-I", str(WORKER_FILE), "--fd", str(theirs.fileno()), "--tree", str(tree)]
        if block_hf_models:
            argv.append("--block-hf-models")
        if preload:
            argv += ["--preload", ",".join(preload)]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PYTEST", "AIOS_REMOTE"))}
        self.log_path = log_path
        self.scratch, models = None, []
        if sandboxed():
            self.scratch, scratch_env, models = _scratch()
            env.update(scratch_env)
            argv[2] = str(self.scratch / "worker" / WORKER_FILE.name)
        with open(log_path, "ab") as log:
            self.proc = _spawn(argv, cwd=tree, env=env, stdout=log, pass_fds=(theirs.fileno(),),
                               scratch=self.scratch, readable=models)
        theirs.close()
        self.proxies: weakref.WeakValueDictionary[int, Remote] = weakref.WeakValueDictionary()
        self.released: list[tuple[int, int]] = []
        self.trusted: dict[int, object] = {}
        self.trusted_ids: dict[int, int] = {}
        self.methods: dict[str, frozenset] = {}
        self.identity: set[str] = set()  # type keys whose == and != are identity (see Remote.__eq__)
        self.importing: set[str] = set()
        self.tensors = CopyCache()
        self.shared = SharedTensors()
        self.epoch = 0  # requests that may have changed the learner's objects (see snapshot_value)
        self.pinned: list[Remote] = []  # the handles of the last reply, alive until the next request
        self.hot: dict[int, None] = {}  # handle ids whose snapshots were read since the last request
        self.recent: dict[int, None] = {}  # handle ids whose snapshots were read lately, oldest first
        self.stale_read = None  # the type key of the last object whose stale snapshot a read found
        self.depth = 0  # requests in flight (callbacks nest them)
        self.alive = True

    # ---------------------------------------------------------------- requests

    def request(self, op: str, *args):
        """Send one request and wait for its answer, serving the worker's callbacks meanwhile."""
        if not self.alive:
            raise WorkerDied("the learner worker was stopped")
        self.pinned.clear()  # handles the test dropped are released with this request, as unpinned ones
        message = {"k": "req", "op": op, "a": args}
        wanted, unused = self._named(args)
        lately, wide = self._wanted()
        for hid, snap in lately.items():
            wanted.setdefault(hid, snap)
        target = args[0] if args else None
        if isinstance(target, Remote) and target._aios_keep:  # scheduler.schedule(): its queues may change
            for child in target._aios_keep.values():
                if isinstance(child, Remote) and child._aios_snap is not None and child._aios_worker is self:
                    wanted.setdefault(child._aios_id, child._aios_snap)
        if wanted:
            message["want"] = list(wanted)
            if wide:
                message["wide"] = wide
        unused = [hid for hid in unused if hid not in wanted]
        if unused:
            message["skip"] = unused
        # Only what is not empty: the worker reads a missing entry as empty.
        for key, value in (("rel", self.released), ("mode", _grad_mode()), ("sync", self.shared.changed()),
                           ("relt", self.shared.forget()), ("orig", self._changed_copies())):
            if value:
                message[key] = value
        raw = self._pickle(message)
        self.released = []
        self.depth += 1
        try:
            protocol.send(self.sock, protocol.PICKLE_HEADER, [raw])
            header, buffers = self._wait()
        except BaseException as exc:
            broken = isinstance(exc, (protocol.WireError, OSError))
            note = self.death_note(exc) if broken else ""
            self.stop()
            if broken:
                raise WorkerDied(note) from None
            raise
        finally:
            self.depth -= 1
        if header.get("pure") is not True:
            self.epoch += 1  # learner code may have run: every snapshot taken before is stale
        self._keep_snapshots(header.get("snaps"))
        kept = header.get("kept")
        for hid in kept if type(kept) is list else ():
            proxy = self.proxies.get(hid) if type(hid) is int and hid in wanted else None
            if proxy is not None and proxy._aios_snap is wanted[hid]:  # unchanged here since it was asked for
                object.__setattr__(proxy, "_aios_snap", (self.epoch, wanted[hid][1]))
                object.__setattr__(proxy, "_aios_used", False)
        if "wb" in header:
            for tid, value in self.decode(header["wb"], buffers):
                self.shared.write_back(tid, value)
        _echo(header)
        if header["k"] == "ret":
            return self.decode(header["v"], buffers)
        raise self.error(header, buffers)

    def _keep_snapshots(self, snaps) -> None:
        """Attach the snapshots a reply sent (``[[handle id, {name: data}], ...]``: the object a pure
        read was made on, or the objects the request named), valid from now on."""
        for hid, snap in snaps if type(snaps) is list else ():
            proxy = self.proxies.get(hid) if type(hid) is int else None
            if proxy is not None and type(snap) is dict:
                object.__setattr__(proxy, "_aios_snap", (self.epoch, snap))
                object.__setattr__(proxy, "_aios_used", False)

    def snapshot_value(self, proxy: "Remote", name: str):
        """``proxy.name`` from the snapshot of its attributes (``_MISSING`` when there is none or it is stale).

        The worker sends a snapshot of an object's plain-data attributes with its handle, and
        again in the reply to a request that named the object; it stays valid until a request
        that may have run learner code (``epoch``), and is not used while a request is in
        flight (a callback from learner code that is still running). The objects whose
        snapshots are read are asked for again with the next request (``_wanted``): the worker
        answers that one is unchanged after it ("kept", then it stays valid) or sends it anew.
        """
        snap = proxy._aios_snap
        if snap is None or self.depth or name not in snap[1] or not self.alive or name == ITEMS:
            return _MISSING
        if SESSION is not None and SESSION.current is not self:
            return _MISSING
        hid = proxy._aios_id
        if snap[0] != self.epoch:  # stale: the request that reads it asks for the others read lately too
            self.stale_read = proxy._aios_record.get("tkey")
            self._recently_read(hid)
            return _MISSING
        self._mark_read(proxy)
        data = snap[1][name]
        if type(data) is dict and data.get("$") in ("hl", "ho"):
            value = self._handle_list(data) if data["$"] == "hl" else self._held(data.get("v"))
            if value is not _MISSING:
                proxy._aios_keep[name] = value
            return value
        return protocol.decode(data, [], _no_handles)

    def _held(self, hid):
        """The handle held here for handle id ``hid`` (``_MISSING`` when it is gone)."""
        proxy = self.proxies.get(hid) if type(hid) is int else None
        return _MISSING if proxy is None else proxy

    def items_value(self, proxy: "Remote"):
        """The items of a builtin container held by learner code (a deque), as a fresh list, from
        those its handle came with (``_MISSING`` when stale, as a snapshot would be): iterating a
        builtin container of plain data runs no code, so the request would answer the same."""
        snap = proxy._aios_snap
        if snap is None or ITEMS not in snap[1] or self.depth or not self.alive:
            return _MISSING
        if SESSION is not None and SESSION.current is not self:
            return _MISSING
        if snap[0] != self.epoch:
            self.stale_read = proxy._aios_record.get("tkey")
            self._recently_read(proxy._aios_id)
            return _MISSING
        hid = proxy._aios_id
        self._mark_read(proxy)
        data = snap[1][ITEMS]
        if type(data) is dict and data.get("$") == "hl":
            value = self._handle_list(data)
            if value is not _MISSING:
                proxy._aios_keep[ITEMS] = value
            return list(value) if type(value) is list else _MISSING
        value = protocol.decode(data, [], _no_handles)
        return value if type(value) is list else _MISSING

    def read_anew(self, proxy: "Remote", name: str, value=None) -> None:
        """After a request read ``proxy.name``: the tests look at the object, so its snapshot is kept
        current (``_aios_used``, see ``_named``). When the reply brought a snapshot holding the name
        (a plain attribute), the object counts as read since the last request, and lately (see
        ``_wanted``). A learner object the snapshot names by its handle (``scheduler.running``) is
        kept alive with ``proxy``, so that the next read finds it there."""
        snap = proxy._aios_snap
        if snap is None or snap[0] != self.epoch or name not in snap[1] or proxy._aios_worker is not self:
            object.__setattr__(proxy, "_aios_used", True)
            return
        self._mark_read(proxy)
        data = snap[1][name]
        if isinstance(value, Remote) and type(data) is dict and data.get("$") == "ho" and data.get("v") == value._aios_id:
            proxy._aios_keep[name] = value

    def _mark_read(self, proxy: "Remote") -> None:
        """The tests read ``proxy``'s current snapshot: checked again after the next request (``hot``),
        remembered as read lately, and kept current while a request names it (``_aios_used``)."""
        hid = proxy._aios_id
        if hid not in self.hot:
            self.hot[hid] = None
            self._recently_read(hid)
        object.__setattr__(proxy, "_aios_used", True)

    def _recently_read(self, hid: int) -> None:
        recent = self.recent
        recent.pop(hid, None)
        recent[hid] = None
        if len(recent) > RECENT_SNAPSHOTS:
            del recent[next(iter(recent))]

    def _wanted(self) -> tuple[dict, list[int]]:
        """The snapshots to ask the worker for after the next request, as ({handle id: its snapshot
        now}, wide): those read since the last request, and, after a read found a stale one, every
        stale one read lately, those of the same class first (``seq.block_table`` over all
        sequences: one request, not one per sequence; then the blocks and the manager an invariant
        reads next). Those of other classes are also listed in ``wide``: the worker checks them only
        where that costs no new snapshot. Only ids are kept, so that no handle lives longer for it."""
        wanted = {}
        for hid in self.hot:
            proxy = self.proxies.get(hid)
            if proxy is not None and proxy._aios_snap is not None:
                wanted[hid] = proxy._aios_snap
                for child in proxy._aios_keep.values():  # scheduler.running: its items too
                    if isinstance(child, Remote) and child._aios_snap is not None and child._aios_worker is self:
                        wanted.setdefault(child._aios_id, child._aios_snap)
        self.hot.clear()
        wide: list[int] = []
        if self.stale_read is not None:
            kind, self.stale_read = self.stale_read, None
            others = []
            for hid in reversed(self.recent):
                proxy = self.proxies.get(hid)
                snap = proxy._aios_snap if proxy is not None else None
                if snap is not None and hid not in wanted and snap[0] != self.epoch:
                    if proxy._aios_record.get("tkey") == kind:
                        wanted[hid] = snap
                        if len(wanted) >= RECENT_SNAPSHOTS:
                            break
                    else:
                        others.append((hid, snap))
            for hid, snap in others[:max(RECENT_SNAPSHOTS - len(wanted), 0)]:
                wanted[hid] = snap
                wide.append(hid)
        return wanted, wide

    def _named(self, args: tuple) -> tuple[dict, list[int]]:
        """The handles a request names (its target and arguments, a few levels deep, as the worker
        looks for them: ``Worker.involved``), as ({handle id: its snapshot now}, [handle ids]). The
        worker sends the snapshots of the first anew after the request, or says which ones are
        unchanged (then nothing more crosses). The second are those whose last snapshot the tests
        have not read (``seq`` in ``can_append(seq)``, ``may_append(seq)`` and so on, token after
        token): the worker leaves them alone, and a read of one finds it stale (one request)."""
        found, unused, todo = {}, [], [(value, 0) for value in args]
        while todo and len(found) + len(unused) < NAMED_SNAPSHOTS:
            value, depth = todo.pop()
            kind = type(value)
            if kind is Remote:
                if value._aios_snap is not None and value._aios_worker is self:
                    if value._aios_used:
                        found[value._aios_id] = value._aios_snap
                    else:
                        unused.append(value._aios_id)
            elif kind in (list, tuple) and depth < 2:
                todo.extend((v, depth + 1) for v in value[:32])
            elif kind is dict and depth < 2:
                todo.extend((v, depth + 1) for v in list(value.values())[:32])
        return found, unused

    def _handle_list(self, data: dict):
        """A snapshot's list (or tuple) of learner objects named by handle id: the handles held here
        (``_MISSING`` when one of them is gone, so that a request reads the attribute). The handles
        a reply brought stay alive until the next request (``pinned``): a test that reads
        ``manager.blocks[i]`` and drops it at once finds them again, and releases them with the
        same request as it would have without the pin."""
        items = []
        for hid in data.get("v", ()) if type(data.get("v")) is list else ():
            proxy = self.proxies.get(hid) if type(hid) is int else None
            if proxy is None:
                return _MISSING
            items.append(proxy)
        if not items:
            return _MISSING
        return tuple(items) if data.get("t") == "tuple" else items

    def _changed_copies(self) -> list:
        """Copies of worker tensors the test changed in place (``context.context_lens[1] = 0``):
        their new contents, for the worker to write into the originals. The copies of the last
        reply are held until then, so a copy changed and dropped at once counts too."""
        changed = []
        if not self.tensors.recent and not len(self.tensors):
            return changed
        recent, self.tensors.recent = self.tensors.recent, []
        for tensor in {id(t): t for t in [*self.tensors.values(), *recent]}.values():
            origin = tensor.__dict__.get("_aios_origin")
            if origin is not None and protocol.version(tensor) != origin[1]:
                tensor._aios_origin = (origin[0], protocol.version(tensor), origin[2])
                changed.append((origin[0], *protocol.reduce_tensor(tensor)[1]))
        return changed

    def _pickle(self, message: dict) -> bytes:
        buffer = io.BytesIO()
        Pickler(buffer, self).dump(message)
        return buffer.getvalue()

    def _wait(self):
        """The next reply; callbacks from the worker are answered on the way."""
        while True:
            header, buffers = protocol.recv(self.sock)
            kind = header.get("k")
            if kind in ("ret", "err"):
                return header, buffers
            if kind != "cb":
                raise protocol.WireError(f"unexpected message {kind!r}")
            self._answer_callback(header, buffers)

    def _answer_callback(self, header: dict, buffers: list[bytes]) -> None:
        """Run a test value the worker holds a callback handle to, and send the result back."""
        try:
            target = self.trusted[int(header["id"])]
            args, kwargs = self.decode(header["v"], buffers)
            op, name = header.get("op"), str(header.get("name", ""))
            if op == "call":
                result = target(*args, **kwargs)
            elif op == "getattr":
                result = getattr(target, name)
            elif op == "list":
                result = list(target)
            elif op == "len":
                result = len(target)
            elif op == "next":
                result = next(target)
            elif op == "getitem":
                result = target[args[0]]
            else:
                raise ValueError(f"unknown callback {op!r}")
            raw = self._pickle({"k": "ret", "v": result})
        except Exception as exc:  # noqa: BLE001 - the failure is reported to the caller in the worker
            raw = self._pickle({"k": "err", "name": type(exc).__name__, "message": protocol.clip(str(exc))})
        protocol.send(self.sock, protocol.PICKLE_HEADER, [raw])

    def error(self, header: dict, buffers: list[bytes] = ()) -> BaseException:
        """The local exception for a learner exception (its learner traceback as a note); a
        learner class's instance keeps a handle to the original, which its attributes are read from."""
        cls = exception_class(str(header.get("module")), str(header.get("name")), list(header.get("bases", [])))
        args = [a for a in header.get("args", []) if type(a) in protocol.PLAIN]
        try:
            exc = cls(*args)
        except Exception:  # noqa: BLE001 - a builtin that wants other arguments
            exc = cls(" ".join(map(str, args)))
        if cls.__module__ != "builtins" or cls in (LearnerError,):
            exc.add_note(f"(raised by {header.get('module')}.{header.get('name')} in the learner worker)")
        exc.add_note("learner traceback (in the worker):\n" + protocol.clip(str(header.get("tb", ""))))
        if "obj" in header and cls.__module__ != "builtins":
            original = self.decode(header["obj"], buffers)
            if isinstance(original, Remote):
                exc.__dict__["_aios_remote"] = original
        return exc

    # ------------------------------------------------------------------ values

    def decode(self, data, buffers):
        return protocol.decode(data, buffers, self._from_record, tensors=self.tensors)

    def _from_record(self, record: dict):
        tag = record.get("$")
        if tag == "stop":
            return STOP
        if tag == "t":
            return self.trusted[int(record["id"])]
        if tag == "tt":
            return self.shared.own(int(record["id"]))
        if tag == "exc":
            return exception_class(str(record["module"]), str(record["name"]), list(record.get("bases", [])))
        if tag != "h":
            raise protocol.WireError(f"unknown record {tag!r}")
        hid = int(record["id"])
        if "methods" in record:
            self.methods[str(record["tkey"])] = frozenset(str(m) for m in record["methods"])
            if record.get("ident") is True:
                self.identity.add(str(record["tkey"]))
        name = str(record.get("name"))
        if record.get("kind") == "module" and _is_aios(name) and name not in self.importing:
            self.released.append((hid, 1))
            return importlib.import_module(name)
        proxy = self.proxies.get(hid)
        if proxy is None:
            proxy = Remote(self, hid, record)
            self.proxies[hid] = proxy
        object.__setattr__(proxy, "_aios_seen", proxy._aios_seen + 1)
        self.pinned.append(proxy)  # a snapshot may name it (see _handle_list)
        if type(record.get("snap")) is dict:
            object.__setattr__(proxy, "_aios_snap", (self.epoch, record["snap"]))
        members = record.get("members")
        if type(members) is dict and record.get("kind") == "class":
            found = {str(name): self._from_record(member) for name, member in members.items()
                     if type(member) is dict and member.get("$") == "h"}
            object.__setattr__(proxy, "_aios_members", {n: m for n, m in found.items() if isinstance(m, Remote)})
        if record.get("kind") == "coroutine":
            return _awaiting(proxy)
        if record.get("kind") == "asyncgen":
            return _iterating(proxy)
        return proxy

    def trusted_id(self, obj) -> int:
        """A callback id for a trusted value (kept alive here for the worker's lifetime)."""
        tid = self.trusted_ids.get(id(obj))
        if tid is None:
            tid = len(self.trusted) + 1
            self.trusted[tid], self.trusted_ids[id(obj)] = obj, tid
        return tid

    # --------------------------------------------------------------- lifecycle

    def death_note(self, exc: BaseException) -> str:
        """Why the worker is gone, with the end of its log."""
        try:
            code = self.proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            code = None
        if code is None:
            what = f"stopped answering ({exc})"
        elif code < 0:
            what = f"was killed by signal {-code}"
        else:
            what = f"exited with code {code}"
        return f"the learner worker {what}\n{read_log(self.log_path)}"

    def stop(self) -> None:
        """Close the connection and kill the worker's whole process group."""
        if not self.alive:
            return
        self.alive = False
        self.pinned.clear()
        try:
            self.sock.close()
            if os.environ.get("AIOS_WORKER_PROFILE"):  # let it write its profile (worker.py: _profiled)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=30)
        finally:
            _kill_group(self.proc)
            if self.scratch is not None:
                shutil.rmtree(self.scratch, ignore_errors=True)


def _echo(header: dict) -> None:
    """Print what learner code printed during the request (pytest captures it for the test)."""
    for key, stream in (("out", sys.stdout), ("err", sys.stderr)):
        text = header.get(key)
        if text and type(text) is str:
            stream.write(text)
            stream.flush()


def _grad_mode() -> int:
    """The test's autograd mode, for the worker to run the request in: 0 grad, 1 no_grad, 2 inference."""
    torch = sys.modules.get("torch")
    if torch is None:
        return 0
    if torch.is_inference_mode_enabled():
        return 2
    return 0 if torch.is_grad_enabled() else 1


class CopyCache(weakref.WeakValueDictionary):
    """The copies made of worker tensors, by (key, version); ``recent``: those of the last reply."""

    def __init__(self):
        super().__init__()
        self.recent: list = []


class SharedTensors:
    """The test's tensors the worker holds a copy of, kept in step both ways.

    A tensor a test hands to learner code is copied into the worker once; later requests
    name it by id and send its bytes again only after the test changed it (then the
    worker's copy is updated in place, so learner objects holding it see the change). When
    learner code changes its copy in place (``store_kvcache`` writing a test's cache), the
    new contents are copied into the test's tensor when the request returns.
    """

    def __init__(self):
        self.entries: dict[int, list] = {}  # id -> [weakref to the test's tensor, version last synced]
        self.ids: dict[int, int] = {}
        self.dead: list[int] = []
        self.next_id = 1

    def _id(self, tensor) -> int:
        tid = self.ids.get(id(tensor))
        if tid is None or self.entries[tid][0]() is not tensor:
            tid, self.next_id = self.next_id, self.next_id + 1

            def gone(_, tid=tid, key=id(tensor)):
                self.entries.pop(tid, None)
                if self.ids.get(key) == tid:
                    del self.ids[key]
                self.dead.append(tid)

            self.entries[tid] = [weakref.ref(tensor, gone), None]
            self.ids[id(tensor)] = tid
        return tid

    def reference(self, tensor) -> tuple:
        """The persistent id naming ``tensor``: with its bytes when the worker's copy is not current."""
        tid = self._id(tensor)
        entry = self.entries[tid]
        if entry[1] == protocol.version(tensor) != -1:  # an inference tensor keeps no version: always sent
            return ("tt", tid)
        entry[1] = protocol.version(tensor)
        return ("tt", tid, *protocol.reduce_tensor(tensor)[1])

    def changed(self) -> list:
        """The shared tensors the test changed since the worker last saw them."""
        if not self.entries:
            return []
        alive = [(entry[0](), entry[1]) for entry in list(self.entries.values())]
        return [tensor for tensor, version in alive if tensor is not None and protocol.version(tensor) != version]

    def own(self, tid: int):
        """The test's tensor ``tid`` (None when it is gone)."""
        entry = self.entries.get(tid)
        return entry[0]() if entry is not None else None

    def forget(self) -> list[int]:
        dead, self.dead = self.dead, []
        return dead

    def write_back(self, tid, value) -> None:
        """Copy the worker's new contents of shared tensor ``tid`` into the test's tensor."""
        entry = self.entries.get(tid)
        tensor = entry[0]() if entry else None
        if tensor is None or type(value) is not type(tensor) or value.shape != tensor.shape:
            return
        import torch

        with torch.inference_mode() if tensor.is_inference() else torch.no_grad():
            tensor.copy_(value)
        entry[1] = protocol.version(tensor)


class Pickler(pickle.Pickler):
    """Pickles trusted values for the worker: handles by id, test code as callbacks."""

    def __init__(self, file, worker: Worker):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.worker = worker

    def persistent_id(self, obj):
        kind = type(obj)
        if LENT is not None and kind in (str, type(LENT.base)):
            LENT.hand_over(obj)
        if kind in _PLAIN_FAST:
            return None
        if isinstance(obj, Remote):
            return ("h", obj._aios_target(self.worker))
        if isinstance(obj, RemoteModule):
            return ("h", obj.__dict__["_aios_remote"]._aios_target(self.worker))
        if isinstance(obj, RemoteMethod):  # the learner's bound method (monkeypatch restoring it)
            return ("hm", obj.owner._aios_target(self.worker), obj.name, obj.replaced())
        if type(obj) is _tensor_type() and not obj.is_sparse:
            return self._tensor_id(obj)
        if _trusted_only(obj):
            return ("t", self.worker.trusted_id(obj))
        return None

    def _tensor_id(self, tensor) -> tuple:
        """How a test's tensor travels: as (a view of) the worker tensor it is a copy of, or shared."""
        base = tensor._base if tensor._base is not None else tensor
        origin = base.__dict__.get("_aios_origin")
        if origin is None or self.worker.tensors.get((origin[0], origin[2])) is not base \
                or protocol.version(base) != origin[1]:
            return self.worker.shared.reference(tensor)
        # A copy of a worker tensor, unchanged here: the worker uses its original (a
        # Parameter a weight_loader must fill in place), or these bytes if it is gone.
        fallback = protocol.reduce_tensor(tensor)[1]
        if base is tensor:
            return ("ts", origin[0], *fallback)
        layout = (list(base.shape), list(tensor.shape), list(tensor.stride()), tensor.storage_offset())
        return ("tv", origin[0], layout, *fallback)


_PLAIN_FAST = (type(None), bool, int, float, str, bytes, list, tuple, dict)


def _module_type():
    torch = sys.modules.get("torch")
    return torch.nn.Module if torch is not None else ()


def _tensor_type():
    torch = sys.modules.get("torch")
    return torch.Tensor if torch is not None else None
STOP = object()
_MISSING = object()
ITEMS = "$items"  # a snapshot's entry holding a builtin container's items (worker.py: ITEMS)
LEN = "$len"  # a snapshot's entry holding what a pure ``__len__`` answers (worker.py: LEN)
#: At most this many handles whose snapshots were read lately are remembered (see Worker._wanted).
RECENT_SNAPSHOTS = 32
#: At most this many handles a request names are asked to be checked rather than sent anew (see Worker._named).
NAMED_SNAPSHOTS = 8


def _no_handles(record):
    raise protocol.WireError("a snapshot holds plain data only")


def read_log(path: Path, limit: int = LOG_LIMIT) -> str:
    """The end of the worker's log, at most ``limit`` characters."""
    try:
        with open(path, "rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - limit))
            return log.read().decode("utf-8", "replace")
    except OSError:
        return ""


def sandboxed() -> bool:
    """Whether the worker starts through ``grader/sandbox.py`` (own user, namespaces, limits).

    ``AIOS_WORKER_SANDBOX=1`` asks for it; the grader's runner sets it for every confined run
    (``autograde --bundle``) unless the grader itself was started with ``AIOS_WORKER_SANDBOX=0``.
    """
    return os.environ.get("AIOS_WORKER_SANDBOX") == "1"


_READABLE_COPIES: dict[Path, Path] = {}


def learner_readable(path: Path) -> Path:
    """``path`` (a file or folder of the tests' own: an asset or a script in the bundle) where the
    sandboxed worker's user can read it: a copy, the grader's own and readable by all, so that the
    learner's code cannot change what the tests read there either. Without the sandbox (the bundle
    is readable as it is), ``path`` itself."""
    path = Path(path).resolve()
    if not sandboxed():
        return path
    if path not in _READABLE_COPIES:
        from grader import sandbox

        folder = sandbox.private_dir("aios-assets-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        copy = folder / path.name
        if path.is_dir():
            shutil.copytree(path, copy)
        else:
            shutil.copy2(path, copy)
        sandbox.open_to_all(folder)
        _READABLE_COPIES[path] = copy
    return _READABLE_COPIES[path]


def _scratch() -> tuple[Path, dict[str, str], list[Path]]:
    """A private folder for a sandboxed worker (its home, working directory and caches), the
    environment that points there, and the cached model folders it must be able to read.

    The learner user may write only there. Model fixtures already in the cache
    (``$AIOS_CACHE`` or ``~/.cache/aios``) are linked in, made readable; one that is missing
    is built in the scratch cache by the worker itself.
    """
    from grader import sandbox

    folder = sandbox.private_dir("aios-worker-")
    cache = Path(os.environ.get("AIOS_CACHE") or Path.home() / ".cache" / "aios")
    (folder / "cache" / "models").mkdir(parents=True)
    (folder / "tmp").mkdir()
    (folder / "worker").mkdir()  # the worker's own code: the bundle it comes from is not readable there
    for name in (WORKER_FILE.name, "protocol.py"):
        shutil.copyfile(WORKER_FILE.with_name(name), folder / "worker" / name)
    models = []
    if (cache / "models").is_dir():
        for model in (cache / "models").iterdir():
            if model.is_dir() and not model.name.startswith(".") and (model / "config.json").is_file():
                models.append(model.resolve())
                (folder / "cache" / "models" / model.name).symlink_to(models[-1])
    env = {"HOME": str(folder), "AIOS_CACHE": str(folder / "cache"), "XDG_CACHE_HOME": str(folder / ".cache"),
           "TMPDIR": str(folder / "tmp")}
    return folder, env, models


def _spawn(argv: list[str], *, cwd: Path, env: dict, stdout, pass_fds, scratch: Path | None = None,
           readable=()) -> subprocess.Popen:
    """Start the worker: in the OS sandbox as the learner user when ``scratch`` (its private folder,
    then its working directory) is given, with ``cwd`` and ``readable`` readable; else in its own
    session."""
    if scratch is not None:
        from grader import sandbox

        # The test process is confined to loopback already; sharing its network namespace lets
        # the tests reach a server the learner's code starts (lesson 15).
        return sandbox.spawn(argv, cwd=scratch, env=env, stdout=stdout, stderr=subprocess.STDOUT,
                             writable=(scratch,), readable=(cwd, *readable), stdin=subprocess.DEVNULL,
                             pass_fds=pass_fds, own_network=False)
    return subprocess.Popen(argv, cwd=cwd, env=env, stdout=stdout, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, pass_fds=pass_fds, start_new_session=True)


def lend_tmp_paths(factory) -> None:
    """Make the folders pytest's ``tmp_path_factory`` hands out usable by the sandboxed worker's user.

    Tests give ``tmp_path`` folders to learner code (a checkpoint to write, a file to load): each
    new folder is chowned to the learner user, under a base folder it may traverse but not list,
    outside ``/tmp/pytest-of-root`` (which pytest keeps at 0700). The tests' other files (bundle,
    hidden tests, report) stay out of its reach. ``factory`` is pytest's ``TempPathFactory``
    (``config._tmp_path_factory``); this replaces its ``mktemp`` on the instance.
    """
    from grader import sandbox

    iso = sandbox.probe()
    if iso.uid is None:
        return
    global LENT
    base = Path(sandbox.private_dir("aios-tmp-")).resolve()
    base.chmod(0o711)
    atexit.register(shutil.rmtree, base, ignore_errors=True)
    LENT = LentFolders(base, iso.uid, iso.gid)
    factory._given_basetemp = base / "basetemp"  # pytest's own field: --basetemp
    make = factory.mktemp

    def mktemp(basename: str, numbered: bool = True) -> Path:
        path = make(basename, numbered)
        factory.getbasetemp().chmod(0o711)
        os.chown(path, iso.uid, iso.gid)
        return path

    factory.mktemp = mktemp


class LentFolders:
    """The tests' tmp_path folders (under ``base``), lent to the sandboxed worker's user.

    Each folder pytest makes is chowned to that user. What a test writes there itself is
    root's, sometimes 0600 (safetensors' ``save_file``): when a test hands a path under
    ``base`` to learner code (a request's argument), that path and everything below it are
    handed to the learner user too. The walk holds directory descriptors and never follows
    a symbolic link, and leaves hard-linked files alone, so nothing the learner's code links
    or swaps in changes hands.
    """

    def __init__(self, base: Path, uid: int, gid: int):
        self.base, self.uid, self.gid = base, uid, gid
        self.prefix = str(base) + os.sep

    def hand_over(self, path) -> None:
        text = os.fspath(path)
        if not text.startswith(self.prefix) or not os.path.exists(text):
            return
        real = os.path.realpath(text)
        if not real.startswith(self.prefix):
            return
        if not os.path.isdir(real):
            self._chown(os.path.basename(real), os.path.dirname(real))
            return
        for _, dirs, files, fd in os.fwalk(real, follow_symlinks=False):
            self._chown(".", None, fd)
            for name in dirs + files:
                self._chown(name, None, fd)

    def _chown(self, name: str, folder: str | None, fd: int | None = None) -> None:
        import stat

        try:
            if fd is None:
                fd_open = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            else:
                fd_open = fd
            try:
                info = os.stat(name, dir_fd=fd_open, follow_symlinks=False)
                if info.st_uid != self.uid and (stat.S_ISDIR(info.st_mode)
                                                or stat.S_ISREG(info.st_mode) and info.st_nlink == 1):
                    os.chown(name, self.uid, self.gid, dir_fd=fd_open, follow_symlinks=False)
            finally:
                if fd is None:
                    os.close(fd_open)
        except OSError:
            pass


LENT: LentFolders | None = None


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the process and everything it started in its session."""
    if sandboxed():
        from grader import sandbox

        return sandbox.kill_tree(proc)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    proc.wait()


def _is_aios(name: str) -> bool:
    return name == "aios" or name.startswith("aios.")


# ---------------------------------------------------------------------- proxies


class Remote:
    """A handle to an object living in the worker; every use is a request.

    ``_aios_path`` (module, attribute) is set for values read off a module, so that after
    a worker restart the handle finds the same object in the new worker.
    """

    __slots__ = ("_aios_worker", "_aios_id", "_aios_seen", "_aios_record", "_aios_path", "_aios_fresh",
                 "_aios_patched", "_aios_snap", "_aios_used", "_aios_members", "_aios_keep", "__weakref__")

    def __init__(self, worker: Worker, hid: int, record: dict):
        object.__setattr__(self, "_aios_worker", worker)
        object.__setattr__(self, "_aios_id", hid)
        object.__setattr__(self, "_aios_seen", 0)
        object.__setattr__(self, "_aios_record", record)
        object.__setattr__(self, "_aios_path", None)
        object.__setattr__(self, "_aios_fresh", None)
        object.__setattr__(self, "_aios_patched", {})  # attribute name -> times the tests set it
        object.__setattr__(self, "_aios_snap", None)  # (epoch, {name: data}): see Worker.snapshot_value
        object.__setattr__(self, "_aios_used", True)  # whether its last snapshot was read (see Worker._named)
        object.__setattr__(self, "_aios_members", None)  # an Enum class's {name: member handle}
        object.__setattr__(self, "_aios_keep", {})  # handles its snapshot names, kept alive with it

    def __del__(self):
        worker = self._aios_worker
        if worker.alive and self._aios_seen:
            worker.released.append((self._aios_id, self._aios_seen))

    def _aios_target(self, worker: Worker | None = None) -> int:
        """This object's handle id in the current worker (re-resolved after a restart)."""
        current = worker or _current_worker(self)
        if self._aios_worker is current:
            return self._aios_id
        fresh = self._aios_fresh
        if fresh is None or fresh._aios_worker is not current:
            if self._aios_path is None:
                raise WorkerDied("this object lived in a learner worker that was stopped (timeout or crash)")
            module, name = self._aios_path
            if module is None and _is_aios(name):
                fresh = importlib.import_module(name).__dict__["_aios_remote"]
            elif module is None:
                fresh = current.request("import", name)
            else:
                fresh = current.request("getattr", importlib.import_module(module), name)
            object.__setattr__(self, "_aios_fresh", fresh)
        return fresh._aios_target(current) if isinstance(fresh, Remote) else self._aios_id

    def _aios(self, op: str, *args):
        worker = _current_worker(self)
        self._aios_target(worker)
        return worker.request(op, *args)

    def _aios_op(self, name: str, *operands):
        return self._aios("op", name, operands)

    def __getattr__(self, name: str):
        if name.startswith("_aios"):
            raise AttributeError(name)
        methods = self._aios_worker.methods.get(str(self._aios_record.get("tkey")), ())
        if name in methods and self._aios_record.get("kind") != "class":
            return RemoteMethod(self, name)
        members = self._aios_members
        if members is not None and name in members and _current(self):
            return members[name]
        value = self._aios_worker.snapshot_value(self, name)
        if value is not _MISSING:
            return value
        value = self._aios("getattr", self, name)
        self._aios_worker.read_anew(self, name, value)
        return value

    def __setattr__(self, name: str, value) -> None:
        if self._aios_members is not None:
            self._aios_members.pop(name, None)
        self._aios("setattr", self, name, value)
        self._aios_patched[name] = self._aios_patched.get(name, 0) + 1

    def __delattr__(self, name: str) -> None:
        if self._aios_members is not None:
            self._aios_members.pop(name, None)
        self._aios("delattr", self, name)

    def __call__(self, *args, **kwargs):
        return self._aios("call", self, args, kwargs)

    def __instancecheck__(self, obj) -> bool:
        return isinstance(obj, (Remote, RemoteModule)) and self._aios("isinstance", obj, self)

    def __subclasscheck__(self, cls) -> bool:
        return isinstance(cls, Remote) and self._aios("issubclass", cls, self)

    def __iter__(self):
        items = self._aios_worker.items_value(self)
        if items is not _MISSING:
            yield from items
            return
        iterator = self._aios_op("iter", self)
        if not isinstance(iterator, Remote):
            yield from iterator
            return
        while (item := iterator._aios_op("next", iterator)) is not STOP:
            yield item

    def __next__(self):
        item = self._aios_op("next", self)
        if item is STOP:
            raise StopIteration
        return item

    def __eq__(self, other):
        if self._aios_identical(other):
            return self is other
        return _plain(self._aios_op("eq", self, other), bool)

    def __ne__(self, other):
        if self._aios_identical(other):
            return self is not other
        return _plain(self._aios_op("ne", self, other), bool)

    def _aios_identical(self, other) -> bool:
        """Whether ``self == other`` is identity, so answered here: both are handles in the current
        worker to objects whose classes keep object's own ``==``/``!=`` (``seq in waiting``). One
        handle per object, so the same object is the same handle. Anything else (a test's value,
        a class with an ``__eq__`` of its own) is asked of the worker."""
        if not isinstance(other, Remote) or not _current(self) or other._aios_worker is not self._aios_worker:
            return False
        identity = self._aios_worker.identity
        return str(self._aios_record.get("tkey")) in identity and str(other._aios_record.get("tkey")) in identity

    def __hash__(self):
        return _plain(self._aios_op("hash", self), int)

    def __bool__(self):
        return _plain(self._aios_op("bool", self), bool)

    def __len__(self):
        items = self._aios_worker.items_value(self)
        if items is not _MISSING:
            return len(items)
        length = self._aios_worker.snapshot_value(self, LEN)  # a pure __len__ (worker.py: _pure_values)
        if type(length) is int and length >= 0:
            return length
        return _plain(self._aios_op("len", self), int)

    def __contains__(self, item):
        items = self._aios_worker.items_value(self)
        if items is not _MISSING and _local_membership(item, items):
            return item in items
        return _plain(self._aios_op("contains", self, item), bool)

    def __index__(self):
        return _plain(self._aios_op("index", self), int)

    def __int__(self):
        return _plain(self._aios_op("int", self), int)

    def __float__(self):
        return _plain(self._aios_op("float", self), float)

    def __repr__(self):
        return _plain(self._aios_op("repr", self), str)

    def __str__(self):
        return _plain(self._aios_op("str", self), str)

    def __format__(self, spec):
        return _plain(self._aios_op("format", self, spec), str)

    def __dir__(self):
        return self._aios_op("dir", self)

    def __enter__(self):
        return self._aios("method", self, "__enter__", (), {})

    def __exit__(self, *exc_info):
        return self._aios("method", self, "__exit__", (None, None, None), {})

    def __fspath__(self):
        return _plain(self._aios_op("fspath", self), str)

    def __reversed__(self):
        return self._aios_op("reversed", self)

    def __round__(self, *digits):
        return self._aios_op("round", self, *digits)


def _current(remote: Remote) -> bool:
    """Whether ``remote`` lives in the session's current, running worker."""
    worker = remote._aios_worker
    return worker.alive and (SESSION is None or SESSION.current is worker)


def _local_membership(item, items: list) -> bool:
    """Whether ``item in items`` (the items of a learner's deque) answers here as the worker would:
    plain scalars among plain scalars, or a handle among handles compared by identity."""
    if type(item) in _SCALARS:
        return all(type(value) in _SCALARS for value in items)
    return isinstance(item, Remote) and all(isinstance(value, Remote) and item._aios_identical(value)
                                            for value in items)


_SCALARS = (type(None), bool, int, str)


def _current_worker(remote: Remote) -> Worker:
    """The session's worker (restarted when needed), or the handle's own outside a session."""
    return SESSION.worker() if SESSION is not None else remote._aios_worker


def _operator(name: str, reflected: bool = False):
    def forward(self, *operands):
        return self._aios_op(name, *((operands[0], self) if reflected else (self, *operands)))

    return forward


for _name in ("lt", "le", "gt", "ge", "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul",
              "and_", "or_", "xor", "lshift", "rshift", "getitem", "setitem", "delitem", "neg", "pos", "abs",
              "invert"):
    _dunder = _name.rstrip("_")
    setattr(Remote, f"__{_dunder}__", _operator(_name))
    if _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and_", "or_", "xor"):
        setattr(Remote, f"__r{_dunder}__", _operator(_name, reflected=True))


async def _awaiting(coroutine: Remote):
    """A local coroutine standing for a learner coroutine: awaiting it runs that one to its end
    in the worker (the test's event loop waits meanwhile)."""
    return coroutine._aios("await", coroutine)


async def _iterating(agen: Remote):
    """A local async generator standing for a learner one: each item is computed in the worker."""
    while (item := agen._aios("anext", agen)) is not STOP:
        yield item


def _plain(value, kind: type):
    """``value`` when it is exactly of type ``kind`` (a learner __eq__ cannot answer with an object)."""
    if type(value) is not kind and not (kind is float and type(value) is int):
        raise TypeError(f"the learner's object answered with {type(value).__name__}, not {kind.__name__}")
    return value


class RemoteMethod:
    """``handle.name`` for a method of the handle's class: calling it is one request."""

    __slots__ = ("owner", "name", "patched")

    def __init__(self, owner: Remote, name: str):
        self.owner, self.name = owner, name
        self.patched = owner._aios_patched.get(name, 0)

    def replaced(self) -> bool:
        """Whether a test set the attribute since this method was taken (then it stays the class's)."""
        return self.owner._aios_patched.get(self.name, 0) != self.patched

    def __call__(self, *args, **kwargs):
        # Taken before a test replaced the method (monkeypatch keeps the original to call):
        # it stays the class's method, as a bound method would.
        op = "class_method" if self.replaced() else "method"
        return self.owner._aios(op, self.owner, self.name, args, kwargs)

    def __getattr__(self, attr):
        return getattr(self.owner._aios("getattr", self.owner, self.name), attr)

    def __repr__(self):
        return f"<remote method {self.name} of {self.owner!r}>"


REMOTE_DUNDERS = ("__file__", "__version__", "__all__")


class RemoteModule(types.ModuleType):
    """A learner module seen from the trusted side: attributes are fetched from the worker."""

    def __getattr__(self, name: str):
        if name.startswith("__") and name not in REMOTE_DUNDERS:
            raise AttributeError(name)
        remote = self.__dict__["_aios_remote"]
        value = remote._aios("getattr", remote, name)
        if isinstance(value, Remote):
            if value._aios_path is None:
                object.__setattr__(value, "_aios_path", (self.__name__, name))
            if value._aios_record.get("kind") in ("class", "callable"):
                self.__dict__[name] = value
        elif isinstance(value, type) and issubclass(value, BaseException):
            self.__dict__[name] = value
        return value

    def __setattr__(self, name: str, value) -> None:
        if name.startswith("__") or isinstance(value, RemoteModule) or name == "_aios_remote":
            self.__dict__[name] = value
            return
        self.__dict__.pop(name, None)
        remote = self.__dict__["_aios_remote"]
        remote._aios("setattr", remote, name, value)

    def __delattr__(self, name: str) -> None:
        self.__dict__.pop(name, None)
        remote = self.__dict__["_aios_remote"]
        remote._aios("delattr", remote, name)

    def __dir__(self):
        remote = self.__dict__["_aios_remote"]
        return remote._aios_op("dir", remote)


class RemoteFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves ``aios`` and its submodules from the worker."""

    def find_spec(self, fullname, path=None, target=None):
        if not _is_aios(fullname):
            return None
        worker = SESSION.worker()
        worker.importing.add(fullname)
        try:
            handle = worker.request("import", fullname)
        finally:
            worker.importing.discard(fullname)
        if not isinstance(handle, Remote):
            raise ImportError(f"{fullname} did not import as a module")
        is_package = bool(handle._aios_record.get("package", False))
        spec = importlib.util.spec_from_loader(fullname, self, is_package=is_package)
        spec.loader_state = handle
        return spec

    def create_module(self, spec):
        module = RemoteModule(spec.name)
        remote = spec.loader_state
        object.__setattr__(remote, "_aios_path", (None, spec.name))
        module.__dict__["_aios_remote"] = remote
        return module

    def exec_module(self, module):
        module.__dict__.pop("__file__", None)


# ---------------------------------------------------------------------- session


class Session:
    """The worker of this test process: started on first use, restarted after a crash or timeout."""

    def __init__(self, tree: Path, block_hf_models: bool, log_path: Path, preload: list[str] = ()):
        self.tree, self.block_hf_models, self.log_path = Path(tree), block_hf_models, Path(log_path)
        self.preload = list(preload)
        self.current: Worker | None = None
        self.restarts = 0

    def worker(self) -> Worker:
        if self.current is None or not self.current.alive:
            if self.current is not None:
                self.restarts += 1
                for name in [n for n in sys.modules if _is_aios(n)]:
                    del sys.modules[name]
            self.current = Worker(self.tree, self.block_hf_models, self.log_path, self.preload)
        return self.current

    def torch_setting(self, name: str, args: tuple) -> None:
        """Apply a test's ``torch.<name>(*args)`` (one of FORWARDED) in the worker too."""
        if self.current is not None and self.current.alive:
            self.current.request("torch_setting", name, args)

    def close(self) -> None:
        if self.current is not None:
            self.current.stop()


SESSION: Session | None = None


def install(tree: Path, *, block_hf_models: bool, log_path: Path, preload: list[str] = ()) -> Session:
    """Route every ``import aios...`` of this process to a learner worker on ``tree`` (which imports
    the library modules named in ``preload`` as it starts: grader.remote.preload_for)."""
    global SESSION
    SESSION = Session(tree, block_hf_models, log_path, preload)
    for name in [n for n in sys.modules if _is_aios(n)]:
        del sys.modules[name]
    sys.meta_path.insert(0, RemoteFinder())
    try:
        SESSION.worker()  # started now, its imports overlap with the tests' own
    except OSError:
        pass  # tried again at the first import of aios, which reports what failed
    _forward_torch_settings()
    return SESSION


def original(value):
    """The learner's own object behind ``value``: a handle to the worker tensor a copy was made of.

    A tensor read off a learner object arrives as a copy; setting an attribute on the
    original (a Parameter's ``weight_loader``) needs this. Anything else is returned as is.
    """
    origin = getattr(value, "__dict__", {}).get("_aios_origin")
    if origin is None or SESSION is None:
        return value
    return SESSION.worker().request("hold", origin[0])


def worker_module(name: str) -> Remote:
    """The worker's own module ``name`` (``subprocess``: start learner commands on the learner's side)."""
    module = SESSION.worker().request("import", name)
    object.__setattr__(module, "_aios_path", (None, name))
    return module


def helper_module(path: Path) -> Remote:
    """The test helper module at ``path`` (``tests/lesson14/l14_rank_tasks.py``), imported in the worker.

    For test code that has to run on the learner's side (see ``Worker.helper_module`` in
    worker.py); what it returns crosses back as any learner value does.
    """
    path = Path(path)
    module = SESSION.worker().request("helper", path.stem, path.read_text())
    object.__setattr__(module, "_aios_path", None)
    return module


FORWARDED = ("manual_seed", "set_num_threads", "set_default_dtype")


def _forward_torch_settings() -> None:
    """Make the tests' ``torch.manual_seed``, ``set_num_threads`` and ``set_default_dtype`` apply
    to the worker's torch as well: learner code draws random numbers and computes there."""
    import torch

    for name in FORWARDED:
        original = getattr(torch, name)
        if getattr(original, "_aios_forwards", False):
            continue

        def forwarding(*args, _original=original, _name=name):
            result = _original(*args)
            if SESSION is not None:
                SESSION.torch_setting(_name, args)
            return result

        forwarding._aios_forwards = True
        forwarding.__doc__, forwarding.__name__ = original.__doc__, name
        setattr(torch, name, forwarding)


def uninstall() -> None:
    """Stop the worker and forget the finder."""
    global SESSION
    if SESSION is not None:
        SESSION.close()
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, RemoteFinder)]
    SESSION = None
