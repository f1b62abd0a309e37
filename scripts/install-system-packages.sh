#!/bin/sh
# Install the Debian packages the tests and benchmarks run for real: Ruby with its ZeroMQ and
# msgpack bindings, and redis-server. Only installs what is missing, and only as root; otherwise
# it prints the command to run.
set -eu

missing=""
command -v ruby >/dev/null 2>&1 || missing="$missing ruby"
if command -v ruby >/dev/null 2>&1; then
    ruby -e "require 'ffi-rzmq'" >/dev/null 2>&1 || missing="$missing ruby-ffi-rzmq"
    ruby -e "require 'msgpack'" >/dev/null 2>&1 || missing="$missing ruby-msgpack"
else
    missing="$missing ruby-ffi-rzmq ruby-msgpack"
fi
command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || missing="$missing redis-server"

if [ -z "$missing" ]; then
    exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "missing system packages:$missing" >&2
    echo "install them with: sudo apt-get install$missing" >&2
    exit 0
fi
echo "installing system packages:$missing" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
