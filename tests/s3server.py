"""A real S3-compatible HTTP server for the tests: moto's (``moto[server]``), in this
process on a loopback port, with every request it answers counted.

moto implements the S3 REST API over HTTP (signatures checked for form, any credentials
accepted), so the code under test talks to it with boto3 exactly as it would to AWS or
MinIO. Its state lives in this process: a bucket per test (``S3Server.bucket``) keeps
tests apart. The count (:attr:`S3Server.requests`, method and path per request) is
taken by a WSGI wrapper in front of moto's own application, so a test can tell whether
a read went to the server (the cache test).
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server

ACCESS_KEY = "pillarbox-test"
SECRET_KEY = "pillarbox-test-secret"
_buckets = itertools.count(1)


class _QuietHandler(MotoRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # one line per request on stderr would drown the test's output


class S3Server:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        app = DomainDispatcherApplication(create_backend_app)
        # Bound by the server itself on port 0: no race for a port with other tests.
        self._server = make_server(
            "127.0.0.1", 0, self._counting(app), threaded=True,
            request_handler=_QuietHandler,
        )  # fmt: skip
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _counting(self, app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
        def counted(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
            with self._lock:
                self.requests.append((environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")))
            return app(environ, start_response)

        return counted

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
        )  # fmt: skip

    def bucket(self) -> str:
        """A new, empty bucket."""
        name = f"pillarbox-{os.getpid()}-{next(_buckets)}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        answer = self.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
        return sorted(item["Key"] for item in answer.get("Contents", []))

    def count(self, method: str, bucket: str) -> int:
        """Requests of ``method`` on ``bucket``'s objects (path style: /bucket/key)."""
        with self._lock:
            objects = [path for m, path in self.requests if m == method]
        return sum(1 for path in objects if path.startswith(f"/{bucket}/"))

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join(10)


def store_table(server: S3Server, bucket: str, secret_dir: Path, **extra: Any) -> dict[str, Any]:
    """The ``[store]`` keys for bodies in ``bucket`` (the secret in a file under
    ``secret_dir``, as the config wants it)."""
    secret = secret_dir / "s3-secret"
    secret.write_text(SECRET_KEY + "\n")
    secret.chmod(0o600)
    return {
        "blobs": f"s3://{bucket}/mail",
        "s3_endpoint": server.endpoint,
        "s3_access_key": ACCESS_KEY,
        "s3_secret_key_file": str(secret),
        **extra,
    }
