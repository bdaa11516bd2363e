"""CPU cgroups for benchmarks: each group held to a fixed share of a core, as a host of
its own would be, and its CPU time read back.

cgroup v2 where its `cpu` controller is available (`cpu.max`, `cpu.stat` usage_usec),
else v1's `cpu` hierarchy (`cpu.cfs_quota_us` / `cpu.cfs_period_us`) with `cpuacct`
(`cpuacct.usage`) for the time used. Making a group needs root (or a delegated
subtree); `CpuCgroups` raises BenchError saying what it tried and why each failed.
"""

from __future__ import annotations

import os
from pathlib import Path

from bench.common import BenchError

CGROUP_ROOT = Path("/sys/fs/cgroup")
PERIOD_US = 100_000


def _v2_root() -> Path | None:
    """The cgroup v2 mount whose root offers the cpu controller, if any."""
    for root in (CGROUP_ROOT, CGROUP_ROOT / "unified"):
        controllers = root / "cgroup.controllers"
        if controllers.exists() and "cpu" in controllers.read_text().split():
            return root
    return None


def _v1_dirs() -> tuple[Path, Path | None] | None:
    """v1's cpu hierarchy and the cpuacct one (the same directory when co-mounted)."""
    cpu = next(
        (p for p in (CGROUP_ROOT / "cpu", CGROUP_ROOT / "cpu,cpuacct") if (p / "cpu.cfs_quota_us").exists()), None
    )
    if cpu is None:
        return None
    acct = next(
        (p for p in (cpu, CGROUP_ROOT / "cpuacct", CGROUP_ROOT / "cpu,cpuacct") if (p / "cpuacct.usage").exists()),
        None,
    )
    return cpu, acct


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine has spent busy (not idle or waiting), from
    /proc/stat: over a phase, divided by its wall time, how many cores were in use."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


class CpuCgroups:
    """`count` groups, each held to `cpus` of a core; remove() takes them away again."""

    def __init__(self, count: int, *, cpus: float, name: str = "bench-scale") -> None:
        if not 0.01 <= cpus <= os.cpu_count():
            raise BenchError(f"--cpus-per-qcluster must be between 0.01 and {os.cpu_count()} (cores here)")
        self.cpus = cpus
        self.groups: list[list[Path]] = []  # per group: the directories to put a process in
        self.usage_files: list[tuple[Path, float]] = []  # per group: the file and its unit in seconds
        quota = max(1000, int(cpus * PERIOD_US))
        tried = []
        v2 = _v2_root()
        v1 = _v1_dirs()
        base = f"{name}-{os.getpid()}"
        try:
            if v2 is not None:
                self.version = "v2"
                self._enable_v2(v2)
                for index in range(count):
                    group = v2 / f"{base}-{index}"
                    group.mkdir()
                    self.groups.append([group])
                    (group / "cpu.max").write_text(f"{quota} {PERIOD_US}")
                    self.usage_files.append((group / "cpu.stat", 1e-6))
                return
            tried.append("v2: no cgroup2 mount offers the cpu controller (cgroup.controllers)")
            if v1 is not None:
                self.version = "v1"
                cpu, acct = v1
                for index in range(count):
                    group = cpu / f"{base}-{index}"
                    group.mkdir()
                    dirs = [group]
                    (group / "cpu.cfs_period_us").write_text(str(PERIOD_US))
                    (group / "cpu.cfs_quota_us").write_text(str(quota))
                    if acct is not None and acct != cpu:
                        (acct / f"{base}-{index}").mkdir()
                        dirs.append(acct / f"{base}-{index}")
                    self.groups.append(dirs)
                    usage_dir = dirs[-1] if acct is not None else None
                    self.usage_files.append(
                        (usage_dir / "cpuacct.usage", 1e-9) if usage_dir else (group / "cpu.stat", 0.0)
                    )
                return
            tried.append(f"v1: no cpu hierarchy with cpu.cfs_quota_us under {CGROUP_ROOT}")
        except OSError as exc:
            self.remove()
            raise BenchError(
                f"cannot create CPU cgroups ({getattr(self, 'version', '?')}): {exc}; "
                "bench scale needs root (or a delegated cgroup) and the cpu controller"
            ) from None
        raise BenchError("cannot create CPU cgroups on this machine: " + "; ".join(tried))

    @staticmethod
    def _enable_v2(root: Path) -> None:
        control = root / "cgroup.subtree_control"
        if "cpu" not in control.read_text().split():
            control.write_text("+cpu")

    def add(self, index: int, pid: int) -> None:
        """Put process `pid` in group `index` (the processes it forks afterwards are born there)."""
        for directory in self.groups[index]:
            try:
                (directory / "cgroup.procs").write_text(str(pid))
            except ProcessLookupError:
                return  # gone already
            except OSError as exc:
                if exc.errno == 3:  # ESRCH
                    return
                raise BenchError(f"cannot move process {pid} into {directory}: {exc}") from None

    def add_tree(self, index: int, pid: int) -> None:
        """`pid` and every process below it."""
        todo = [pid]
        while todo:
            current = todo.pop()
            self.add(index, current)
            todo += _children(current)

    def usage_seconds(self) -> list[float]:
        """CPU seconds each group has used since it was made."""
        used = []
        for path, unit in self.usage_files:
            if path.name == "cpu.stat":
                fields = dict(line.split() for line in path.read_text().splitlines() if line.strip())
                used.append(int(fields.get("usage_usec", 0)) * 1e-6 if unit else float("nan"))
            else:
                used.append(int(path.read_text()) * unit)
        return used

    def report(self, used: list[float] | None, messages: int, *, machine_busy_cores: float | None = None) -> dict:
        used = used or []
        total = sum(used)
        return {
            # The whole machine's cores in use over the phase (every process, other work included):
            # near the core count, the cores themselves are what is saturated.
            "machine_busy_cores": None if machine_busy_cores is None else round(machine_busy_cores, 2),
            "machine_cores": os.cpu_count(),
            "version": self.version,
            "cpus_each": self.cpus,
            "groups": len(self.groups),
            "cpu_s_each": [round(u, 3) for u in used],
            "cpu_s_total": round(total, 3),
            "cpu_s_per_1000_messages": round(total / messages * 1000, 3) if messages else None,
        }

    def remove(self) -> None:
        """Take the groups away (their processes have exited; any left go back to the root)."""
        for dirs in self.groups:
            for directory in dirs:
                root_procs = directory.parent / "cgroup.procs"
                try:
                    for pid in (directory / "cgroup.procs").read_text().split():
                        root_procs.write_text(pid)
                    directory.rmdir()
                except OSError:
                    continue
        self.groups = []
