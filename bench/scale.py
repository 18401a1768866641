"""The load of bench/scale.sh: many vendor connections and recorded sessions through chaperone, from one
asyncssh process. Not a test: it prints what it measured (JSON on stdout, a summary on stderr).

    python scale.py SPEC.json

SPEC: {"host", "port", "known_hosts", "asset", "vendors": [{"name", "key", "secret"}],
       "device": {"port", "user", "key", "known_hosts"}, "pid": chaperone's pid,
       "relay_port", "relay_pid": a bare TCP relay to the device's sshd (bench/relay.rs),
       "connections", "sessions", "burst", "streamers", "echo_samples"}

Phases:
 1. sign in `connections` vendor connections (each vendor key + a fresh TOTP step), a few at a time as
    a fleet of technicians would (the bastion's pre-auth limits count unauthenticated connections);
 2. the baselines: a burst of `burst` sessions on one connection straight to the device's sshd, and one
    over as many fresh logins to it as there are vendors (one grant each: the device connections the
    bastion dials in its spread burst), timed from the burst's start (closed again); then a burst of `burst` sessions on ONE bastion connection at once (OpenSSH ControlMaster's
    pattern), then a burst of `burst` spread over the connections, then the rest up to `sessions`, `burst` at a time: each
    session is an exec that prints "started" and then waits (`cat`), so its start time is the time from
    asking to the first byte from the device; `streamers` of them print 8 KiB a second each instead;
 3. with every session live: chaperone's RSS, and the echo round trip of one byte through chaperone,
    directly to the same sshd, and through the bare relay to it, alternating, `echo_samples` each;
 4. every session is closed; a session is lost if it failed to start, printed nothing, or died early;
 5. every connection but one is closed too, and once chaperone is quiet: the echo again on each side,
    with the CPU and context switches chaperone and the bare relay spend per round trip.
"""

import asyncio
import json
import os
import statistics
import sys
import time

import asyncssh

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "interop"))
from matrix import Codes  # noqa: E402  (the TOTP steps, each used once)

# A streamer prints 8 KiB a second in one write: the bytes of a busy terminal without 100 wakeups a second
# per session, which on 2 cores made 200 perl processes and their sshd children (not the bastion) the
# bottleneck of the whole machine (load average 150, a direct connection would have collapsed the same).
STREAM = "echo started; exec perl -e '$|=1; while (1) { print \"x\" x 8191, \"\\n\"; sleep 1 }'"
IDLE = "echo started; exec cat"


def pct(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    return {k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM")}


def cpu_seconds(pid):
    """User + system CPU time of process `pid` so far, all threads: what the bastion spends, less noisy on a
    shared VM than the wall-clock times around it."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime: fields 14 and 15 of proc_pid_stat(5); after the command name they are at 11 and 12.
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def thread_costs(pid):
    """CPU seconds (to the nanosecond, from schedstat; /proc/PID/stat counts 10 ms ticks) and context
    switches (voluntary and involuntary: each a sleep and a wake-up, which on a VM can cost more than the
    work between them) of each live thread of process `pid` so far, by thread id."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                cpu_ns = int(f.read().split()[0])
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                switches = sum(int(line.split(":", 1)[1]) for line in f if "ctxt_switches:" in line)
        except (OSError, ValueError):
            continue  # the thread ended meanwhile
        out[tid] = (cpu_ns / 1e9, switches)
    return out


def costs_between(before, after):
    """What the threads spent between two `thread_costs` readings: a thread that ended in between (an
    idle tokio blocking thread exits after 10 s) counts for nothing rather than taking its whole past
    off the sum; one that started counts whole."""
    cpu = switches = 0
    for tid, (c, s) in after.items():
        c0, s0 = before.get(tid, (0.0, 0))
        cpu += c - c0
        switches += s - s0
    return cpu, switches


class Costs:
    """CPU seconds and context switches of one process over the timed loops of a measurement (taken
    inside the loop, while the echo session is open)."""

    def __init__(self, pid):
        self.pid, self.cpu, self.switches, self.secs = pid, 0.0, 0, 0.0
        self._at = None

    def start(self):
        self._at = thread_costs(self.pid), time.monotonic()

    def stop(self):
        before, t = self._at
        cpu, switches = costs_between(before, thread_costs(self.pid))
        self.secs += time.monotonic() - t
        self.cpu += cpu
        self.switches += switches


class Session(asyncssh.SSHClientSession):
    def __init__(self):
        self.started = asyncio.get_running_loop().create_future()
        self.bytes = 0
        self.closed = asyncio.get_running_loop().create_future()
        self.echo = None

    def data_received(self, data, datatype):
        self.bytes += len(data)
        if not self.started.done() and b"started" in data:
            self.started.set_result(time.monotonic())
        if self.echo is not None and not self.echo.done():
            self.echo.set_result(time.monotonic())

    def connection_lost(self, exc):
        if not self.closed.done():
            self.closed.set_result(exc)


async def start(conn, command):
    asked = time.monotonic()
    chan, sess = await conn.create_session(Session, command, encoding=None)
    at = await asyncio.wait_for(sess.started, 60)
    return chan, sess, at - asked


async def sign_in(spec, vendor, codes, sem, locks):
    # One sign-in per vendor at a time: the bastion takes a vendor's TOTP steps in increasing order only.
    async with sem, locks[vendor["name"]]:
        code = codes.next()

        class Client(asyncssh.SSHClient):
            def kbdint_auth_requested(self):
                return ""

            def kbdint_challenge_received(self, name, instructions, lang, prompts):
                return [code for _ in prompts]

        return await asyncssh.connect(
            spec["host"], spec["port"], username=f"{vendor['name']}+{spec['asset']}",
            client_keys=[vendor["key"]], known_hosts=spec["known_hosts"],
            preferred_auth="publickey,keyboard-interactive", client_factory=Client,
            agent_path=None, keepalive_interval=0,
        )


async def burst(conns, n, commands, out):
    """Starts n sessions at once over conns (round robin); appends (chan, sess) to out; start times."""
    results = await asyncio.gather(
        *(start(conns[i % len(conns)], commands(i)) for i in range(n)), return_exceptions=True
    )
    times, failed = [], []
    for r in results:
        if isinstance(r, BaseException):
            failed.append(f"{type(r).__name__}: {r}")
        else:
            out.append(r[:2])
            times.append(r[2])
    return times, failed


async def burst_with_logins(spec, logins, n, commands, out):
    """The spread burst's baseline: n sessions at once straight to the device over `logins` connections
    that log in as part of the burst (as the bastion dials one device connection per grant); each start
    time runs from the burst's start, so it includes its connection's login. Appends (chan, sess) to out
    and the connections to out too (closed by the caller)."""
    dev = spec["device"]
    t0 = time.monotonic()

    async def one(j):
        conn = await asyncssh.connect(
            spec["host"], dev["port"], username=dev["user"], client_keys=[dev["key"]],
            known_hosts=dev["known_hosts"], agent_path=None,
        )
        out.append((conn, None))
        count = n // logins + (1 if j < n % logins else 0)

        async def session(i):
            chan, sess = await conn.create_session(Session, commands(i), encoding=None)
            at = await asyncio.wait_for(sess.started, 60)
            out.append((chan, sess))
            return at - t0

        return await asyncio.gather(*(session(i) for i in range(count)), return_exceptions=True)

    results = await asyncio.gather(*(one(j) for j in range(logins)), return_exceptions=True)
    times, failed = [], []
    for r in results:
        for x in (r if isinstance(r, list) else [r]):
            if isinstance(x, BaseException):
                failed.append(f"{type(x).__name__}: {x}")
            else:
                times.append(x)
    return times, failed


async def echo_rtt(conn, samples_out, n, costs=None):
    chan, sess = await conn.create_session(Session, "cat", encoding=None)
    # One keystroke first, untimed: chaperone answers the exec before the device has the session (the
    # input is kept and replayed once it has), so the first echo through chaperone also waits for the
    # device channel, the recording and the exec: session start, measured by the bursts, not echo.
    # sshd answers the exec only once `cat` runs. Counted in, it made every block's first sample
    # through chaperone ~7 ms: the whole of the p99 (5 blocks of 40-60).
    sess.echo = asyncio.get_running_loop().create_future()
    chan.write(b"w")
    await asyncio.wait_for(sess.echo, 10)
    rtts = []
    if costs:
        # What the session's start set off (the watcher's re-read of the store once the audit head moved,
        # the audit tail, the device connection's first keepalive) is not the hop's cost per keystroke.
        await asyncio.sleep(1.5)
        costs.start()
    for _ in range(n):
        sess.echo = asyncio.get_running_loop().create_future()
        t0 = time.monotonic()
        chan.write(b"k")
        t1 = await asyncio.wait_for(sess.echo, 10)
        rtts.append(t1 - t0)
        await asyncio.sleep(0.02)
    if costs:
        costs.stop()
    chan.close()
    samples_out.extend(rtts)


async def main():
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    report = {}
    # (No directory or run: the load answers the prompt itself, with no askpass script to write.)
    codes = {v["name"]: Codes({"dir": None}, None, v["secret"]) for v in spec["vendors"]}
    vendors = spec["vendors"]

    t0 = time.monotonic()
    sem = asyncio.Semaphore(6)
    locks = {v["name"]: asyncio.Lock() for v in vendors}
    conns = await asyncio.gather(
        *(sign_in(spec, vendors[i % len(vendors)], codes[vendors[i % len(vendors)]["name"]], sem, locks)
          for i in range(spec["connections"]))
    )
    report["connections"] = len(conns)
    report["sign_in_seconds"] = round(time.monotonic() - t0, 1)
    print(f"signed in {len(conns)} connections in {report['sign_in_seconds']} s", file=sys.stderr)

    live, lost = [], []
    streamers = spec["streamers"]
    made = 0

    def commands(i):
        nonlocal made
        made += 1
        return STREAM if made <= streamers else IDLE

    # The baseline: the same burst on one connection straight to the device's sshd (no bastion), closed
    # again before the bastion's bursts.
    dev = spec["device"]
    direct = await asyncssh.connect(
        spec["host"], dev["port"], username=dev["user"], client_keys=[dev["key"]],
        known_hosts=dev["known_hosts"], agent_path=None,
    )
    base = []
    k = 0

    def direct_commands(i):
        nonlocal k
        k += 1
        return STREAM if k <= streamers else IDLE

    times, failed = await burst([direct], spec["burst"], direct_commands, base)
    report["burst_direct"] = {"n": spec["burst"], "p50": pct(times, 50), "p99": pct(times, 99), "max": max(times, default=None), "failed": len(failed)}
    print(f"burst of {spec['burst']} on one connection straight to sshd: p50 {pct(times, 50):.3f} s, p99 {pct(times, 99):.3f} s, failed {len(failed)}", file=sys.stderr)
    for chan, _ in base:
        chan.close()
    await asyncio.sleep(2)
    # The spread burst's baseline: as many fresh logins to sshd as the bastion will dial (one per grant).
    logins = min(len(vendors), spec["burst"])
    base = []
    k = 0
    times, failed = await burst_with_logins(spec, logins, spec["burst"], direct_commands, base)
    report["burst_direct_logins"] = {"n": spec["burst"], "logins": logins, "p50": pct(times, 50), "p99": pct(times, 99), "max": max(times, default=None), "failed": len(failed)}
    print(f"burst of {spec['burst']} over {logins} fresh logins straight to sshd: p50 {pct(times, 50):.3f} s, p99 {pct(times, 99):.3f} s, failed {len(failed)}", file=sys.stderr)
    for c, _ in base:
        c.close()
    await asyncio.sleep(2)

    # A burst on one connection (the ControlMaster pattern), then one spread over all connections.
    cpu = cpu_seconds(spec["pid"])
    one, failed = await burst([conns[0]], spec["burst"], commands, live)
    cpu = cpu_seconds(spec["pid"]) - cpu
    lost += failed
    report["burst_one_connection"] = {"n": spec["burst"], "p50": pct(one, 50), "p99": pct(one, 99), "max": max(one, default=None), "failed": len(failed),
                                      "cpu_ms_per_session": cpu * 1000 / spec["burst"]}
    print(f"burst of {spec['burst']} on one connection: p50 {pct(one, 50):.3f} s, p99 {pct(one, 99):.3f} s, failed {len(failed)}", file=sys.stderr)
    cpu = cpu_seconds(spec["pid"])
    spread, failed = await burst(conns[1:], spec["burst"], commands, live)
    cpu = cpu_seconds(spec["pid"]) - cpu
    lost += failed
    report["burst_spread"] = {"n": spec["burst"], "p50": pct(spread, 50), "p99": pct(spread, 99), "max": max(spread, default=None), "failed": len(failed),
                              "cpu_ms_per_session": cpu * 1000 / spec["burst"]}
    print(f"burst of {spec['burst']} over {len(conns) - 1} connections: p50 {pct(spread, 50):.3f} s, p99 {pct(spread, 99):.3f} s, failed {len(failed)}", file=sys.stderr)
    rest = []
    while len(live) + len(lost) < spec["sessions"]:
        n = min(spec["burst"], spec["sessions"] - len(live) - len(lost))
        times, failed = await burst(conns, n, commands, live)
        rest += times
        lost += failed
    report["sessions_live"] = len(live)
    report["start_all"] = {"p50": pct(one + spread + rest, 50), "p99": pct(one + spread + rest, 99)}
    await asyncio.sleep(2)
    report["rss_mib_at_peak"] = rss_mib(spec["pid"])
    print(f"{len(live)} sessions live over {len(conns)} connections; chaperone RSS {report['rss_mib_at_peak']['VmRSS']:.0f} MiB", file=sys.stderr)

    # Echo round trip under load, through chaperone and directly, alternating in blocks.
    # The third side: the same sshd through a bare TCP relay (bench/relay.rs), what a second hop costs
    # before any work is done on it.
    relay = await asyncssh.connect(
        spec["host"], spec["relay_port"], username=dev["user"], client_keys=[dev["key"]],
        known_hosts=dev["known_hosts"], agent_path=None,
    )
    via, straight, relayed = [], [], []
    cpu = took = 0.0
    for _ in range(5):
        # How busy the bastion is meanwhile (the streamers' output and the echo), in cores.
        before, t0 = cpu_seconds(spec["pid"]), time.monotonic()
        await echo_rtt(conns[-1], via, spec["echo_samples"] // 5)
        cpu += cpu_seconds(spec["pid"]) - before
        took += time.monotonic() - t0
        await echo_rtt(direct, straight, spec["echo_samples"] // 5)
        await echo_rtt(relay, relayed, spec["echo_samples"] // 5)
    report["echo_ms"] = {
        "chaperone": {"p50": pct(via, 50) * 1000, "p99": pct(via, 99) * 1000},
        "direct": {"p50": pct(straight, 50) * 1000, "p99": pct(straight, 99) * 1000},
        "relay": {"p50": pct(relayed, 50) * 1000, "p99": pct(relayed, 99) * 1000},
    }
    report["echo_chaperone_cores"] = cpu / took if took else None
    report["echo_ratio"] = {
        "p50": pct(via, 50) / pct(straight, 50),
        "p99": pct(via, 99) / pct(straight, 99),
        "relay_p50": pct(relayed, 50) / pct(straight, 50),
        "relay_p99": pct(relayed, 99) / pct(straight, 99),
    }
    e = report["echo_ms"]
    print(
        f"echo under load: chaperone p50 {e['chaperone']['p50']:.2f} ms p99 {e['chaperone']['p99']:.2f} ms; "
        f"direct p50 {e['direct']['p50']:.2f} ms p99 {e['direct']['p99']:.2f} ms; "
        f"ratio p50 {report['echo_ratio']['p50']:.2f} p99 {report['echo_ratio']['p99']:.2f}",
        file=sys.stderr,
    )

    # Every session is still there (none died under load), then all are closed.
    died = [s for _, s in live if s.closed.done()]
    lost += [f"ended early: {s.closed.result()}" for s in died]
    for chan, _ in live:
        chan.close()

    # The hop's own cost, with nothing else live (the streamers' output comes in bursts once a second, too
    # uneven to take off blocks of a few ms): echo through chaperone, then through the bare relay, and the
    # CPU and context switches each process spent per round trip (chaperone's idle background, measured
    # over the direct blocks it is not on, taken off).
    for conn in conns[:-1]:
        conn.close()
    # Once the ends are written and the indexer (nice 19) has read the closed recordings: until chaperone
    # spends under 2 % of a core and 50 context switches a second over a second, or 120 s. Its background
    # is taken off below, so it must not be winding down meanwhile.
    quiet_from = time.monotonic()
    for _ in range(120):
        before, t = thread_costs(spec["pid"]), time.monotonic()
        await asyncio.sleep(1)
        (cpu, switches), dt = costs_between(before, thread_costs(spec["pid"])), time.monotonic() - t
        if cpu < 0.02 * dt and switches < 50 * dt:
            break
    waited = time.monotonic() - quiet_from
    idle_via, idle_straight, idle_relayed = [], [], []
    chap_via, chap_idle, relay_own = Costs(spec["pid"]), Costs(spec["pid"]), Costs(spec["relay_pid"])
    for _ in range(5):
        # Each block after the last one's session has ended (its end is written, its recorder gone).
        for conn, out, costs in ((conns[-1], idle_via, chap_via), (direct, idle_straight, chap_idle),
                                 (relay, idle_relayed, relay_own)):
            await asyncio.sleep(0.3)
            await echo_rtt(conn, out, 100, costs=costs)
    direct.close()
    relay.close()
    conns[-1].close()
    trips = 5 * 100  # counted over the timed keystrokes only
    background = chap_idle.cpu / chap_idle.secs, chap_idle.switches / chap_idle.secs
    report["echo_idle"] = {
        "p50_ms": {"chaperone": pct(idle_via, 50) * 1000, "direct": pct(idle_straight, 50) * 1000, "relay": pct(idle_relayed, 50) * 1000},
        "chaperone_cpu_us": 1e6 * (chap_via.cpu - background[0] * chap_via.secs) / trips,
        "chaperone_switches": (chap_via.switches - background[1] * chap_via.secs) / trips,
        "relay_cpu_us": 1e6 * relay_own.cpu / trips,
        "relay_switches": relay_own.switches / trips,
        # chaperone's background over the direct blocks, and how long it took to get quiet: a figure
        # with a background of the same order as the echo's own cost is noise, not a measurement.
        "background_cpu_pct": 100 * background[0], "background_switches_per_s": background[1],
        "quiet_after_s": waited,
    }
    await asyncio.gather(*(c.wait_closed() for c in conns), return_exceptions=True)
    report["rss_mib_end"] = rss_mib(spec["pid"])
    report["lost"] = len(lost)
    report["lost_examples"] = lost[:5]
    print(f"sessions lost: {len(lost)} {lost[:3]}", file=sys.stderr)
    print(json.dumps(report))


if __name__ == "__main__":
    asyncio.run(main())
