"""The S3 suite's run: the same rounds as the local one (one worker per library, the
same seeded state, the order alternating between rounds), with every checkpoint under
one ``s3://`` prefix of the run's own, which is removed at the end."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .runner import BenchConfig, Benchmark, Progress
from .runners_s3 import (
    S3_LIBRARIES,
    S3_OPERATIONS,
    delete_prefix,
    endpoint_from_env,
    region_from_env,
    s3_client,
    split_url,
)
from .workloads import workload_bytes

#: An S3 operation slower than this many bytes/s (plus OPERATION_TIMEOUT) is taken as hung.
SLOWEST_NETWORK = 5e6


@dataclass
class S3Target:
    """Where an S3 run saves: the run's own prefix, and how the server was reached.

    Example:
        >>> t = S3Target.under("s3://bench/runs", "http://127.0.0.1:9000", "us-east-1", "x")
        >>> t.base.startswith("s3://bench/runs/ckptio-bench-"), t.bucket
        (True, 'bench')
    """

    #: ``s3://bucket/prefix/ckptio-bench-<random>``: every object of the run is below it.
    base: str
    endpoint: str | None
    region: str
    #: e.g. "SeaweedFS 4.48 (weed mini on 127.0.0.1, started by the bench)"
    server: str

    @classmethod
    def under(cls, url: str, endpoint: str | None, region: str, server: str) -> S3Target:
        """A fresh run prefix below ``url`` (``s3://bucket`` or ``s3://bucket/prefix``)."""
        bucket, key = split_url(url)
        run = f"ckptio-bench-{uuid.uuid4().hex[:12]}"
        return cls(f"s3://{bucket}/{key + '/' if key else ''}{run}", endpoint, region, server)

    @classmethod
    def from_env(cls, url: str, server: str = "an existing server") -> S3Target:
        """A run prefix below ``url`` on the endpoint and region of the ``AWS_*`` variables."""
        return cls.under(url, endpoint_from_env(), region_from_env(), server)

    @property
    def bucket(self) -> str:
        return split_url(self.base)[0]

    def describe(self) -> dict[str, Any]:
        """The storage, as the report and JSON give it."""
        return {
            "url": self.base,
            "endpoint": self.endpoint or "AWS",
            "region": self.region,
            "server": self.server,
        }


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Sets ``values`` in ``os.environ`` for the block (the parent's own S3 client), then
    puts back what was there.

    Example:
        >>> with environment({"CKPTIO_BENCH_EXAMPLE": "1"}):
        ...     os.environ["CKPTIO_BENCH_EXAMPLE"]
        '1'
        >>> "CKPTIO_BENCH_EXAMPLE" in os.environ
        False
    """
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def check_reachable(target: S3Target) -> None:
    """Raises ValueError, saying why, unless a small object can be put, read and deleted
    under the run prefix (checked before the workers start).

    Example:
        ``check_reachable(S3Target.from_env("s3://bench"))``
    """
    client = s3_client(connect_timeout=5, read_timeout=15, retries={"max_attempts": 2})
    bucket, key = split_url(f"{target.base}/reachable")
    where = f"{target.base} at {target.endpoint or 'AWS'}"
    try:
        client.put_object(Bucket=bucket, Key=key, Body=b"ckptio bench")
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        client.delete_object(Bucket=bucket, Key=key)
    except Exception as e:
        raise ValueError(
            f"cannot write to {where}: {type(e).__name__}: {e} (endpoint and keys come from the AWS_* "
            "variables: AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
            "and AWS_ALLOW_HTTP=true for http)"
        ) from None
    if body != b"ckptio bench":
        raise ValueError(f"{where}: an object read back different bytes")


class S3Benchmark(Benchmark):
    """One S3 run: ckptio, boto3, s3torchconnector and the raw multipart put / ranged
    get, saving under ``target.base``; worker logs go to ``workdir``. ``env``: the
    ``AWS_*`` variables the workers need beyond this process's own.

    Example:
        ``S3Benchmark(config, Path(tmp), S3Target.from_env("s3://bench"), 8 << 20, 8).run()``
    """

    suite = "s3"
    libraries = S3_LIBRARIES
    operations = S3_OPERATIONS
    slowest = SLOWEST_NETWORK

    def __init__(
        self,
        config: BenchConfig,
        workdir: Path,
        target: S3Target,
        part_size: int,
        parts_in_flight: int,
        progress: Progress | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        super().__init__(config, workdir, progress)
        self.target = target
        self.settings = {"part_size": part_size, "parts_in_flight": parts_in_flight, "base": target.base}
        self.worker_env = dict(env or {})
        self._client: Any = None

    def _source_place(self, workload: str, name: str) -> str:
        return f"{self.target.base}/{workload}/sources/{name}"

    def _round_place(self, workload: str, rnd: int, name: str) -> str:
        return f"{self.target.base}/{workload}/round-{rnd + 1}/{name}"

    def _begin_workload(self, workload: str) -> None:
        pass  # prefixes need no creating

    def _begin_round(self, workload: str, rnd: int) -> None:
        pass

    def _end_round(self, workload: str, rnd: int) -> None:
        pass  # the worker deleted each save right after it

    def _end_workload(self, workload: str) -> None:
        self.remove(f"{self.target.base}/{workload}")

    def remove(self, url: str | None = None) -> int:
        """Deletes every object under ``url`` (default: the whole run prefix); returns
        how many there were."""
        with environment(self.worker_env):
            if self._client is None:
                self._client = s3_client()
            return delete_prefix(self._client, url or self.target.base)


def estimate_memory_bytes_s3(config: BenchConfig) -> int:
    """Peak memory an S3 run needs: one state per worker, plus what a load holds at
    once (boto3: the downloaded blob, its copy and the arrays).

    Example:
        >>> estimate_memory_bytes_s3(BenchConfig(("llm",), 1 << 30, 3)) // (1 << 30)
        7
    """
    largest = max(workload_bytes(w, config.size) for w in config.workloads)
    return int((len(S3_LIBRARIES) + 3) * largest * 1.1)


def estimate_server_bytes(config: BenchConfig) -> int:
    """Disk a local server may fill during the run: every save of every library (the
    server reclaims deleted objects' space only later), with a 10 % margin.

    Example:
        >>> estimate_server_bytes(BenchConfig(("llm",), 1 << 30, 3)) // (1 << 30)
        17
    """
    saves = len(S3_LIBRARIES) * (config.runs + 1)
    return int(sum(saves * workload_bytes(w, config.size) for w in config.workloads) * 1.1)
