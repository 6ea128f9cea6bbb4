"""The trust split (grader/remote/): learner code runs in a worker, verdicts are made here.

Two kinds of checks on small synthetic learner trees written to tmp_path:

* a worker driven directly (``client.Worker``) on a package ``learnerpkg``: what crosses
  the wire, how exceptions map, the transformers refusal, the process tree at the end;
* a whole graded run (``run_pytest(..., remote=True)``) on a synthetic repository whose
  ``aios`` attacks the grader: patched pytest reports, an atexit hook writing "passed"
  records, a look at the calling test's frame for its source.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pytest
import torch

from grader.remote import client, protocol
from grader.runner import run_pytest
from synthetic_repo import write_files

REPO = Path(__file__).resolve().parents[2]

LEARNER = {
    "learnerpkg/__init__.py": "",
    "learnerpkg/tricks.py": '''
        import subprocess

        import torch


        class Rigged(torch.Tensor):
            def __eq__(self, other):
                return True


        def rigged():
            return torch.zeros(3).as_subclass(Rigged)


        def parameter():
            return torch.nn.Parameter(torch.ones(2))


        class AlwaysEqual:
            def __eq__(self, other):
                return True

            __hash__ = object.__hash__


        class NotAScore(ValueError):
            pass


        def fail(kind):
            if kind == "value":
                raise ValueError("bad value")
            if kind == "own":
                raise NotAScore("own error")
            if kind == "assert":
                assert False, "looks like a test assertion"
            if kind == "exit":
                raise SystemExit(0)
            if kind == "long":
                raise RuntimeError("x" * 100_000)


        def models():
            import transformers.modeling_utils  # noqa: F401


        def sleeper():
            return subprocess.Popen(["sleep", "120"]).pid


        class Part:
            def __init__(self, size):
                self.size = size


        COUNTERS = []


        def bump_the_last_counter(by):
            COUNTERS[-1].count += by


        def resize_the_last_parts(size):
            for part in COUNTERS[-1].parts:
                part.size = size


        class Counter:
            def __init__(self):
                self.count, self.table, self.queue = 0, [0], __import__("collections").deque([1, 2, 3])
                self.parts = [Part(1), Part(2)]
                COUNTERS.append(self)

            def bump(self):
                self.count += 1
                self.table.append(self.count)

            @property
            def doubled(self):
                self.reads = getattr(self, "reads", 0) + 1
                return 2 * self.count


        class Mood(__import__("enum").Enum):
            CALM = 1
            BUSY = 2


        class Sized:
            """A pure property and ``__len__`` (plain attributes, operators, ``len``), an impure one, an Enum."""

            def __init__(self):
                self.items, self.mood, self.calls = [1, 2, 3], Mood.CALM, 0

            def __len__(self):
                return len(self.items)

            @property
            def half(self):
                return len(self.items) // 2

            @property
            def counted(self):
                self.calls += 1
                return self.calls

            def grow(self):
                self.items.append(len(self.items) + 1)
                self.mood = Mood.BUSY


        class Moody:
            """Properties comparing an attribute with an Enum member by ``is`` (pure), and by ``==``
            or through the member's value (requests)."""

            def __init__(self):
                self.mood = Mood.CALM

            @property
            def calm(self):
                return self.mood is Mood.CALM

            @property
            def not_busy(self):
                return Mood.BUSY is not self.mood

            @property
            def equal_calm(self):
                return self.mood == Mood.CALM

            @property
            def level(self):
                return self.mood.value

            def fret(self):
                self.mood = Mood.BUSY


        class Shifty:
            """A class whose property turns a plain attribute into a property of the class."""

            def __init__(self):
                self.level = 1

            @property
            def shifted(self):
                type(self).level = property(lambda self: 42)
                return True
    ''',
}


@pytest.fixture
def worker(tmp_path):
    """A worker on a tree holding ``learnerpkg``, stopped at the end."""
    tree = write_files(tmp_path / "tree", LEARNER)
    started = client.Worker(tree, block_hf_models=True, log_path=tmp_path / "worker.log")
    yield started
    started.stop()


def tricks(worker):
    return worker.request("import", "learnerpkg.tricks")


def call(worker, name, *args):
    return worker.request("call", worker.request("getattr", tricks(worker), name), args, {})


def test_a_tensor_subclass_arrives_as_a_plain_tensor(worker):
    """A learner tensor subclass with a rigged __eq__ crosses as its values in a plain torch.Tensor."""
    value = call(worker, "rigged")
    assert type(value) is torch.Tensor
    assert not torch.equal(value, torch.ones(3)) and torch.equal(value, torch.zeros(3))
    assert type(call(worker, "parameter")) is torch.Tensor


def test_an_object_with_its_own_eq_stays_a_handle(worker):
    """An object whose __eq__ says True to everything is a handle here; == asks the worker for a plain bool."""
    obj = worker.request("call", worker.request("getattr", tricks(worker), "AlwaysEqual"), (), {})
    assert isinstance(obj, client.Remote) and type(obj) is client.Remote
    assert (obj == 5) is True  # the learner's answer, as a bool: never a verdict by itself
    assert obj is not 5


def test_decode_builds_only_plain_values():
    """Whatever the worker claims, decode gives builtin containers and plain tensors; unknown tags fail."""
    buffers = [torch.arange(4, dtype=torch.float32).numpy().tobytes()]
    data = {"$": "dict", "k": ["t"], "v": [{"$": "tensor", "b": 0, "dtype": "float32", "shape": [2, 2]}]}
    value = protocol.decode(data, buffers, lambda record: pytest.fail("no handle expected"))
    assert type(value) is dict and type(value["t"]) is torch.Tensor and value["t"].shape == (2, 2)
    with pytest.raises(protocol.WireError):
        protocol.decode({"$": "pickle", "v": "..."}, [], lambda record: None)
    with pytest.raises(protocol.WireError):
        protocol.decode({"$": "tensor", "b": 0, "dtype": "Tensor", "shape": [1]}, [b"\0" * 4], lambda r: None)


@pytest.mark.parametrize(("kind", "expected"), [("value", ValueError), ("own", ValueError),
                                                  ("assert", client.LearnerError), ("exit", client.LearnerError)])
def test_exceptions_map_to_local_classes(worker, kind, expected):
    """Builtin errors stay themselves, the learner's own subclass theirs, AssertionError/SystemExit become LearnerError."""
    with pytest.raises(expected) as caught:
        call(worker, "fail", kind)
    assert not isinstance(caught.value, AssertionError)
    if kind == "own":
        assert type(caught.value).__name__ == "NotAScore"
        own = worker.request("getattr", tricks(worker), "NotAScore")
        assert own is type(caught.value), "the class read off the module is the one raised"


def test_exception_messages_are_clipped(worker):
    """A learner exception's message is cut to protocol.MAX_MESSAGE characters."""
    with pytest.raises(RuntimeError) as caught:
        call(worker, "fail", "long")
    assert len(str(caught.value)) <= protocol.MAX_MESSAGE + 3


HELPER = '''
import inspect
import threading


class Refused(ValueError):
    def __init__(self, message, status):
        super().__init__(message)
        self.status, self._private = status, "secret"

    def body(self):
        return {"error": {"status": self.status}}


def refuse():
    raise Refused("no", 400)


def from_a_thread(callback):
    seen = []

    def run():
        try:
            seen.append(callback())
        except RuntimeError as error:
            seen.append(str(error))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return seen[0]


class Engine:
    def step(self):
        return "step"


def own_method(obj, name):
    value = getattr(obj, name)
    return inspect.ismethod(value) and value.__self__ is obj and value.__func__ is getattr(type(obj), name)
'''


def test_a_learner_exception_is_read_for_attributes_in_the_worker(worker):
    """A learner exception's attributes and methods (APIError.status, body()) are read from the original."""
    helper = worker.request("helper", "remote_test_helper", HELPER)
    with pytest.raises(ValueError) as caught:
        worker.request("call", worker.request("getattr", helper, "refuse"), (), {})
    assert type(caught.value).__name__ == "Refused" and str(caught.value) == "no"
    assert caught.value.status == 400 and caught.value.body() == {"error": {"status": 400}}
    assert not hasattr(caught.value, "_private")
    worker.stop()
    assert getattr(caught.value, "status", "gone") == "gone", "a stopped worker's exception has no attributes left"


def test_a_test_callback_from_a_learner_thread_is_refused(worker):
    """Only the thread serving requests may call back into the tests; the worker keeps serving."""
    helper = worker.request("helper", "remote_test_helper", HELPER)
    answer = worker.request("call", worker.request("getattr", helper, "from_a_thread"), (lambda: "called",), {})
    assert "thread" in answer and answer != "called"
    assert worker.alive and worker.request("ping") > 0


def test_a_method_set_back_is_the_learners_own(worker):
    """monkeypatch's undo sets back the method it took: the worker gets the learner's bound method, not a callback."""
    helper = worker.request("helper", "remote_test_helper", HELPER)
    engine = worker.request("call", worker.request("getattr", helper, "Engine"), (), {})
    own_method = worker.request("getattr", helper, "own_method")
    taken = engine.step
    engine.step = lambda: "patched"
    assert engine.step() == "patched"
    engine.step = taken
    assert worker.request("call", own_method, (engine, "step"), {}) is True
    assert engine.step() == "step"


def test_transformers_model_code_is_refused(worker):
    """With block_hf_models (lessons >= 3) importing transformers' model code fails with ImportError."""
    with pytest.raises(ImportError, match="not available when grading"):
        call(worker, "models")
    assert worker.alive


def _gone(pid: int) -> bool:
    """Whether ``pid`` no longer runs (a zombie waiting for init counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    return "\nState:\tZ" in state


def test_the_whole_process_tree_is_gone_after_stop(worker):
    """stop() kills the worker and what learner code started in it."""
    child = call(worker, "sleeper")
    pid = worker.proc.pid
    worker.stop()
    deadline = time.monotonic() + 10
    while not (_gone(pid) and _gone(child)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gone(pid) and _gone(child)


# ----------------------------------------------------------- a whole graded run

ATTACKS = {
    "aios/__init__.py": '''
        import atexit
        import inspect
        import json
        import sys


        def _always_pass():
            try:
                from _pytest import reports
            except ImportError:
                return
            original = reports.TestReport.from_item_and_call

            def passing(item, call):
                report = original(item, call)
                report.outcome, report.longrepr = "passed", None
                return report

            reports.TestReport.from_item_and_call = staticmethod(passing)


        def _forge_report():
            for arg in sys.argv:
                if arg.startswith("--aios-report="):
                    with open(arg.split("=", 1)[1], "a") as report:
                        record = {"event": "report", "nodeid": "tests/lesson03/test_attacks.py::test_wrong_answer",
                                  "when": "call", "outcome": "passed", "message": "", "location": ""}
                        report.write(json.dumps(record) + "\\n")


        _always_pass()
        atexit.register(_forge_report)


        def answer():
            return 41


        def spy():
            """Everything the calling frames hold: their globals and source files."""
            seen = []
            for frame in inspect.stack():
                seen.append(repr(frame.frame.f_globals.get("SECRET")))
                try:
                    seen.append(open(frame.filename).read())
                except OSError:
                    pass
            return "\\n".join(seen)


        def uses_transformers():
            from transformers import AutoModelForCausalLM, Qwen3Config

            return AutoModelForCausalLM.from_config(Qwen3Config(num_hidden_layers=1))
    ''',
    "tests/lesson03/test_attacks.py": '''
        import aios

        SECRET = "hidden-marker-8d1f"


        def test_wrong_answer():
            assert aios.answer() == 42


        def test_frames_do_not_show_the_test():
            assert SECRET not in aios.spy()


        def test_transformers_models_are_refused():
            aios.uses_transformers()
    ''',
}


@pytest.fixture(scope="module")
def attacked(tmp_path_factory):
    """A graded run (through the worker) of a synthetic repository whose aios/ attacks the grader."""
    root = write_files(tmp_path_factory.mktemp("attacks"), ATTACKS)
    shutil.copy(REPO / "conftest.py", root / "conftest.py")
    (root / "grader").symlink_to(REPO / "grader")
    return run_pytest(root, ["tests/lesson03"], impl="learner", test_timeout=60, run_timeout=300, remote=True)


def _outcome(run, name: str) -> str:
    return next(t.outcome for t in run.tests if t.name == name)


def test_patched_pytest_and_forged_report_lines_change_nothing(attacked):
    """Patching _pytest's reports and an atexit hook appending "passed" records leave the failure a failure."""
    assert _outcome(attacked, "test_wrong_answer") == "failed"


def test_learner_code_cannot_read_the_calling_test(attacked):
    """The frames learner code sees are the worker's: the test's globals and source are not among them."""
    assert _outcome(attacked, "test_frames_do_not_show_the_test") == "passed"


def test_transformers_model_code_fails_from_lesson_3(attacked):
    """A learner delegating to transformers' models fails in a lesson 3 run."""
    test = next(t for t in attacked.tests if t.name == "test_transformers_models_are_refused")
    assert test.outcome == "failed" and "not available when grading" in test.message


def test_the_worker_has_no_report_path(tmp_path):
    """Neither the worker's command line nor its environment names the report file."""
    tree = write_files(tmp_path / "tree", {"learnerpkg/__init__.py": "import os, sys\nSEEN = [*sys.argv, *os.environ.values()]\n"})
    env_before = os.environ.get("AIOS_REPORT")
    worker = client.Worker(tree, block_hf_models=False, log_path=tmp_path / "worker.log")
    try:
        seen = worker.request("getattr", worker.request("import", "learnerpkg"), "SEEN")
    finally:
        worker.stop()
    assert env_before is None
    assert not any("aios-report" in str(value) or "report-" in str(value) for value in seen)
    assert sys.argv != seen[: len(sys.argv)]


@pytest.mark.parametrize("lesson, blocked", [(0, "0"), (1, "1"), (2, "0"), (3, "1"), (13, "1")])
def test_transformers_model_code_is_offered_in_lessons_0_and_2_only(tmp_path, lesson, blocked):
    """Lesson 1's layers and model are plain torch: its worker refuses Hugging Face's model code too."""
    from grader import remote

    assert remote.child_env([f"tests/lesson{lesson:02d}"], tmp_path)["AIOS_REMOTE_BLOCK_HF"] == blocked


def test_a_worker_imports_what_its_lessons_will_need_as_it_starts(tmp_path):
    """Library modules named by ``--preload`` are imported before the first request; a missing name or
    one the HF model blocker refuses is skipped, and the blocker still refuses it to the learner."""
    from grader import remote

    assert remote.preload_for({6}) == [] and "transformers.modeling_utils" not in remote.preload_for({8})
    assert set(remote.PRELOAD_TOKENIZER) <= set(remote.preload_for({8})) and remote.PRELOAD_HF_MODELS[0] in remote.preload_for({2})
    assert remote.child_env(["tests/lesson06"], tmp_path)["AIOS_REMOTE_PRELOAD"] == ""
    tree = write_files(tmp_path / "tree", {"learnerpkg/__init__.py": "import sys\n\ndef has(name):\n    return name in sys.modules\n"})
    worker = client.Worker(tree, block_hf_models=True, log_path=tmp_path / "worker.log",
                           preload=["colorsys", "no_such_module_anywhere", "transformers.modeling_utils"])
    try:
        has = worker.request("getattr", worker.request("import", "learnerpkg"), "has")
        assert worker.request("call", has, ("colorsys",), {}) is True
        assert worker.request("call", has, ("no_such_module_anywhere",), {}) is False
        assert worker.request("call", has, ("transformers.modeling_utils",), {}) is False
    finally:
        worker.stop()


def test_a_worker_without_cuda_interprets_triton_before_it_preloads(tmp_path, monkeypatch):
    """A preloaded library may import Triton (``transformers.modeling_utils`` does), and Triton reads
    TRITON_INTERPRET once: without CUDA the worker sets it first, as the tests' conftest.py does."""
    if torch.cuda.is_available():
        pytest.skip("with CUDA, Triton compiles kernels")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    tree = write_files(tmp_path / "tree", {"learnerpkg/__init__.py": "import os\n\ndef env(name):\n    return os.environ.get(name)\n"})
    worker = client.Worker(tree, block_hf_models=False, log_path=tmp_path / "worker.log", preload=["colorsys"])
    try:
        env = worker.request("getattr", worker.request("import", "learnerpkg"), "env")
        assert worker.request("call", env, ("TRITON_INTERPRET",), {}) == "1"
    finally:
        worker.stop()


SANDBOX_PROBE = '''
import os


def probe(secret):
    home = os.environ["HOME"]
    with open(os.path.join(home, "written"), "w") as out:
        out.write("ok")
    try:
        with open(secret) as hidden:
            hidden.read()
        readable = True
    except OSError:
        readable = False
    return {"uid": os.getuid(), "home": home, "cwd": os.getcwd(), "secret_readable": readable}
'''


def test_a_sandboxed_worker_runs_as_the_learner_user_in_its_own_scratch(monkeypatch):
    """As root on Linux the sandboxed worker runs as the learner user: it writes only its scratch
    home (removed with it) and cannot read the grader's private folders."""
    from grader import sandbox

    iso = sandbox.probe()
    if not iso.isolated:
        pytest.skip(f"the sandbox is not available here: {iso.reason}")
    secret, tree = sandbox.private_dir("aios-secret-"), sandbox.private_dir("aios-tree-")
    try:
        (secret / "hidden.txt").write_text("hidden")
        (tree / "learnerpkg").mkdir()
        (tree / "learnerpkg" / "__init__.py").write_text(SANDBOX_PROBE)
        monkeypatch.setenv("AIOS_WORKER_SANDBOX", "1")
        worker = client.Worker(tree, block_hf_models=True, log_path=secret / "worker.log")
        try:
            module = worker.request("import", "learnerpkg")
            seen = worker.request("method", module, "probe", (str(secret / "hidden.txt"),), {})
            scratch = worker.scratch
        finally:
            worker.stop()
    finally:
        shutil.rmtree(secret), shutil.rmtree(tree)
    assert seen["uid"] == iso.uid != 0 and not seen["secret_readable"]
    assert seen["home"] == seen["cwd"] == str(scratch) and not scratch.exists()


def test_attribute_reads_between_requests_cost_no_round_trip_and_are_never_stale(worker, monkeypatch):
    """Plain attributes the tests have read on an object of a class come with the handles of that
    class's objects (and with the reply to a request that named one): the first read of a name is
    one request, later reads before any other request cost nothing; after a call that changed
    them, the new values are read. A property runs in the worker every time."""
    counter_class = worker.request("getattr", tricks(worker), "Counter")
    counter = worker.request("call", counter_class, (), {})
    sent = []
    monkeypatch.setattr(protocol, "send", lambda sock, header, buffers=(), _send=protocol.send:
                        sent.append(header) or _send(sock, header, buffers))
    assert [counter.count, counter.table, counter.count] == [0, [0], 0] and len(sent) == 2  # a name's first read
    counter = worker.request("call", counter_class, (), {})
    sent.clear()
    assert [counter.count, counter.table, counter.count] == [0, [0], 0] and not sent
    counter.table.append(99)  # a copy: the learner's list is not changed
    assert counter.table == [0] and not sent
    counter.bump()
    assert (counter.count, counter.table) == (1, [0, 1]) and len(sent) == 1  # the call's reply refreshed them
    assert (counter.doubled, counter.doubled, counter.reads) == (2, 2, 2)
    counter.count = 5
    assert counter.count == 5


def test_a_handle_whose_snapshot_was_not_read_is_left_stale_and_read_anew(worker, monkeypatch):
    """A request names an object whose last snapshot the tests did not read (``seq`` in
    ``may_append(seq)`` token after token): the worker is told to skip it, and reading it afterwards
    costs one request and gives the value learner code left."""
    counter = worker.request("call", worker.request("getattr", tricks(worker), "Counter"), (), {})
    assert counter.count == 0
    counter.bump()  # read since its last snapshot: checked after this call
    sent = []
    monkeypatch.setattr(protocol, "send", lambda sock, header, buffers=(), _send=protocol.send:
                        sent.append(header) or _send(sock, header, buffers))
    monkeypatch.setattr(client.Worker, "_pickle", lambda self, message, _pickle=client.Worker._pickle:
                        sent.append(message) or _pickle(self, message))
    counter.bump()  # its snapshot from the last reply is unread: skipped
    assert counter._aios_id in sent[0].get("skip", ()) and counter._aios_id not in sent[0].get("want", ())
    sent.clear()
    assert counter.count == 2 and len([m for m in sent if "k" in m]) == 1  # stale: one request
    sent.clear()
    counter.bump()  # read again: checked after this call, and read without a request
    assert counter.count == 3 and len([m for m in sent if "k" in m]) == 1


def test_a_class_changed_during_a_request_is_seen_by_that_requests_snapshots(worker):
    """Whether an attribute is shadowed by the class is looked at once per request, after the
    learner's code ran: a property whose getter makes ``level`` a property of its class is seen at once."""
    shifty = call(worker, "Shifty")
    assert shifty.level == 1
    assert shifty.shifted  # the request looks at the class before the property runs, and after
    assert shifty.level == 42


def test_the_worker_freezes_what_its_start_made(worker):
    """Full garbage collections in the worker skip the objects of its imports (``gc.freeze``): they
    ran in the middle of learner calls, tens of milliseconds each."""
    gc = worker.request("import", "gc")
    assert worker.request("call", worker.request("getattr", gc, "get_freeze_count"), (), {}) > 10_000


def test_a_tests_file_is_lent_to_a_sandboxed_worker_as_a_readable_copy(tmp_path, monkeypatch):
    """``learner_readable``: without the sandbox the path itself; with it, a copy (made once) that
    every user may read and only the grader's user may change."""
    import stat

    asset = tmp_path / "model"
    (asset / "sub").mkdir(parents=True)
    (asset / "sub" / "weights.bin").write_bytes(b"\x00\x01")
    (asset / "sub" / "weights.bin").chmod(0o600)
    monkeypatch.setattr(client, "_READABLE_COPIES", {})
    monkeypatch.setattr(client, "sandboxed", lambda: False)
    assert client.learner_readable(asset) == asset.resolve()
    monkeypatch.setattr(client, "sandboxed", lambda: True)
    copy = client.learner_readable(asset)
    assert copy != asset.resolve() and client.learner_readable(asset) == copy
    weights = copy / "sub" / "weights.bin"
    assert weights.read_bytes() == b"\x00\x01" and weights.stat().st_uid == os.getuid()
    for path in (copy, copy / "sub", weights):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o004 and not mode & 0o022, (path, oct(mode))
    assert all(stat.S_IMODE(p.stat().st_mode) & 0o001 for p in (copy, copy / "sub", copy.parent))


def test_iterating_a_builtin_container_is_one_round_trip(worker, monkeypatch):
    """A deque held by a learner object is iterated in one request, not one per item."""
    counter = worker.request("call", worker.request("getattr", tricks(worker), "Counter"), (), {})
    queue = counter.queue
    bump = worker.request("getattr", tricks(worker), "bump_the_last_counter")
    bump(1)  # the counter was read just before: it and the deque it holds are checked again after this
    bump(1)  # the items the deque's handle came with are stale after this one
    sent = []
    monkeypatch.setattr(protocol, "send", lambda sock, header, buffers=(), _send=protocol.send:
                        sent.append(header) or _send(sock, header, buffers))
    assert [item for item in queue] == [1, 2, 3] and len(sent) == 1


def test_a_deque_comes_with_its_items_until_a_request_may_change_it(worker, monkeypatch):
    """A handle to a builtin container of plain data (a deque) comes with its items: iterating it or
    taking its length costs no round trip until a request that may change it; changes are seen."""
    counter = worker.request("call", worker.request("getattr", tricks(worker), "Counter"), (), {})
    queue = counter.queue
    sent = []
    monkeypatch.setattr(protocol, "send", lambda sock, header, buffers=(), _send=protocol.send:
                        sent.append(header) or _send(sock, header, buffers))
    assert (list(queue), len(queue), set(queue)) == ([1, 2, 3], 3, {1, 2, 3}) and not sent
    queue.append(4)
    assert (list(queue), len(queue)) == ([1, 2, 3, 4], 4) and sent  # read anew, after the append


def test_a_list_of_learner_objects_is_read_from_the_snapshot_while_its_handles_live(worker, monkeypatch):
    """``counter.parts`` (learner objects the tests hold handles to) is read again without a round
    trip, as the same handles, with their own attributes; a call that changes it is seen."""
    counter = worker.request("call", worker.request("getattr", tricks(worker), "Counter"), (), {})
    first = counter.parts  # one request: the handles, then named by the counter's snapshot
    assert [part.size for part in first] == [1, 2]  # the first read of ``size``: a request
    sent = []
    monkeypatch.setattr(protocol, "send", lambda sock, header, buffers=(), _send=protocol.send:
                        sent.append(header) or _send(sock, header, buffers))
    again = counter.parts
    assert again == first and all(a is b for a, b in zip(again, first)) and again is not first
    assert [part.size for part in counter.parts] == [1, 2] and not sent
    counter.parts = [first[1], first[0], first[1]]
    assert [part.size for part in counter.parts] == [2, 1, 2]


def test_snapshots_read_before_a_request_are_kept_only_when_it_changed_nothing(worker, monkeypatch):
    """An object whose attributes were read is checked again after the next request, even one that
    does not name it: unchanged, its attributes are still read without a round trip; changed
    (by learner code reaching it another way), the new values are read."""
    counter = worker.request("call", worker.request("getattr", tricks(worker), "Counter"), (), {})
    bump = worker.request("getattr", tricks(worker), "bump_the_last_counter")
    assert (counter.count, counter.table) == (0, [0])
    bump(0)  # changes nothing
    sent = []
    monkeypatch.setattr(protocol, "send", lambda sock, header, buffers=(), _send=protocol.send:
                        sent.append(header) or _send(sock, header, buffers))
    assert (counter.count, counter.table) == (0, [0]) and not sent
    bump(True)  # count becomes 1 (an int): the snapshot's 0 is not kept
    assert counter.count == 1 and type(counter.count) is int and len(sent) == 1
    bump(0.0)  # 1 + 0.0 is 1.0: equal to 1, but not the same value
    assert type(counter.count) is float and len(sent) == 2


def test_a_stale_read_checks_the_other_classes_read_lately_too(worker, monkeypatch):
    """The first read of a stale snapshot asks for every stale one read lately, of any class (an
    invariant reads the sequences, then the blocks): the parts read with the counter then cost no
    round trip while unchanged, and what learner code changed in them meanwhile is read anew."""
    module = tricks(worker)
    counter = worker.request("call", worker.request("getattr", module, "Counter"), (), {})
    bump = worker.request("getattr", module, "bump_the_last_counter")
    resize = worker.request("getattr", module, "resize_the_last_parts")
    parts = counter.parts
    assert counter.count == 0 and [part.size for part in parts] == [1, 2]
    bump(0)
    bump(0)  # nothing was read since the last request: every snapshot is stale after this one
    sent = []
    monkeypatch.setattr(protocol, "send", lambda sock, header, buffers=(), _send=protocol.send:
                        sent.append(header) or _send(sock, header, buffers))
    assert counter.count == 0 and len(sent) == 1
    assert [part.size for part in parts] == [1, 2] and len(sent) == 1  # checked with the counter's read
    bump(0)
    resize(7)  # changes the parts, which it does not name
    assert counter.count == 0 and len(sent) == 4
    assert [part.size for part in parts] == [7, 7] and len(sent) == 5  # changed: not kept, read anew


def test_identity_equality_pure_properties_and_enum_members_cost_no_round_trip(worker, monkeypatch):
    """Handles of objects without an ``__eq__`` of their own compare by identity here; a pure property
    and ``__len__`` are read from the snapshot, an impure property runs every time; an Enum's members
    come with its class and an attribute holding one is read as that same handle; a call that
    changes them is seen."""
    module = tricks(worker)
    parts = worker.request("call", worker.request("getattr", module, "Counter"), (), {}).parts
    mood, sized_class = worker.request("getattr", module, "Mood"), worker.request("getattr", module, "Sized")
    sized = worker.request("call", sized_class, (), {})
    assert (len(sized), sized.half, sized.mood) == (3, 1, mood.CALM)  # read once: from now on in Sized's snapshots
    sized = worker.request("call", sized_class, (), {})  # the last request: its snapshot is current
    sent = []
    monkeypatch.setattr(protocol, "send", lambda sock, header, buffers=(), _send=protocol.send:
                        sent.append(header) or _send(sock, header, buffers))
    assert parts[0] == parts[0] and parts[0] != parts[1] and parts[1] in parts and not sent
    assert (len(sized), sized.half, sized.mood is mood.CALM, mood.BUSY is mood.BUSY) == (3, 1, True, True)
    assert not sent
    assert (sized.counted, sized.counted) == (1, 2) and len(sent) == 2
    sized.grow()
    assert (len(sized), sized.half, sized.mood is mood.BUSY) == (4, 2, True) and len(sent) == 3
    always = call(worker, "AlwaysEqual")
    sent.clear()
    assert always == parts[0] and sent  # its own __eq__ runs in the worker


def test_a_pure_property_is_only_one_that_reads_plain_attributes(monkeypatch):
    """The bytecode check behind pure properties (once a test has read them): stores, calls of learner
    code, attributes of other objects, loops and non-plain inputs all keep the property a request."""
    worker_module = sys.modules.get("_aios_remote_worker_for_tests")
    if worker_module is None:
        import importlib.util

        spec = importlib.util.spec_from_file_location("_aios_remote_worker_for_tests", client.WORKER_FILE)
        worker_module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(worker_module)

    def helper(value):
        return value

    class Thing:
        def __init__(self):
            self.items, self.other, self.n = [1, 2], object(), 3

        ok = property(lambda self: len(self.items) + self.n)  # a lambda is a plain function too
        stores = property(lambda self: setattr(self, "n", 4))
        calls = property(lambda self: helper(self.n))
        reaches = property(lambda self: self.other.__class__)
        loops = property(lambda self: [i for i in self.items])
        not_plain = property(lambda self: self.other)
        power = property(lambda self: self.n ** self.n)

    # Threads other tests left in this pytest process would switch snapshots off (the worker has one thread).
    monkeypatch.setattr(worker_module, "_other_threads", lambda: False)
    worker_module.DEMANDED[Thing] = {"ok", "stores", "calls", "reaches", "loops", "not_plain", "power"}
    snap = worker_module.snapshot(Thing())
    assert snap["ok"] == 5
    assert not {"stores", "calls", "reaches", "loops", "not_plain", "power"} & snap.keys()


def test_a_property_comparing_with_an_enum_member_by_identity_costs_no_round_trip(worker, monkeypatch):
    """``self.mood is Mood.CALM`` (a global Enum class's member, compared by ``is``) is read from the
    snapshot once a test has read it, and follows a call that changes it; ``==`` and the member's
    value stay requests."""
    moody_class = worker.request("getattr", tricks(worker), "Moody")
    moody = worker.request("call", moody_class, (), {})
    assert (moody.calm, moody.not_busy, moody.equal_calm, moody.level) == (True, True, True, 1)
    moody = worker.request("call", moody_class, (), {})  # its snapshot now holds the pure ones
    sent = []
    monkeypatch.setattr(protocol, "send", lambda sock, header, buffers=(), _send=protocol.send:
                        sent.append(header) or _send(sock, header, buffers))
    assert (moody.calm, moody.not_busy) == (True, True) and not sent
    assert (moody.equal_calm, moody.level) == (True, 1) and len(sent) == 2
    moody.fret()
    sent.clear()
    assert (moody.calm, moody.not_busy) == (False, False) and not sent


class _Light(__import__("enum").Enum):
    RED = 1
    GREEN = 2


class _Sticky(__import__("enum").Enum):
    """An Enum whose members are descriptors: reading one off the class runs code."""

    ON = 1

    def __get__(self, obj, owner=None):
        return self


_NOT_AN_ENUM = type("_NotAnEnum", (), {"RED": 1})


def test_only_an_is_between_an_attribute_and_a_plain_enum_member_is_pure(monkeypatch):
    """The bytecode check: ``self.x is Enum.MEMBER`` (either side, ``is not`` too) is pure, whatever
    ``self.x`` holds; a member of an Enum with ``__get__``, a global that is no Enum class, ``==``,
    or the member used any other way keep the property a request."""
    worker_module = _worker_module()

    class Lamp:
        def __init__(self):
            self.light, self.n = _Light.RED, 2

        red = property(lambda self: self.light is _Light.RED)
        not_green = property(lambda self: _Light.GREEN is not self.light)
        mixed = property(lambda self: self.n + 1 if self.light is _Light.RED else 0)
        equal = property(lambda self: self.light == _Light.RED)
        value = property(lambda self: self.light.value)
        member = property(lambda self: _Light.RED)
        sticky = property(lambda self: self.light is _Sticky.ON)
        not_enum = property(lambda self: self.light is _NOT_AN_ENUM.RED)

    monkeypatch.setattr(worker_module, "_other_threads", lambda: False)
    worker_module.DEMANDED[Lamp] = {"red", "not_green", "mixed", "equal", "value", "member", "sticky", "not_enum"}
    snap = worker_module.snapshot(Lamp())
    assert (snap["red"], snap["not_green"], snap["mixed"]) == (True, True, 3)
    assert not {"equal", "value", "member", "sticky", "not_enum"} & snap.keys()
    lamp = Lamp()
    lamp.light = object()  # anything: ``is`` runs no code
    assert worker_module.snapshot(lamp)["red"] is False


def _worker_module():
    """worker.py loaded in this process (as the worker loads itself, outside the grader package)."""
    worker_module = sys.modules.get("_aios_remote_worker_for_tests")
    if worker_module is None:
        import importlib.util

        spec = importlib.util.spec_from_file_location("_aios_remote_worker_for_tests", client.WORKER_FILE)
        worker_module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(worker_module)
    return worker_module


@pytest.mark.parametrize("polling", [True, False])
@pytest.mark.parametrize("delay", [0.0, 0.01])
def test_a_frame_is_read_whether_it_comes_while_the_reader_polls_or_after(delay, polling, monkeypatch):
    """The reader polls the socket for ``protocol.SPIN_SECONDS`` before sleeping in ``recv`` (unless
    the machine is busy): a frame sent at once and one sent after that window both arrive whole."""
    import socket
    import threading

    monkeypatch.setattr(protocol, "_POLLING", [float("inf"), polling])

    ours, theirs = socket.socketpair()
    sender = threading.Timer(delay, protocol.send, (theirs, {"k": "ret", "v": [1, 2]}, [b"raw"]))
    sender.start()
    try:
        assert protocol.recv(ours) == ({"k": "ret", "v": [1, 2]}, [b"raw"])
    finally:
        sender.join()
        ours.close()
        theirs.close()


def test_an_unchanged_state_stands_for_an_unchanged_snapshot(monkeypatch):
    """The worker skips taking a snapshot again when the object's state (its ``__dict__`` as builtin
    values, handle ids, class layout) is the same: values ``==`` takes as equal but a snapshot tells
    apart (``1``/``True``/``1.0``, ``0.0``/``-0.0``, ``[1]``/``[True]``), another object in an
    attribute or in a deque, a handle given to an attribute's object or deque, all count as changes."""
    import collections

    worker_module = _worker_module()
    monkeypatch.setattr(worker_module, "_other_threads", lambda: False)

    class Box:
        def __init__(self):
            self.n, self.x, self.items, self.part = 1, 0.0, [1, 2], object()

    box, ids = Box(), {}
    monkeypatch.setitem(worker_module.DEMANDED, Box, dict.fromkeys(["n", "x", "items", "part", "queue"]))
    before = worker_module._state(box, ids)
    assert worker_module._same_state(worker_module._state(box, ids), before)
    for name, value in (("n", True), ("n", 1.0), ("x", -0.0), ("items", [True, 2]), ("part", object())):
        old = getattr(box, name)
        setattr(box, name, value)
        assert not worker_module._same_state(worker_module._state(box, ids), before), (name, value)
        setattr(box, name, old)
    assert worker_module._same_state(worker_module._state(box, ids), before)
    ids[id(box.part)] = 7  # the trusted side now holds a handle to it: the snapshot would name it
    assert not worker_module._same_state(worker_module._state(box, ids), before)
    queue = collections.deque([box.part])
    held = worker_module._state(queue, ids)
    assert worker_module._same_state(worker_module._state(queue, ids), held)
    queue.append(box.part)
    assert not worker_module._same_state(worker_module._state(queue, ids), held)
    box.queue = collections.deque([1, 2])  # a deque attribute is in a snapshot as its handle, once it has one
    with_queue = worker_module._state(box, ids)
    ids[id(box.queue)] = 8
    assert not worker_module._same_state(worker_module._state(box, ids), with_queue)
    box.items = [[1]]  # a container of containers: no state, the snapshot is compared instead
    assert worker_module._state(box, ids) is None
