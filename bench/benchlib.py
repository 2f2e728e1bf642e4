"""Shared pieces of the side-by-side benchmarks (smtp_compare.py, imap_compare.py).

- Process accounting from /proc: CPU time of a whole process tree (including children that
  already exited and were reaped) and its memory (RSS and PSS).
- Peers: where bench/setup_peers.sh put the private Postfix and Dovecot.
- Pillarbox: a data dir made with the real ``pillarbox init --dev`` and ``pillarbox user add``
  commands, listeners moved to free loopback ports, a loopback DNS server for its lookups,
  and ``pillarbox serve`` as a child process.
- Table printing.

Nothing here is a timed test: the scripts print figures and ratios for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pillarbox.config import LISTENER_NAMES

REPO = Path(__file__).resolve().parent.parent
PYTHON = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv").exists() else sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

BENCH_ROOT = Path(os.environ.get("BENCH_ROOT", "/tmp"))
DOMAIN = "bench.test"
USER = f"bench@{DOMAIN}"
PASSWORD = "bench-secret"


# -- /proc accounting ------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm (field 2) may hold spaces and parentheses: split after the last ')'.
    return raw[raw.rindex(")") + 2 :].split()


def children_map() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            tree.setdefault(int(fields[1]), []).append(int(entry.name))
    return tree


def process_tree(root: int) -> list[int]:
    tree = children_map()
    result, todo = [], [root]
    while todo:
        pid = todo.pop()
        result.append(pid)
        todo.extend(tree.get(pid, []))
    return result


def tree_cpu_seconds(roots: Sequence[int]) -> float:
    """CPU (user+system) used so far by the trees under ``roots``, dead children included.

    A reaped child's time is added to its parent's cutime/cstime, so summing
    utime+stime+cutime+cstime over the live processes of a tree counts every process the tree
    ever ran (zombies not yet reaped excepted: there are none in steady state).
    """
    ticks = 0
    for root in roots:
        for pid in process_tree(root):
            fields = _stat_fields(pid)
            if fields is not None:
                # After the comm split: utime=11 stime=12 cutime=13 cstime=14 (0-based).
                ticks += sum(int(fields[i]) for i in (11, 12, 13, 14))
    return ticks / CLK_TCK


@dataclass(frozen=True)
class Memory:
    rss: int  # bytes, summed over processes (shared pages counted once per process)
    pss: int  # bytes, proportional set size: shared pages divided among their users
    processes: int


def tree_memory(roots: Sequence[int]) -> Memory:
    rss = pss = count = 0
    for root in roots:
        for pid in process_tree(root):
            try:
                text = Path(f"/proc/{pid}/smaps_rollup").read_text()
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                continue
            fields = dict(re.findall(r"^(\w+):\s+(\d+) kB", text, re.M))
            rss += int(fields.get("Rss", 0)) * 1024
            pss += int(fields.get("Pss", 0)) * 1024
            count += 1
    return Memory(rss, pss, count)


# -- peers (bench/setup_peers.sh) -------------------------------------------------------------


@dataclass(frozen=True)
class Peers:
    postfix_port: int = int(os.environ.get("BENCH_POSTFIX_PORT", "12525"))
    dovecot_port: int = int(os.environ.get("BENCH_DOVECOT_PORT", "12143"))
    dovecot_imaps_port: int = int(os.environ.get("BENCH_DOVECOT_IMAPS_PORT", "12993"))
    postfix_dir: Path = BENCH_ROOT / "bench-postfix"
    dovecot_dir: Path = BENCH_ROOT / "bench-dovecot"

    @property
    def postfix_maildir(self) -> Path:
        return self.postfix_dir / "mail" / DOMAIN / "bench" / "Maildir"

    @property
    def dovecot_maildir(self) -> Path:
        return self.dovecot_dir / "home" / DOMAIN / "bench" / "Maildir"

    def postfix_master_pid(self) -> int:
        pid_file = self.postfix_dir / "queue" / "pid" / "master.pid"
        return _live_pid(pid_file, "postfix: run bench/setup_peers.sh")

    def dovecot_master_pid(self) -> int:
        return _live_pid(
            self.dovecot_dir / "run" / "master.pid", "dovecot: run bench/setup_peers.sh"
        )


def _live_pid(pid_file: Path, hint: str) -> int:
    try:
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, IndexError, ProcessLookupError) as exc:
        raise SystemExit(f"not running ({pid_file}): {hint}") from exc
    return pid


# -- Pillarbox ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pillarbox_cli(*args: str, data_dir: Path | None = None, stdin: str | None = None) -> str:
    cmd = [PYTHON, "-m", "pillarbox"]
    if data_dir is not None:
        cmd += ["--config", str(data_dir / "pillarbox.toml")]
    done = subprocess.run(
        cmd + list(args), input=stdin, capture_output=True, text=True, cwd=REPO, timeout=120
    )
    if done.returncode != 0:
        raise SystemExit(f"pillarbox {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def _set_toml_key(text: str, table: str, key: str, value: str) -> str:
    """Set ``key = value`` inside ``[table]`` of a config written by ``pillarbox init``."""
    lines = text.splitlines()
    start = next(
        (i for i, line in enumerate(lines) if line.split("#")[0].strip() == f"[{table}]"), None
    )
    if start is None:
        return text.rstrip("\n") + f"\n\n[{table}]\n{key} = {value}\n"
    end = next(
        (i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")), len(lines)
    )
    for i in range(start + 1, end):
        if re.match(rf"\s*{re.escape(key)}\s*=", lines[i]):
            lines[i] = f"{key} = {value}"
            break
    else:
        lines.insert(end, f"{key} = {value}")
    return "\n".join(lines) + "\n"


# Every listener the config knows: the bench moves each off its dev port (or disables it),
# so one added to the schema can never be left on a fixed port two servers would share.
LISTENERS = LISTENER_NAMES


class DnsServer:
    """The project's loopback DNS server (tests/dnsserver.py) as a separate process.

    Pillarbox looks up SPF/DMARC/PTR for inbound mail; the machine's resolver may hang, so it
    gets an authoritative server with the sender's zone. Its CPU is not Pillarbox's and is
    reported apart.
    """

    def __init__(
        self, workdir: Path, zones: dict[str, str], *, host: str = "127.0.0.1", port: int = 0
    ):
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        args = []
        for origin, text in zones.items():
            path = workdir / f"zone-{origin}.txt"
            path.write_text(text)
            args += ["--zone", origin, str(path)]
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "tests.dnsserver", "--host", host, "--port", str(port), *args],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=(workdir / "dnsserver.log").open("ab"),
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("ready "):
            self.proc.kill()
            raise SystemExit(f"DNS server did not start: {line!r}")
        self.port = int(line.split()[1])

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds([self.proc.pid])

    def stop(self) -> None:
        self.proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        if self.proc.poll() is None:
            self.proc.kill()


SENDER_ZONE = """\
$TTL 300
@ SOA ns.client.test. hostmaster.client.test. 1 3600 600 86400 300
@ NS ns
@ MX 10 mx
@ TXT "v=spf1 ip4:127.0.0.0/8 -all"
_dmarc TXT "v=DMARC1; p=none"
mx A 127.0.0.1
ns A 127.0.0.1
"""
REVERSE_ZONE = """\
$TTL 300
@ SOA ns.client.test. hostmaster.client.test. 1 3600 600 86400 300
1 PTR mx.client.test.
"""
SENDER_DOMAIN = "client.test"


class Pillarbox:
    """A real ``pillarbox serve`` from a data dir made by ``init --dev`` (free ports)."""

    def __init__(
        self,
        data_dir: Path,
        *,
        fresh: bool = True,
        extra: dict[str, dict[str, str]] | None = None,
        users: tuple[str, ...] = (USER,),
        repo: Path = REPO,
    ):
        # ``repo``: the checkout whose code runs (another worktree, for a before/after
        # comparison in one run); this checkout's Python, whose ``-m`` takes the package
        # from the working directory first.
        self.data_dir = data_dir
        self.repo = repo
        self.ports = {name: free_port() for name in ("smtp", "imap", "imaps", "submission")}
        if fresh and data_dir.exists():
            shutil.rmtree(data_dir)
        self.dns = DnsServer(
            data_dir.parent,
            {SENDER_DOMAIN: SENDER_ZONE, "0.0.127.in-addr.arpa": REVERSE_ZONE},
        )
        try:
            self._configure(users, extra or {})
        except BaseException:
            self.dns.stop()
            raise
        self.log_path = data_dir / "serve.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def _configure(self, users: tuple[str, ...], extra: dict[str, dict[str, str]]) -> None:
        data_dir = self.data_dir
        if not (data_dir / "pillarbox.toml").exists():
            data_dir.parent.mkdir(parents=True, exist_ok=True)
            try:
                pillarbox_cli(
                    "init",
                    "--dev",
                    "--domain",
                    DOMAIN,
                    "--hostname",
                    f"mail.{DOMAIN}",
                    "--data-dir",
                    str(data_dir),
                )
            except SystemExit as exc:
                # Printing the DNS records is init's last step; a failure there (the tree is
                # edited by several people at once) leaves a usable data dir behind.
                made = all((data_dir / p).exists() for p in ("pillarbox.toml", "tls", "keys"))
                if not made:
                    raise
                print(
                    f"warning: {str(exc).splitlines()[0]} (data dir complete, going on)",
                    file=sys.stderr,
                )
        config_path = data_dir / "pillarbox.toml"
        text = config_path.read_text()
        for name in LISTENERS:
            port = self.ports.get(name)
            text = _set_toml_key(text, "listen", name, f'"127.0.0.1:{port}"' if port else '""')
        text = _set_toml_key(text, "dns", "nameservers", f'["127.0.0.1:{self.dns.port}"]')
        # The idle-connection test opens hundreds of sessions from one address.
        text = _set_toml_key(text, "limits", "max_connections", "5000")
        text = _set_toml_key(text, "limits", "max_connections_per_ip", "5000")
        for table, values in extra.items():
            for key, value in values.items():
                text = _set_toml_key(text, table, key, value)
        config_path.write_text(text)
        present = pillarbox_cli("user", "list", data_dir=data_dir)
        for user in users:
            if user not in present:
                pillarbox_cli(
                    "user",
                    "add",
                    user,
                    "--password-stdin",
                    data_dir=data_dir,
                    stdin=PASSWORD + "\n",
                )

    @property
    def maildir(self) -> Path:
        return self.user_maildir("bench")

    def user_maildir(self, local: str) -> Path:
        """Maildir++ root of a user (INBOX at the root), as pillarbox.store.maildir lays it."""
        return self.data_dir / "mail" / DOMAIN / local

    def start(self, wait_for: str = "smtp", timeout: float = 60.0) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "pillarbox", "--config", str(self.data_dir / "pillarbox.toml"), "serve"],
            cwd=self.repo,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        port = self.ports[wait_for]
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"pillarbox serve exited:\n{self.log_path.read_text()[-3000:]}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", port), 0.5) as s,
            ):
                s.settimeout(5)
                if s.recv(100):
                    return
            time.sleep(0.1)
        raise SystemExit(f"pillarbox did not answer on {wait_for} port {port}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def close(self) -> None:
        self.stop()
        self.dns.stop()


def has_component(name: str) -> bool:
    """Is ``name`` wired into Pillarbox (app._component_factories) in this checkout?"""
    text = (REPO / "pillarbox" / "app.py").read_text()
    body = text.split("def _component_factories", 1)[-1].split("\nclass ", 1)[0]
    return re.search(rf"make_{re.escape(name)}\b|\b{re.escape(name)}\b", body) is not None


# -- Maildir helpers ---------------------------------------------------------------------------


def count_messages(maildir: Path) -> int:
    total = 0
    for sub in ("new", "cur"):
        with contextlib.suppress(FileNotFoundError):
            total += sum(1 for _ in os.scandir(maildir / sub))
    return total


def empty_maildir(maildir: Path) -> None:
    for sub in ("new", "cur", "tmp"):
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(maildir / sub):
                os.unlink(entry.path)


# -- output -------------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.3g}"
    return str(value)


def ratio(ours: float | None, theirs: float | None) -> str:
    if not ours or not theirs:
        return "-"
    return f"{ours / theirs:.2f}x"


@contextlib.contextmanager
def stopwatch() -> Iterator[list[float]]:
    box: list[float] = []
    start = time.perf_counter()
    try:
        yield box
    finally:
        box.append(time.perf_counter() - start)


def machine_summary() -> str:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PHYS_PAGES") * PAGE / 2**30
    return f"{os.cpu_count()} cores ({model}), {mem:.0f} GiB RAM, Python {sys.version.split()[0]}"


# -- profiling ------------------------------------------------------------------------------------


class Profiler:
    """``py-spy record`` on a server pid for the duration of a ``with`` block (if asked for).

    Writes collapsed stacks (``--format raw``, one "frame;frame;... count" line per stack,
    every thread, idle ones included so time blocked in fsync or a lock shows) that
    ``summarize_profile`` turns into the top self-time frames. py-spy is not a project
    dependency: ``pip install py-spy`` anywhere and pass its path.
    """

    def __init__(self, py_spy: str | None, pid: int, output: Path):
        self.py_spy = py_spy
        self.pid = pid
        self.output = output
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Profiler:
        if self.py_spy:
            self.output.parent.mkdir(parents=True, exist_ok=True)
            self.proc = subprocess.Popen(
                [
                    self.py_spy,
                    "record",
                    "--pid",
                    str(self.pid),
                    "--format",
                    "raw",
                    "--threads",
                    *(["--gil"] if os.environ.get("BENCH_PY_SPY_GIL") else ["--idle"]),
                    "--rate",
                    "200",
                    "--output",
                    str(self.output),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(0.5)  # let it attach before the load starts
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


# Leaf frames of a thread that waits for work (py-spy --idle samples them too).
IDLE_LEAVES = (
    "EpollSelector.select",
    "_worker (concurrent/futures/thread.py",
    "MaildirWriter._run",
    "Condition.wait",
    "Event.wait",
    "SimpleQueue.get",
)


def summarize_profile(path: Path, top: int = 20) -> str:
    """Where the busy samples of a raw py-spy profile go.

    Samples whose leaf is a thread waiting for work are dropped; the rest are attributed to
    their deepest Pillarbox frame (so time in a C call like fsync or SSLObject.write lands on
    the Pillarbox line that made it), and also counted by leaf frame.
    """
    by_frame: dict[str, int] = {}
    by_leaf: dict[str, int] = {}
    busy_threads: dict[str, int] = {}
    all_threads: dict[str, int] = {}
    busy = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = frames[0].split(":", 1)[-1].strip()
        all_threads[thread] = all_threads.get(thread, 0) + count
        if any(frames[-1].startswith(idle) for idle in IDLE_LEAVES):
            continue
        busy += count
        busy_threads[thread] = busy_threads.get(thread, 0) + count
        ours = [f for f in frames if "pillarbox/" in f]
        key = ours[-1] if ours else frames[-1]
        by_frame[key] = by_frame.get(key, 0) + count
        by_leaf[frames[-1]] = by_leaf.get(frames[-1], 0) + count
    out = [f"{path}: {busy} busy samples"]
    out.append("-- busy share per thread")
    for thread, count in sorted(all_threads.items(), key=lambda kv: -kv[1]):
        share = busy_threads.get(thread, 0) / count
        out.append(f"{100 * share:5.1f}%  {thread}")
    for title, counts in (("deepest Pillarbox frame", by_frame), ("leaf frame", by_leaf)):
        out.append(f"-- busy samples by {title}")
        for frame, count in sorted(counts.items(), key=lambda kv: -kv[1])[:top]:
            out.append(f"{100 * count / max(busy, 1):5.1f}%  {frame}")
    return "\n".join(out)


def renice(pids: Sequence[int], niceness: int) -> None:
    """Set the nice value of every thread of every process in the trees under ``pids``.

    The machine is shared with test suites; running the servers under test (and the load
    generator) at a higher priority than that background work, both alike, makes the
    figures depend less on what else happens to run. Linux applies nice per thread, so each
    task is set; threads and processes created later inherit it from their creator.
    """
    if niceness == 0:
        return
    for root in pids:
        for pid in process_tree(root):
            with contextlib.suppress(FileNotFoundError):
                for task in os.listdir(f"/proc/{pid}/task"):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.setpriority(os.PRIO_PROCESS, int(task), niceness)
