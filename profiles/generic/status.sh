#!/usr/bin/env bash
# Job status for snakemake-executor-plugin-cluster-generic (cluster-generic-status-cmd): called with what the
# submit command printed; prints running, success or failed. Without a status command the plugin only sees the
# markers the job itself writes, so a job the scheduler kills (time or memory limit, qdel, a lost node) leaves
# Snakemake waiting for ever.
#
# The scheduler is the first one found: SLURM (sacct, else scontrol), LSF (bjobs), SGE (qstat + qacct), PBS Pro /
# OpenPBS / Torque (qstat -f). A job the scheduler no longer knows is reported failed (Snakemake says so, and
# retries it if the profile has retries), never running, which would wait for ever. Tested against a real SLURM;
# the other branches read each scheduler's documented output (tests/test_slurm.py: stand-ins that print it).
set -u
submitted="${1:?usage: status.sh JOBID (what the submit command printed)}"
# sbatch --parsable: "123" or "123;cluster"; PBS qsub: "123.server"; else the first number in what was printed:
# "Submitted batch job 123" (sbatch), "Your job 456 (...) has been submitted" (SGE qsub without -terse),
# "Job <789> is submitted to queue <normal>." (LSF bsub).
if [[ $submitted =~ ^([0-9][^;[:space:]]*) ]]; then
    id="${BASH_REMATCH[1]}"
elif [[ $submitted =~ (^|[^0-9])([0-9]+)([^0-9]|$) ]]; then
    id="${BASH_REMATCH[2]}"
else
    echo "status.sh: no job id in '$submitted'" >&2
    echo failed
    exit 0
fi

if command -v sacct >/dev/null 2>&1 || command -v scontrol >/dev/null 2>&1; then
    # Whole state names (sacct cuts a column at 10 characters: CONFIGURI+), first word ("CANCELLED by 0").
    state=$(sacct -j "$id" -X -n --parsable2 -o State 2>/dev/null | awk 'NR == 1 {print $1}')
    if [ -z "$state" ]; then  # no accounting: scontrol knows a job until MinJobAge after its end
        state=$(scontrol show job "$id" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | head -n 1 | cut -d= -f2)
    fi
    case "$state" in
        PENDING|RUNNING|CONFIGURING|COMPLETING|SUSPENDED|REQUEUED|REQUEUE_FED|REQUEUE_HOLD|RESIZING|SIGNALING|STAGE_OUT)
            echo running ;;
        COMPLETED) echo success ;;
        *) echo failed ;;
    esac
elif command -v bjobs >/dev/null 2>&1; then
    case "$(bjobs -noheader -o stat "$id" 2>/dev/null | awk 'NR == 1 {print $1}')" in
        DONE) echo success ;;
        PEND|RUN|PSUSP|USUSP|SSUSP|WAIT|PROV) echo running ;;
        *) echo failed ;;
    esac
elif command -v qacct >/dev/null 2>&1; then  # SGE: qstat knows waiting and running jobs, qacct finished ones
    if qstat -j "$id" >/dev/null 2>&1; then
        echo running
    else
        record=$(qacct -j "$id" 2>/dev/null)
        failed=$(awk '$1 == "failed" {value = $2} END {print value}' <<<"$record")
        status=$(awk '$1 == "exit_status" {value = $2} END {print value}' <<<"$record")
        if [ "$failed" = "0" ] && [ "$status" = "0" ]; then echo success; else echo failed; fi
    fi
elif command -v qstat >/dev/null 2>&1; then
    # Torque keeps a finished job in `qstat -f` for a while (state C); PBS Pro shows it only with -x (state F).
    # (Torque's -x means XML, so it is asked only when the plain query knows no such job.)
    record=$(qstat -f "$id" 2>/dev/null)
    [ -n "$record" ] || record=$(qstat -f -x "$id" 2>/dev/null)
    state=$(awk -F' = ' '$1 ~ /^ *job_state$/ {print $2; exit}' <<<"$record")
    status=$(awk -F' = ' 'tolower($1) ~ /^ *exit_status$/ {print $2; exit}' <<<"$record")
    case "$state" in
        C|F) if [ "$status" = "0" ]; then echo success; else echo failed; fi ;;
        "") echo failed ;;
        *) echo running ;;
    esac
else
    echo "status.sh: no scheduler command found (sacct or scontrol, bjobs, qacct, qstat) on PATH" >&2
    echo failed
fi
