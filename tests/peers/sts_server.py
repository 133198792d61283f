"""An HTTPS server for MTA-STS policies on loopback, for tests.

usage: sts_server.py ADDRESS PORT CERT KEY DIR
Serves /.well-known/mta-sts.txt as text/plain from DIR/<Host header>.txt
(404 if there is none), over TLS with CERT/KEY.
"""
import http.server
import os
import ssl
import sys

address, port, cert, key, root = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        host = (self.headers.get("Host") or "").split(":")[0].lower()
        path = os.path.join(root, host + ".txt")
        if self.path != "/.well-known/mta-sts.txt" or "/" in host or not os.path.exists(path):
            self.send_response(404)
            self.end_headers()
            return
        with open(path, "rb") as f:
            body = f.read()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer((address, port), Handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
print("ready", flush=True)
server.serve_forever()
