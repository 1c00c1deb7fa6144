"""``ckptio bench``: ckptio against safetensors, torch.save and numpy, with the physical
limit, on this machine; with ``--s3``, against boto3 and s3torchconnector on S3 storage.

Modules, by concern:

- ``workloads``: the seeded training states (``llm``, ``lora``, ``mixed``).
- ``library``, ``runners_ckptio``, ``runners_peers``, ``catalog``: what each library
  does for each operation.
- ``worker``, ``measure``: the measuring subprocess (one per library family), timing,
  peak-RSS growth from ``VmHWM``, page-cache control.
- ``runner``: the rounds, rotating the library order.
- ``summary``, ``targets``, ``report``, ``plot``, ``machine``: medians, ratios, the
  issue-5 targets, the table / JSON / markdown / chart.
- ``cli``: the ``ckptio bench`` command.
- S3 (``--s3`` / ``--storage s3://...``): ``runners_s3`` (ckptio, boto3,
  s3torchconnector, the raw multipart put / ranged get), ``s3runner`` (the run under an
  ``s3://`` prefix of its own), ``s3report`` (targets, table, markdown), ``s3cli``,
  ``s3server`` (a SeaweedFS ``weed mini`` on loopback, also the tests' S3 server).
- DCP (``--workload dcp --ranks N``): ``dcpcatalog`` (the storage layers: ckptio's
  Writer/Reader, DCP's FileSystemWriter/Reader, torch's HuggingFace storage),
  ``dcprunner`` (the code each gloo rank runs), ``dcpreport`` (table, targets,
  markdown), ``dcpcli`` (starts and watches the ranks).

Example:
    ``ckptio bench --quick`` (a smoke run), ``ckptio bench --json out.json --plot out.png``,
    ``ckptio bench --s3`` (against a local SeaweedFS),
    ``ckptio bench --workload dcp --ranks 4`` (torch.distributed.checkpoint, 4 ranks)
"""
