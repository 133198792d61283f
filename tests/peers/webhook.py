#!/usr/bin/env python3
"""A webhook endpoint for ringpost's event tests (loopback only).

usage: webhook.py HOST PORT OUTDIR [--fail N] [--slow S] [--tls CERT KEY] [--raw]

Each POST must be a JSON array of event objects; they are appended, one per
line, to OUTDIR/events.jsonl, and OUTDIR/posts counts the accepted POSTs.
--fail N answers the first N POSTs with 503 (nothing recorded); --slow S
waits S seconds before answering each. Anything that is not a JSON array
of objects gets 400 (and is counted in OUTDIR/bad). --tls serves https.
--keep-alive answers as HTTP/1.1, so a client may keep its connection;
OUTDIR/connections counts the connections taken.
--raw takes any body: each is saved as OUTDIR/post-<n> and its Content-Type
as OUTDIR/post-<n>.type (TLS reports).
Prints "ready" once
listening; one request at a time, so the file is in arrival order.
"""
import argparse
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

state = {"posts": 0, "failed": 0, "bad": 0, "connections": 0}


def bump(name):
    state[name] += 1
    with open(os.path.join(args.outdir, name), "w") as f:
        f.write("%d\n" % state[name])


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def setup(self):
        super().setup()
        if args.keep_alive:
            self.protocol_version = "HTTP/1.1"
        bump("connections")

    def answer(self, code):
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        if args.slow:
            time.sleep(args.slow)
        if state["failed"] < args.fail:
            bump("failed")
            return self.answer(503)
        if args.raw:
            n = state["posts"] + 1
            with open(os.path.join(args.outdir, "post-%d.type" % n), "w") as f:
                f.write(self.headers.get("Content-Type", ""))
            with open(os.path.join(args.outdir, "post-%d" % n), "wb") as f:
                f.write(body)
            bump("posts")
            return self.answer(200)
        try:
            events = json.loads(body)
            if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
                raise ValueError("not an array of objects")
        except ValueError:
            bump("bad")
            return self.answer(400)
        if self.headers.get("Content-Type") != "application/json":
            bump("bad")
            return self.answer(415)
        with open(os.path.join(args.outdir, "events.jsonl"), "a") as f:
            for e in events:
                f.write(json.dumps(e) + "\n")
        bump("posts")
        self.answer(200)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("outdir")
    p.add_argument("--fail", type=int, default=0)
    p.add_argument("--keep-alive", action="store_true",
                   help="answer as HTTP/1.1 (connections kept); OUTDIR/connections counts them")
    p.add_argument("--slow", type=float, default=0)
    p.add_argument("--tls", nargs=2)
    p.add_argument("--raw", action="store_true")
    args = p.parse_args()
    server = HTTPServer((args.host, args.port), Handler)
    if args.tls:
        import ssl
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.tls[0], args.tls[1])
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print("ready", flush=True)
    sys.stdout.flush()
    server.serve_forever()
