#!/usr/bin/env python3
"""A scriptable SMTP receiver for ringpost's delivery tests (loopback only).

usage: receiver.py HOST PORT OUTDIR [--mode MODE] [--arg ARG] [--tls CERT KEY]
                   [--no-dsn] [--no-8bit] [--no-pipelining] [--requiretls]

Every accepted message is written to OUTDIR/<n>.eml with first lines
`X-Envelope: MAIL-params | rcpt1 params, rcpt2 params` (the envelope as sent),
`X-TLS: yes|no`, `X-Helo: <EHLO name>` and `X-Peer: <client address>`.
Prints "ready" once listening. Modes:
  accept            accept everything (default)
  tempfail N        451 at end of data for the first N messages, then accept
  reject-rcpt ADDR  550 5.1.1 for RCPT TO ADDR, accept the rest
  drop-data N       close the connection in the middle of DATA, N times
  slow-greet S      wait S seconds before the greeting
  always-451        451 4.7.1 to every RCPT
  rcpt-reply N|R    reply R (e.g. "450 4.7.28 unusual rate") to the first N RCPTs
                    (counted in OUTDIR/refused), then accept
  long-451 ADDR     a long multi-line 451 in a multi-byte script for RCPT TO ADDR
  rcpt-map FILE     FILE has lines `ADDR|REPLY` (REPLY may hold \\r\\n for a
                    multi-line reply): RCPT TO ADDR gets REPLY, others 250
  hostile KIND      multiline-flood | long-line | garbage | bare-lf | silence
  term-at N|PID     accept everything; as the Nth message is taken, send
                    SIGTERM to PID just before its 250 (a delivery that ends
                    as the sender stops)
"""
import argparse
import os
import signal
import socket
import socketserver
import ssl
import sys
import threading
import time

lock = threading.Lock()
state = {"messages": 0, "tempfails": 0, "drops": 0, "connections": 0, "open": 0, "max_open": 0,
         "most_on_one": 0}


def refuse_rcpt():
    """rcpt-reply mode: whether this RCPT is one of the first N refused;
    counts them into OUTDIR/refused."""
    with lock:
        if state.get("refused", 0) >= int(args.arg.split("|", 1)[0]):
            return False
        state["refused"] = state.get("refused", 0) + 1
        with open(os.path.join(args.outdir, "refused"), "w") as f:
            f.write("%d\n" % state["refused"])
        return True


def rcpt_map():
    """rcpt-map mode: ADDR -> reply, read from the file named by --arg."""
    out = {}
    with open(args.arg) as f:
        for line in f:
            if "|" in line:
                addr, reply = line.rstrip("\n").split("|", 1)
                out[addr] = reply.replace("\\r\\n", "\r\n")
    return out


def record_connections(delta, accepted=0):
    """Counts connections (total, most at once, and most messages accepted on
    one of them, counted when it closes) into OUTDIR/connections."""
    with lock:
        if delta > 0:
            state["connections"] += 1
        state["open"] += delta
        state["max_open"] = max(state["max_open"], state["open"])
        state["most_on_one"] = max(state["most_on_one"], accepted)
        with open(os.path.join(args.outdir, "connections"), "w") as f:
            f.write("%d %d %d\n" % (state["connections"], state["max_open"], state["most_on_one"]))


class Handler(socketserver.StreamRequestHandler):
    def send(self, text):
        self.wfile.write(text.encode() if isinstance(text, str) else text)
        self.wfile.flush()

    def ehlo_lines(self, tls_active):
        lines = ["250-receiver.test"]
        if not args.no_pipelining:
            lines.append("250-PIPELINING")
        lines.append("250-SIZE 100000000")
        if not args.no_8bit:
            lines.append("250-8BITMIME")
            lines.append("250-SMTPUTF8")
        if not args.no_dsn:
            lines.append("250-DSN")
        if args.tls and not tls_active:
            lines.append("250-STARTTLS")
        if args.requiretls and tls_active:
            lines.append("250-REQUIRETLS")
        lines.append("250 ENHANCEDSTATUSCODES")
        return "\r\n".join(lines) + "\r\n"

    def hostile(self, kind):
        try:
            if kind == "multiline-flood":
                for _ in range(100000):
                    self.send("220-flood\r\n")
            elif kind == "long-line":
                self.send("220 " + "x" * (10 * 1024 * 1024))
            elif kind == "garbage":
                self.send(b"\x00\xff\x16\x03 not smtp at all\r\n" * 100)
            elif kind == "bare-lf":
                self.send("220 receiver.test ESMTP\n")
                self.rfile.readline()
                self.send("250-receiver.test\n250 PIPELINING\n")
                while self.rfile.readline():
                    self.send("451 4.3.0 bare lf replies\n")
            elif kind == "silence":
                time.sleep(30)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def handle(self):
        record_connections(1)
        self.accepted = 0
        self.open = True
        try:
            self.converse()
        finally:
            self.closed()

    def closed(self):
        """The connection is over for the client: after our 221 it may open
        another at once, so it is counted closed before that is sent."""
        if self.open:
            self.open = False
            record_connections(-1, self.accepted)

    def converse(self):
        if args.mode == "hostile":
            return self.hostile(args.arg)
        if args.mode == "slow-greet":
            time.sleep(float(args.arg))
        self.send("220 receiver.test ESMTP\r\n")
        tls_active = False
        helo = ""
        mail, rcpts = None, []
        while True:
            line = self.rfile.readline(100000)
            if not line:
                return
            cmd = line.decode("utf-8", "replace").rstrip("\r\n")
            verb = cmd[:4].upper()
            if verb == "EHLO":
                helo = cmd[5:].strip()
                self.send(self.ehlo_lines(tls_active))
            elif verb == "HELO":
                helo = cmd[5:].strip()
                self.send("250 receiver.test\r\n")
            elif cmd.upper() == "STARTTLS" and args.tls:
                self.send("220 2.0.0 go ahead\r\n")
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                ctx.load_cert_chain(args.tls[0], args.tls[1])
                self.request = ctx.wrap_socket(self.request, server_side=True)
                self.rfile = self.request.makefile("rb")
                self.wfile = self.request.makefile("wb")
                tls_active = True
                mail, rcpts = None, []
            elif verb == "MAIL":
                mail, rcpts = cmd[10:], []
                self.send("250 2.1.0 ok\r\n")
            elif verb == "RCPT":
                addr = cmd[8:].split(">")[0].lstrip("<")
                if args.mode == "reject-rcpt" and addr == args.arg:
                    self.send("550 5.1.1 <%s>: user unknown\r\n" % addr)
                elif args.mode == "long-451" and addr == args.arg:
                    line = "451-4.2.0 " + "\u20ac" * 1000 + "\r\n"
                    self.send(line * 60 + "451 4.2.0 mailbox busy\r\n")
                elif args.mode == "always-451":
                    self.send("451 4.7.1 greylisted, come back later\r\n")
                elif args.mode == "rcpt-map" and addr in rcpt_map():
                    self.send(rcpt_map()[addr] + "\r\n")
                elif args.mode == "rcpt-reply" and refuse_rcpt():
                    self.send(args.arg.split("|", 1)[1] + "\r\n")
                else:
                    rcpts.append(cmd[8:])
                    self.send("250 2.1.5 ok\r\n")
            elif verb == "DATA":
                if not rcpts:
                    self.send("554 5.5.1 no valid recipients\r\n")
                    continue
                self.send("354 go ahead\r\n")
                data = []
                while True:
                    l = self.rfile.readline(2000)
                    if not l:
                        return
                    with lock:
                        drop = args.mode == "drop-data" and state["drops"] < int(args.arg)
                        if drop:
                            state["drops"] += 1
                    if drop:
                        self.request.close()
                        return
                    if l == b".\r\n":
                        break
                    data.append(l[1:] if l.startswith(b"..") else l)
                with lock:
                    temp = args.mode == "tempfail" and state["tempfails"] < int(args.arg)
                    if temp:
                        state["tempfails"] += 1
                    else:
                        state["messages"] += 1
                        n = state["messages"]
                if temp:
                    self.send("451 4.3.0 try again later\r\n")
                else:
                    path = os.path.join(args.outdir, "%d.eml" % n)
                    with open(path + ".tmp", "wb") as f:
                        f.write(("X-Envelope: %s | %s\r\n" % (mail, ", ".join(rcpts))).encode())
                        f.write(("X-TLS: %s\r\n" % ("yes" if tls_active else "no")).encode())
                        f.write(("X-Helo: %s\r\n" % helo).encode())
                        f.write(("X-Peer: %s\r\n" % self.client_address[0]).encode())
                        f.writelines(data)
                    os.rename(path + ".tmp", path)
                    self.accepted += 1
                    if args.mode == "term-at" and n == int(args.arg.split("|")[0]):
                        os.kill(int(args.arg.split("|")[1]), signal.SIGTERM)
                    self.send("250 2.0.0 ok queued\r\n")
                mail, rcpts = None, []
            elif verb == "RSET":
                mail, rcpts = None, []
                self.send("250 2.0.0 ok\r\n")
            elif verb == "QUIT":
                self.closed()
                self.send("221 2.0.0 bye\r\n")
                return
            else:
                self.send("502 5.5.1 unknown command\r\n")


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


class Server6(Server):
    address_family = socket.AF_INET6


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("outdir")
    p.add_argument("--mode", default="accept")
    p.add_argument("--arg", default="0")
    p.add_argument("--tls", nargs=2)
    p.add_argument("--requiretls", action="store_true", help="advertise REQUIRETLS (RFC 8689) over TLS")
    p.add_argument("--no-dsn", action="store_true")
    p.add_argument("--no-8bit", action="store_true")
    p.add_argument("--no-pipelining", action="store_true")
    args = p.parse_args()
    os.makedirs(args.outdir, exist_ok=True)
    server = (Server6 if ":" in args.host else Server)((args.host, args.port), Handler)
    print("ready", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        sys.exit(0)
