"""The child process of ``micro.isolated``: stopped and reaped whatever stops the wait."""

import signal
import threading
import time
from pathlib import Path

import pytest

from tfqnet.micro.isolated import describe_exit, run_python

_WRITE_PID_AND_SLEEP = ("import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid()));"
                        " time.sleep(60)")


def _pid_when_written(path: Path) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return int(path.read_text())
        time.sleep(0.01)
    raise AssertionError("the child never started")


def test_keyboard_interrupt_kills_and_reaps_the_child(tmp_path):
    """subprocess.run kills the child on KeyboardInterrupt but leaves it unreaped (a
    zombie, or still dying, when the command exits). SIGTERM reaches the CLI as one."""
    pid_file = tmp_path / "pid"
    pids: list[int] = []
    main = threading.main_thread().ident

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    def interrupt_when_started():
        pids.append(_pid_when_written(pid_file))
        signal.pthread_kill(main, signal.SIGUSR1)  # wakes the main thread's wait

    previous = signal.signal(signal.SIGUSR1, interrupt)
    try:
        threading.Thread(target=interrupt_when_started, daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            run_python(_WRITE_PID_AND_SLEEP, [str(pid_file)], timeout=60)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert pids and not (Path("/proc") / str(pids[0])).exists()  # gone, not a zombie


def test_a_timeout_kills_and_reaps_the_child(tmp_path):
    pid_file = tmp_path / "pid"
    result = run_python(_WRITE_PID_AND_SLEEP, [str(pid_file)], timeout=3)
    assert result.returncode is None
    assert describe_exit(result) == "did not finish within 3 s"
    assert not (Path("/proc") / str(_pid_when_written(pid_file))).exists()


def test_a_crash_is_named_and_a_failure_gives_its_last_line():
    crashed = run_python("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)", [], 30)
    assert crashed.crashed and describe_exit(crashed) == "crashed (SIGSEGV)"
    failed = run_python("raise SystemExit('no such tensor')", [], 30)
    assert not failed.crashed and describe_exit(failed) == "failed (no such tensor)"
