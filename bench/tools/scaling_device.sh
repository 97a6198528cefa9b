#!/bin/sh
# Scaling run (issue 21's report): ringlb-bench scenario bench/scenarios/scaling.toml, ringlb
# with 1, 2, 4 and 8 workers, on a host with 16+ CPUs.
#
#   bench/tools/scaling_device.sh prepare   # here: stripped copies in target/device (small
#                                           # enough to carry to a machine without a toolchain)
#   bench/tools/scaling_device.sh run       # there: runs the scenario, prints report.md
#
# Output goes to $OUT (a device run's fetched folder) or bench-out/scaling.
set -eu
cd "$(dirname "$0")/../.."
case "${1:-run}" in
prepare)
    cargo build --release --bins
    mkdir -p target/device
    cp target/release/ringlb target/release/ringlb-bench target/device/
    strip target/device/ringlb target/device/ringlb-bench
    ls -la target/device
    ;;
run)
    # Every process is pinned with taskset; without it, or without CPUs 0-15 to pin to (a
    # container's cpuset may number them otherwise), the figures would not mean what they say.
    # (taskset takes a list with absent CPUs as long as one is there, so each is tried alone.)
    ok=yes
    command -v taskset >/dev/null || ok=no
    for c in 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15; do
        [ "$ok" = yes ] && { taskset -c "$c" true 2>/dev/null || ok=no; }
    done
    if [ "$ok" = no ]; then
        echo "scaling.toml pins to CPUs 0-15 (0-7 proxy, 8-11 backends, 12-15 load): needs taskset and those CPUs; this host offers $(nproc)" >&2
        exit 2
    fi
    bin=target/device
    [ -x "$bin/ringlb-bench" ] || bin=target/release
    out="${OUT:-bench-out}/scaling"
    RINGLB_BIN="$bin/ringlb" "$bin/ringlb-bench" scenario bench/scenarios/scaling.toml --out "$out"
    cat "$out/report.md"
    ;;
*)
    echo "usage: $0 prepare|run" >&2
    exit 2
    ;;
esac
