"""The HF export: the trained (possibly sharded) model consolidated into one ``save_pretrained`` folder.

The folder holds the weights, ``config.json``, ``generation_config.json`` and the tokenizer: what
``from_pretrained`` needs. It carries no README or model card: the report stage writes the card into
its own folder and the publish stage puts the two together (``train/publish.py``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import torch.distributed as dist

from dapt.train.setup import DTYPES, reinit_rotary, unwrap, world
from dapt.train.spec import TrainSpec


def export(model: torch.nn.Module, spec: TrainSpec, out: Path) -> None:
    """Consolidate the (possibly sharded) model into an HF folder on rank 0. Collective.

    The full state dict is gathered to rank 0's CPU (``full_state_dict=True, cpu_offload=True``) and
    assigned into a meta-device model, so rank 0 holds one copy of the weights, not two.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from transformers import AutoTokenizer, GenerationConfig

    from dapt.train.objectives import auto_class

    rank, n = world()
    if n > 1:
        sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        sd = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    if rank == 0:
        dtype = DTYPES.get(spec.export_dtype, torch.float32)
        config = unwrap(model).config
        with torch.device("meta"):
            m = auto_class(spec.objective).from_config(config, dtype=dtype)
        m.load_state_dict({k: v.to(dtype) for k, v in sd.items()}, strict=False, assign=True)
        if getattr(config, "tie_word_embeddings", False):
            m.tie_weights()
        reinit_rotary(m, torch.device("cpu"))
        missing = [name for name, p in m.named_parameters() if p.is_meta]
        if missing:
            raise RuntimeError(f"export: parameters missing from the gathered state dict: {missing[:5]}")
        m.config.use_cache = True
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        m.save_pretrained(out, safe_serialization=True)
        gen = None
        if spec.model_path:
            try:
                gen = GenerationConfig.from_pretrained(spec.model_path, revision=spec.model_revision)
            except OSError:
                gen = None
        (gen or GenerationConfig.from_model_config(m.config)).save_pretrained(out)
        if spec.tokenizer_path:
            same_id = spec.tokenizer_path == spec.model_path
            AutoTokenizer.from_pretrained(
                spec.tokenizer_path, revision=spec.model_revision if same_id else None
            ).save_pretrained(out)
    del sd
    if dist.is_initialized():
        dist.barrier()
