"""A device that is not a polite sshd, for tests/it/hostile.rs.

It lets the bastion sign in (any key, any user), and when a command is run it first opens, toward the
bastion, a channel of every type a server can open (and one nobody defined), then prints one JSON line
saying what became of each: the bastion must refuse them all and keep the session. Then it sends what
no client would show: extended data of code 2 ("HIDDEN-EXT"), an exit signal with a 1,000-character
message and an escape sequence, an exit status 4, and exits 0.

    python device.py DIR [stall|rekey|terms]

Writes DIR/host_key.pub (the key to pin), DIR/client_key (a key for the bastion to sign in with) and,
once listening, DIR/port. With `stall`, it is no SSH server at all: it sends its version line and then
nothing, and writes DIR/closed (the seconds until the bastion closed the connection) when it does.
With `rekey`, a command prints a line every 0.3 s for 3 s, then "survived", while the device starts
a key exchange every 0.2 s. With `terms`, each session appends to DIR/terms one JSON line of what it
was asked for (command, subsystem, terminal type) and exits 0.
"""

import asyncio
import json
import os
import sys

import asyncssh
from asyncssh.channel import SSHChannel
from asyncssh.constants import MSG_CHANNEL_EXTENDED_DATA, MSG_CHANNEL_REQUEST
from asyncssh.packet import Boolean, String, UInt32

TYPES = [
    ("session", []),
    ("direct-tcpip", [String("127.0.0.1"), UInt32(22), String("127.0.0.1"), UInt32(5000)]),
    ("forwarded-tcpip", [String("127.0.0.1"), UInt32(8080), String("127.0.0.1"), UInt32(5000)]),
    ("x11", [String("127.0.0.1"), UInt32(6010)]),
    ("auth-agent@openssh.com", []),
    ("forwarded-streamlocal@openssh.com", [String("/run/x.sock"), String("")]),
    ("made-up@example.com", [String("anything")]),
]


class Device(asyncssh.SSHServer):
    def begin_auth(self, username):
        return True

    def public_key_auth_supported(self):
        return True

    def validate_public_key(self, username, key):
        return True


async def run(process):
    conn = process.channel.get_connection()
    loop = asyncio.get_running_loop()
    results = {}
    for kind, args in TYPES:
        chan = SSHChannel(conn, loop, None, "strict", 2**20, 32768)
        try:
            await asyncio.wait_for(chan._open(kind.encode(), *args), 10)
            results[kind] = "opened"
            chan.close()
        except asyncssh.ChannelOpenError as e:
            results[kind] = f"refused {e.code}"
        except asyncio.TimeoutError:
            results[kind] = "no answer"
    process.stdout.write(json.dumps(results, sort_keys=True) + "\n")
    channel = process.channel
    channel.send_packet(MSG_CHANNEL_EXTENDED_DATA, UInt32(2), String(b"HIDDEN-EXT\n"))
    channel.send_packet(
        MSG_CHANNEL_REQUEST,
        String("exit-signal"),
        Boolean(False),
        String("TERM"),
        Boolean(False),
        String("x" * 1000 + "\x1b[2J"),
        String("en"),
    )
    channel.send_packet(MSG_CHANNEL_REQUEST, String("exit-status"), Boolean(False), UInt32(4))
    await asyncio.sleep(0.2)
    process.exit(0)


async def stall(directory):
    async def on_connect(reader, writer):
        started = asyncio.get_running_loop().time()
        writer.write(b"SSH-2.0-OpenSSH_9.2p1 stall\r\n")
        await writer.drain()
        while await reader.read(65536):
            pass
        elapsed = asyncio.get_running_loop().time() - started
        with open(os.path.join(directory, "closed"), "w") as f:
            f.write(f"{elapsed:.1f}")
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    await announce(directory, server.sockets[0].getsockname()[1])
    await asyncio.Event().wait()


async def announce(directory, port):
    tmp = os.path.join(directory, "port.tmp")
    with open(tmp, "w") as f:
        f.write(str(port))
    os.rename(tmp, os.path.join(directory, "port"))


async def tick(process):
    for i in range(10):
        process.stdout.write(f"tick {i}\n")
        await asyncio.sleep(0.3)
    process.stdout.write("survived\n")
    process.exit(0)


def terms(directory):
    """A process factory and an SFTP server class that write down what each session asked for."""

    def write(command, subsystem, term):
        seen = {"command": command, "subsystem": subsystem, "term": term}
        with open(os.path.join(directory, "terms"), "a") as f:
            f.write(json.dumps(seen) + "\n")

    async def process(process):
        write(process.command, process.subsystem, process.term_type)
        process.exit(0)

    class Sftp(asyncssh.SFTPServer):
        def __init__(self, chan):
            write(None, "sftp", chan.get_terminal_type())
            super().__init__(chan)

    return process, Sftp


async def main(directory, mode=None):
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    host_key.write_public_key(os.path.join(directory, "host_key.pub"))
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(
        os.path.join(directory, "client_key")
    )
    options = {"rekey_seconds": 0.2} if mode == "rekey" else {}
    factory = {"rekey": tick}.get(mode, run)
    if mode == "terms":
        factory, options["sftp_factory"] = terms(directory)
    server = await asyncssh.create_server(
        Device,
        "127.0.0.1",
        0,
        server_host_keys=[host_key],
        process_factory=factory,
        **options,
    )
    await announce(directory, server.sockets[0].getsockname()[1])
    await asyncio.Event().wait()


if __name__ == "__main__":
    if sys.argv[2:] == ["stall"]:
        asyncio.run(stall(sys.argv[1]))
    else:
        asyncio.run(main(sys.argv[1], *sys.argv[2:3]))
