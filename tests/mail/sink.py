"""A local SMTP sink for tests/it/mail.rs (aiosmtpd, Debian's python3-aiosmtpd).

Usage: sink.py PORT CERT KEY OUT USER PASSWORD REFUSE_FIRST
STARTTLS is required before MAIL and AUTH (PLAIN, USER/PASSWORD) before MAIL; the first REFUSE_FIRST
messages are answered 451 (try again later). A recipient whose address starts with `stale@` is refused
for good (550), and so is a message whose body holds REJECT-ME (554, as a content filter would). Every
DATA attempt is a JSON line in OUT.
"""
import email
import email.policy
import json
import ssl
import sys
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

port, cert, key, out, user, password, refuse_first = sys.argv[1:8]
refuse_first = int(refuse_first)


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == user.encode()
        and auth_data.password == password.encode()
    )
    return AuthResult(success=ok)


class Handler:
    def __init__(self):
        self.attempts = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith("stale@"):
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.attempts += 1
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        body = message.get_body().get_content()
        rejected = "REJECT-ME" in body
        record = {
            "attempt": self.attempts,
            "accepted": self.attempts > refuse_first and not rejected,
            "tls": session.ssl is not None,
            "authenticated": bool(session.authenticated),
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "from": str(message["from"]),
            "to": str(message["to"]),
            "subject": str(message["subject"]),
            "message_id": str(message["message-id"]),
            "body": body,
        }
        with open(out, "a") as f:
            f.write(json.dumps(record) + "\n")
        if rejected:
            return "554 5.7.1 rejected by the content filter"
        if not record["accepted"]:
            return "451 4.3.0 try again later"
        return "250 OK"


context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
context.load_cert_chain(cert, key)
controller = Controller(
    Handler(),
    hostname="127.0.0.1",
    port=int(port),
    tls_context=context,
    require_starttls=True,
    authenticator=authenticator,
    auth_required=True,
    auth_require_tls=True,
)
controller.start()
print("ready", flush=True)
while True:
    time.sleep(3600)
