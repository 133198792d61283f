#!/usr/bin/env bash
# The test command: installs what the tests need when it is missing (Debian
# packages, as root), then runs every test of the workspace. Extra arguments
# go to `cargo test` (e.g. `./test.sh --test delivery`).
#
# The tests start the real binary on loopback and drive it with real peers:
# Python (smtplib, poplib, ssl, dkimpy), swaks, openssl, Postfix's smtp-source and
# Postfix itself, redis-server, Dovecot and unbound (private instances), dnsmasq,
# ldns-signzone (a DNSSEC-signed zone for DANE), curl, strace.
set -euo pipefail
cd "$(dirname "$0")"

PACKAGES=(postfix swaks openssl dnsmasq-base python3 ca-certificates strace libnet-ssleay-perl
  libio-socket-ssl-perl python3-dkim python3-nacl redis-server curl
  dovecot-imapd dovecot-lmtpd unbound ldnsutils)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "test.sh: installing ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# The python3 on PATH may not be Debian's (pyenv, a venv): give it dkimpy
# (and PyNaCl, for Ed25519) from PyPI if the Debian packages are not its.
if ! python3 -c 'import dkim, nacl' 2>/dev/null; then
  echo "test.sh: installing dkimpy and pynacl for $(command -v python3)"
  python3 -m pip install -q dkimpy pynacl
fi

cargo test --workspace "$@"
