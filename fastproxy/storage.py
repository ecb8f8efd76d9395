"""Where captures live: a local directory, or a prefix of an S3-compatible bucket (`s3://bucket/prefix`).

Readers stream objects (never a whole capture in memory, nothing copied to local disk first);
capture output to S3 is written file by file (see capture/writer.py). S3 access uses boto3 and the
usual AWS configuration: credentials from the environment (`AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`), a profile or an instance role; `AWS_ENDPOINT_URL` (or `FASTPROXY_S3_ENDPOINT`)
for an S3-compatible service (MinIO, Ceph, moto, ...); `AWS_DEFAULT_REGION`.
"""
from __future__ import annotations

import os
from typing import BinaryIO

from fastproxy.errors import TrafficFormatError


def is_s3(location: str) -> bool:
    return str(location).startswith("s3://")


def open_storage(location: str) -> "LocalStorage | S3Storage":
    return S3Storage(location) if is_s3(location) else LocalStorage(location)


class LocalStorage:
    def __init__(self, path: str) -> None:
        self.location = os.fspath(path)

    def exists(self) -> bool:
        return os.path.isdir(self.location)

    def listdir(self) -> list[str]:
        return os.listdir(self.location)

    def path(self, name: str) -> str:
        return os.path.join(self.location, name)

    def open(self, name: str) -> BinaryIO:
        try:
            return open(self.path(name), "rb")
        except OSError as e:
            raise TrafficFormatError(f"{self.path(name)}: {e.strerror}") from e

    def read(self, name: str) -> bytes | None:
        """The whole (small) object, None if it does not exist."""
        try:
            with open(self.path(name), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise TrafficFormatError(f"{self.path(name)}: {e.strerror}") from e


class S3Storage:
    def __init__(self, url: str) -> None:
        rest = url[len("s3://"):]
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise TrafficFormatError(f"{url}: expected s3://bucket/prefix")
        self.location = url
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._client = None

    @property
    def client(self):
        if self._client is None:
            import boto3

            endpoint = os.environ.get("FASTPROXY_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL") or None
            self._client = boto3.client("s3", endpoint_url=endpoint)
        return self._client

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def path(self, name: str) -> str:
        return f"s3://{self.bucket}/{self.key(name)}"

    def _error(self, what: str, e: Exception) -> TrafficFormatError:
        return TrafficFormatError(f"{what}: {type(e).__name__}: {e}")

    def exists(self) -> bool:
        return bool(self.listdir())

    def listdir(self) -> list[str]:
        """Object names directly under the prefix (as a directory listing would show them)."""
        base = self.key("")
        names = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base,
                                                                          Delimiter="/")
            for page in pages:
                for obj in page.get("Contents", []):
                    name = obj["Key"][len(base):]
                    if name:
                        names.append(name)
        except Exception as e:  # noqa: BLE001 - botocore's errors have no common base worth naming here
            raise self._error(f"{self.location}: cannot list", e) from None
        return names

    def open(self, name: str) -> BinaryIO:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.key(name))["Body"]
        except Exception as e:  # noqa: BLE001
            raise self._error(self.path(name), e) from None
        return _Stream(body, self.path(name))

    def read(self, name: str) -> bytes | None:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.key(name))["Body"].read()
        except Exception as e:  # noqa: BLE001
            if getattr(e, "response", {}).get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise self._error(self.path(name), e) from None

    def upload(self, local_path: str, name: str) -> None:
        """Store a finished local file as `name` (multipart for large files)."""
        self.client.upload_file(local_path, self.bucket, self.key(name))

    def put(self, name: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.key(name), Body=data)


class _Stream:
    """A streaming S3 body with the file methods the readers use; errors name the object."""

    def __init__(self, body, where: str) -> None:
        self._body = body
        self._where = where

    def read(self, n: int = -1) -> bytes:
        try:
            return self._body.read(None if n is None or n < 0 else n)
        except Exception as e:  # noqa: BLE001
            raise TrafficFormatError(f"{self._where}: read failed: {e}") from None

    def close(self) -> None:
        self._body.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
