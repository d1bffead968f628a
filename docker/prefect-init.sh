#!/bin/sh
# imagegen-prefect-init: creates imagegen's work pools and deployments on the Prefect server (PREFECT_API_URL)
# when they do not exist yet, from the project at /app (prefect.yaml), and leaves existing ones as they are:
# `prefect deploy` replaces a deployment's schedules, so re-running it would drop schedules added in the UI.
# Apply prefect.yaml again on purpose with
#   docker compose -f docker/compose.yaml run --rm prefect-init prefect --no-prompt deploy --name <deployment>
# IMAGEGEN_POOLS / IMAGEGEN_DEPLOYMENTS (space-separated) narrow what is created.
set -eu
pools=${IMAGEGEN_POOLS:-imagegen-process imagegen-gpu}
deployments=${IMAGEGEN_DEPLOYMENTS:-imagegen-nightly imagegen-nightly-gpu}
flow=imagegen-pipeline
# prefect.yaml's pull step records "{{ $PWD }}": the folder the workers mount the project at.
cd /app
export PWD=/app

for pool in $pools; do
    if out=$(prefect work-pool inspect "$pool" 2>&1); then
        echo "work pool $pool: exists, left as it is"
    elif echo "$out" | grep -q "not found"; then
        prefect work-pool create "$pool" --type process
    else
        echo "$out" >&2
        exit 1
    fi
done

for name in $deployments; do
    if out=$(prefect deployment inspect "$flow/$name" 2>&1); then
        echo "deployment $flow/$name: exists, left as it is"
    elif echo "$out" | grep -q "not found"; then
        prefect --no-prompt deploy --name "$name"
    else
        echo "$out" >&2
        exit 1
    fi
done
