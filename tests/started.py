"""Training scripts started as the resume and signal tests need them: running, with their output read as it is
written, their signals and their exit status.

A fresh interpreter spends about 10 s of CPU importing torch, transformers' Trainer and datasets before a script does
any work. What these tests check happens after that (checkpoints, signals, resuming, records), so a script of this
repository starts in a child of multiprocessing's fork server, which imported those modules once (`preloaded`): the
script runs as `python script.py args` does once its imports are done, as `__main__`, with `sys.argv`, its folder
first on `sys.path`, its own stdout and stderr, Ctrl-C as a terminal delivers it, and its exit status or signal.
Where it differs from a fresh interpreter: the environment, hash seed and module state are the fork server's, as the
test session had them when the server started; atexit handlers do not run; and its CPU time is not the test's own
(the fork server reaps it), so the fast tier's CPU guard does not see it: only slow tests start scripts this way.
What an interpreter does while it starts (warnings, logging, `--help`, the environment) is tested in fresh
interpreters (test_cli.py), and so is a launcher (`launched`), whose processes are its own.

Each started command is a context manager: leaving it (a failed assertion included) kills the command if it still
runs, so a failing test leaves nothing running behind it.
"""

import multiprocessing
import os
import runpy
import signal
import subprocess
import sys
import tempfile
import time

# What train.py and pretrain.py import before their first line of work.
PRELOAD = ["vtlm.training.run", "vtlm.training.pretraining", "transformers.trainer", "datasets"]
_FORK_SERVER = multiprocessing.get_context("forkserver")
_FORK_SERVER.set_forkserver_preload(PRELOAD)


def _run_script(argv, cwd, stdout, stderr):
    """In the fork server's child: the working folder `cwd`, the output to the files, line by line; SIGINT to
    KeyboardInterrupt, as a fresh interpreter started from a terminal has it; then the script `argv[0]` as
    `__main__`. Its `sys.exit` status is the child's (multiprocessing exits with a SystemExit's code)."""
    os.chdir(cwd)
    for fd, path in ((1, stdout), (2, stderr)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_APPEND), fd)
    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(line_buffering=True)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.argv = list(argv)
    sys.path.insert(0, os.path.dirname(os.path.abspath(argv[0])))
    runpy.run_path(argv[0], run_name="__main__")


class Started:
    """A command running with its stdout and stderr in files: `subprocess.Popen`'s `pid`, `poll`, `wait`,
    `send_signal` and `returncode` (negative: the signal that ended it), and its output so far."""

    def __init__(self, start):
        self._folder = tempfile.TemporaryDirectory(prefix="started-")
        self.stdout_path, self.stderr_path = (os.path.join(self._folder.name, name) for name in ("stdout", "stderr"))
        for path in (self.stdout_path, self.stderr_path):
            open(path, "w").close()
        self._process = start(self.stdout_path, self.stderr_path)
        self.pid = self._process.pid

    def __enter__(self):
        return self

    def __exit__(self, *exception):
        if self.returncode is None:
            self.send_signal(signal.SIGKILL)
            self.wait(timeout=60)

    @property
    def returncode(self):
        process = self._process
        return process.exitcode if isinstance(process, multiprocessing.process.BaseProcess) else process.poll()

    def poll(self):
        return self.returncode

    def wait(self, timeout):
        deadline = time.monotonic() + timeout
        while self.returncode is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"still running after {timeout} s:\n{self.stderr[-3000:]}")
            time.sleep(0.05)
        return self.returncode

    def send_signal(self, signum):
        if self.returncode is None:  # once it has ended, its pid may be another process's
            os.kill(self.pid, signum)

    @property
    def stdout(self):
        with open(self.stdout_path) as file:
            return file.read()

    @property
    def stderr(self):
        with open(self.stderr_path) as file:
            return file.read()

    def wait_for_output(self, text, timeout=300):
        """Wait until `text` is in the stdout written so far; an AssertionError if the command ends without it."""
        deadline = time.monotonic() + timeout
        while True:
            ended = self.returncode is not None  # before reading: what it printed before it ended is read
            if text in self.stdout:
                return
            assert not ended, f"it ended ({self.returncode}) without printing {text!r}:\n{self.stderr[-3000:]}"
            assert time.monotonic() < deadline, f"{text!r} not printed within {timeout} s"
            time.sleep(0.05)


def preloaded(command):
    """Start `command`, `[sys.executable, script, *args]`, from the preloaded fork server, in this working folder."""
    assert command[0] == sys.executable and command[1].endswith(".py"), command

    def start(stdout, stderr):
        process = _FORK_SERVER.Process(target=_run_script, args=(command[1:], os.getcwd(), stdout, stderr))
        process.start()
        return process

    return Started(start)


def launched(command, environment):
    """Start `command` (a launcher, which starts processes of its own) as a fresh process in `environment`."""

    def start(stdout, stderr):
        with open(stdout, "w") as out, open(stderr, "w") as err:  # each line as it is printed, not at the end:
            return subprocess.Popen(command, stdout=out, stderr=err, env={**environment, "PYTHONUNBUFFERED": "1"})

    return Started(start)


def run_to_the_end(command, timeout=600):
    """`command`, from the preloaded fork server, to its end, which must be exit status 0: its stderr."""
    with preloaded(command) as process:
        process.wait(timeout)
        assert process.returncode == 0, process.stderr[-3000:]
        return process.stderr
