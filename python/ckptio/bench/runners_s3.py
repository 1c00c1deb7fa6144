"""The S3 rows of ``ckptio bench --s3`` / ``--storage s3://...``: ckptio, boto3,
s3torchconnector and the raw multipart put / ranged get (the limit), each saving the
whole training state to its own ``s3://`` place and loading it back, timed inside a
worker process like the local rows, with the same part size and concurrency.

Endpoint and credentials come from the ``AWS_*`` variables, for every row alike
(``AWS_ENDPOINT_URL``, ``AWS_REGION``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``;
``AWS_ALLOW_HTTP=true`` for ckptio over http).
"""

from __future__ import annotations

import importlib.util
import inspect
import io
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any, ClassVar, cast

import numpy as np

from .library import SAVE, Library, flat_pieces, module_version
from .measure import memory_status, reset_peak_rss, settle_memory, touch
from .runners_peers import torch_payload
from .workloads import TrainingState

LOAD = "load"
#: Every operation of an S3 round, in order.
S3_OPERATIONS = (SAVE, LOAD)
S3_OPERATION_HELP = {
    SAVE: "upload the whole state (weights + Adam state) to a fresh s3:// place",
    LOAD: "download everything into process memory and touch every page",
}
DEFAULT_PART_SIZE = 8 << 20
DEFAULT_PARTS_IN_FLIGHT = 8
#: S3's smallest part (but the last).
MIN_PART_SIZE = 5 << 20


def split_url(url: str) -> tuple[str, str]:
    """``s3://bucket/key/...`` -> ``("bucket", "key/...")``; raises ValueError otherwise.

    Example:
        >>> split_url("s3://bench/runs/a"), split_url("s3://bench")
        (('bench', 'runs/a'), ('bench', ''))
    """
    if not url.startswith("s3://"):
        raise ValueError(f"{url!r} is not an s3:// URL (s3://bucket/prefix)")
    bucket, _, key = url[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"{url!r}: no bucket name (s3://bucket/prefix)")
    return bucket, key.strip("/")


def endpoint_from_env() -> str | None:
    """The custom endpoint in ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``, or None (AWS).

    Example:
        ``endpoint_from_env()``: ``"http://127.0.0.1:8333"`` with ``AWS_ENDPOINT_URL`` so set
    """
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def region_from_env() -> str:
    """``AWS_REGION``, else ``AWS_DEFAULT_REGION``, else ``us-east-1``.

    Example:
        >>> isinstance(region_from_env(), str)
        True
    """
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def s3_client(connections: int = 10, **config: Any) -> Any:
    """A boto3 S3 client for the endpoint, region and keys in the ``AWS_*`` variables,
    with ``connections`` pooled connections; ``config``: more botocore ``Config`` options.

    Example:
        ``s3_client(16).list_objects_v2(Bucket="bench", MaxKeys=1)``
    """
    import boto3  # type: ignore[import-untyped]
    from botocore.config import Config  # type: ignore[import-untyped]

    endpoint = endpoint_from_env()
    if endpoint is not None:
        config.setdefault("s3", {}).setdefault("addressing_style", "path")
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=region_from_env(),
        config=Config(max_pool_connections=max(connections, 10), **config),
    )


def delete_prefix(client: Any, url: str) -> int:
    """Deletes every object under ``url`` + ``/``; returns how many there were.

    Example:
        ``delete_prefix(s3_client(), "s3://bench/ckptio-bench-1a2b")``
    """
    bucket, key = split_url(url)
    prefix = key + "/" if key else ""
    count = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        for i in range(0, len(keys), 1000):
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys[i : i + 1000], "Quiet": True})
        count += len(keys)
    return count


def part_ranges(total: int, part_size: int) -> list[tuple[int, int]]:
    """``total`` bytes cut into parts of ``part_size`` (the last shorter).

    Example:
        >>> part_ranges(20, 8)
        [(0, 8), (8, 16), (16, 20)]
    """
    return [(a, min(a + part_size, total)) for a in range(0, total, part_size)] or [(0, 0)]


_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _pool(threads: int) -> ThreadPoolExecutor:
    with _pools_lock:
        if threads not in _pools:
            _pools[threads] = ThreadPoolExecutor(threads, thread_name_prefix="s3-raw")
        return _pools[threads]


class RemoteLibrary(Library):
    """A row that saves to and loads from an ``s3://`` place (a key prefix): its worker
    calls :meth:`measure` instead of the local files' measurement.

    Example:
        >>> RemoteLibrary.operations
        ('save', 'load')
    """

    operations: ClassVar[tuple[str, ...]] = S3_OPERATIONS
    part_size = DEFAULT_PART_SIZE
    parts_in_flight = DEFAULT_PARTS_IN_FLIGHT
    base = ""

    def configure(self, settings: dict[str, Any]) -> None:
        """Takes the run's part size, parts in flight and base URL (again after every
        workload's ``prepare`` reset)."""
        self.part_size = int(settings.get("part_size", DEFAULT_PART_SIZE))
        self.parts_in_flight = int(settings.get("parts_in_flight", DEFAULT_PARTS_IN_FLIGHT))
        self.base = str(settings.get("base", ""))

    def put(self, url: str) -> dict[str, float]:
        """Saves the prepared state under ``url``; returns extra figures."""
        raise NotImplementedError

    def get(self, url: str) -> Any:
        """Loads everything saved under ``url`` into memory; returns the tree of arrays."""
        raise NotImplementedError

    def remove(self, url: str) -> None:
        """Deletes what a save put under ``url`` (untimed)."""
        if "_admin" not in self.__dict__:
            self._admin = s3_client()
        delete_prefix(self._admin, url)

    def measure(self, op: str, url: str, keep: bool) -> dict[str, Any]:
        """Runs and times one operation, with its peak-RSS growth (``VmHWM`` reset first);
        a save that is not kept is deleted afterwards, untimed."""
        result: Any = None
        extra: dict[str, float] = {}
        settle_memory()
        reset_peak_rss()
        before = memory_status()
        start = time.perf_counter()
        if op == SAVE:
            extra.update(self.put(url))
        elif op == LOAD:
            result = self.get(url)
            touch(result)
        else:
            raise ValueError(f"unknown S3 operation {op!r}")
        seconds = time.perf_counter() - start
        after = memory_status()
        del result
        settle_memory()
        if op == SAVE and not keep:
            self.remove(url)
        return {
            "seconds": seconds,
            "rss_peak": after["VmHWM"] - before["VmHWM"],
            "rss_anon": after.get("RssAnon", 0) - before.get("RssAnon", 0),
            **extra,
        }


def _missing(*modules: str) -> str | None:
    for module in modules:
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install 'ckptio[bench]')"
    return None


class S3Ckptio(RemoteLibrary):
    """``ckptio.save_state(url, ..., part_size=, parts_in_flight=)`` and
    ``ckptio.load_state_with_optimizer(url)`` (ranged GETs, every checksum checked).

    Example:
        >>> S3Ckptio.name, S3Ckptio.family
        ('ckptio', 's3-ckptio')
    """

    name = "ckptio"
    family = "s3-ckptio"
    note = "save_state / load_state_with_optimizer on the s3:// URL; every tensor's checksum checked on load"

    def unavailable(self) -> str | None:
        import ckptio

        if "part_size" not in inspect.signature(ckptio.save_state).parameters:
            return f"this ckptio ({ckptio.__version__}) cannot save to s3:// URLs"
        return _missing("boto3")  # deleting the timed saves

    def version(self) -> str:
        import ckptio

        return ckptio.__version__

    def put(self, url: str) -> dict[str, float]:
        import ckptio

        s = self.state
        ckptio.save_state(
            url, s.weights, s.optimizer, step=s.step,
            part_size=self.part_size, parts_in_flight=self.parts_in_flight,
        )  # fmt: skip
        return {}

    def get(self, url: str) -> Any:
        import ckptio

        return ckptio.load_state_with_optimizer(url)


class S3Boto3(RemoteLibrary):
    """boto3 ``upload_fileobj`` of the state serialized with ``safetensors.numpy.save``,
    and ``download_fileobj`` + ``safetensors.numpy.load``; a ``TransferConfig`` with
    ckptio's part size and as many threads as ckptio has parts in flight.

    Example:
        >>> S3Boto3.FILE
        'model.safetensors'
    """

    name = "boto3"
    family = "s3-boto3"
    note = (
        "upload_fileobj / download_fileobj of one safetensors blob (serialized in memory), "
        "TransferConfig(multipart_chunksize=part size, max_concurrency=parts in flight), botocore defaults"
    )
    FILE = "model.safetensors"

    def unavailable(self) -> str | None:
        return _missing("boto3", "safetensors")

    def version(self) -> str:
        return f"{module_version('boto3')} (botocore {module_version('botocore')})"

    def prepare(self, state: TrainingState) -> None:
        from boto3.s3.transfer import TransferConfig  # type: ignore[import-untyped]

        self.client = s3_client(self.parts_in_flight)
        self.transfer = TransferConfig(
            multipart_threshold=self.part_size,
            multipart_chunksize=self.part_size,
            max_concurrency=self.parts_in_flight,
            use_threads=True,
        )
        self.tensors = dict(state.flat())

    def put(self, url: str) -> dict[str, float]:
        from safetensors.numpy import save

        bucket, key = split_url(f"{url}/{self.FILE}")
        blob = save(self.tensors)
        self.client.upload_fileobj(io.BytesIO(blob), bucket, key, Config=self.transfer)
        return {}

    def get(self, url: str) -> Any:
        from safetensors.numpy import load

        bucket, key = split_url(f"{url}/{self.FILE}")
        buffer = io.BytesIO()
        self.client.download_fileobj(bucket, key, buffer, Config=self.transfer)
        return load(buffer.getvalue())


class S3TorchConnector(RemoteLibrary):
    """``s3torchconnector.S3Checkpoint``: ``torch.save`` of the nested state dict into its
    writer, ``torch.load(weights_only=True)`` from its reader (the documented use), with
    ckptio's part size. Skipped, with the reason, when it is not installed or cannot
    write and read a small object at the endpoint.

    Example:
        >>> S3TorchConnector.FILE
        'checkpoint.pt'
    """

    name = "s3torchconnector"
    family = "s3-torchconnector"
    note = "S3Checkpoint writer / reader with torch.save / torch.load (AWS CRT client), default reader"
    FILE = "checkpoint.pt"

    def unavailable(self) -> str | None:
        missing = _missing("torch", "s3torchconnector")
        if missing is not None:
            return missing.replace("'ckptio[bench]'", "s3torchconnector")
        return self._probe()

    def version(self) -> str:
        return module_version("s3torchconnector")

    def _connect(self) -> None:
        from s3torchconnector import S3Checkpoint, S3ClientConfig

        endpoint = endpoint_from_env()
        config = S3ClientConfig(part_size=self.part_size, force_path_style=endpoint is not None)
        self.checkpoint = S3Checkpoint(region=region_from_env(), endpoint=endpoint, s3client_config=config)

    def _probe(self) -> str | None:
        """Why a small write and read at the endpoint fail, or None."""
        url = f"{self.base}/probe-s3torchconnector"
        try:
            self._connect()
            with self.checkpoint.writer(f"{url}/probe") as writer:
                writer.write(b"ckptio bench probe")
            with self.checkpoint.reader(f"{url}/probe") as reader:
                if reader.read() != b"ckptio bench probe":
                    return "a probe object read back different bytes"
            self.remove(url)
        except Exception as e:
            return f"cannot write and read at {endpoint_from_env() or 'AWS'}: {type(e).__name__}: {e}"
        return None

    def prepare(self, state: TrainingState) -> None:
        self._connect()
        self.payload = torch_payload(state)

    def put(self, url: str) -> dict[str, float]:
        import torch

        with self.checkpoint.writer(f"{url}/{self.FILE}") as writer:
            torch.save(self.payload, writer)
        return {}

    def get(self, url: str) -> Any:
        import torch

        with self.checkpoint.reader(f"{url}/{self.FILE}") as reader:
            return torch.load(cast(IO[bytes], reader), weights_only=True)


class S3Raw(RemoteLibrary):
    """The limit: the same tensor bytes as one object, no format, put as a multipart
    upload of ``part_size`` parts by ``parts_in_flight`` threads (boto3 ``upload_part``,
    each part gathered from the tensors into one buffer), and read back with as many
    parallel ranged GETs straight into one reused, pre-faulted buffer. No payload
    signing and no checksums: only the transfer.

    Example:
        >>> S3Raw.is_raw, S3Raw.FILE
        (True, 'tensors.bin')
    """

    name = "raw multipart put/get"
    family = "s3-raw"
    is_raw = True
    note = (
        "the limit: the same bytes as one object, no format, boto3 upload_part / ranged get_object "
        "of part-size pieces by parts-in-flight threads, into a reused buffer; unsigned payload, no checksums"
    )
    FILE = "tensors.bin"

    def unavailable(self) -> str | None:
        return _missing("boto3")

    def version(self) -> str:
        return f"boto3 {module_version('boto3')} upload_part / ranged get_object"

    def prepare(self, state: TrainingState) -> None:
        self.client = s3_client(
            self.parts_in_flight,
            s3={"payload_signing_enabled": False},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self.pieces, self.nbytes = flat_pieces(state)
        self.buffer = np.ones(self.nbytes, dtype=np.uint8)  # faulted in now, not timed

    def _gather(self, begin: int, end: int) -> bytes:
        """The bytes ``[begin, end)`` of the concatenated tensors, as one buffer."""
        slices = []
        for offset, data in self.pieces:
            lo, hi = max(begin, offset), min(end, offset + len(data))
            if lo < hi:
                slices.append(data[lo - offset : hi - offset])
        return bytes(slices[0]) if len(slices) == 1 else b"".join(slices)

    def put(self, url: str) -> dict[str, float]:
        bucket, key = split_url(f"{url}/{self.FILE}")
        upload = self.client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]

        def part(number: int, begin: int, end: int) -> dict[str, Any]:
            reply = self.client.upload_part(
                Bucket=bucket, Key=key, UploadId=upload, PartNumber=number, Body=self._gather(begin, end)
            )
            return {"PartNumber": number, "ETag": reply["ETag"]}

        try:
            ranges = part_ranges(self.nbytes, self.part_size)
            futures = [
                _pool(self.parts_in_flight).submit(part, i + 1, a, b) for i, (a, b) in enumerate(ranges)
            ]
            parts = [f.result() for f in futures]
            self.client.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            self.client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)
            raise
        return {}

    def get(self, url: str) -> Any:
        bucket, key = split_url(f"{url}/{self.FILE}")
        view = self.buffer.data

        def fetch(begin: int, end: int) -> None:
            body = self.client.get_object(Bucket=bucket, Key=key, Range=f"bytes={begin}-{end - 1}")["Body"]
            with body:
                while begin < end:
                    n = body.readinto(view[begin:end])
                    if not n:
                        raise OSError(f"{url}/{self.FILE}: the object ended early, at byte {begin}")
                    begin += n

        ranges = part_ranges(self.nbytes, self.part_size)
        for done in [_pool(self.parts_in_flight).submit(fetch, a, b) for a, b in ranges if b > a]:
            done.result()
        return self.buffer[: self.nbytes]


#: Table order: ckptio first (the reference), the peers, the limit last.
S3_LIBRARIES: tuple[type[Library], ...] = (S3Ckptio, S3Boto3, S3TorchConnector, S3Raw)
S3_REFERENCE = S3Ckptio.name
S3_RAW = S3Raw.name
