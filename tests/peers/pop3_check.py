#!/usr/bin/env python3
"""Python's smtplib and poplib against ringpost (tests/pop3.rs).

usage: pop3_check.py MODE HOST PORT [ARGS...]
  send   HOST SMTP_PORT N TO          N messages to TO over SMTP
  read   HOST POP_PORT USER PASS N    log in, check the N messages, delete the first, quit
  keep   HOST POP_PORT USER PASS N    log in, delete one, drop the connection without QUIT
  inuse  HOST POP_PORT USER PASS      a second session while one holds the maildrop
  stls   HOST POP_PORT USER PASS N    STLS, then log in and STAT
  pop3s  HOST POP_PORT USER PASS N    implicit TLS, then log in and STAT
  plain  HOST POP_PORT USER PASS N    AUTH PLAIN on a raw socket
Prints "ok MODE" on success; any failed check raises.
"""
import base64
import poplib
import smtplib
import socket
import ssl
import sys


def check(ok, what):
    """Fails the run (exit 1, naming what) unless `ok`. Not `assert`, which
    python -O removes."""
    if not ok:
        print(f"check failed: {what!r}", file=sys.stderr)
        sys.exit(1)


def unverified():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def send(host, port, n, to):
    with smtplib.SMTP(host, port, timeout=30) as s:
        for i in range(n):
            body = (f"From: <sender@example.net>\r\nTo: <{to}>\r\nSubject: pop test {i}\r\n\r\n"
                    f"line one of message {i}\r\n.starts with a dot\r\nlast line\r\n")
            s.sendmail("sender@example.net", [to], body)


def login(p, user, password, n):
    welcome = p.getwelcome()
    check(welcome.startswith(b"+OK"), welcome)
    p.user(user)
    reply = p.pass_(password)
    check(reply.startswith(b"+OK"), reply)
    count, size = p.stat()
    check(count == n, (count, n))
    check(size > 0, 'size > 0')
    return count, size


def read(host, port, user, password, n):
    p = poplib.POP3(host, port, timeout=30)
    caps = p.capa()
    check("UIDL" in caps and "TOP" in caps and "USER" in caps, caps)
    count, size = login(p, user, password, n)
    _, listing, _ = p.list()
    sizes = [int(line.split()[1]) for line in listing]
    check(len(sizes) == n and sum(sizes) == size, (sizes, size))
    _, uids, _ = p.uidl()
    uids = [u.split()[1] for u in uids]
    check(len(set(uids)) == n, uids)
    _, lines, _ = p.retr(1)
    text = b"\r\n".join(lines)
    check(b"Subject: pop test" in text, text)
    # poplib removes the dot-stuffing: the line starts with one dot again.
    check(b".starts with a dot" in lines, lines)
    check(b"..starts" not in text, 'b"..starts" not in text')
    _, top, _ = p.top(1, 1)
    check(b"" in top and top[-1].startswith(b"line one"), top)
    check(p.dele(1).startswith(b"+OK"), 'p.dele(1).startswith(b"+OK")')
    count2, _ = p.stat()
    check(count2 == n - 1, 'count2 == n - 1')
    try:
        p.retr(1)
        raise AssertionError("a deleted message was retrieved")
    except poplib.error_proto as e:
        check(b"deleted" in e.args[0], e)
    check(p.quit().startswith(b"+OK"), 'p.quit().startswith(b"+OK")')


def keep(host, port, user, password, n):
    p = poplib.POP3(host, port, timeout=30)
    login(p, user, password, n)
    check(p.dele(1).startswith(b"+OK"), 'p.dele(1).startswith(b"+OK")')
    # No QUIT: RFC 1939 says nothing is removed.
    p.sock.close()


def inuse(host, port, user, password):
    first = poplib.POP3(host, port, timeout=30)
    first.user(user)
    first.pass_(password)
    second = poplib.POP3(host, port, timeout=30)
    second.user(user)
    try:
        second.pass_(password)
        raise AssertionError("two sessions held one maildrop")
    except poplib.error_proto as e:
        check(b"[IN-USE]" in e.args[0], e)
    second.quit()
    first.quit()


def stls(host, port, user, password, n):
    p = poplib.POP3(host, port, timeout=30)
    check("STLS" in p.capa(), '"STLS" in p.capa()')
    p.stls(context=unverified())
    check("STLS" not in p.capa(), '"STLS" not in p.capa()')
    login(p, user, password, n)
    p.quit()


def pop3s(host, port, user, password, n):
    p = poplib.POP3_SSL(host, port, context=unverified(), timeout=30)
    login(p, user, password, n)
    p.quit()


def plain(host, port, user, password, n):
    s = socket.create_connection((host, port), timeout=30)
    f = s.makefile("rb")
    check(f.readline().startswith(b"+OK"), 'f.readline().startswith(b"+OK")')
    token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    s.sendall(b"AUTH PLAIN\r\n")
    check(f.readline() == b"+ \r\n", 'f.readline() == b"+ \\r\\n"')
    s.sendall(token.encode() + b"\r\n")
    reply = f.readline()
    check(reply.startswith(b"+OK") and f"has {n} messages".encode() in reply, reply)
    s.sendall(b"QUIT\r\n")
    check(f.readline().startswith(b"+OK"), 'f.readline().startswith(b"+OK")')
    s.close()


def main():
    mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rest = sys.argv[4:]
    if mode == "send":
        send(host, port, int(rest[0]), rest[1])
    elif mode in ("read", "keep", "stls", "pop3s", "plain"):
        globals()[mode](host, port, rest[0], rest[1], int(rest[2]))
    elif mode == "inuse":
        inuse(host, port, rest[0], rest[1])
    else:
        raise SystemExit(f"unknown mode {mode}")
    print(f"ok {mode}")


if __name__ == "__main__":
    main()
