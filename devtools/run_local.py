"""`make run`'s process runner: `python -m devtools.run_local Procfile.dev`.

Starts every process of a Procfile, prints their output line by line with the
process's name, and on Ctrl-C (or SIGTERM) stops them all and exits 0 if each
stopped cleanly. If one exits by itself, the others are stopped and the run fails.

Stop order: the reverse of the Procfile's, each process signalled only once the
one before it has exited (its whole process group). So list a process after
those it needs: in Procfile.dev the worker comes after the fake provider it
sends to, and on Ctrl-C finishes its sends in flight while the provider still
answers. A second Ctrl-C signals every process still running at once; after
--stop-timeout seconds whatever still runs is killed.

Why not honcho: on Ctrl-C it exits 130 and SIGKILLs whatever is still running
five seconds after the first process stopped. And whatever the runner does, make
gets the terminal's SIGINT too (it is in the terminal's foreground process group)
and then dies of it ("make: *** [run] Interrupt", status 130). So, as a
job-control shell does, the runner makes its own process group the terminal's
foreground while it runs: Ctrl-C reaches it alone, it forwards the signal once to
each process's own group (qcluster's workers and runserver's reloader included,
as if each had been started alone in the terminal), waits for them, and gives the
terminal back to make, which sees the recipe succeed.
"""

from __future__ import annotations

import argparse
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

DEFAULT_STOP_TIMEOUT_SECONDS = 30.0
_PROCFILE_LINE = re.compile(r"(?P<name>[A-Za-z0-9_-]+):\s*(?P<command>\S.*)")


@dataclass(frozen=True)
class ProcfileEntry:
    name: str
    command: str


def read_procfile(path: Path) -> list[ProcfileEntry]:
    entries = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _PROCFILE_LINE.fullmatch(line)
        if match is None:
            raise SystemExit(f"{path}, line {number}: expected 'name: command', got {raw!r}")
        entries.append(ProcfileEntry(name=match["name"], command=match["command"]))
    if not entries:
        raise SystemExit(f"{path} names no process")
    return entries


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user took the id: ours are gone
        return False
    return True


@contextmanager
def terminal_foreground() -> Iterator[None]:
    """Make this process's group the terminal's foreground for the block, then give it back.

    Without a terminal, or when not started in its foreground, nothing changes:
    a SIGINT then reaches whoever it is sent to, and make dies of its own.
    """
    try:
        fd = sys.stdin.fileno()
        previous = os.tcgetpgrp(fd) if os.isatty(fd) else None
    except (OSError, ValueError):
        previous = None
    if previous is None or previous != os.getpgrp():
        yield
        return
    # A background group that touches the terminal's settings gets SIGTTOU, which would
    # stop it. Ctrl-Z would stop the runner alone, and the shell, which knows only
    # make's group, could not give the terminal back: it does nothing instead.
    ttou = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    tstp = signal.signal(signal.SIGTSTP, signal.SIG_IGN)
    try:
        if os.getpgrp() != os.getpid():
            os.setpgid(0, 0)
        os.tcsetpgrp(fd, os.getpgrp())
        yield
    finally:
        with suppress(OSError):
            os.tcsetpgrp(fd, previous)
        signal.signal(signal.SIGTSTP, tstp)
        signal.signal(signal.SIGTTOU, ttou)


class Runner:
    def __init__(self, entries: list[ProcfileEntry], *, stop_timeout: float, out=None) -> None:
        self.entries = entries
        self.stop_timeout = stop_timeout
        self.out = out or sys.stdout
        self.width = max(len("system"), *(len(entry.name) for entry in entries))
        self.processes: dict[str, subprocess.Popen] = {}
        self.relays: list[threading.Thread] = []
        self.done: set[str] = set()
        self.signalled: set[str] = set()
        self.exited: queue.Queue[str] = queue.Queue()
        self.print_lock = threading.Lock()
        self.signals: queue.Queue[int] = queue.Queue()

    def say(self, name: str, text: str) -> None:
        with self.print_lock:
            self.out.write(f"{time.strftime('%H:%M:%S')} {name:<{self.width}} | {text}\n")
            self.out.flush()

    def _start(self, entry: ProcfileEntry) -> None:
        # `exec`: the shell (which expands ${WEB_PORT:-8000}) becomes the process,
        # so the signal goes to it and not to a shell that would not pass it on.
        # Its own process group: the signal reaches its children too, and the
        # terminal's Ctrl-C does not reach it directly.
        process = subprocess.Popen(  # noqa: S603 (running the Procfile's commands is the point)
            ["/bin/sh", "-c", f"exec {entry.command}"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            process_group=0,
        )
        self.processes[entry.name] = process
        self.say("system", f"{entry.name} started (pid={process.pid}): {entry.command}")
        relay = threading.Thread(target=self._relay_output, args=(entry.name, process), daemon=True)
        relay.start()
        self.relays.append(relay)
        threading.Thread(target=self._wait, args=(entry.name, process, relay), daemon=True).start()

    def _relay_output(self, name: str, process: subprocess.Popen) -> None:
        for raw in iter(process.stdout.readline, b""):
            self.say(name, raw.decode(errors="replace").rstrip("\r\n"))

    def _wait(self, name: str, process: subprocess.Popen, relay: threading.Thread) -> None:
        process.wait()
        # Stopped means its whole group: qcluster's workers, runserver's reloaded child.
        while _group_alive(process.pid):
            time.sleep(0.05)
        # Its last lines before the line saying it exited (and so before the next process
        # is asked to stop): the relay ends when the pipe has nothing more to give. Bounded,
        # since a child that left the group could hold the pipe open.
        relay.join(timeout=2)
        self.done.add(name)
        self.exited.put(name)

    def _running(self) -> list[str]:
        return [name for name in self.processes if name not in self.done]

    def _signal(self, names: list[str], signum: int) -> None:
        if names:
            self.say("system", f"sending {signal.Signals(signum).name} to {', '.join(names)}")
        for name in names:
            self.signalled.add(name)
            with suppress(ProcessLookupError):
                os.killpg(self.processes[name].pid, signum)

    def _signal_all(self, signum: int) -> None:
        self._signal(self._running(), signum)

    def _stop_next(self, signum: int) -> None:
        """Signal the next process in stop order (the Procfile's, reversed), unless one
        signalled before it is still stopping: it must be gone before the next is asked."""
        for name in reversed(self.processes):
            if name in self.done:
                continue
            if name not in self.signalled:
                self._signal([name], signum)
            return

    def run(self) -> int:
        # SIGHUP: the terminal went away. Each process gets SIGTERM, as from a service manager.
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, lambda received, frame: self.signals.put(received))
        for entry in self.entries:
            self._start(entry)

        stopping_since: float | None = None
        stop_signal = signal.SIGTERM  # what each process is sent in its turn
        asked_to_stop = False  # by a signal to us, not because a process quit
        unexpected_exit = False
        killed = False
        reported = 0
        while reported < len(self.processes):
            with suppress(queue.Empty):
                name = self.exited.get(timeout=0.1)
                reported += 1
                returncode = self.processes[name].returncode
                self.say("system", f"{name} exited (rc={returncode})")
                if stopping_since is None:
                    unexpected_exit = True
                    stopping_since = time.monotonic()
            while not self.signals.empty():
                signum = self.signals.get()
                self.say("system", f"{signal.Signals(signum).name} received")
                if stopping_since is None:
                    asked_to_stop, stopping_since = True, time.monotonic()
                    stop_signal = signal.SIGTERM if signum == signal.SIGHUP else signum
                else:  # asked again: no more waiting for them to finish their work, nor for each other
                    self._signal_all(signal.SIGTERM)
            if stopping_since is not None and not killed:
                self._stop_next(stop_signal)
            if stopping_since is not None and not killed and time.monotonic() - stopping_since > self.stop_timeout:
                killed = True
                self.say("system", f"still running after {self.stop_timeout:g} s")
                self._signal_all(signal.SIGKILL)

        for relay in self.relays:  # the last lines each wrote
            relay.join(timeout=2)
        clean = asked_to_stop and not unexpected_exit and not killed
        clean = clean and all(process.returncode == 0 for process in self.processes.values())
        self.say("system", "all stopped" if clean else "stopped, not cleanly")
        return 0 if clean else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.run_local", description=__doc__.splitlines()[0])
    parser.add_argument("procfile", type=Path, help="Lines of 'name: command'.")
    parser.add_argument(
        "--stop-timeout",
        type=float,
        default=DEFAULT_STOP_TIMEOUT_SECONDS,
        help="Seconds to wait for the processes after the stop signal before SIGKILL (default %(default)g).",
    )
    args = parser.parse_args(argv)
    runner = Runner(read_procfile(args.procfile), stop_timeout=args.stop_timeout)
    with terminal_foreground():
        return runner.run()


if __name__ == "__main__":
    sys.exit(main())
