"""Serve the pipeline on a schedule from this machine: ``python -m pipelines.deployments [--cron "0 3 * * *"]``.

Needs a Prefect API (``prefect server start`` and ``PREFECT_API_URL``, or Prefect Cloud). For workers on
Docker or Kubernetes, create a work pool and ``imagegen_pipeline.deploy(...)`` to it instead (see docker/).
"""

from __future__ import annotations

import argparse

from pipelines.flow import imagegen_pipeline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--name", default="imagegen-nightly")
    ap.add_argument("--cron", default="0 3 * * *", help="schedule (cron, server time zone)")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("-S", "--set", dest="overrides", action="append", default=[], help="param override")
    args = ap.parse_args()
    imagegen_pipeline.serve(
        name=args.name,
        cron=args.cron,
        parameters={"params_path": args.params, "overrides": args.overrides},
        tags=["imagegen"],
    )


if __name__ == "__main__":
    main()
