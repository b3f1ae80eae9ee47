"""A sandboxed IPython-style kernel for agent tools: one pre-imported zygote per rank, one
isolated session per trajectory.

    with Kernel() as kernel:
        session = kernel.open_session()
        session.put("img", pixels)                     # a numpy array, also /tmp/img.png
        result = session.run("from scipy import ndimage\\nndimage.label(img[..., 0] < 80)[1]")
        result.output  -> "4"                          # the last expression, displayed as IPython does
        session.close()

Isolation is `agents/sandbox.py`'s (new mount/net/pid/ipc/uts namespaces, read-only system and
interpreter, no network, fail closed without root), plus:
- the zygote is PID 1 of the sandbox's PID namespace; it imports numpy, PIL, scipy.ndimage and
  scikit-image once (from the environment's site-packages, exposed read-only at /site/N and
  put on sys.path by the zygote itself: `python -I` ignores PYTHONPATH), so a session starts
  by fork;
- each session forks from it into its own mount namespace with a fresh private /tmp, then drops
  to its own unprivileged uid (no capabilities, no_new_privs) under rlimits: no session sees
  another's files, variables or processes' memory;
- every process of the kernel (zygote, sessions and whatever they start) is in one memory cgroup
  whose limit caps their total memory;
- a cell runs under a wall-clock alarm; a cell that does not return in time (or a session that
  dies, e.g. killed at the memory cap) ends that session, never the kernel; its output is
  truncated to `output_chars`.
Sessions talk length-prefixed JSON over their own Unix socket, handed to the host by the
zygote (SCM_RIGHTS), so sessions run cells concurrently without going through the zygote.

Why not jupyter_client/ipykernel: a Jupyter kernel is one process with ZeroMQ sockets and no
isolation; we need a cheap fork per trajectory inside namespaces, and only two of IPython's
behaviours (state across cells, display of the last expression), which `_ZYGOTE` implements.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass

import numpy as np

from agents import sandbox
from agents.sandbox import MemoryCgroup, SandboxUnavailable

PRELOAD = ("numpy", "PIL.Image", "scipy.ndimage", "skimage.measure", "skimage.morphology", "skimage.draw",
           "skimage.color", "skimage.filters", "skimage.segmentation")
_HEADER = struct.Struct(">I")
_GRACE_S = 5.0  # host-side extra wait over a cell's own alarm before the session is killed

# The zygote runs as PID 1 inside the sandbox (exec'd by the bootstrap after the root is built,
# so `cfg`, `libc`, `check`, `mount`, `drop_privileges`, `report` and the flag constants are the
# bootstrap's). It is our trusted code; only cells are untrusted.
_ZYGOTE = r'''
import ast, base64, builtins, io, json, socket, struct, time, traceback
HEADER = struct.Struct(">I")
for path in reversed(cfg["site_paths"]):
    sys.path.insert(0, path)
for key, value in (("OMP_NUM_THREADS", "1"), ("OPENBLAS_NUM_THREADS", "1"), ("MKL_NUM_THREADS", "1")):
    os.environ[key] = value
os.environ.update({"HOME": "/tmp", "TMPDIR": "/tmp", "MPLBACKEND": "Agg"})
t0 = time.monotonic()
missing = []
for name in cfg["preload"]:
    try:
        __import__(name)
    except Exception as e:
        missing.append("%s (%s: %s)" % (name, type(e).__name__, e))
import numpy as np
ctrl = socket.socket(fileno=cfg["control_fd"])

def send_msg(sock, obj, fds=()):
    body = json.dumps(obj).encode()
    if fds:
        socket.send_fds(sock, [body], list(fds))
    else:
        sock.sendall(body)

def recv_ctrl():
    data = ctrl.recv(1 << 20)
    return json.loads(data) if data else None

def send_stream(sock, obj):
    body = json.dumps(obj).encode()
    sock.sendall(HEADER.pack(len(body)) + body)

def recv_stream(sock):
    head = b""
    while len(head) < 4:
        chunk = sock.recv(4 - len(head))
        if not chunk:
            return None
        head += chunk
    n, = HEADER.unpack(head)
    body = bytearray()
    while len(body) < n:
        chunk = sock.recv(min(1 << 20, n - len(body)))
        if not chunk:
            return None
        body += chunk
    return json.loads(bytes(body))

class CellTimeout(BaseException):  # BaseException: `except Exception` in a cell cannot swallow it
    pass

def on_alarm(signum, frame):
    raise CellTimeout()

class Capped(io.TextIOBase):
    """stdout/stderr of a cell: keeps the first `cap` characters, counts the rest."""
    def __init__(self, cap):
        self.cap, self.parts, self.size = cap, [], 0
    def write(self, s):
        s = str(s)
        room = self.cap - self.size
        if room > 0:
            self.parts.append(s[:room])
        self.size += len(s)
        return len(s)
    def text(self):
        return "".join(self.parts)

def run_cell(code, ns, n, timeout_s, cap):
    out = Capped(cap)
    error = None
    timed_out = False
    me = os.getpid()
    old = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = out
    start = time.monotonic()
    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        tree = ast.parse(code, "<cell-%d>" % n)
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        exec(compile(tree, "<cell-%d>" % n, "exec"), ns)
        if last is not None:
            value = eval(compile(last, "<cell-%d>" % n, "eval"), ns)
            if value is not None:  # displayed as IPython does: its repr, and kept as `_`
                ns["_"] = value
                out.write(repr(value) + "\n")
    except CellTimeout:
        timed_out = True
        error = "TimeoutError: the cell did not finish within %g s" % timeout_s
    except BaseException as e:
        frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename.startswith("<cell")]
        lines = traceback.format_list(frames) + traceback.format_exception_only(type(e), e)
        error = "".join(lines).rstrip()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        sys.stdout, sys.stderr = old
    if os.getpid() != me:  # a process the cell forked must not answer for the session
        os._exit(0)
    return {"output": out.text(), "error": error, "timed_out": timed_out, "truncated": out.size > cap,
            "output_chars": out.size, "duration_s": time.monotonic() - start}

def put(ns, msg):
    arr = np.frombuffer(base64.b64decode(msg["data"]), dtype=msg["dtype"]).reshape(msg["shape"]).copy()
    ns[msg["name"]] = arr
    path = None
    if arr.dtype == np.uint8 and (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        from PIL import Image
        path = "/tmp/%s.png" % msg["name"]
        Image.fromarray(arr).save(path)
    return {"ok": True, "path": path}

def serve(sock, cap, timeout_s):
    ns = {"__name__": "__main__", "__builtins__": builtins}
    n = 0
    while True:
        msg = recv_stream(sock)
        if msg is None:
            os._exit(0)
        if msg["op"] == "run":
            n += 1
            reply = run_cell(msg["code"], ns, n, msg.get("timeout_s") or timeout_s, cap)
        elif msg["op"] == "put":
            reply = put(ns, msg)
        else:
            reply = {"error": "unknown op %r" % msg["op"]}
        send_stream(sock, reply)

def start_session(msg):
    host_end, session_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:
        try:
            ctrl.close()
            host_end.close()
            os.setsid()
            check(libc.unshare(NEWNS), "unshare the session's mount namespace")
            mount(None, "/", None, REC | PRIVATE)
            mount("tmpfs", "/tmp", "tmpfs", NOSUID | NODEV, "size=%dm,mode=1777" % msg["tmp_mb"])
            null = os.open("/dev/null", os.O_WRONLY)
            os.dup2(null, 1)
            os.dup2(null, 2)
            oom_score("500")  # at the cap, a session dies before the zygote
            limits = dict(msg["limits"])
            # the address-space limit counts on top of what the preloaded modules already map
            limits["memory_bytes"] += vm_size()
            drop_privileges(msg["uid"], limits)
            send_stream(session_end, {"ok": True, "uid": os.getuid()})
            serve(session_end, msg["output_chars"], msg["timeout_s"])
        except BaseException as e:
            try:
                send_stream(session_end, {"ok": False, "error": "%s: %s" % (type(e).__name__, e)})
            except Exception:
                pass
        os._exit(70)
    session_end.close()
    send_msg(ctrl, {"sid": msg["sid"], "pid": pid}, [host_end.fileno()])
    host_end.close()
    return pid

def kill_uid(uid):
    """Kill every process of `uid` (a session and anything it started, setsid or not)."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setresuid(uid, uid, uid)
            os.kill(-1, signal.SIGKILL)
        except BaseException:
            pass
        os._exit(0)
    os.waitpid(pid, 0)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:  # until none is left, zombies included (we reap them)
        reap()
        if not uid_processes(uid):
            return
        time.sleep(0.005)

def uid_processes(uid):
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open("/proc/%s/status" % name) as f:
                    for line in f:
                        if line.startswith("Uid:"):
                            if int(line.split()[1]) == uid:
                                found.append(int(name))
                            break
            except OSError:
                pass
    return found

def reap():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return

def vm_size():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0

def oom_score(value):  # best effort: some kernels refuse changing it
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(value)
    except OSError:
        pass

oom_score("-900")  # keep the zygote alive when a session hits the cap
sessions = {}
send_msg(ctrl, {"hello": True, "preload_s": time.monotonic() - t0, "missing": missing})
while True:
    reap()
    msg = recv_ctrl()
    if msg is None:
        os._exit(0)
    if msg["op"] == "open":
        sessions[msg["sid"]] = (start_session(msg), msg["uid"])
    elif msg["op"] in ("close", "kill"):
        pid, uid = sessions.pop(msg["sid"], (None, None))
        if uid is not None:
            kill_uid(uid)
        send_msg(ctrl, {"closed": msg["sid"]})
    reap()
'''


@dataclass(frozen=True)
class CellResult:
    output: str  # printed text and the displayed last expression (truncated to the cap)
    error: str | None  # traceback of the cell's own frames, or why it did not run
    timed_out: bool = False
    truncated: bool = False
    duration_s: float = 0.0
    session_ended: bool = False  # the session is gone (timeout kill, died); later cells fail

    @property
    def ok(self) -> bool:
        return self.error is None

    def observation(self) -> str:
        """What the model sees as the tool result."""
        text = self.output + ("[output truncated]\n" if self.truncated else "")
        return text + (self.error + "\n" if self.error else "")


class Kernel:
    """The per-rank zygote. `memory_mb` caps the total memory of all its processes (cgroup);
    `session_memory_mb` is each session's own address-space allowance (RLIMIT_AS, on top of the
    preloaded modules); `cell_timeout_s` is a cell's default wall-clock limit. Thread-safe:
    sessions may run cells from several threads at once."""

    def __init__(self, *, memory_mb: int = 2048, session_memory_mb: int = 1024, max_processes: int = 32,
                 tmp_mb: int = 64, output_chars: int = 2000, cell_timeout_s: float = 10.0,
                 session_cpu_s: int = 600, preload: tuple[str, ...] = PRELOAD, start_timeout_s: float = 60.0):
        self.output_chars, self.cell_timeout_s = output_chars, cell_timeout_s
        self.tmp_mb, self.max_processes = tmp_mb, max_processes
        self.limits = {"cpu_s": int(session_cpu_s), "memory_bytes": int(session_memory_mb) << 20,
                       "max_processes": int(max_processes), "max_file_bytes": 16 << 20}
        self._lock = threading.Lock()
        self._next_sid = 0
        self._closed = False
        pivot_nr = sandbox._preflight()
        self.cgroup = MemoryCgroup(memory_mb)
        self._staging = tempfile.mkdtemp(prefix="k25-kernel-")
        os.mkdir(os.path.join(self._staging, "root"))
        self._ctrl, zygote_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        status_r, status_w = os.pipe()
        site = sandbox.site_package_paths()
        cfg = {"status_fd": status_w, "control_fd": zygote_end.fileno(), "root": os.path.join(self._staging, "root"),
               "ro_paths": sandbox._ro_paths(()), "ro_binds": [[p, f"/site/{i}"] for i, p in enumerate(site)],
               "site_paths": [f"/site/{i}" for i in range(len(site))], "preload": list(preload),
               "python": sandbox._interpreter(), "uid": sandbox._next_uid(), "timeout_s": 0.0,
               "tmp_mb": int(tmp_mb), "pivot_root_nr": pivot_nr, "mode": "zygote", "cgroup_procs": self.cgroup.procs}
        t0 = time.monotonic()
        try:
            self._proc = subprocess.Popen(
                [sandbox._interpreter(), "-I", "-S", "-c", sandbox._BOOTSTRAP, json.dumps(cfg)],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                env={"LANG": "C.UTF-8"}, cwd="/", close_fds=True, pass_fds=(status_w, zygote_end.fileno()),
                start_new_session=True)
            self._proc.stdin.write(_ZYGOTE.encode())
            self._proc.stdin.close()
        finally:
            os.close(status_w)
            zygote_end.close()
        try:
            hello = self._await_hello(status_r, start_timeout_s)
        except BaseException:
            self.close()
            raise
        finally:
            os.close(status_r)
        if hello["missing"]:
            self.close()
            raise SandboxUnavailable(f"the kernel could not import {hello['missing']} inside the sandbox")
        self.start_s = time.monotonic() - t0
        self.preload_s = hello["preload_s"]

    def _await_hello(self, status_r: int, limit_s: float) -> dict:
        """Wait for the zygote's hello (after the sandbox is built and the modules imported)."""
        deadline = time.monotonic() + limit_s
        status = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([status_r, self._ctrl], [], [], max(0.0, deadline - time.monotonic()))
            if status_r in ready:
                chunk = os.read(status_r, 65536)
                status += chunk
                for line in status.decode(errors="replace").splitlines():
                    if line.startswith(("setup-error", "zygote-error")):
                        raise SandboxUnavailable(f"could not start the kernel ({line}); nothing was run")
                if not chunk and self._ctrl not in ready:
                    raise SandboxUnavailable(f"the kernel exited during start-up ({status.decode(errors='replace')!r})")
            if self._ctrl in ready:
                return json.loads(self._ctrl.recv(1 << 20))
        raise SandboxUnavailable(f"the kernel did not start within {limit_s:g} s")

    def open_session(self, *, memory_mb: int | None = None, max_processes: int | None = None,
                     max_file_mb: int | None = None) -> "Session":
        """A fresh session (its own uid, /tmp and variables). The limits default to the kernel's;
        `memory_mb` is address space on top of what the preloaded modules already map."""
        if self._closed:
            raise RuntimeError("the kernel is closed")
        limits = dict(self.limits)
        if memory_mb is not None:
            limits["memory_bytes"] = int(memory_mb) << 20
        if max_processes is not None:
            limits["max_processes"] = int(max_processes)
        if max_file_mb is not None:
            limits["max_file_bytes"] = int(max_file_mb) << 20
        with self._lock:
            sid, uid = self._next_sid, sandbox._next_uid()
            self._next_sid += 1
            self._ctrl.sendall(json.dumps({"op": "open", "sid": sid, "uid": uid, "limits": limits,
                                           "tmp_mb": self.tmp_mb, "output_chars": self.output_chars,
                                           "timeout_s": self.cell_timeout_s}).encode())
            body, fds, _, _ = socket.recv_fds(self._ctrl, 1 << 16, 1)
        if not fds:
            raise SandboxUnavailable(f"the kernel did not open a session ({body!r})")
        sock = socket.socket(fileno=fds[0])
        hello = _recv(sock)
        if not hello or not hello.get("ok"):
            sock.close()
            raise SandboxUnavailable(f"a kernel session could not start: {hello}")
        return Session(self, sid, uid, sock)

    def _end(self, sid: int) -> None:
        if self._closed:
            return
        with self._lock:
            self._ctrl.sendall(json.dumps({"op": "close", "sid": sid}).encode())
            self._ctrl.recv(1 << 16)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            os.killpg(self._proc.pid, 9)  # the zygote (PID 1) dies, and with it the whole namespace
        except (ProcessLookupError, AttributeError):
            pass
        if hasattr(self, "_proc"):
            self._proc.wait()
        self._ctrl.close()
        self.cgroup.remove()
        shutil.rmtree(self._staging, ignore_errors=True)

    def __enter__(self) -> "Kernel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Session:
    """One trajectory's interpreter: state persists across its cells until it is closed."""

    def __init__(self, kernel: Kernel, sid: int, uid: int, sock: socket.socket):
        self.kernel, self.sid, self.uid, self._sock = kernel, sid, uid, sock
        self._lock = threading.Lock()  # one request at a time on the session's socket
        self.alive = True
        self.cells = 0

    def put(self, name: str, array: np.ndarray) -> str | None:
        """Bind `name` to a copy of `array` in the session (uint8 images also saved as /tmp/NAME.png;
        returns that path)."""
        if not name.isidentifier():
            raise ValueError(f"{name!r} is not a Python identifier")
        array = np.ascontiguousarray(array)
        reply = self._call({"op": "put", "name": name, "dtype": array.dtype.str, "shape": list(array.shape),
                            "data": base64.b64encode(array.tobytes()).decode()}, self.kernel.cell_timeout_s)
        if reply is None or not reply.get("ok"):
            raise RuntimeError(f"could not put {name!r} into the session: {reply}")
        return reply.get("path")

    def run(self, code: str, timeout_s: float | None = None) -> CellResult:
        if not self.alive:
            return CellResult("", "the kernel session has ended; its state is lost", session_ended=True)
        timeout_s = timeout_s or self.kernel.cell_timeout_s
        self.cells += 1
        try:
            reply = self._call({"op": "run", "code": code, "timeout_s": timeout_s}, timeout_s + _GRACE_S)
        except TimeoutError:
            self.close()
            return CellResult("", f"TimeoutError: the cell did not return within {timeout_s:g} s; the session was "
                              "ended", timed_out=True, session_ended=True)
        if reply is None:
            self.close()
            return CellResult("", "the kernel session died (killed, e.g. at the memory cap); its state is lost",
                              session_ended=True)
        return CellResult(reply["output"], reply["error"], reply["timed_out"], reply["truncated"], reply["duration_s"])

    def _call(self, msg: dict, timeout_s: float) -> dict | None:
        body = json.dumps(msg).encode()
        with self._lock:
            if not self.alive:
                return None
            self._sock.settimeout(timeout_s)
            try:
                self._sock.sendall(_HEADER.pack(len(body)) + body)
                return _recv(self._sock)
            except (BrokenPipeError, ConnectionResetError, OSError) as e:
                if isinstance(e, socket.timeout):
                    raise TimeoutError from e
                return None

    def close(self) -> None:
        if self.alive:
            self.alive = False
            self._sock.close()
            self.kernel._end(self.sid)

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _recv(sock: socket.socket) -> dict | None:
    def exactly(n: int) -> bytes | None:
        buf = bytearray()
        while len(buf) < n:
            chunk = sock.recv(min(1 << 20, n - len(buf)))
            if not chunk:
                return None
            buf += chunk
        return bytes(buf)
    head = exactly(4)
    if head is None:
        return None
    body = exactly(_HEADER.unpack(head)[0])
    return None if body is None else json.loads(body)
