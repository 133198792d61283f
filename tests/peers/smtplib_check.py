#!/usr/bin/env python3
"""Drives ringpost with Python's smtplib and ssl: a real third-party client.

usage: smtplib_check.py MODE HOST PORT [USER PASSWORD]
Exits non-zero (with a message) on any deviation.
"""
import smtplib
import socket
import ssl
import sys
from email.message import EmailMessage


def insecure_context():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def check(cond, msg):
    if not cond:
        print("FAIL:", msg)
        sys.exit(1)


def message(subject, body):
    m = EmailMessage()
    m["From"] = "sender@x.test"
    m["To"] = "rcpt@example.net"
    m["Subject"] = subject
    m.set_content(body)
    return m


def plain(host, port):
    with smtplib.SMTP(host, port, timeout=20) as s:
        code, _ = s.ehlo("client.test")
        check(code == 250, "EHLO")
        for ext in ["pipelining", "size", "8bitmime", "smtputf8", "enhancedstatuscodes", "chunking", "dsn"]:
            check(s.has_extn(ext), f"EHLO advertises {ext}")
        for i in range(3):
            refused = s.sendmail("sender@x.test", ["rcpt@example.net", "other@example.net"],
                                 f"Subject: m{i}\r\n\r\nline one\r\n.leading dot\r\n")
            check(refused == {}, f"message {i} accepted")
        # 8-bit body with BODY=8BITMIME, UTF-8 address with SMTPUTF8.
        m = message("Grüße", "Ünïcödé body\n")
        s.send_message(m, mail_options=["SMTPUTF8"], to_addrs=["rcpt@example.net"])
        s.send_message(message("utf8 rcpt", "x\n"), from_addr="sender@x.test",
                       to_addrs=["пользователь@example.net"], mail_options=["SMTPUTF8"])
        code, msg = s.noop()
        check(code == 250 and msg.startswith(b"2.0.0"), "NOOP")
    print("ok plain: 5 messages")


def relay_denied(host, port):
    with smtplib.SMTP(host, port, timeout=20) as s:
        try:
            s.sendmail("a@x.test", ["victim@elsewhere.test"], "Subject: x\r\n\r\nx\r\n")
            check(False, "relay must be refused")
        except smtplib.SMTPRecipientsRefused as e:
            code, text = e.recipients["victim@elsewhere.test"]
            check(code == 554 and text.startswith(b"5.7.1"), f"554 5.7.1, got {code} {text}")
    print("ok relay denied")


def starttls(host, port, user, password):
    with smtplib.SMTP(host, port, timeout=20) as s:
        s.ehlo("client.test")
        check(s.has_extn("starttls"), "STARTTLS offered")
        s.starttls(context=insecure_context())
        s.ehlo("client.test")
        check(not s.has_extn("starttls"), "no STARTTLS after TLS")
        check(s.has_extn("auth"), "AUTH offered over TLS")
        check(isinstance(s.sock, ssl.SSLSocket), "socket is TLS")
        s.login(user, password)
        refused = s.sendmail(user, ["rcpt@elsewhere.test"], "Subject: tls\r\n\r\nover tls\r\n")
        check(refused == {}, "authenticated relay accepted")
        # smtplib.login() treats 503 as success, so ask directly.
        code, text = s.docmd("AUTH", "PLAIN AGFAYgBj")
        check(code == 503 and text.startswith(b"5.5.1"), f"second AUTH: 503 5.5.1, got {code} {text}")
    with smtplib.SMTP(host, port, timeout=20) as s:
        s.starttls(context=insecure_context())
        try:
            s.login(user, "wrong password")
            check(False, "bad password must fail")
        except smtplib.SMTPAuthenticationError as e:
            check(e.smtp_code == 535, f"535, got {e.smtp_code}")
    print("ok starttls + auth")


def submission(host, port, user, password):
    with smtplib.SMTP(host, port, timeout=20) as s:
        s.ehlo("client.test")
        code, _ = s.mail("alice@example.test")
        check(code == 530, f"MAIL before AUTH on submission: 530, got {code}")
        s.rset()
        s.starttls(context=insecure_context())
        s.ehlo("client.test")
        s.login(user, password)
        refused = s.sendmail(user, ["far@elsewhere.test"], "Subject: sub\r\n\r\nx\r\n")
        check(refused == {}, "submission after AUTH")
    print("ok submission")


def implicit(host, port):
    with smtplib.SMTP_SSL(host, port, timeout=20, context=insecure_context()) as s:
        s.ehlo("client.test")
        check(not s.has_extn("starttls"), "no STARTTLS on implicit TLS")
        check(s.sendmail("a@x.test", ["r@example.net"], "Subject: i\r\n\r\nx\r\n") == {}, "implicit TLS message")
    print("ok implicit tls")


def starttls_injection(host, port):
    """CVE-2011-0411: commands pipelined with STARTTLS must not run after TLS."""
    raw = socket.create_connection((host, port), timeout=10)
    f = raw.makefile("rb")
    f.readline()
    raw.sendall(b"EHLO client.test\r\n")
    while True:
        line = f.readline()
        if line[3:4] == b" ":
            break
    raw.sendall(b"STARTTLS\r\nRSET\r\nMAIL FROM:<injected@x.test>\r\n")
    line = f.readline()
    check(line.startswith(b"220"), f"220 to STARTTLS, got {line!r}")
    tls = insecure_context().wrap_socket(raw, server_hostname="mx.test")
    tls.settimeout(1.0)
    try:
        early = tls.recv(1024)
        check(early == b"", f"nothing may answer the injected commands, got {early!r}")
    except (socket.timeout, TimeoutError):
        pass
    tls.settimeout(10)
    tls.sendall(b"MAIL FROM:<a@x.test>\r\n")
    reply = tls.recv(1024)
    check(reply.startswith(b"503 5.5.1"), f"session restarted: MAIL needs EHLO, got {reply!r}")
    tls.close()
    print("ok starttls injection")


def tls_garbage(host, port):
    raw = socket.create_connection((host, port), timeout=10)
    f = raw.makefile("rb")
    f.readline()
    raw.sendall(b"EHLO c\r\n")
    while f.readline()[3:4] != b" ":
        pass
    raw.sendall(b"STARTTLS\r\n")
    check(f.readline().startswith(b"220"), "220")
    raw.sendall(b"\x16\x03\x01\x00\x05garbage-not-a-handshake" * 10)
    try:
        rest = raw.recv(4096)
        while rest:
            rest = raw.recv(4096)
    except ConnectionResetError:
        pass
    # The server is still up.
    with smtplib.SMTP(host, port, timeout=10) as s:
        check(s.noop()[0] == 250, "server alive after TLS garbage")
    print("ok tls garbage")


if __name__ == "__main__":
    mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    args = sys.argv[4:]
    {
        "plain": lambda: plain(host, port),
        "relay-denied": lambda: relay_denied(host, port),
        "starttls": lambda: starttls(host, port, *args),
        "submission": lambda: submission(host, port, *args),
        "implicit": lambda: implicit(host, port),
        "starttls-injection": lambda: starttls_injection(host, port),
        "tls-garbage": lambda: tls_garbage(host, port),
    }[mode]()
