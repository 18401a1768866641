"""A vendor client that is not OpenSSH, for the tests in tests/it/hostile.rs.

It signs in with asyncssh (key, then the TOTP code at the keyboard-interactive prompt) and then takes
commands, one JSON object per line on stdin, answering one JSON object per line on stdout. It does what
OpenSSH never does: opens session channels and sends their request much later, pipelines SFTP requests
without waiting, sends malformed SFTP packets.

    python client.py HOST PORT USER KEYFILE CODE
    (CHAPERONE_CLIENT_REKEY=S in the environment: re-key whenever S seconds passed)

Ops (each answer carries the op's "id" when it had one):
    {"op": "open", "id": "a"}                 open a session channel, send nothing -> {"event": "opened"}
    {"op": "exec", "id": "a", "command": "…"} send exec on channel a now, wait for its end
                                              -> {"event": "exec", "stdout", "stderr", "exit"}
    {"op": "run", "command": "…", "env": {…}} a new channel with exec at once, after an env request
                                              ("term": "…" and "modes": {"53": 0}: a pty request first)
                                              for each variable given (optional) -> like exec
    {"op": "tunnel", "host": "…", "port": N}  direct-tcpip, send a line, read a line -> {"event": "tunnel"}
    {"op": "tunnel-send-close", "host": "…", "port": N, "data": "…"}
                                              direct-tcpip, send data and close at once -> {"event": "sent"}
    {"op": "tunnel-flood", "host": "…", "port": N, "bytes": N}
                                              direct-tcpip, then N bytes written to it at once (sent as
                                              the window allows) -> {"event": "flooding"}
    {"op": "sftp-flood", "n": 5000, "upload": "/path", "last": "/victim"}
                                              sftp subsystem: INIT, an upload to /path answered step
                                              by step, then n REMOVEs of nothing without waiting for
                                              answers, then a REMOVE of /victim
    {"op": "sftp-malformed"}                  sftp subsystem, INIT, then a packet declaring 2 GiB
    {"op": "double-exec", "first": "…", "second": "…"}
                                              a second exec request on a channel already started
    {"op": "stall", "id": "s", "command": "…"} exec, then stop reading its output (no more window for it)
                                              -> {"event": "stalled"}
    {"op": "write", "id": "s", "data": "…"}     write to a stalled session's stdin -> {"event": "written"}
    {"op": "exec-raw", "command": "…", "steps": ["…", …]}
                                              exec; write each step once one more byte of output
                                              came (an SCP sink's answers), then EOF -> like exec
    {"op": "open-type", "type": "x11", "args": ["127.0.0.1", 6010]}
                                              a CHANNEL_OPEN of any type (strings and numbers after
                                              the window and packet size, as given)
                                              -> {"event": "refused", "code", "reason"} or "opened"
    {"op": "oversized-data", "bytes": N}      a session channel running `cat`, then one CHANNEL_DATA of
                                              N bytes, whatever the maximum packet size the bastion
                                              gave -> {"event": "sent"}
    {"op": "wait-closed", "timeout": S}       -> {"event": "closed", "after": seconds} or "still-open"
    {"op": "jump", "host": "…", "user": "…", "sessions": N}   ProxyJump's inner connection to host:22,
                                              N sessions running `sleep 30` opened inside it
                                              -> {"event": "jumped", "opened": K, "errors": [...]}
    {"op": "signal", "command": "…", "signal": "INT"}   exec, send the signal after 1 s, wait for the end
                                              -> {"event": "exec", ...}
    {"op": "flood-stdin", "id": "f", "command": "…", "bytes": N, "chunk": C}
                                              exec, then N bytes written to its stdin at once (the
                                              client sends them as the window allows; with C, in
                                              packets of C bytes) -> {"event": "flooding"}
    {"op": "close", "id": "f"}                a CHANNEL_CLOSE on a flooding session's channel at once
                                              (asyncssh's close() waits for its unsent data first)
                                              -> {"event": "closed-channel"}
    {"op": "run-within", "command": "…", "timeout": S}
                                              like "run", but the whole of it (the channel's open
                                              included) within S seconds, else {"event": "timeout"}
    {"op": "data-after-eof", "command": "…", "before": "…", "after": "…"}
                                              exec; `before` on stdin, EOF, then a CHANNEL_DATA with
                                              `after` (which no client may send past its EOF) -> like exec
    {"op": "stop-reading", "n": N, "command": "…"}
                                              N sessions running the command; once each has sent
                                              output, the connection's socket is no longer read at all
                                              (a hung or suspended ssh) -> {"event": "stopped-reading"}
    {"op": "hang-up"}                         drop the connection without closing anything (the driver ends)
    {"op": "quit"}
Failures are answered as {"event": "error", "error": "…"}.
"""

import asyncio
import fcntl
import json
import logging
import os
import socket
import struct
import sys
import termios
import time

import asyncssh
from asyncssh.channel import SSHClientChannel
from asyncssh.constants import MSG_CHANNEL_CLOSE, MSG_CHANNEL_DATA
from asyncssh.packet import String, UInt32

# Holding a session channel open between its CHANNEL_OPEN and its first request: a task that carries a
# gate waits on it right after the open is confirmed, and its exec carries the command given later.
_original_open = SSHClientChannel._open
_original_make_request = SSHClientChannel._make_request


async def _held_open(self, chantype, *args):
    packet = await _original_open(self, chantype, *args)
    gate = getattr(asyncio.current_task(), "chaperone_gate", None)
    if chantype == b"session" and gate is not None:
        self._chaperone_gate = gate
        gate["opened"].set()
        await gate["go"].wait()
    return packet


async def _late_make_request(self, request, *args):
    gate = getattr(self, "_chaperone_gate", None)
    if gate is not None and request == b"exec" and gate.get("command") is not None:
        args = (String(gate["command"]),)
    return await _original_make_request(self, request, *args)


SSHClientChannel._open = _held_open
SSHClientChannel._make_request = _late_make_request


def say(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class Collect(asyncssh.SSHClientSession):
    def __init__(self):
        self.out = []
        self.err = []

    def data_received(self, data, datatype):
        (self.err if datatype == asyncssh.EXTENDED_DATA_STDERR else self.out).append(data)


class Client(asyncssh.SSHClient):
    def __init__(self, code):
        self.code = code

    def kbdint_auth_requested(self):
        return ""

    def kbdint_challenge_received(self, name, instructions, lang, prompts):
        return [self.code for _ in prompts]


async def session(conn, command, gate=None, subsystem=None, env=None, term=None, modes=None):
    """One session channel; its exec may wait for a gate. Returns its output and exit status."""
    if gate is not None:
        asyncio.current_task().chaperone_gate = gate
    pty = {}
    if term is not None:
        pty = {"term_type": term, "term_modes": {int(k): v for k, v in (modes or {}).items()}}
    chan, sess = await conn.create_session(
        Collect, command, subsystem=subsystem, encoding=None, env=env or (), **pty
    )
    try:
        await asyncio.wait_for(chan.wait_closed(), 30)
    except asyncio.TimeoutError:
        chan.close()
    return {
        "stdout": b"".join(sess.out).decode(errors="replace"),
        "stderr": b"".join(sess.err).decode(errors="replace"),
        "exit": chan.get_exit_status(),
    }


def sftp_packet(kind, body):
    return struct.pack(">IB", len(body) + 1, kind) + body


def sftp_string(b):
    return struct.pack(">I", len(b)) + b


class RawSftp(asyncssh.SSHClientSession):
    """An sftp subsystem channel spoken byte by byte: requests in, whole reply packets out."""

    def __init__(self):
        self.err = []
        self.buf = b""
        self.packets = asyncio.Queue()

    def data_received(self, data, datatype):
        if datatype == asyncssh.EXTENDED_DATA_STDERR:
            self.err.append(data)
            return
        self.buf += data
        while len(self.buf) >= 4:
            (n,) = struct.unpack(">I", self.buf[:4])
            if len(self.buf) < 4 + n:
                break
            self.packets.put_nowait(self.buf[4 : 4 + n])
            self.buf = self.buf[4 + n :]

    async def reply(self):
        return await asyncio.wait_for(self.packets.get(), 10)


async def sftp_raw(conn, upload, payload, wait=15):
    """An sftp channel: INIT; an upload of `upload` (if given) answered step by step; then `payload`
    without waiting. Reports how the channel ended."""
    chan, sess = await conn.create_session(RawSftp, subsystem="sftp", encoding=None)
    chan.write(sftp_packet(1, struct.pack(">I", 3)))
    await sess.reply()  # VERSION
    if upload:
        # OPEN (WRITE|CREAT|TRUNC), WRITE, CLOSE, each answered before the next.
        chan.write(sftp_packet(3, struct.pack(">I", 1) + sftp_string(upload.encode())
                               + struct.pack(">II", 0x02 | 0x08 | 0x10, 0)))
        handle_reply = await sess.reply()
        if handle_reply[0] != 102:
            raise RuntimeError(f"OPEN refused: {handle_reply!r}")
        handle = handle_reply[5 + 4 :]
        chan.write(sftp_packet(6, struct.pack(">I", 2) + sftp_string(handle)
                               + struct.pack(">Q", 0) + sftp_string(b"x" * 1000)))
        await sess.reply()
        chan.write(sftp_packet(4, struct.pack(">I", 3) + sftp_string(handle)))
        await sess.reply()
    started = time.monotonic()
    chan.write(payload)
    closed = True
    try:
        await asyncio.wait_for(chan.wait_closed(), wait)
    except asyncio.TimeoutError:
        closed = False
        chan.close()
    return {
        "closed_by_server": closed,
        "after": round(time.monotonic() - started, 2),
        "stderr": b"".join(sess.err).decode(errors="replace"),
        "exit": chan.get_exit_status(),
    }


async def main():
    host, port, user, keyfile, code = sys.argv[1:6]
    if os.environ.get("CHAPERONE_CLIENT_DEBUG"):
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
        asyncssh.set_debug_level(2)
    conn = await asyncssh.connect(
        host,
        int(port),
        username=user,
        client_keys=[keyfile],
        known_hosts=None,
        preferred_auth="publickey,keyboard-interactive",
        client_factory=lambda: Client(code),
        agent_path=None,
        # CHAPERONE_CLIENT_REKEY=S: start a key exchange whenever S seconds passed since the last (at
        # the next packet sent: keepalives every S seconds make sure there is one).
        **(
            {
                "rekey_seconds": float(os.environ["CHAPERONE_CLIENT_REKEY"]),
                "keepalive_interval": float(os.environ["CHAPERONE_CLIENT_REKEY"]),
            }
            if os.environ.get("CHAPERONE_CLIENT_REKEY")
            else {"keepalive_interval": 0}
        ),
    )
    say({"event": "connected"})
    gates = {}
    tasks = {}
    held = []
    reader = asyncio.StreamReader(limit=64 * 1024 * 1024)
    await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    while True:
        line = await reader.readline()
        if not line:
            break
        req = json.loads(line)
        op, rid = req["op"], req.get("id")
        try:
            if op == "open":
                gate = {"opened": asyncio.Event(), "go": asyncio.Event(), "command": None}
                gates[rid] = gate
                # The command is set when "exec" comes; create_session needs one to send exec.
                tasks[rid] = asyncio.create_task(session(conn, "placeholder", gate))
                done, _ = await asyncio.wait(
                    [tasks[rid], asyncio.create_task(gate["opened"].wait())],
                    timeout=10,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if gate["opened"].is_set():
                    say({"event": "opened", "id": rid})
                elif tasks[rid].done():
                    say({"event": "error", "id": rid, "error": repr(tasks[rid].exception())})
                else:
                    say({"event": "error", "id": rid, "error": "open timed out"})
            elif op == "open-type":
                chan = SSHClientChannel(
                    conn, asyncio.get_running_loop(), "strict", None, "strict", 2**20, 32768
                )
                args = [String(a) if isinstance(a, str) else UInt32(a) for a in req.get("args", [])]
                try:
                    await asyncio.wait_for(chan._open(req["type"].encode(), *args), 10)
                    say({"event": "opened", "id": rid})
                except asyncssh.ChannelOpenError as e:
                    say({"event": "refused", "id": rid, "code": e.code, "reason": e.reason})
            elif op == "oversized-data":
                chan, _ = await conn.create_session(asyncssh.SSHClientSession, "cat")
                chan.send_packet(MSG_CHANNEL_DATA, String(b"x" * int(req["bytes"])))
                say({"event": "sent", "id": rid})
            elif op == "exec":
                gate = gates[rid]
                gate["command"] = req["command"]
                gate["go"].set()
                result = await tasks[rid]
                say({"event": "exec", "id": rid, **result})
            elif op == "run":
                result = await session(
                    conn,
                    req["command"],
                    env=req.get("env"),
                    term=req.get("term"),
                    modes=req.get("modes"),
                )
                say({"event": "exec", "id": rid, **result})
            elif op == "tunnel":
                reader_, writer = await conn.open_connection(req["host"], int(req["port"]))
                writer.write(b"ping\n")
                answer = await asyncio.wait_for(reader_.readline(), 10)
                writer.close()
                say({"event": "tunnel", "id": rid, "answer": answer.decode(errors="replace")})
            elif op == "tunnel-flood":
                reader_, writer = await conn.open_connection(req["host"], int(req["port"]))
                writer.write(b"\0" * int(req["bytes"]))
                held.append((reader_, writer))
                say({"event": "flooding", "id": rid})
            elif op == "tunnel-send-close":
                # DATA, EOF and CLOSE at once (paramiko's sendall then close, Go's Write then Close).
                reader_, writer = await conn.open_connection(req["host"], int(req["port"]))
                writer.write(req["data"].encode())
                writer.close()
                say({"event": "sent", "id": rid})
            elif op == "sftp-flood":
                n = int(req["n"])
                # REMOVEs are logged operations: a flood of them in flight is what would hide one
                # that matters from a log that gave up tracking.
                removes = b"".join(
                    sftp_packet(13, struct.pack(">I", 100 + i)
                                + sftp_string(f"/nonexistent-chaperone/{i}".encode()))
                    for i in range(n)
                )
                if req.get("last"):
                    # The one that matters, behind the flood.
                    removes += sftp_packet(13, struct.pack(">I", 99) + sftp_string(req["last"].encode()))
                result = await sftp_raw(conn, req.get("upload"), removes)
                say({"event": "sftp", "id": rid, **result})
            elif op == "sftp-malformed":
                hostile = struct.pack(">IB", 0x80000000, 3) + b"\x00" * 16
                say({"event": "sftp", "id": rid, **(await sftp_raw(conn, None, hostile))})
            elif op == "double-exec":
                # A second exec on a channel whose first one is running.
                chan, sess = await conn.create_session(Collect, req["first"], encoding=None)
                second = await chan._make_request(b"exec", String(req["second"]))
                await asyncio.wait_for(chan.wait_closed(), 30)
                say({
                    "event": "double",
                    "id": rid,
                    "second_accepted": bool(second),
                    "stdout": b"".join(sess.out).decode(errors="replace"),
                    "exit": chan.get_exit_status(),
                })
            elif op == "stall":
                chan, sess = await conn.create_session(Collect, req["command"], encoding=None)
                # Nothing more is read, so no window is given back: the server's writes toward us block.
                chan.pause_reading()
                tasks[rid] = (chan, sess)
                say({"event": "stalled", "id": rid})
            elif op == "write":
                chan, _ = tasks[rid]
                try:
                    chan.write(req["data"].encode())
                    say({"event": "written", "id": rid})
                except Exception as e:
                    say({"event": "write-failed", "id": rid, "error": f"{type(e).__name__}: {e}"})
            elif op == "wait-closed":
                started = time.monotonic()
                try:
                    await asyncio.wait_for(conn.wait_closed(), float(req["timeout"]))
                    say({"event": "closed", "id": rid, "after": round(time.monotonic() - started, 2)})
                except asyncio.TimeoutError:
                    say({"event": "still-open", "id": rid})
            elif op == "close-all-and-reset":
                # n sessions streaming output; once each has printed, every channel is closed, and as
                # soon as the closes have reached the bastion the connection is reset (SO_LINGER 0),
                # with output still coming: the bastion's next write fails with the closes unread.
                opened = []
                for _ in range(int(req["n"])):
                    opened.append(await conn.create_session(Collect, req["command"], encoding=None))
                while not all(sess.out for _, sess in opened):
                    await asyncio.sleep(0.05)
                transport = conn._transport
                for chan, _ in opened:
                    chan.close()
                while transport.get_write_buffer_size():
                    await asyncio.sleep(0)
                sock = transport.get_extra_info("socket")
                # ...and left this kernel too: a reset discards what it has not yet sent.
                while struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]:
                    await asyncio.sleep(0.001)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                transport.abort()
                say({"event": "reset", "id": rid, "sessions": len(opened)})
                return
            elif op == "exec-raw":
                # An exec whose stdin gets each of "steps" after one more byte of stdout came (the
                # answer SCP's sink gives each step), then EOF; collects what comes back until the
                # channel closes.
                chan, sess = await conn.create_session(Collect, req["command"], encoding=None)
                for n, step in enumerate(req["steps"], start=1):
                    deadline = time.monotonic() + 10
                    while len(b"".join(sess.out)) < n and time.monotonic() < deadline:
                        await asyncio.sleep(0.01)
                    chan.write(step.encode())
                chan.write_eof()
                try:
                    await asyncio.wait_for(chan.wait_closed(), 30)
                except asyncio.TimeoutError:
                    chan.close()
                say({
                    "event": "exec",
                    "id": rid,
                    "stdout": b"".join(sess.out).decode(errors="replace"),
                    "stderr": b"".join(sess.err).decode(errors="replace"),
                    "exit": chan.get_exit_status(),
                })
            elif op == "jump":
                inner = await asyncssh.connect(
                    req["host"], 22, tunnel=conn, username=req["user"], client_keys=[keyfile],
                    known_hosts=None, agent_path=None,
                )
                held.append(inner)
                opened, errors = 0, []
                for _ in range(int(req["sessions"])):
                    try:
                        chan, _sess = await asyncio.wait_for(
                            inner.create_session(Collect, "sleep 30"), 10
                        )
                        held.append(chan)
                        opened += 1
                    except (asyncssh.Error, asyncio.TimeoutError) as e:
                        errors.append(str(e))
                say({"event": "jumped", "opened": opened, "errors": errors})
            elif op == "signal":
                chan, sess = await conn.create_session(Collect, req["command"], encoding=None)
                await asyncio.sleep(1)
                chan.send_signal(req["signal"])
                try:
                    await asyncio.wait_for(chan.wait_closed(), 30)
                except asyncio.TimeoutError:
                    chan.close()
                say({"event": "exec", "stdout": b"".join(sess.out).decode(errors="replace"),
                     "exit": chan.get_exit_status(), "signal": chan.get_exit_signal()})
            elif op == "flood-stdin":
                chan, sess = await conn.create_session(Collect, req["command"], encoding=None)
                total, chunk = int(req["bytes"]), int(req.get("chunk", 0))
                if chunk:
                    # One write per chunk: each goes as a packet of its own while the window allows.
                    for _ in range(total // chunk):
                        chan.write(b"\0" * chunk)
                else:
                    chan.write(b"\0" * total)
                tasks[rid] = (chan, sess)
                say({"event": "flooding", "id": rid})
            elif op == "close":
                chan, _ = tasks[rid]
                chan.send_packet(MSG_CHANNEL_CLOSE)
                say({"event": "closed-channel", "id": rid})
            elif op == "run-within":
                try:
                    result = await asyncio.wait_for(session(conn, req["command"]), float(req["timeout"]))
                    say({"event": "exec", "id": rid, **result})
                except asyncio.TimeoutError:
                    say({"event": "timeout", "id": rid})
            elif op == "data-after-eof":
                chan, sess = await conn.create_session(Collect, req["command"], encoding=None)
                chan.write(req["before"].encode())
                chan.write_eof()
                # asyncssh writes nothing after EOF: the packet is sent as it is.
                chan.send_packet(MSG_CHANNEL_DATA, String(req["after"].encode()))
                try:
                    await asyncio.wait_for(chan.wait_closed(), 15)
                except asyncio.TimeoutError:
                    chan.close()
                say({"event": "exec", "id": rid, "stdout": b"".join(sess.out).decode(errors="replace"),
                     "exit": chan.get_exit_status()})
            elif op == "stop-reading":
                opened = []
                for _ in range(int(req["n"])):
                    opened.append(await conn.create_session(Collect, req["command"], encoding=None))
                while not all(sess.out for _, sess in opened):
                    await asyncio.sleep(0.05)
                # The socket is left unread: this kernel's buffer fills, then the bastion's, and its
                # writes wait. Nothing is sent either (no window to give back without reading).
                conn._transport.pause_reading()
                say({"event": "stopped-reading", "id": rid, "sessions": len(opened)})
            elif op == "hang-up":
                conn._transport.abort()
                say({"event": "hung-up", "id": rid})
                return
            elif op == "quit":
                break
            else:
                say({"event": "error", "id": rid, "error": f"unknown op {op}"})
        except Exception as e:  # the test reads the failure, the driver goes on
            say({"event": "error", "id": rid, "error": f"{type(e).__name__}: {e}"})
    conn.close()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except Exception as e:
        say({"event": "error", "error": f"{type(e).__name__}: {e}"})
        sys.exit(1)
