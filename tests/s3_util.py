"""A local S3-compatible server for the tests (moto's, in a thread on a free loopback port)."""
from __future__ import annotations

import os

from fastproxy.scratch_db import free_port


def s3_server_fixture():
    """An S3 endpoint on 127.0.0.1 with the environment boto3 reads set for this process and its
    children; yields (endpoint, boto3 client)."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield endpoint, boto3.client("s3", endpoint_url=endpoint)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


def upload_dir(client, local: str, bucket: str, prefix: str) -> None:
    for name in os.listdir(local):
        client.upload_file(os.path.join(local, name), bucket, f"{prefix}/{name}")
