#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian 12 machine (run as root).
# Idempotent: a second run installs nothing new.
set -euo pipefail

pkgs=(
  # git servers on loopback
  git openssh-server openssh-client nginx fcgiwrap ssl-cert openssl
  # signature verification
  gpgv gnupg
  # age secrets: Debian's age writes the files trueup must read (issue 17)
  age
  # real package managers
  dnf rpm createrepo-c
  # system tier
  debootstrap systemd-container iproute2 dpkg-dev
  # benchmarks
  hyperfine
  # the fleet report's browser test (headless, --dump-dom, --screenshot)
  chromium fonts-dejavu-core
)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done

if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}"
  # Never let package scripts start daemons (nginx, sshd) on this machine:
  # the tests start their own, on loopback ports they choose.
  policy=/usr/sbin/policy-rc.d
  created_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    created_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ "$created_policy" = 1 ] && rm -f "$policy"
fi

# Cargo tools used by packaging and tests.
if ! command -v cargo-deb >/dev/null 2>&1; then
  cargo install --locked --quiet cargo-deb
fi
if ! command -v cargo-generate-rpm >/dev/null 2>&1; then
  cargo install --locked --quiet cargo-generate-rpm
fi
# The short fuzz pass in scripts/test.sh (scripts/fuzz.sh).
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  cargo install --locked --quiet cargo-fuzz
fi
