"""The one-command local path: serve the pipeline on a schedule from this process.

``python -m pipelines.deployments [--cron "0 3 * * *"] [-S key=value ...]`` needs a Prefect API
(``prefect server start`` and ``PREFECT_API_URL``) and runs flows in this process; no work pool, no worker.
The production path is ``prefect.yaml``: ``prefect deploy --name imagegen-nightly`` and ``prefect worker start
--pool imagegen-process``. Both give the deployment one concurrency slot (a second run waits for the first).
"""

from __future__ import annotations

import argparse

from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

from pipelines.flow import imagegen_pipeline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--name", default="imagegen-nightly")
    ap.add_argument("--cron", default="0 3 * * *", help="schedule (cron, UTC)")
    ap.add_argument("-S", "--set", dest="overrides", action="append", default=[], help="param override")
    args = ap.parse_args()
    imagegen_pipeline.serve(
        name=args.name,
        cron=args.cron,
        parameters={"overrides": args.overrides},
        tags=["imagegen"],
        global_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE),
    )


if __name__ == "__main__":
    main()
