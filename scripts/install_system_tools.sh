#!/usr/bin/env bash
# The Debian packages the test suite needs beyond Python: Go with grpc-go and
# the protobuf plugins (the Go client is built offline in GOPATH mode against
# /usr/share/gocode), and promtool (package prometheus) for the alert rules.
# Installs only what is missing; needs root or sudo.
set -euo pipefail

# golang-github-golang-protobuf-1-5-dev must be named: without it,
# golang-google-grpc-dev pulls protobuf 1.3, whose runtime cannot read the
# stubs protoc-gen-go writes.
PACKAGES=(
  golang-go protoc-gen-go protoc-gen-go-grpc
  golang-google-grpc-dev golang-google-protobuf-dev golang-github-golang-protobuf-1-5-dev
  prometheus
)

missing=()
for package in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
  sudo=(sudo)
fi
echo "installing ${missing[*]}"
"${sudo[@]}" apt-get update -qq
# The prometheus package would start a server; only its promtool is wanted.
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
  "${sudo[@]}" systemctl stop prometheus || true
fi
