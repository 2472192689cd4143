# Helpers shared by start.sh and stop.sh (sourced, not run).

# alive PID -> the process exists and is not a zombie. PID 1 on these machines reaps orphaned
# daemons ~2 s late, so a stopped daemon stays a zombie ("Z") that long: do not count it.
alive() { [ -n "$1" ] && [ -r "/proc/$1/stat" ] && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]; }

# running PIDFILE COMM -> true if the pid in PIDFILE is alive and really is COMM (pid files of a
# previous machine life may point at an unrelated process)
running() { local p; p=$(cat "$1" 2>/dev/null) || return 1; alive "$p" && [ "$(cat "/proc/$p/comm" 2>/dev/null)" = "$2" ]; }

# stop_pidfile PIDFILE COMM -> SIGTERM, wait up to 15 s, then SIGKILL. Only ever the pid in the file.
stop_pidfile() {
    local p; running "$1" "$2" || { rm -f "$1"; return 0; }
    p=$(cat "$1"); kill "$p" 2>/dev/null || true
    for _ in $(seq 150); do alive "$p" || break; sleep 0.1; done
    if alive "$p"; then echo "$2 ($p) ignored SIGTERM for 15 s, sending SIGKILL" >&2; kill -9 "$p" 2>/dev/null || true; fi
    rm -f "$1"; log "stopped $2 ($p)"
}

_T0=${SLURM_SCRIPTS_T0:-${EPOCHREALTIME/[.,]/}}; export SLURM_SCRIPTS_T0=$_T0
log() { local now=${EPOCHREALTIME/[.,]/}; printf '[%s %6.2fs] %s\n' "${LOG_TAG:-slurm}" "$(( (now - _T0) / 10000 ))e-2" "$*"; }
