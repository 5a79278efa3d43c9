#!/usr/bin/env bash
# Install what nfqmark and its demo need (Debian/Ubuntu), then build and install the binary
# to /usr/local/bin. Run as root from a checkout: sudo ./install.sh
set -euo pipefail
cd "$(dirname "$0")"
if [[ $EUID -ne 0 ]]; then
    echo "install.sh: run as root (sudo ./install.sh): it installs packages and /usr/local/bin/nfqmark" >&2
    exit 2
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends iptables iproute2 dnsmasq-base dnsutils kmod
if ! command -v cargo >/dev/null; then
    echo "install.sh: cargo is missing: install Rust (https://rustup.rs) or the 'cargo' package" >&2
    exit 2
fi
# With `nfqmark demo` (the cargo feature `demo`, off by default): the README's first line runs it.
cargo build --release --locked -p nfqmark --features demo
install -m 0755 target/release/nfqmark /usr/local/bin/nfqmark
modprobe nfnetlink_queue 2>/dev/null || true
echo "installed /usr/local/bin/nfqmark"
