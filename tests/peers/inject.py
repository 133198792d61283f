"""POSTs injection requests as an application would, with Python's
http.client on one keep-alive connection.

usage: inject.py HOST PORT TOKEN FILE...   (TOKEN "-" sends no Authorization)
For each FILE (a request body), prints one line: the status, a space, the
answer body on one line.
"""
import http.client
import sys

host, port, token = sys.argv[1], int(sys.argv[2]), sys.argv[3]
conn = http.client.HTTPConnection(host, port, timeout=120)
for path in sys.argv[4:]:
    with open(path, "rb") as f:
        body = f.read()
    headers = {"Content-Type": "application/json"}
    if token != "-":
        headers["Authorization"] = "Bearer " + token
    conn.request("POST", "/api/inject/v1", body=body, headers=headers)
    resp = conn.getresponse()
    answer = resp.read().decode("utf-8", "replace").replace("\n", " ").strip()
    print(resp.status, answer, flush=True)
    if resp.getheader("Connection", "").lower() == "close":
        conn.close()
        conn = http.client.HTTPConnection(host, port, timeout=120)
