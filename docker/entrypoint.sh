#!/bin/sh
# Size the thread pools to the container's CPU limit (cgroup v2 cpu.max, else v1 quota, else
# the visible CPUs), unless set explicitly, then run the command.
set -eu
cpus=""
if [ -r /sys/fs/cgroup/cpu.max ]; then
    read -r quota period < /sys/fs/cgroup/cpu.max
    [ "$quota" != "max" ] && cpus=$(( (quota + period - 1) / period ))
elif [ -r /sys/fs/cgroup/cpu/cpu.cfs_quota_us ]; then
    quota=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us); period=$(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us)
    [ "$quota" -gt 0 ] && cpus=$(( (quota + period - 1) / period ))
fi
[ -n "$cpus" ] || cpus=$(nproc)
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$cpus}"
export MKL_NUM_THREADS="${MKL_NUM_THREADS:-$OMP_NUM_THREADS}"
export DUPQ_THREADS="${DUPQ_THREADS:-$OMP_NUM_THREADS}"
exec "$@"
