"""``ckptio.torch.dcp`` on S3-compatible storage (a real SeaweedFS server): 2 gloo ranks
upload their parts under the checkpoint id's data prefix and the coordinator commits
with the conditional manifest PUT; a failed overwrite leaves the old checkpoint and no
data of its own."""

from __future__ import annotations

import pytest
import torch
from _dcp import assert_steps, digests, full_tensors, load_into, run_ranks
from torch.distributed.checkpoint._nested_dict import flatten_state_dict

import ckptio

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")


def test_two_ranks_save_to_s3_and_load_anywhere(s3server, s3url, tmp_path):
    url = f"{s3url}/dcp"
    reports, _ = run_ranks("s3", 2, tmp_path, url, s3server.env())
    assert_steps(reports, "save", "overwrite_refused", "failed_overwrite", "load")

    assert ckptio.verify(url) == []
    ckpt = ckptio.open(url)
    assert ckpt.kind == "dcp" and ckpt.files == ["rank_00000.safetensors", "rank_00001.safetensors"]
    flat, _ = flatten_state_dict(load_into(url, 1, None, "full"))  # type: ignore[arg-type]
    assert digests({k: v for k, v in flat.items() if isinstance(v, torch.Tensor)}) == digests(full_tensors(1))

    # Only the committed save's data remains: the failed overwrite's parts were removed.
    bucket, prefix = url[len("s3://") :].split("/", 1)
    listed = s3server.client().list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/")
    keys = sorted(o["Key"][len(prefix) + 1 :] for o in listed.get("Contents", []))
    data = f"ckptio-data/{ckpt.checkpoint_id}/"
    assert keys == [f"{data}rank_00000.safetensors", f"{data}rank_00001.safetensors", "ckptio.json"], keys
