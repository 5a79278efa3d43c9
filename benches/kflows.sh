#!/usr/bin/env bash
# Benchmark of issue 15: new connections per second through the lab's router with 1,000
# DNS-learned addresses, no marking vs the queue backend vs the kernel backend (alternated round
# by round), then the time from a DNS answer to its nft set element under a steady answer rate.
# The whole output is also kept in target/bench-kflows-DATE.txt.
#
#   sudo -E env "PATH=$PATH" benches/kflows.sh                # 3 rounds x 8 s, then 10 s of answers: about 3 minutes
#   sudo -E env "PATH=$PATH" benches/kflows.sh --rounds 5 --rate 2000
#   benches/kflows.sh --help                                  # every option
#
# Needs root (network namespaces, iptables, nft, NFQUEUE) and dnsmasq. Uses only 198.18.0.0/15
# inside its own namespaces, removed at the end of every run, pass or fail.
set -euo pipefail
cd "$(dirname "$0")/.."

case " $* " in
*" -h "* | *" --help "*) exec cargo bench --quiet --bench kflows -- --help ;;
esac
if [[ $(id -u) -ne 0 ]]; then
    echo "kflows.sh: needs root: sudo -E env \"PATH=\$PATH\" benches/kflows.sh $*" >&2
    exit 2
fi

# The release nfqmark the benchmark runs (cargo bench builds the same binary in the same place).
cargo build --release --quiet
target_dir=$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
target_dir=${target_dir:-target}
log="$target_dir/bench-kflows-$(date +%Y%m%d-%H%M%S).txt"
cargo bench --quiet --bench kflows -- "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
echo "kflows.sh: output kept in $log" >&2
exit "$status"
