"""Memory of object-storage saves and loads, against a real SeaweedFS: a save streams
from the caller's memory through at most ``parts_in_flight`` part buffers."""

from __future__ import annotations

import subprocess
import sys
import textwrap

_RSS = textwrap.dedent(
    """
    import sys, numpy as np, ckptio

    def hwm():
        return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1]) * 1024

    url = sys.argv[1]
    weights = {f"w{i}": np.full(32 << 20, i, np.uint8) for i in range(12)}  # 384 MiB
    opt = {"m": {f"w{i}": np.full(8 << 20, i, np.uint8) for i in range(16)}}  # 128 MiB
    ckptio.save_weights_for_sampler(url + "-warm", {"w": np.ones(1 << 20)})  # runtime, client, TLS
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak to the current RSS
    before = hwm()
    ckptio.save_state(url, weights, opt, part_size=8 << 20, parts_in_flight=4)
    print(hwm() - before)
    loaded = ckptio.load_state(url)
    assert all(int(loaded[n][-1]) == int(weights[n][-1]) for n in weights)
    """
)


def test_s3_save_memory_is_bounded(s3url: str) -> None:
    cmd = [sys.executable, "-c", _RSS, f"{s3url}/big"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    growth = int(out.stdout)
    bound = 4 * (8 << 20) + (64 << 20)  # parts_in_flight x part_size + 64 MiB
    message = f"an S3 save of 512 MiB grew peak RSS by {growth >> 20} MiB (bound {bound >> 20} MiB)"
    assert growth <= bound, message
