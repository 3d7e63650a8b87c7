#!/usr/bin/env bash
# A procession worker with nothing but bash, curl and python3 (for JSON):
# long-poll the HTTP worker API for a job, run it, ack or fail it, repeat.
#
#   PROCESSION_URL    the server's HTTP address (default http://127.0.0.1:8080)
#   PROCESSION_TOKEN  the worker (or admin) token, if the server has one
#   QUEUES            queues to take jobs from, preferred first (default: default)
#   WORKER            this worker's name (default: sh-HOST-PID)
#   WAIT              seconds one long-poll may wait (the server caps it)
#   HANDLER           the command that runs a job, given its type and args
#                     (JSON); its output is the job's result, and a non-zero
#                     exit fails the attempt (default: echo)
#   MAX_JOBS          stop after this many jobs (default: never)
#
# See docs/http-api.rst for the API.
set -u

url=${PROCESSION_URL:-http://127.0.0.1:8080}
queues=${QUEUES:-default}
worker=${WORKER:-sh-$(hostname)-$$}
wait=${WAIT:-15}
handler=${HANDLER:-echo}
max_jobs=${MAX_JOBS:-0}

auth=()
if [ -n "${PROCESSION_TOKEN:-}" ]; then
    auth=(-H "Authorization: Bearer $PROCESSION_TOKEN")
fi

body=$(mktemp)
trap 'rm -f "$body"' EXIT

# Print shell assignments job_id, job_path (the id escaped for a URL),
# job_lease, job_type and job_args (JSON) from the job in file $1.
read_job() {
    python3 -c '
import json, shlex, sys, urllib.parse
job = json.load(open(sys.argv[1]))
fields = {
    "id": job["id"],
    "path": urllib.parse.quote(job["id"], safe=""),
    "lease": job["lease"],
    "type": job["type"],
    "args": json.dumps(job["args"]),
}
for name, value in fields.items():
    print(f"job_{name}={shlex.quote(value)}")
' "$1"
}

# The body of an ack ($1 = lease, $2 = result text) or a fail
# ($1 = lease, $2 = error message, $3 = "fail").
report() {
    python3 -c '
import json, sys
lease, text = sys.argv[1], sys.argv[2]
if len(sys.argv) > 3:
    body = {"lease": lease, "error": {"type": "HandlerFailed", "message": text}}
else:
    body = {"lease": lease, "result": text}
print(json.dumps(body))
' "$@"
}

# POST JSON $2 to path $1; print the status code, keep the reply in $body.
post() {
    curl -s -o "$body" -w '%{http_code}' ${auth[@]+"${auth[@]}"} \
        -H 'Content-Type: application/json' --data-binary "$2" "$url$1"
}

done_jobs=0
while [ "$max_jobs" -eq 0 ] || [ "$done_jobs" -lt "$max_jobs" ]; do
    status=$(curl -s -o "$body" -w '%{http_code}' ${auth[@]+"${auth[@]}"} -G \
        --data-urlencode "queues=$queues" --data-urlencode "worker=$worker" \
        --data-urlencode "wait=$wait" "$url/api/v1/jobs/next")
    case $status in
        200) ;;
        204) continue ;;  # no job within wait: ask again
        000) echo "worker: cannot reach $url, retrying" >&2; sleep 1; continue ;;
        *) echo "worker: next: $status $(cat "$body")" >&2; sleep 1; continue ;;
    esac

    eval "$(read_job "$body")"
    echo "worker: running $job_type $job_args (job $job_id)" >&2
    if output=$($handler "$job_type" "$job_args" 2>&1); then
        status=$(post "/api/v1/jobs/$job_path/ack" "$(report "$job_lease" "$output")")
    else
        status=$(post "/api/v1/jobs/$job_path/fail" "$(report "$job_lease" "$output" fail)")
    fi
    # 409 lease_lost: the job outlived its lease and went back to its queue;
    # its result is discarded.  Anything else is logged and the job comes
    # back when its lease expires.
    [ "$status" = 200 ] || echo "worker: job $job_id: $status $(cat "$body")" >&2
    done_jobs=$((done_jobs + 1))
done
