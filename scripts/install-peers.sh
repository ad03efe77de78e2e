#!/usr/bin/env bash
# Installs the real programs the tests and benchmarks talk to, from Debian's packages.
# A quick no-op when they are all present. Safe to run again.
set -euo pipefail

packages=(
  openssh-server
  openssh-client
  python3-ipyparallel
  python3-jupyter-client
  python3-ipykernel
  python3-jupyter-server
  python3-nbconvert
  python3-nbclient
  openmpi-bin
  python3-mpi4py
  iproute2
  procps
  libpam-oath
  oathtool
  slurm-wlm
  munge
)

missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
  [ "$status" = installed ] || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo -n)
echo "install-peers: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq >&2
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
