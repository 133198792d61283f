#!/usr/bin/env python3
"""Checks every DKIM-Signature of a message with dkimpy (an independent
verifier), with DNS answered from a file instead of the network.

usage: dkim_verify.py MESSAGE_FILE RECORDS_FILE

RECORDS_FILE: lines "NAME TXT-VALUE", e.g.
  s1._domainkey.example.com v=DKIM1; k=rsa; p=MIIB...
Prints one line per signature, top to bottom: "pass d=... s=... a=..." or
"fail d=... s=... a=... REASON"; "none" if there is no signature.
"""
import logging
import sys

import dkim

logging.disable(logging.CRITICAL)


def main():
    message = open(sys.argv[1], "rb").read()
    records = {}
    for line in open(sys.argv[2]):
        line = line.strip()
        if line:
            name, value = line.split(" ", 1)
            records[name.lower().rstrip(".")] = value.encode()

    def dnsfunc(name, timeout=5):
        if isinstance(name, bytes):
            name = name.decode()
        return records.get(name.lower().rstrip("."))

    d = dkim.DKIM(message)
    sigs = [v for (k, v) in d.headers if k.lower() == b"dkim-signature"]
    if not sigs:
        print("none")
        return
    for i, sig in enumerate(sigs):
        tags = dkim.util.parse_tag_value(sig)
        desc = "d=%s s=%s a=%s" % (tags[b"d"].decode(), tags[b"s"].decode(), tags[b"a"].decode())
        try:
            ok = d.verify(idx=i, dnsfunc=dnsfunc)
            print(("pass " if ok else "fail ") + desc)
        except dkim.DKIMException as e:
            print("fail %s %s" % (desc, e))


if __name__ == "__main__":
    main()
