"""Run untrusted (learner) code in an OS sandbox, and kill all of it afterwards.

The interface the grader uses (the learner worker of grader/remote/ and the runner's child
pytest alike)::

    proc = sandbox.spawn(argv, cwd=SCRATCH, env=ENV, writable=(SCRATCH,), readable=(TREE,),
                         hidden=(BUNDLE, WORKSPACE), pass_fds=(fd,), stdin=..., stdout=..., stderr=...)
    ...
    sandbox.kill_tree(proc)     # every process the command started is gone when this returns
    sandbox.describe()          # one line for the output: what isolation is in force

``spawn`` returns a ``subprocess.Popen``. Where the OS allows it (Linux, running as root,
util-linux ``unshare`` working) the command runs

* as the unprivileged user ``aios-learner`` (created with ``useradd`` when missing; ``nobody``
  when that fails), never as root — with ``as_learner=False`` it keeps the caller's user and
  only gets the namespaces and limits (for a trusted process that must read the hidden tests);
* in a new session, PID namespace and mount namespace (``unshare --pid --fork --kill-child
  --mount-proc``): it sees only its own processes, and when its first process exits the
  kernel kills every process left in the namespace, daemons that called ``setsid`` included;
* in a new network namespace with only the loopback interface up (``unshare --net``): no
  network, while a test server on 127.0.0.1 still works;
* under resource limits (``LIMITS``: address space, CPU time, file size, processes);
* with each folder of ``hidden`` covered by an empty read-only tmpfs (the original bundle and
  the student's checkout: nothing there for the learner's code to read or change);
* with only the folders of ``writable`` writable by that user (chowned to it, mode 0700) and
  the folders of ``readable`` readable (a+rX).

Everything the grader itself keeps (the bundle copy, the hidden tests, reports, results)
lives in ``private_dir()`` folders: root-owned, mode 0700, out of the learner user's reach.

Where isolation is not available (not root, not Linux, no ``unshare``) the command runs in a
new session with the same limits and ``describe()`` says "not isolated": local grading is
feedback for the learner, CI grading (as root) is what gives points. ``AIOS_SANDBOX=off``
turns isolation off on purpose (debugging).

The launcher at the bottom of this file (``python -I sandbox.py LAUNCH_JSON argv...``) runs
inside the new namespaces, still as root: it brings up loopback, mounts the tmpfs covers,
sets the limits, drops to the learner user and execs the command. It imports only the
standard library, because ``-I`` keeps every other path (the cwd, PYTHONPATH) off sys.path.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

LEARNER_USER = "aios-learner"
FALLBACK_USER = "nobody"
UNSHARE = ("unshare", "--net", "--pid", "--fork", "--kill-child", "--mount-proc")
GiB = 1 << 30
#: Resource limits of the sandboxed command (soft = hard). Address space is left unlimited
#: where a CUDA driver is present: the driver reserves far more virtual memory than it uses.
LIMITS = {"RLIMIT_CPU": 4 * 3600, "RLIMIT_FSIZE": 4 * GiB, "RLIMIT_NPROC": 4096, "RLIMIT_AS": 64 * GiB,
          "RLIMIT_CORE": 0}
LOCAL_NOTE = "local grading is for feedback; CI grading is for points"


@dataclass(frozen=True)
class Isolation:
    """What ``spawn`` can do on this machine."""

    namespaces: bool  # unshare works: own PID, mount and network namespaces
    uid: int | None  # the learner user's uid (None: same user as the grader)
    gid: int | None
    user: str
    reason: str  # why not (fully) isolated; '' when isolated
    granted: tuple[str, ...] = ()  # folders given o+x so the learner user can reach the interpreter

    @property
    def isolated(self) -> bool:
        """Another user, own namespaces, no network."""
        return self.namespaces and self.uid is not None


def _ensure_user() -> pwd.struct_passwd | None:
    """The learner user (made with ``useradd`` when missing), else ``nobody``, else None."""
    for attempt in range(2):
        try:
            return pwd.getpwnam(LEARNER_USER)
        except KeyError:
            if attempt == 0 and shutil.which("useradd"):
                subprocess.run(["useradd", "--system", "--user-group", "--no-create-home",
                                "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", LEARNER_USER],
                               capture_output=True, timeout=60)
    try:
        return pwd.getpwnam(FALLBACK_USER)
    except KeyError:
        return None


def _unshare_works() -> bool:
    """Whether ``unshare`` can make the namespaces here (containers may forbid it)."""
    if not shutil.which("unshare"):
        return False
    try:
        return subprocess.run([*UNSHARE, "--", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _interpreter_dirs() -> list[Path]:
    """Folders the learner user must traverse to run this Python (its prefixes and their parents)."""
    dirs: set[Path] = set()
    for prefix in {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable))}:
        path = Path(prefix).resolve()
        dirs.update([path, *path.parents])
    return sorted(dirs)


def _grant_traverse() -> tuple[str, ...]:
    """Give o+x (traverse, not list) to the interpreter's folders that lack it, e.g. /root for pyenv."""
    granted = []
    for folder in _interpreter_dirs():
        mode = folder.stat().st_mode
        if not mode & stat.S_IXOTH:
            folder.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)
            granted.append(str(folder))
    return tuple(granted)


@functools.lru_cache(maxsize=1)
def probe() -> Isolation:
    """Find out (once per process) which isolation this machine offers."""
    if os.environ.get("AIOS_SANDBOX", "").lower() in ("off", "0", "no"):
        return Isolation(False, None, None, "", "AIOS_SANDBOX=off")
    if not sys.platform.startswith("linux"):
        return Isolation(False, None, None, "", f"not Linux ({sys.platform})")
    if os.geteuid() != 0:
        return Isolation(False, None, None, "", "not running as root")
    namespaces = _unshare_works()
    user = _ensure_user()
    if user is None:
        return Isolation(namespaces, None, None, "", "no unprivileged user to run as")
    granted = _grant_traverse()
    reason = "" if namespaces else "unshare cannot create namespaces here"
    return Isolation(namespaces, user.pw_uid, user.pw_gid, user.pw_name, reason, granted)


def describe() -> str:
    """One line saying what isolation the learner's code runs under."""
    iso = probe()
    if iso.isolated:
        return f"isolated: user {iso.user}, no network, own PID namespace, resource limits"
    if iso.uid is not None:
        return f"partly isolated: user {iso.user}, resource limits ({iso.reason}) — {LOCAL_NOTE}"
    return f"not isolated: {iso.reason} — {LOCAL_NOTE}"


def private_dir(prefix: str = "aios-") -> Path:
    """A new temporary folder only the grader's user can enter (mode 0700)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o700)
    return path


def _own(path: Path, uid: int, gid: int) -> None:
    """Hand ``path`` and everything below it to the learner user (folders 0700)."""
    for dirpath, dirnames, filenames in os.walk(path):
        os.chown(dirpath, uid, gid)
        os.chmod(dirpath, 0o700)
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)


def open_to_all(path: Path) -> None:
    """Make ``path`` readable (a+rX) for the learner user, and its parents traversable."""
    for dirpath, dirnames, filenames in os.walk(path):
        os.chmod(dirpath, stat.S_IMODE(os.stat(dirpath).st_mode) | 0o555)
        for name in filenames:
            file = os.path.join(dirpath, name)
            os.chmod(file, stat.S_IMODE(os.stat(file).st_mode) | 0o444)
    for parent in Path(path).resolve().parents:
        mode = stat.S_IMODE(parent.stat().st_mode)
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


def _limits() -> dict[str, int]:
    """LIMITS for this machine (no address-space cap next to a CUDA driver)."""
    limits = dict(LIMITS)
    if os.path.exists("/dev/nvidiactl"):
        limits.pop("RLIMIT_AS")
    return limits


def _set_limits(limits: dict[str, int]) -> None:
    """Apply ``{RLIMIT_NAME: value}`` (never raising a limit above its current hard value)."""
    import resource

    for name, value in limits.items():
        which = getattr(resource, name)
        _, hard = resource.getrlimit(which)
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(which, (value, value))


def spawn(argv: list[str], *, cwd: str | os.PathLike, env: dict[str, str], writable=(), readable=(), hidden=(),
          as_learner: bool = True, own_network: bool = True, pass_fds=(), stdin=None, stdout=None,
          stderr=None) -> subprocess.Popen:
    """Start ``argv`` in the sandbox (see the module docstring); return its Popen.

    ``env`` is the whole environment of the command (nothing is inherited). ``cwd`` should be
    one of ``writable`` when ``as_learner``. ``pass_fds`` stay open in the command, like
    Popen's: a ``socket.socketpair()`` end is the way to talk to it (the network namespace
    has no route to the grader's TCP ports; a Unix socket file in a ``readable`` folder works too).
    ``own_network=False`` keeps the caller's network namespace: for the learner worker, started
    by a test process that is itself confined to loopback, so that the tests reach a server the
    learner's code runs (lesson 15).
    """
    iso = probe()
    limits = _limits()
    learner = as_learner and iso.uid is not None
    if learner:
        for folder in writable:
            _own(Path(folder), iso.uid, iso.gid)
        for folder in readable:
            open_to_all(Path(folder))
    if not iso.namespaces:
        def preexec():
            _set_limits(limits)
            if learner:
                os.setgroups([])
                os.setgid(iso.gid)
                os.setuid(iso.uid)
        return subprocess.Popen(argv, cwd=cwd, env=env, stdin=stdin, stdout=stdout, stderr=stderr,
                                pass_fds=pass_fds, start_new_session=True, preexec_fn=preexec)
    plan = {"limits": limits, "hidden": [str(Path(h).resolve()) for h in hidden], "cwd": str(cwd),
            "uid": iso.uid if learner else None, "gid": iso.gid if learner else None, "loopback": own_network}
    unshare = UNSHARE if own_network else tuple(a for a in UNSHARE if a != "--net")
    launcher = [*unshare, "--", sys.executable, "-I", str(Path(__file__).resolve()), json.dumps(plan), *argv]
    return subprocess.Popen(launcher, cwd="/", env=env, stdin=stdin, stdout=stdout, stderr=stderr,
                            pass_fds=pass_fds, start_new_session=True)


def _children(pid: int) -> list[int]:
    """The direct children of ``pid`` (Linux /proc), [] when unknown."""
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []


def kill_tree(proc: subprocess.Popen) -> None:
    """Kill everything ``proc`` started and wait until it is gone.

    In a PID namespace, killing its first process makes the kernel kill and reap every
    other process in it before ``unshare`` (``proc``) can exit, so ``proc.wait()`` returning
    means the namespace is empty. Without namespaces the process group is killed; a daemon
    that left it with ``setsid`` survives (that is the "not isolated" case).
    """
    if proc.poll() is None:
        for child in _children(proc.pid):  # the namespace's init: its death empties the namespace
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(child, signal.SIGKILL)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()



# ---------------------------------------------------------------------------- the launcher (inside unshare)


def _loopback_up() -> None:
    """Bring up ``lo`` in the new network namespace (SIOCGIFFLAGS / SIOCSIFFLAGS)."""
    import fcntl
    import socket
    import struct

    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        flags = struct.unpack("16sh", fcntl.ioctl(sock, siocgifflags, struct.pack("16sh", b"lo", 0)))[1]
        fcntl.ioctl(sock, siocsifflags, struct.pack("16sh", b"lo", flags | iff_up))


def _cover(path: str) -> None:
    """Mount an empty read-only tmpfs over ``path`` (this mount namespace only)."""
    import ctypes

    ms_rdonly, ms_nosuid, ms_nodev, ms_noexec = 1, 2, 4, 8
    libc = ctypes.CDLL(None, use_errno=True)
    flags = ms_rdonly | ms_nosuid | ms_nodev | ms_noexec
    if libc.mount(b"tmpfs", path.encode(), b"tmpfs", flags, b"size=4k,mode=0555") != 0:
        raise OSError(ctypes.get_errno(), f"cannot cover {path}")


def _launch(plan: dict, argv: list[str]) -> None:
    """Set up the namespace as root, drop to the learner user, exec ``argv``."""
    if plan.get("loopback", True):
        _loopback_up()
    for path in plan["hidden"]:
        if os.path.isdir(path):
            _cover(path)
    _set_limits(plan["limits"])
    if plan["uid"] is not None:
        os.setgroups([])
        os.setgid(plan["gid"])
        os.setuid(plan["uid"])
    os.chdir(plan["cwd"])
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    _launch(json.loads(sys.argv[1]), sys.argv[2:])
