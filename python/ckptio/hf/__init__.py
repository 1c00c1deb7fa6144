"""Hugging Face and PEFT interop: ``export`` a checkpoint as a model directory or a
PEFT adapter, ``import_checkpoint`` models and adapters from elsewhere, key maps.

Importing this package needs neither torch nor transformers; they are used when
present (torch for ``.bin`` files and as the tensor type, transformers to learn which
weights a model class ties, PEFT to check an adapter config).
"""

from .export import export
from .importer import import_checkpoint
from .keymaps import PRESETS, resolve_key_map, tinker_to_hf

__all__ = ["PRESETS", "export", "import_checkpoint", "resolve_key_map", "tinker_to_hf"]
