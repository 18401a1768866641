"""Whoever holds only a vendor's key, sending the vendor passkey links without ever answering one, for
tests/it/passkeys.rs. OpenSSH never does this; a client that writes its own messages can.

    python link_churn.py HOST PORT USER KEYFILE STEP...

Signs the key step with paramiko, then drives keyboard-interactive by hand: Enter at the code prompt
(a vendor with a passkey is shown a link), and at each link, instead of answering it, the next STEP:
    round   a new keyboard-interactive request (a new round on the same key step)
    key     a new signed public-key request, then a new keyboard-interactive round (a new key step)
    close   the connection closed (the last step)
Prints one JSON line: {"links": [the link of each round], "steps": [...]} or {"error": "..."}.
"""

import json
import queue
import sys

import paramiko
from paramiko.auth_handler import AuthHandler
from paramiko.common import cMSG_USERAUTH_INFO_RESPONSE, cMSG_USERAUTH_REQUEST
from paramiko.message import Message

TIMEOUT = 20
events = queue.Queue()


# What the bastion answers during authentication goes to the queue; the main thread decides.
def _info(self, m):
    m.get_text()  # name
    m.get_text()  # instructions
    m.get_binary()  # language
    prompts = [(m.get_text(), m.get_boolean())[0] for _ in range(m.get_int())]
    events.put(("info", prompts))


def _failure(self, m):
    methods = m.get_list()
    events.put(("failure", methods, m.get_boolean()))


def _success(self, m):
    events.put(("success",))


def expect(kind):
    event = events.get(timeout=TIMEOUT)
    if event[0] != kind:
        raise RuntimeError(f"expected {kind}, got {event!r}")
    return event


def main():
    host, port, user, keyfile = sys.argv[1:5]
    steps = sys.argv[5:]
    key = paramiko.PKey.from_path(keyfile)
    t = paramiko.Transport((host, int(port)))
    links = []
    try:
        t.start_client(timeout=TIMEOUT)
        left = t.auth_publickey(user, key)
        if "keyboard-interactive" not in left:
            raise RuntimeError(f"after the key, the bastion offered {left}")
        AuthHandler._parse_userauth_info_request = _info
        AuthHandler._parse_userauth_failure = _failure
        AuthHandler._parse_userauth_success = _success
        auth = t.auth_handler
        auth.auth_method = "keyboard-interactive"

        def request(method, *fields):
            m = Message()
            m.add_byte(cMSG_USERAUTH_REQUEST)
            m.add_string(user)
            m.add_string("ssh-connection")
            m.add_string(method)
            for f in fields:
                if isinstance(f, bool):
                    m.add_boolean(f)
                else:
                    m.add_string(f)
            t._send_message(m)

        def respond(*answers):
            m = Message()
            m.add_byte(cMSG_USERAUTH_INFO_RESPONSE)
            m.add_int(len(answers))
            for a in answers:
                m.add_string(a)
            t._send_message(m)

        def round_to_link():
            request("keyboard-interactive", "", "")
            expect("info")
            respond("")
            event = events.get(timeout=TIMEOUT)
            if event[0] != "info":
                raise RuntimeError(f"no link: the bastion answered {event!r}")
            prompts = event[1]
            link = next((w for p in prompts for w in p.split() if "/v/" in w), None)
            if link is None:
                raise RuntimeError(f"no link in {prompts!r}")
            links.append(link)

        round_to_link()
        for step in steps:
            if step == "round":
                round_to_link()
            elif step == "key":
                algorithm = key.get_name()
                blob = auth._get_session_blob(key, "ssh-connection", user, algorithm)
                request("publickey", True, algorithm, key.asbytes(), key.sign_ssh_data(blob, algorithm).asbytes())
                _, methods, partial = expect("failure")
                if not partial or "keyboard-interactive" not in methods:
                    raise RuntimeError(f"the second key step was not a partial success: {methods} {partial}")
                round_to_link()
            elif step == "close":
                break
            else:
                raise RuntimeError(f"unknown step {step}")
        print(json.dumps({"links": links, "steps": steps}), flush=True)
    except Exception as e:
        print(json.dumps({"error": f"{type(e).__name__}: {e}", "links": links}), flush=True)
        sys.exit(1)
    finally:
        t.close()


if __name__ == "__main__":
    main()
