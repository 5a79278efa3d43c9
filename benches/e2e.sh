#!/usr/bin/env bash
# End-to-end benchmark of issue 6: dnsperf through the lab's router with dnsmasq and unbound,
# with and without marking (dnsmasq --conntrack, nfqmark), alternating configurations round by
# round. Prints each run and a summary (median QPS and latency, marked share, CPU per party and
# per query, single-query latency median and p99 and what marking adds, and the ratios 3/1, 3/2,
# 4/5); the whole output is also kept in target/bench-e2e-DATE.txt.
#
#   sudo -E env "PATH=$PATH" benches/e2e.sh                 # unpinned, 5 rounds x 10 s: about 10 minutes
#   sudo -E env "PATH=$PATH" benches/e2e.sh --pin           # the resolver alone on CPU 0
#   sudo -E env "PATH=$PATH" benches/e2e.sh --rounds 3 --duration 20 --direct
#   sudo -E env "PATH=$PATH" benches/e2e.sh --ideal         # the idealized lab (no NAT upstream)
#   benches/e2e.sh --help                                   # every option
#
# The lab is a real multi-WAN router by default: each uplink masquerades and the upstream host
# drops packets whose source does not belong to the link they arrive on; each run prints how
# many it dropped and how many the router sent out of another link than their flow's binding.
#
# Needs root (network namespaces, iptables, NFQUEUE), dnsperf, dnsmasq and unbound
# (bash .ci/run installs them). Uses only 198.18.0.0/15 inside its own namespaces, removed at
# the end of every run, pass or fail.
set -euo pipefail
cd "$(dirname "$0")/.."

case " $* " in
*" -h "* | *" --help "*) exec cargo bench --quiet --bench e2e -- --help ;;
esac
if [[ $(id -u) -ne 0 ]]; then
    echo "e2e.sh: needs root: sudo -E env \"PATH=\$PATH\" benches/e2e.sh $*" >&2
    exit 2
fi

# The release nfqmark the benchmark runs (cargo bench builds the same binary in the same place).
cargo build --release --quiet
target_dir=$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
target_dir=${target_dir:-target}
log="$target_dir/bench-e2e-$(date +%Y%m%d-%H%M%S).txt"
cargo bench --quiet --bench e2e -- "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
echo "e2e.sh: output kept in $log" >&2
exit "$status"
