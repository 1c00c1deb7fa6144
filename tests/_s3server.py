"""The S3 test server, ``SeaweedS3`` (SeaweedFS ``weed mini`` on loopback): it lives in
``ckptio.bench.s3server``, so that ``ckptio bench --s3`` can start one too; this module
re-exports it under the name the tests import. ``python tests/_s3server.py`` starts one
and prints its environment.
"""

from __future__ import annotations

from ckptio.bench.s3server import (
    ACCESS_KEY,
    GRPC_OFFSET,
    INSTALL_HINT,
    READY_KEY,
    REGION,
    SECRET_KEY,
    SERVICES,
    SeaweedS3,
    free_ports,
    main,
    weed_binary,
)

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

if __name__ == "__main__":
    main()
