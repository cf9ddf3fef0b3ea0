"""Reads a folder of knowledge-base documents into `Document` messages ready for the Ingest RPC.

Two file kinds are understood:
- Markdown (`*.md`): the document id is the file stem, the title the first heading's text;
- JSON (`*.json`): one object with `id`, `title` and `content` (Markdown), the form of the shared
  banking knowledge base.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

from quietline.v1 import knowledge_pb2

FIRST_HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$", re.MULTILINE)


class DocumentError(ValueError):
    """A file cannot be read as a document; the message names the file and the fix."""


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DocumentError(f"{path} is not UTF-8 text: convert it to UTF-8") from None
    except OSError as err:
        raise DocumentError(f"{path} cannot be read ({err.strerror}): fix its permissions") from None


def markdown_title(content: str, fallback: str) -> str:
    """The text of the first Markdown heading in `content`, or `fallback` when there is none."""
    heading = FIRST_HEADING.search(content)
    return heading.group(1).strip() if heading else fallback


def read_markdown_document(path: Path, collection: str = "") -> knowledge_pb2.Document:
    """One Markdown file as a Document (id: file stem, title: first heading)."""
    content = _read_text(path)
    return knowledge_pb2.Document(
        document_id=path.stem, title=markdown_title(content, path.stem), content=content,
        source_uri=path.resolve().as_uri(), collection=collection,
    )


def read_json_document(path: Path, collection: str = "") -> knowledge_pb2.Document:
    """One JSON file `{"id": ..., "title": ..., "content": ...}` as a Document."""
    try:
        record = json.loads(_read_text(path))
    except ValueError as err:
        raise DocumentError(f"{path} is not valid JSON ({err}): fix or remove the file") from None
    if not isinstance(record, dict) or not isinstance(record.get("content"), str):
        raise DocumentError(f"{path} must hold an object with string fields id, title and content")
    return knowledge_pb2.Document(
        document_id=str(record.get("id") or path.stem), title=str(record.get("title") or ""),
        content=record["content"], source_uri=path.resolve().as_uri(), collection=collection,
    )


def read_document_folder(
    path: Path | str, collection: str = "", suffixes: tuple[str, ...] = (".md", ".json")
) -> Iterator[knowledge_pb2.Document]:
    """Yield a Document for each file directly in `path` whose suffix is in `suffixes`, by file name.

    `collection` is set on every document ("" leaves the choice to the service's default collection).
    Raises DocumentError naming the file when one cannot be read.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise DocumentError(f"document folder {folder} does not exist or is not a folder")
    for file in sorted(folder.iterdir()):
        if not file.is_file():
            continue
        suffix = file.suffix.lower()
        if suffix not in suffixes:
            continue
        if suffix == ".md":
            yield read_markdown_document(file, collection)
        elif suffix == ".json":
            yield read_json_document(file, collection)
