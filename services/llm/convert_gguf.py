"""Convert a GGUF model into the Hugging Face folder vLLM loads: `python -m services.llm.convert_gguf NAME`.

vLLM serves Hugging Face (or Mistral) model folders; the CPU profile's model is a GGUF file. NAME is a
manifest of source kind `converted` (models/manifests/NAME.yaml) whose `source.from` names the GGUF
model. Run it once, in the environment that has vLLM, transformers, gguf and accelerate (`make
vllm-setup` builds .venv-vllm; `make llm-convert` runs this there). It:

1. resolves and verifies the GGUF through models/ (offline);
2. loads it with transformers, dequantised to bfloat16;
3. drops the GGUF quantisation settings from the model (the weights are plain bfloat16 now, and vLLM
   would otherwise try to load the folder as a quantised GGUF checkpoint);
4. writes config, weights and tokenizer into a temporary folder beside the target, checks every file
   against the manifest's sha256 and only then renames it into place.

The target is `QUIETLINE_MODELS_DIR/<source.path>`, where `resolve_model` finds it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from models import ModelError, load_manifest, operator_models_dir, resolve_model, verify_folder
from services.kit.config import ConfigError, load_settings
from services.kit.offline import enforce_offline


def converted_folder(name: str) -> Path:
    """Where the converted model `name` lives (and `resolve_model` looks for it)."""
    return operator_models_dir() / load_manifest(name).source["path"]


def convert(name: str, state_dir: Path) -> Path:
    """Write the converted model `name` into place (unless already there and intact); returns its folder."""
    manifest = load_manifest(name)
    if manifest.source.get("kind") != "converted":
        raise ModelError(f"model '{name}' is not a converted model (its source kind is {manifest.source.get('kind')})")
    target = converted_folder(name)
    try:
        verify_folder(manifest, target)
        return target  # already converted and intact
    except ModelError:
        pass
    gguf = resolve_model(manifest.source["from"], state_dir).path
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise ModelError(
            "converting needs torch, transformers, gguf and accelerate: run it in the vLLM environment "
            "(`make llm-convert`)"
        ) from None
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        options = {"gguf_file": gguf.name, "local_files_only": True}
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **options)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.bfloat16, **options)
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        verify_folder(manifest, staging)
        # Files transformers writes beyond the manifest's (none today) are not part of the model.
        for extra in set(os.listdir(staging)) - set(manifest.files):
            (staging / extra).unlink()
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except ModelError as err:
        raise ModelError(
            f"{err}. The conversion of '{manifest.source['from']}' did not give the recorded files: the "
            "transformers version differs from constraints-vllm.txt (rebuild with `make vllm-setup`)"
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="quietline-llm-convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help="a manifest of source kind `converted`, e.g. gemma3-270m-bf16")
    parser.add_argument("--config", default=None, help="operator YAML file (for state_dir)")
    args = parser.parse_args(argv)
    enforce_offline()
    try:
        folder = convert(args.name, load_settings(args.config).state_dir)
    except (ConfigError, ModelError) as err:
        print(f"quietline-llm-convert: {err}", file=sys.stderr)
        return 2
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
