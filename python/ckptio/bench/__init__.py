"""``ckptio bench``: ckptio against safetensors, torch.save and numpy, with the physical
limit, on this machine.

Modules, by concern:

- ``workloads``: the seeded training states (``llm``, ``lora``, ``mixed``).
- ``library``, ``runners_ckptio``, ``runners_peers``, ``catalog``: what each library
  does for each operation.
- ``worker``, ``measure``: the measuring subprocess (one per library family), timing,
  peak-RSS growth from ``VmHWM``, page-cache control.
- ``runner``: the rounds, alternating the library order.
- ``summary``, ``targets``, ``report``, ``plot``, ``machine``: medians, ratios, the
  issue-5 targets, the table / JSON / markdown / chart.
- ``cli``: the ``ckptio bench`` command.

Example:
    ``ckptio bench --quick`` (a smoke run), ``ckptio bench --json out.json --plot out.png``
"""
