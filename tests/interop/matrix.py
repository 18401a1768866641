"""The client interoperability matrix, driven by tests/it/interop.rs.

Each common SSH client signs in to chaperone as its own vendor (key, then a second factor at the
keyboard-interactive prompt), runs two commands on one connection seconds apart where the client can,
and the file-transfer clients upload and download a file; plink, paramiko and asyncssh also run a command
through ProxyJump, each its own way; the terminal clients and libraries type a line into an interactive
shell with a pty. Clients that only read a code from a terminal
(PuTTY's plink, psftp and pscp, Dropbear's dbclient) are driven through a pseudo-terminal (pexpect).

The second factor is a run's "second": "totp" answers the code prompt with a fresh code; "passkey"
answers it with Enter, which makes the bastion show a one-time link in the next prompt. The link is
printed on stdout as {"link": URL, "run": N}; the test answers it with a software passkey and then
creates the file DIR/answered-N, and only then does the client press Enter, as a vendor back from
the browser would. "enroll" is a new vendor's first login: the prompt draws the QR code and shows the secret,
from which the two enrollment codes are computed; the row carries the QR code's rows as the client showed
them ("qr_drawn"), which the test decodes.

    python matrix.py SPEC.json

SPEC: {"host", "port", "known_hosts", "fingerprint" (SHA256:...), "asset", "dir",
       "device_user", "inner_known_hosts" (what `chaperone known-hosts` pins for ProxyJump),
       "runs": [{"client", "second", "vendor", "key", "secret"}]}
Prints one JSON object per run on stdout:
    {"run", "client", "second", "ok", "connections", "commands": [...outputs], "uploaded", "downloaded",
     "jump" (a command's output through ProxyJump, for the libraries), "error"}
(and the link lines above), and the table on stderr. The Rust test checks the bastion's own records
against these.
"""

import asyncio
import base64
import hashlib
import hmac
import json
import os
import re
import shlex
import struct
import subprocess
import sys
import time
import traceback

PAUSE = 2.0  # seconds between the two commands on one connection
TIMEOUT = 40


class Codes:
    """TOTP codes for one vendor, each step used once (the bastion refuses a replay). The bastion
    accepts steps now-1, now and now+1; now-1 is handed out only in the first half of the current
    step, as later a login slowed down on a loaded machine can see it expire between the prompt and
    the check (CI saw psftp refused that way). When all are spent it waits for time to move."""

    def __init__(self, spec, run, secret):
        self.dir = spec["dir"]
        self.run = run
        self.key = base64.b32decode(secret.upper() + "=" * (-len(secret) % 8))
        self.last = 0

    def next(self):
        while True:
            secs = int(time.time())
            now = secs // 30
            oldest = now - 1 if secs % 30 < 15 else now
            step = max(self.last + 1, oldest)
            if step <= now + 1:
                self.last = step
                return self.code(step)
            time.sleep(1)

    def code(self, step):
        mac = hmac.new(self.key, struct.pack(">Q", step), hashlib.sha1).digest()
        off = mac[-1] & 0x0F
        n = (struct.unpack(">I", mac[off : off + 4])[0] & 0x7FFFFFFF) % 1_000_000
        return f"{n:06d}"

    def answer(self, prompt):
        """The answer to a keyboard-interactive prompt."""
        return self.next()

    def terminal(self, child):
        """Answers the code prompt of a client running in a pseudo-terminal."""
        child.expect_exact("TOTP code: ")
        child.sendline(self.next())

    def askpass(self):
        """An SSH_ASKPASS program for OpenSSH that answers with a code."""
        return write_askpass(self.dir, f"askpass-{self.run}.sh", f"echo {self.next()}\n")

    def watch_askpass(self, ssh):
        pass


class Enroll(Codes):
    """A new vendor's first login: the first prompt draws the QR code and shows the secret, and asks for
    two consecutive codes (the step before now's, then now's), computed from the secret read there;
    later logins answer codes from it like Codes."""

    FIRST = "Enrollment: first code: "
    NEXT = "Enrollment: next code (after it changes): "
    SECRET = re.compile(r"Secret \(base32\): ([A-Z2-7]+)")

    def __init__(self, spec, run, client):
        self.dir = spec["dir"]
        self.run = run
        self.draws = client not in ASCII_PROMPTS
        self.key = None
        self.last = 0
        self.then = None
        self.qr_rows = 0
        self.qr = None

    def answer(self, prompt):
        if self.FIRST.strip() in prompt:
            self.read(prompt)
            now = int(time.time()) // 30
            self.last = now
            self.then = self.code(now)
            return self.code(now - 1)
        if self.NEXT.strip() in prompt:
            return self.then
        return self.next()

    def read(self, prompt):
        """Takes the secret from the prompt, and checks the QR code above it arrived whole: rows of
        the same width, of the half blocks and spaces it is drawn with, fitting an 80-column line."""
        found = self.SECRET.search(prompt)
        if not found:
            raise RuntimeError(f"no secret in the enrollment prompt {prompt!r}")
        secret = found.group(1)
        self.key = base64.b32decode(secret + "=" * (-len(secret) % 8))
        # PuTTY marks each line of a server's prompt with "| ".
        lines = [l.rstrip("\r").removeprefix("| ") for l in prompt.split("\n")]
        qr = [l for l in lines if "\u2588" in l and set(l) <= set(" \u2588\u2580\u2584")]
        widths = {len(l) for l in qr}
        if not self.draws:
            if qr or "No QR code above?" not in prompt:
                raise RuntimeError(f"expected no QR code and the line saying what to do: {prompt!r}")
            self.qr_rows = -1
        elif len(qr) < 15 or len(widths) != 1 or max(widths) > 78:
            raise RuntimeError(f"the QR code did not arrive whole: {len(qr)} rows of widths {widths}: {prompt!r}")
        else:
            self.qr_rows = len(qr)
            self.qr = {"secret": secret, "rows": qr}

    def terminal(self, child):
        if self.key is not None:
            return Codes.terminal(self, child)
        child.expect_exact(self.FIRST)
        child.sendline(self.answer(child.before + self.FIRST))
        child.expect_exact(self.NEXT)
        child.sendline(self.answer(self.NEXT))


class NoPrompt:
    """A client that asks nothing (it shares a connection already signed in)."""

    def terminal(self, child):
        pass


# Dropbear's dbclient keeps only printable ASCII of a prompt (cleantext() in its dbutil.c): no QR code.
ASCII_PROMPTS = {"dbclient"}

LINK = re.compile(r"https://\S+/v/\S+")


class Passkey:
    """The passkey's way through the prompts: Enter at the code prompt; at the link's prompt, the link
    is handed to the test (which uses it with the vendor's passkey), and Enter once it has."""

    def __init__(self, spec, run):
        self.dir = spec["dir"]
        self.run = run
        self.links = 0

    def answer(self, prompt):
        link = LINK.search(prompt)
        if link:
            self.used(link.group(0))
        return ""

    def used(self, link):
        self.links += 1
        answered = os.path.join(self.dir, f"answered-{self.run}")
        print(json.dumps({"link": link, "run": self.run}), flush=True)
        deadline = time.time() + TIMEOUT
        while not os.path.exists(answered):
            if time.time() > deadline:
                raise RuntimeError(f"the test did not answer the link {link}")
            time.sleep(0.1)
        os.remove(answered)

    def askpass(self):
        """An SSH_ASKPASS program for OpenSSH: Enter at the code prompt; the link's prompt is left in
        a file (for watch_askpass) and answered with Enter once the test has used the link."""
        link = os.path.join(self.dir, f"link-{self.run}")
        answered = os.path.join(self.dir, f"answered-{self.run}")
        return write_askpass(
            self.dir,
            f"askpass-{self.run}.sh",
            f"case \"$1\" in */v/*) printf '%s' \"$1\" > '{link}.part'; mv '{link}.part' '{link}'\n"
            f"  while [ ! -e '{answered}' ]; do sleep 0.1; done ;;\nesac\necho\n",
        )

    def watch_askpass(self, ssh):
        """Hands the link the askpass program saw to the test, while `ssh` signs in."""
        link = os.path.join(self.dir, f"link-{self.run}")
        deadline = time.time() + TIMEOUT
        while not os.path.exists(link):
            if ssh.poll() is not None or time.time() > deadline:
                return
            time.sleep(0.1)
        with open(link) as f:
            prompt = f.read()
        found = LINK.search(prompt)
        if not found:
            raise RuntimeError(f"no link in the prompt {prompt!r}")
        self.links += 1
        print(json.dumps({"link": found.group(0), "run": self.run}), flush=True)

    def terminal(self, child):
        child.expect_exact("TOTP code (or Enter to use your passkey): ")
        child.sendline("")
        child.expect(r"Then press Enter[^:]*: ")
        self.answer(child.before)
        child.sendline("")


def write_askpass(directory, name, body):
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write("#!/bin/sh\n" + body)
    os.chmod(path, 0o700)
    return path


def run(args, env=None, stdin=None):
    p = subprocess.run(
        args,
        input=stdin,
        capture_output=True,
        timeout=TIMEOUT,
        env={**os.environ, **(env or {})},
    )
    if p.returncode != 0:
        raise RuntimeError(
            f"{shlex.join(args)} exited {p.returncode}: {p.stderr.decode(errors='replace')[-800:]}"
        )
    return p.stdout.decode(errors="replace")


def terminal(args, env=None):
    """A client started in a pseudo-terminal, as a vendor's: speaking UTF-8 (the enrollment's QR code
    is drawn with Unicode half blocks)."""
    import pexpect

    return pexpect.spawn(
        args[0], args[1:], timeout=TIMEOUT, encoding="utf-8", codec_errors="replace",
        env={**os.environ, "LC_ALL": "C.UTF-8", **(env or {})},
    )


def spawn(args, second, env=None):
    """Runs a terminal client, answering its second-factor prompts; returns its output after them."""
    import pexpect

    child = terminal(args, env)
    try:
        second.terminal(child)
        child.expect(pexpect.EOF)
        # EOF is the client closing its terminal, which Dropbear's dbclient does a moment before it exits:
        # wait for the exit itself, or close() hangs it up (SIGHUP) and the status is lost.
        child.wait()
    finally:
        child.close()
    out = child.before or ""
    if child.exitstatus != 0:
        raise RuntimeError(f"{args[0]} exited {child.exitstatus} ({child.signalstatus}): {out[-800:]}")
    return out


SHELL_LINE = "echo shell-$((6*7)); exit\n"


def check_shell(out, name):
    """The interactive shell ran the typed line (the sum is only in its output, not in the echo)."""
    if "shell-42" not in out:
        raise RuntimeError(f"{name}'s shell printed {out[-400:]!r}")
    return "shell-42"


def terminal_shell(args, second, env=None):
    """A terminal client signing in and then used as a shell: the typed line's output."""
    import pexpect

    child = terminal(args, env)
    try:
        second.terminal(child)
        child.send(SHELL_LINE)
        child.expect(pexpect.EOF)
    finally:
        child.close()
    return child.before or ""


def files(spec, name):
    """A payload to upload (100 kB, not text) and the paths for it."""
    payload = bytes((i * 7 + len(name)) % 251 for i in range(100_000))
    local = os.path.join(spec["dir"], f"{name}-up.bin")
    with open(local, "wb") as f:
        f.write(payload)
    remote = f"/tmp/chaperone-interop-{name}-{os.getpid()}.bin"
    back = os.path.join(spec["dir"], f"{name}-down.bin")
    return payload, local, remote, back


def check_two(outs, name):
    want = [f"{name}-one", f"{name}-two"]
    got = [o.strip().splitlines()[-1] if o.strip() else "" for o in outs]
    if got != want:
        raise RuntimeError(f"commands printed {got!r}, wanted {want!r}")


def commands(name):
    return [f"echo {name}-one", f"echo {name}-two"]


# --- the clients -------------------------------------------------------------------------------------


def openssh(spec, c, second):
    """ssh, scp and sftp sharing one connection (ControlMaster), as a vendor's ssh_config would."""
    name = "openssh"
    sock = os.path.join(spec["dir"], f"cm-{second.run}.sock")
    opts = [
        "-F", "/dev/null", "-i", c["key"], "-o", "IdentitiesOnly=yes",
        "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={spec['known_hosts']}",
        "-o", "PreferredAuthentications=publickey,keyboard-interactive",
        "-o", f"ControlPath={sock}", "-o", "LogLevel=ERROR",
    ]
    user = f"{c['vendor']}+{spec['asset']}"
    port = str(spec["port"])
    master = ["ssh", *opts, "-o", "ControlMaster=yes", "-p", port]
    held = None
    if isinstance(second, Enroll):
        # The QR code and the secret are in the prompt, which ssh writes to its terminal. The master
        # stays in the foreground there (with -f it would be the process the terminal waits for).
        env = {"SSH_ASKPASS_REQUIRE": "never"}
        held = terminal(master + ["-N", f"{user}@{spec['host']}"], env)
        second.terminal(held)
        deadline = time.time() + TIMEOUT
        while not os.path.exists(sock):
            if not held.isalive() or time.time() > deadline:
                raise RuntimeError(f"the ssh master did not start: {held.before!r}")
            time.sleep(0.1)
    else:
        env = {"SSH_ASKPASS": second.askpass(), "SSH_ASKPASS_REQUIRE": "force", "DISPLAY": ""}
        master += ["-o", "ControlPersist=60", "-fN", f"{user}@{spec['host']}"]
        signing_in = subprocess.Popen(master, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **env})
        second.watch_askpass(signing_in)
        _, err = signing_in.communicate(timeout=TIMEOUT)
        if signing_in.returncode != 0:
            raise RuntimeError(f"the ssh master exited {signing_in.returncode}: {err.decode(errors='replace')[-800:]}")
    try:
        outs = []
        for i, cmd in enumerate(commands(name)):
            if i:
                time.sleep(PAUSE)
            outs.append(run(["ssh", *opts, "-p", port, f"{user}@{spec['host']}", cmd], env))
        check_two(outs, name)
        payload, local, remote, back = files(spec, name)
        run(["scp", *opts, "-P", port, local, f"{user}@{spec['host']}:{remote}"], env)
        batch = os.path.join(spec["dir"], "sftp-batch")
        with open(batch, "w") as f:
            f.write(f"get {remote} {back}\nrm {remote}\n")
        run(["sftp", *opts, "-P", port, "-b", batch, f"{user}@{spec['host']}"], env)
        check_file(back, payload)
        shell = check_shell(run(["ssh", *opts, "-tt", "-p", port, f"{user}@{spec['host']}"], env, SHELL_LINE.encode()), name)
    finally:
        subprocess.run(["ssh", *opts, "-O", "exit", "-p", port, f"{user}@{spec['host']}"], capture_output=True, env={**os.environ, **env})
        if held is not None:
            held.close(force=True)
    return {"connections": 1, "commands": outs, "uploaded": remote, "downloaded": remote, "shell": shell}


def putty_key(spec, c):
    ppk = os.path.join(spec["dir"], f"{c['vendor']}.ppk")
    if not os.path.exists(ppk):
        run(["puttygen", c["key"], "-O", "private", "-o", ppk])
    return ppk


def plink(spec, c, second):
    """plink's connection sharing: an upstream plink holds the connection (-N), downstream plinks run
    the two commands over it, seconds apart."""
    name = "plink"
    ppk = putty_key(spec, c)
    user = f"{c['vendor']}+{spec['asset']}"
    base = ["plink", "-ssh", "-P", str(spec["port"]), "-i", ppk, "-hostkey", spec["fingerprint"], "-share", "-no-antispoof"]
    import pexpect

    upstream = terminal(base + ["-N", f"{user}@{spec['host']}"])
    try:
        second.terminal(upstream)
        # Downstream plinks find the upstream through its socket once it has signed in.
        outs = []
        deadline = time.time() + 15
        for i, cmd in enumerate(commands(name)):
            if i:
                time.sleep(PAUSE)
            while True:
                p = subprocess.run(base + ["-batch", f"{user}@{spec['host']}", cmd], capture_output=True, timeout=TIMEOUT)
                if p.returncode == 0:
                    outs.append(p.stdout.decode(errors="replace"))
                    break
                if time.time() > deadline or i:
                    raise RuntimeError(f"plink (shared) exited {p.returncode}: {p.stderr.decode(errors='replace')[-800:]}")
                time.sleep(0.5)
        check_two(outs, name)
        # ProxyJump as PuTTY does it: a proxy command (here a plink sharing the signed-in connection)
        # that opens a direct-tcpip channel to the asset's ssh port (-nc), and an inner plink over it.
        proxy = shlex.join(base + ["-batch", "-nc", f"{spec['asset']}:22", f"{user}@{spec['host']}"])
        jumped = run([
            "plink", "-ssh", "-batch", "-i", ppk, "-hostkey", inner_fingerprint(spec), "-proxycmd", proxy,
            f"{spec['device_user']}@{spec['asset']}", f"echo {name}-jump",
        ])
        if jumped.strip() != f"{name}-jump":
            raise RuntimeError(f"the jump's command printed {jumped!r}")
        # An interactive shell with PuTTY's terminal modes, over the shared connection.
        shell = check_shell(terminal_shell(base + ["-t", f"{user}@{spec['host']}"], NoPrompt()), name)
    finally:
        upstream.terminate(force=True)
    return {"connections": 1, "commands": outs, "jump": jumped, "shell": shell}


def inner_fingerprint(spec):
    """The SHA-256 fingerprint of the host key pinned for the asset's inner (ProxyJump) session."""
    with open(spec["inner_known_hosts"]) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and spec["asset"] in parts[0].split(","):
                digest = hashlib.sha256(base64.b64decode(parts[2])).digest()
                return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")
    raise RuntimeError(f"no pinned key for {spec['asset']}")


def psftp(spec, c, second):
    """psftp (the engine under WinSCP's SFTP): upload, list and download on one connection."""
    name = "psftp"
    ppk = putty_key(spec, c)
    payload, local, remote, back = files(spec, name)
    batch = os.path.join(spec["dir"], "psftp-batch")
    with open(batch, "w") as f:
        f.write(f"put {local} {remote}\nget {remote} {back}\ndel {remote}\n")
    user = f"{c['vendor']}+{spec['asset']}"
    spawn(["psftp", "-P", str(spec["port"]), "-i", ppk, "-hostkey", spec["fingerprint"], "-b", batch, f"{user}@{spec['host']}"], second)
    check_file(back, payload)
    return {"connections": 1, "commands": [], "uploaded": remote, "downloaded": remote}


def pscp(spec, c, second):
    """pscp in SCP mode (-scp: the legacy protocol, which WinSCP's SCP mode speaks too): an upload and a
    download, one connection each."""
    name = "pscp"
    ppk = putty_key(spec, c)
    payload, local, remote, back = files(spec, name)
    user = f"{c['vendor']}+{spec['asset']}"
    base = ["pscp", "-scp", "-P", str(spec["port"]), "-i", ppk, "-hostkey", spec["fingerprint"]]
    spawn(base + [local, f"{user}@{spec['host']}:{remote}"], second)
    spawn(base + [f"{user}@{spec['host']}:{remote}", back], second)
    check_file(back, payload)
    # SCP cannot delete; the device is this machine's sshd.
    os.remove(remote)
    return {"connections": 2, "commands": [], "uploaded": remote, "downloaded": remote}


def dbclient(spec, c, second):
    """Dropbear's client has no connection sharing: one command per connection."""
    name = "dbclient"
    key = os.path.join(spec["dir"], f"{c['vendor']}.dropbear")
    if not os.path.exists(key):
        run(["dropbearconvert", "openssh", "dropbear", c["key"], key])
    home = os.path.join(spec["dir"], "dbhome")
    os.makedirs(os.path.join(home, ".ssh"), exist_ok=True)
    # Dropbear reads ~/.ssh/known_hosts with the host as given (no [host]:port form).
    with open(spec["known_hosts"]) as src, open(os.path.join(home, ".ssh", "known_hosts"), "w") as dst:
        for line in src:
            parts = line.split(None, 1)
            if len(parts) == 2:
                dst.write(f"{spec['host']} {parts[1]}")
    user = f"{c['vendor']}+{spec['asset']}"
    outs = []
    for i, cmd in enumerate(commands(name)):
        if i:
            time.sleep(PAUSE)
        outs.append(spawn(["dbclient", "-i", key, "-p", str(spec["port"]), f"{user}@{spec['host']}", cmd], second, env={"HOME": home}))
    check_two(outs, name)
    shell = check_shell(terminal_shell(["dbclient", "-t", "-i", key, "-p", str(spec["port"]), f"{user}@{spec['host']}"], second, env={"HOME": home}), name)
    return {"connections": 3, "commands": outs, "shell": shell}


def paramiko_client(spec, c, second):
    """paramiko's Transport, as Ansible's paramiko connection and many service tools use it."""
    import paramiko

    name = "paramiko"
    user = f"{c['vendor']}+{spec['asset']}"
    known = paramiko.HostKeys(spec["known_hosts"])
    t = paramiko.Transport((spec["host"], spec["port"]))
    try:
        t.start_client(timeout=TIMEOUT)
        server_key = t.get_remote_server_key()
        if not known.check(f"[{spec['host']}]:{spec['port']}", server_key):
            raise RuntimeError("the bastion's host key is not the pinned one")
        left = t.auth_publickey(user, paramiko.PKey.from_path(c["key"]))
        if "keyboard-interactive" not in left:
            raise RuntimeError(f"after the key, the bastion offered {left}")
        # A channel opened before the second factor is refused at once (it used to get no answer:
        # paramiko waited for its own time-out, an SSHException here); signing in then goes on.
        # paramiko logs the bastion's reason ("authentication is not complete") and raises its code.
        try:
            t.open_session(timeout=10)
            raise RuntimeError("a channel opened before the second factor was not refused")
        except paramiko.ChannelException as e:
            if e.code != paramiko.common.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED:
                raise RuntimeError(f"a channel opened before the second factor: {e!r}") from e
        t.auth_interactive(user, lambda title, instructions, prompts: [second.answer(p) for p, _ in prompts])
        outs = []
        for i, cmd in enumerate(commands(name)):
            if i:
                time.sleep(PAUSE)
            ch = t.open_session(timeout=TIMEOUT)
            ch.settimeout(TIMEOUT)
            ch.exec_command(cmd)
            out = ch.makefile("rb").read().decode(errors="replace")
            if ch.recv_exit_status() != 0:
                raise RuntimeError(f"{cmd!r} exited {ch.recv_exit_status()}")
            outs.append(out)
        check_two(outs, name)
        payload, local, remote, back = files(spec, name)
        sftp = paramiko.SFTPClient.from_transport(t)
        sftp.put(local, remote)
        sftp.get(remote, back)
        sftp.remove(remote)
        sftp.close()
        check_file(back, payload)
        jumped = paramiko_jump(spec, c, t, name)
        ch = t.open_session(timeout=TIMEOUT)
        ch.settimeout(TIMEOUT)
        ch.get_pty(term="xterm", width=80, height=24)
        ch.invoke_shell()
        ch.sendall(SHELL_LINE.encode())
        shell = check_shell(ch.makefile("rb").read().decode(errors="replace"), name)
    finally:
        t.close()
    return {"connections": 1, "commands": outs, "uploaded": remote, "downloaded": remote, "jump": jumped, "shell": shell}


def paramiko_jump(spec, c, t, name):
    """ProxyJump as paramiko does it (a direct-tcpip channel to the asset's ssh port, an inner SSH
    connection over it): the inner host key must be the pinned one, and the inner key is the outer's."""
    import paramiko

    ch = t.open_channel("direct-tcpip", (spec["asset"], 22), ("127.0.0.1", 0), timeout=TIMEOUT)
    inner = paramiko.Transport(ch)
    try:
        inner.start_client(timeout=TIMEOUT)
        known = paramiko.HostKeys(spec["inner_known_hosts"])
        if not known.check(spec["asset"], inner.get_remote_server_key()):
            raise RuntimeError("the inner host key is not the one `chaperone known-hosts` pins")
        inner.auth_publickey(spec["device_user"], paramiko.PKey.from_path(c["key"]))
        session = inner.open_session(timeout=TIMEOUT)
        session.settimeout(TIMEOUT)
        session.exec_command(f"echo {name}-jump")
        out = session.makefile("rb").read().decode(errors="replace")
        if session.recv_exit_status() != 0:
            raise RuntimeError(f"the jump's command exited {session.recv_exit_status()}")
    finally:
        inner.close()
    if out.strip() != f"{name}-jump":
        raise RuntimeError(f"the jump's command printed {out!r}")
    return out


def asyncssh_client(spec, c, second):
    import asyncssh

    name = "asyncssh"
    user = f"{c['vendor']}+{spec['asset']}"

    class Client(asyncssh.SSHClient):
        def kbdint_auth_requested(self):
            return ""

        def kbdint_challenge_received(self, name, instructions, lang, prompts):
            return [second.answer(p) for p, _ in prompts]

    async def go():
        async with asyncssh.connect(
            spec["host"], spec["port"], username=user, client_keys=[c["key"]],
            known_hosts=spec["known_hosts"], preferred_auth="publickey,keyboard-interactive",
            client_factory=Client, agent_path=None,
        ) as conn:
            outs = []
            for i, cmd in enumerate(commands(name)):
                if i:
                    await asyncio.sleep(PAUSE)
                r = await asyncio.wait_for(conn.run(cmd, check=True), TIMEOUT)
                outs.append(r.stdout)
            check_two(outs, name)
            payload, local, remote, back = files(spec, name)
            async with conn.start_sftp_client() as sftp:
                await sftp.put(local, remote)
                await sftp.get(remote, back)
                await sftp.remove(remote)
            check_file(back, payload)
            # ProxyJump as asyncssh does it: an inner connection tunnelled through this one.
            async with asyncssh.connect(
                spec["asset"], 22, tunnel=conn, username=spec["device_user"], client_keys=[c["key"]],
                known_hosts=spec["inner_known_hosts"], agent_path=None,
            ) as inner:
                r = await asyncio.wait_for(inner.run(f"echo {name}-jump", check=True), TIMEOUT)
            if r.stdout.strip() != f"{name}-jump":
                raise RuntimeError(f"the jump's command printed {r.stdout!r}")
            async with conn.create_process(term_type="xterm", term_size=(80, 24)) as p:
                p.stdin.write(SHELL_LINE)
                out = await asyncio.wait_for(p.stdout.read(), TIMEOUT)
            shell = check_shell(out, name)
            return {"connections": 1, "commands": outs, "uploaded": remote, "downloaded": remote, "jump": r.stdout, "shell": shell}

    return asyncio.run(go())


def check_file(path, payload):
    with open(path, "rb") as f:
        got = f.read()
    if got != payload:
        raise RuntimeError(f"downloaded {len(got)} bytes, not the {len(payload)} uploaded")


CLIENTS = {
    "openssh": openssh,
    "plink": plink,
    "psftp": psftp,
    "pscp": pscp,
    "paramiko": paramiko_client,
    "asyncssh": asyncssh_client,
    "dbclient": dbclient,
}


def main():
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    rows = []
    for n, r in enumerate(spec["runs"]):
        started = time.time()
        row = {"run": n, "client": r["client"], "second": r["second"], "ok": False}
        second = {
            "passkey": lambda: Passkey(spec, n),
            "enroll": lambda: Enroll(spec, n, r["client"]),
            "totp": lambda: Codes(spec, n, r["secret"]),
        }[r["second"]]()
        try:
            row.update(CLIENTS[r["client"]](spec, r, second))
            if r["second"] == "passkey" and second.links != row["connections"]:
                raise RuntimeError(f"{second.links} passkey links for {row['connections']} connections")
            if r["second"] == "enroll":
                if not second.qr_rows:
                    raise RuntimeError("signed in without the enrollment")
                row["qr"] = second.qr_rows > 0
                row["qr_drawn"] = second.qr
            row["ok"] = True
        except Exception as e:  # the row says what failed; the test fails on it
            row["error"] = f"{type(e).__name__}: {e}"
            traceback.print_exc(file=sys.stderr)
        row["seconds"] = round(time.time() - started, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"{'client':<10} {'second':<8} {'result':<6} {'conns':>5} {'cmds':>4} {'files':<20} {'qr':<5} {'s':>5}", file=sys.stderr)
    for r in rows:
        files_done = ("up+down" if r.get("downloaded") else "-") + (" jump" if r.get("jump") else "") + (" shell" if r.get("shell") else "")
        qr = {True: "drawn", False: "ascii"}.get(r.get("qr"), "-")
        print(
            f"{r['client']:<10} {r['second']:<8} {'ok' if r['ok'] else 'FAIL':<6} {r.get('connections', '-'):>5} "
            f"{len(r.get('commands', [])):>4} {files_done:<20} {qr:<5} {r['seconds']:>5}"
            + ("" if r["ok"] else f"  {r['error']}"),
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
