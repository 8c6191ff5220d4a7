"""Create the platform's S3 buckets; run by the chart's post-install/post-upgrade hook job.

Idempotent (existing buckets are kept) and patient: the object store may still be starting when the
hook runs, so it retries until WAIT_SECONDS have passed, then fails with the last error. Works with
MinIO, SeaweedFS and any S3 service, through boto3 (in the Easel image already: MLflow's S3
artifact store uses it), so the image needs no S3 SDK of its own for this hook.

Environment:
  S3_ENDPOINT            http(s)://host:port of the store
  AWS_ACCESS_KEY_ID      credentials (from the Secret, never from a values file)
  AWS_SECRET_ACCESS_KEY
  AWS_REGION             default us-east-1
  BUCKETS                comma-separated bucket names
  WAIT_SECONDS           default 300

Prints one JSON summary line: {"endpoint", "created", "existing"}.
"""
from __future__ import annotations

import json
import os
import sys
import time
from urllib.parse import urlparse


def _config() -> dict:
    env = os.environ
    endpoint = env.get("S3_ENDPOINT", "")
    url = urlparse(endpoint)
    if url.scheme not in ("http", "https") or not url.netloc or url.path not in ("", "/"):
        raise ValueError(f"S3_ENDPOINT must look like http(s)://host:port, got {endpoint!r}")
    missing = [k for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if not env.get(k)]
    if missing:
        raise ValueError(f"{' and '.join(missing)} not set: mount the object-store credentials Secret")
    buckets = [b.strip() for b in env.get("BUCKETS", "").split(",") if b.strip()]
    if not buckets:
        raise ValueError("BUCKETS is empty: give a comma-separated list of bucket names")
    return {"endpoint": endpoint.rstrip("/"), "region": env.get("AWS_REGION") or "us-east-1", "buckets": buckets,
            "wait": float(env.get("WAIT_SECONDS", "300"))}


def main() -> int:
    try:
        cfg = _config()
    except ValueError as e:
        print(f"create_buckets: {e}", file=sys.stderr)
        return 2
    import boto3
    from botocore.config import Config

    client = boto3.client("s3", endpoint_url=cfg["endpoint"], region_name=cfg["region"],
                          aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
                          config=Config(s3={"addressing_style": "path"}, connect_timeout=5, read_timeout=30,
                                        retries={"max_attempts": 1}))  # this loop does the waiting
    deadline = time.monotonic() + cfg["wait"]
    while True:  # wait for the store: connection refused and 503s while it starts
        try:
            existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
            break
        except Exception as e:  # noqa: BLE001 - any failure is retried until the deadline
            if time.monotonic() >= deadline:
                print(f"create_buckets: object store at {cfg['endpoint']} not usable after "
                      f"{cfg['wait']:.0f}s: {type(e).__name__}: {str(e).splitlines()[0][:300]}",
                      file=sys.stderr)
                return 1
            time.sleep(min(2.0, max(0.1, deadline - time.monotonic())))
    created = []
    for name in cfg["buckets"]:
        if name not in existing:
            # us-east-1 is S3's default location and must not be named (S3 rejects it)
            extra = ({} if cfg["region"] == "us-east-1"
                     else {"CreateBucketConfiguration": {"LocationConstraint": cfg["region"]}})
            client.create_bucket(Bucket=name, **extra)
            created.append(name)
    print(json.dumps({"endpoint": cfg["endpoint"], "created": created,
                      "existing": sorted(set(cfg["buckets"]) - set(created))}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
