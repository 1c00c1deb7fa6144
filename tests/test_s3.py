"""Checkpoints on S3-compatible object storage, against a real SeaweedFS server
(``s3server`` in conftest.py): round trips, atomic commit, damage, bad input, cleanup."""

from __future__ import annotations

import errno
import json

import ml_dtypes
import numpy as np
import pytest
import torch

import ckptio
import ckptio.torch
from ckptio.errors import (
    CheckpointExistsError,
    CheckpointKindError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    StorageError,
)


def _objects(s3server, url: str) -> list[str]:
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    client = s3server.client()
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [o["Key"][len(prefix) + 1 :] for o in page.get("Contents", [])]
    return sorted(keys)


NUMPY_DTYPES = [
    np.float64, np.float32, np.float16, np.int64, np.int32, np.int16, np.int8,
    np.uint64, np.uint32, np.uint16, np.uint8, np.bool_, ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn,
]  # fmt: skip


def test_numpy_round_trip_every_dtype(s3url: str) -> None:
    rng = np.random.default_rng(0)
    weights = {f"w{i}": rng.standard_normal((3, 5)).astype(dt) for i, dt in enumerate(NUMPY_DTYPES)}
    weights["empty"] = np.zeros((0, 4), np.float32)
    weights["scalar"] = np.array(7.5)
    url = f"{s3url}/ck"
    assert ckptio.save_weights_for_sampler(url, weights, metadata={"m": 1}) == url
    loaded = ckptio.load_state(url, verify=True)
    assert list(loaded) == list(weights)
    for name, value in weights.items():
        assert loaded[name].dtype == value.dtype and loaded[name].shape == value.shape
        assert loaded[name].tobytes() == value.tobytes()
    with ckptio.open(url) as ckpt:
        assert ckpt.metadata == {"m": 1} and ckpt.kind == "sampler"
        assert ckpt["w3"].tobytes() == weights["w3"].tobytes()
    assert ckptio.verify(url) == []


def test_torch_round_trip_every_dtype_and_tied(s3url: str) -> None:
    dtypes = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int8,
              torch.uint8, torch.bool, torch.float8_e5m2, torch.int16]  # fmt: skip
    weights = {f"t{i}": torch.arange(12).reshape(3, 4).to(dt) for i, dt in enumerate(dtypes)}
    shared = torch.randn(4, 4)
    weights["embed"], weights["lm_head"] = shared, shared
    url = f"{s3url}/torch"
    ckptio.save_weights_for_sampler(url, weights)
    loaded = ckptio.load_state(url)
    for name, value in weights.items():
        assert isinstance(loaded[name], torch.Tensor)
        assert torch.equal(loaded[name], value), name
    assert loaded["embed"] is loaded["lm_head"]
    assert ckptio.open(url).files == ["model.safetensors"]


def test_state_sharded_and_optimizer_tree(s3url: str) -> None:
    rng = np.random.default_rng(1)
    weights = {f"layer{i}": rng.standard_normal(300_000).astype(np.float32) for i in range(6)}
    opt = {
        "state": {0: {"m": np.ones(3), "step": 2**80}, 1: (np.float32(-0.0), None, "adam")},
        "param_groups": [{"lr": float("nan"), "betas": (0.9, 0.999)}],
    }
    url = f"{s3url}/sharded"
    ckptio.save_state(url, weights, opt, step=12, max_shard_bytes=2_500_000, metadata={"run": "x"})
    ckpt = ckptio.open(url)
    assert len(ckpt.files) > 2
    ckpt.prefetch()  # nothing is mapped from an object store: no warm-up, no error
    w, o, step, meta = ckptio.load_state_with_optimizer(url, verify=True)
    assert step == 12 and meta == {"run": "x"}
    assert all(w[n].tobytes() == weights[n].tobytes() for n in weights)
    assert o["state"][0]["step"] == 2**80 and o["state"][1][2] == "adam"
    assert np.signbit(o["state"][1][0]) and np.isnan(o["param_groups"][0]["lr"])
    assert o["param_groups"][0]["betas"] == (0.9, 0.999)
    ckptio.save_weights_for_sampler(f"{s3url}/s", {"w": np.ones(1)})
    with pytest.raises(CheckpointKindError):
        ckptio.load_state_with_optimizer(f"{s3url}/s")


def test_lora_shaped_state_multipart(s3url: str, s3server) -> None:
    """2,000 small tensors, and one file over the part size: a multipart upload."""
    rng = np.random.default_rng(2)
    weights = {f"layers.{i}.lora_{ab}": rng.standard_normal((16, 64)).astype(np.float32)
               for i in range(1000) for ab in "AB"}  # fmt: skip
    adam = {
        n: {"exp_avg": np.zeros_like(v), "exp_avg_sq": np.ones_like(v)}
        for n, v in list(weights.items())[:500]
    }
    url = f"{s3url}/lora"
    ckptio.save_state(url, weights, adam, step=1, part_size=5 << 20, parts_in_flight=3)
    w, o, _, _ = ckptio.load_state_with_optimizer(url)
    assert len(w) == 2000 and all(w[n].tobytes() == weights[n].tobytes() for n in weights)
    assert o.keys() == adam.keys() and float(o["layers.3.lora_A"]["exp_avg_sq"].sum()) == 1024
    keys = _objects(s3server, url)
    assert "ckptio.json" in keys and all(k.startswith("ckptio-data/") for k in keys if k != "ckptio.json")
    assert len(keys) == 3  # the manifest, model.safetensors and optimizer.safetensors


def test_side_files_and_uncovered(s3url: str, s3server) -> None:
    url = f"{s3url}/hf"
    ckptio.save_weights_for_sampler(
        url, {"w": np.ones(2)}, extra_files={"config.json": {"a": 1}, "e.txt": ""}
    )
    ckpt = ckptio.open(url)
    assert json.loads(ckpt.read_side_file("config.json")) == {"a": 1}
    assert ckpt.read_side_file("e.txt") == b""
    bucket, _, key = url.removeprefix("s3://").partition("/")
    data = next(k for k in _objects(s3server, url) if k.endswith("model.safetensors")).rsplit("/", 1)[0]
    s3server.client().put_object(Bucket=bucket, Key=f"{key}/{data}/notes.txt", Body=b"later")
    assert ckptio.verify(url) == ["notes.txt"]


def test_exists_overwrite_and_old_data_removed(s3url: str, s3server) -> None:
    url = f"{s3url}/ck"
    ckptio.save_state(url, {"w": np.zeros(4)}, {"v": 1}, step=1)
    with pytest.raises(CheckpointExistsError, match="ck"):
        ckptio.save_state(url, {"w": np.ones(4)}, {"v": 2}, step=2)
    assert ckptio.open(url).step == 1
    old_id = ckptio.open(url).checkpoint_id
    ckptio.save_state(url, {"w": np.ones(4)}, {"v": 2}, step=2, overwrite=True)
    ckpt = ckptio.open(url)
    assert ckpt.step == 2 and ckpt["w"].tolist() == [1.0] * 4
    assert not any(old_id in k for k in _objects(s3server, url))


def test_damaged_object_is_named(s3url: str, s3server) -> None:
    url = f"{s3url}/ck"
    ckptio.save_state(url, {"a": np.arange(1000.0), "b": np.arange(50.0)}, {"m": np.ones(10)})
    bucket, _, key = url.removeprefix("s3://").partition("/")
    name = next(k for k in _objects(s3server, url) if k.endswith("model.safetensors"))
    client = s3server.client()
    body = bytearray(client.get_object(Bucket=bucket, Key=f"{key}/{name}")["Body"].read())
    body[-10] ^= 0x40  # inside "b", the last tensor
    client.put_object(Bucket=bucket, Key=f"{key}/{name}", Body=bytes(body))
    with pytest.raises(CorruptCheckpointError) as e:
        ckptio.verify(url)
    assert e.value.tensor == "b" and str(e.value.file).endswith("model.safetensors")
    with pytest.raises(CorruptCheckpointError, match='tensor "b"'):
        ckptio.load_state(url, verify=True)
    with pytest.raises(CorruptCheckpointError):  # loads from S3 always check
        ckptio.load_state(url)
    body[100] ^= 1  # the header
    client.put_object(Bucket=bucket, Key=f"{key}/{name}", Body=bytes(body))
    with pytest.raises(CorruptCheckpointError, match="header checksum"):
        ckptio.open(url)


def test_bad_input(s3url: str, s3server, monkeypatch: pytest.MonkeyPatch) -> None:
    weights = {"w": np.ones(2)}
    with pytest.raises(ValueError, match="no bucket"):
        ckptio.save_weights_for_sampler("s3:///x", weights)
    with pytest.raises(ValueError, match="no checkpoint name"):
        ckptio.save_weights_for_sampler(f"s3://{s3server.bucket}", weights)
    with pytest.raises(ValueError, match="unsupported URL scheme"):
        ckptio.open("gs://bucket/x")
    with pytest.raises(ValueError, match="not an S3 storage option"):
        ckptio.open(f"{s3url}/x", storage_options={"colour": "blue"})
    with pytest.raises(CheckpointNotFoundError, match=f"{s3url}/missing"):
        ckptio.load_state(f"{s3url}/missing")
    # (SeaweedFS creates a missing bucket on the first PUT, so only reads can miss it.)
    with pytest.raises(CheckpointNotFoundError, match="s3://no-such-bucket-ckptio/x"):
        ckptio.load_state("s3://no-such-bucket-ckptio/x", storage_options={"max_retries": 0})
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(StorageError, match=f"{s3url}/y") as e:
        ckptio.save_weights_for_sampler(f"{s3url}/y", weights, storage_options={"max_retries": 0})
    assert e.value.errno == errno.EACCES, e.value  # the store said 403
    with pytest.raises(ValueError, match="part_size"):
        ckptio.save_weights_for_sampler(f"{s3url}/z", weights, part_size=1024)


def test_storage_options_override_environment(s3url: str, s3server, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key)
    options = {
        "endpoint": s3server.endpoint,
        "access_key_id": s3server.access_key,
        "secret_access_key": s3server.secret_key,
        "allow_http": True,
    }
    url = f"{s3url}/opts"
    ckptio.save_weights_for_sampler(url, {"w": np.arange(3)}, storage_options=options)
    assert ckptio.load_state(url, storage_options=options)["w"].tolist() == [0, 1, 2]


def test_cleanup_removes_orphans_only(s3url: str, s3server) -> None:
    url = f"{s3url}/ck"
    ckptio.save_weights_for_sampler(url, {"w": np.ones(3)})
    bucket, _, key = url.removeprefix("s3://").partition("/")
    client = s3server.client()
    client.put_object(Bucket=bucket, Key=f"{key}/ckptio-data/0123456789abcdef/model.safetensors", Body=b"x")
    root = s3url.removeprefix("s3://").partition("/")[2]
    client.put_object(
        Bucket=bucket, Key=f"{root}/gone/ckptio-data/fedcba9876543210/model.safetensors", Body=b"y"
    )
    young = ckptio.cleanup(s3url)
    assert young == [] and len(young.skipped) == 2
    assert all("save in progress" in why for _, why in young.skipped)
    done = ckptio.cleanup(s3url, older_than=0)
    assert sorted(done) == [
        f"{s3url}/ck/ckptio-data/0123456789abcdef",
        f"{s3url}/gone/ckptio-data/fedcba9876543210",
    ]
    assert ckptio.verify(url) == [] and ckptio.cleanup(s3url, older_than=0) == []


def test_torch_helpers_and_cli(s3url: str, capsys: pytest.CaptureFixture[str]) -> None:
    from ckptio import cli

    model = torch.nn.Linear(4, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    url = f"{s3url}/torch-state"
    ckptio.torch.save_state(url, model, opt, step=5)
    fresh = torch.nn.Linear(4, 2)
    fresh_opt = torch.optim.AdamW(fresh.parameters())
    assert ckptio.torch.load_state(url, fresh, fresh_opt).step == 5
    assert torch.equal(fresh.weight, model.weight)
    assert torch.equal(fresh_opt.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert cli.main(["verify", url]) == 0
    assert cli.main(["inspect", url]) == 0
    assert "weight" in capsys.readouterr().out
    assert cli.main(["cleanup", s3url]) == 0


def test_copy_every_direction(s3url: str, tmp_path, s3server) -> None:
    rng = np.random.default_rng(3)
    weights = {f"w{i}": rng.standard_normal(400_000 * (i + 1)).astype(np.float32) for i in range(3)}
    local = tmp_path / "src"
    ckptio.save_state(local, weights, {"m": np.ones(5)}, step=4, max_shard_bytes=3 << 20,
                      extra_files={"config.json": {"k": 1}})  # fmt: skip
    seen: list[tuple[int, int]] = []
    up = ckptio.copy(local, f"{s3url}/up", progress=lambda d, t: seen.append((d, t)), part_size=5 << 20)
    assert up == f"{s3url}/up" and seen[-1][0] == seen[-1][1] > 0
    ckptio.copy(up, f"{s3url}/across")
    down = ckptio.copy(f"{s3url}/across", tmp_path / "down")
    for place in (up, f"{s3url}/across", down):
        assert ckptio.verify(place) == []
        w, _, step, _ = ckptio.load_state_with_optimizer(place)
        assert step == 4 and all(w[n].tobytes() == weights[n].tobytes() for n in weights)
        assert ckptio.open(place).checkpoint_id == ckptio.open(local).checkpoint_id
    from safetensors.numpy import load_file

    shards = sorted(p.name for p in down.glob("model-*.safetensors"))
    assert shards and load_file(down / shards[0])
    with pytest.raises(CheckpointExistsError):
        ckptio.copy(local, up)
    ckptio.copy(local, up, overwrite=True)  # the same checkpoint: nothing to do


def test_copy_refuses_damage(s3url: str, tmp_path, s3server) -> None:
    url = f"{s3url}/src"
    ckptio.save_weights_for_sampler(url, {"a": np.arange(100.0), "b": np.arange(7.0)})
    bucket, _, key = url.removeprefix("s3://").partition("/")
    name = next(k for k in _objects(s3server, url) if k.endswith("model.safetensors"))
    client = s3server.client()
    body = bytearray(client.get_object(Bucket=bucket, Key=f"{key}/{name}")["Body"].read())
    body[-3] ^= 1
    client.put_object(Bucket=bucket, Key=f"{key}/{name}", Body=bytes(body))
    with pytest.raises(CorruptCheckpointError, match='tensor "b"'):
        ckptio.copy(url, tmp_path / "dst")
    assert not (tmp_path / "dst").exists()
    with pytest.raises(CorruptCheckpointError):
        ckptio.copy(url, f"{s3url}/dst")
    with pytest.raises(CheckpointNotFoundError):
        ckptio.open(f"{s3url}/dst")


def test_cli_cp(s3url: str, tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    from ckptio import cli

    ckptio.save_weights_for_sampler(tmp_path / "a", {"w": np.arange(5)})
    assert cli.main(["cp", str(tmp_path / "a"), f"{s3url}/a", "--progress"]) == 0
    assert cli.main(["cp", f"{s3url}/a", str(tmp_path / "b")]) == 0
    assert "copied" in capsys.readouterr().out
    assert cli.main(["cp", f"{s3url}/a", str(tmp_path / "b")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert ckptio.load_state(tmp_path / "b")["w"].tolist() == [0, 1, 2, 3, 4]


def test_uploads_carry_crc64nvme_checksums(s3url: str, s3server) -> None:
    """Every upload request carried a CRC64NVME checksum (the server stores it, and
    checks it: SeaweedFS refuses a wrong one with BadDigest, see dev/s3_probe.py)."""
    url = f"{s3url}/ck"
    big = {"w": np.arange(3 << 20, dtype=np.float32)}  # 12 MiB: a multipart upload
    ckptio.save_weights_for_sampler(url, big, part_size=5 << 20, extra_files={"config.json": "{}"})
    bucket, _, key = url.removeprefix("s3://").partition("/")
    client = s3server.client()
    for name in _objects(s3server, url):
        head = client.head_object(Bucket=bucket, Key=f"{key}/{name}", ChecksumMode="ENABLED")
        assert head.get("ChecksumCRC64NVME"), (name, head)


def test_async_saves_to_s3(s3url: str) -> None:
    w = {"w": np.zeros(1000)}
    futures = [ckptio.save_state_async(f"{s3url}/a", w, {"i": i}, step=i, overwrite=True) for i in range(3)]
    w["w"] += 1  # the snapshot was taken
    assert [f.result() for f in futures] == [f"{s3url}/a"] * 3
    assert ckptio.open(f"{s3url}/a").step == 2
    assert ckptio.load_state(f"{s3url}/a")["w"].sum() == 0
    fut = ckptio.save_weights_for_sampler_async(f"{s3url}/a", w)
    with pytest.raises(CheckpointExistsError):
        fut.result()


def test_local_only_operations_refuse_urls_clearly(s3url: str, tmp_path) -> None:
    ckptio.save_weights_for_sampler(f"{s3url}/w", {"w": np.ones(2, np.float32)})
    with pytest.raises(ValueError, match="local directory"):
        ckptio.Run(f"{s3url}/run")
    with pytest.raises(ValueError, match="local directory"):
        ckptio.export(f"{s3url}/w", f"{s3url}/hf")
    with pytest.raises(ValueError, match="local paths"):
        ckptio.import_checkpoint(f"{s3url}/w", tmp_path / "x")
    out = ckptio.export(f"{s3url}/w", tmp_path / "hf", config={"model_type": "x"})  # from S3: fine
    assert ckptio.verify(out) == []
    assert not any(p.name.startswith("s3:") for p in tmp_path.iterdir())
