"""Turns knowledge-base files into `Document` messages ready for the Ingest RPC.

Formats, by suffix: Markdown (optional YAML front matter), HTML (converted to Markdown), PDF (its
text layer, one `## Page N` section per page), plain text, JSON (one record or a list of records,
the form of the shared banking knowledge base) and CSV FAQ tables (one FAQ document per row). What
is not Markdown already becomes Markdown with `#` headings, which the chunker splits on.

A folder is read whole before anything is returned: if any file fails, DocumentErrors lists every
failure, so a caller ingests nothing rather than half a folder.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import io
import json
import logging
import os
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pypdf
import yaml
from bs4 import BeautifulSoup
from markdownify import ATX, MarkdownConverter
from quietline.v1 import knowledge_pb2

log = logging.getLogger("quietline.knowledge")

SUPPORTED_SUFFIXES = (".md", ".markdown", ".html", ".htm", ".pdf", ".txt", ".json", ".csv")
DEFAULT_MAX_DOCUMENT_BYTES = 20 * 1024 * 1024

# Text never holds a NUL byte; one this early means binary data.
BINARY_SNIFF_BYTES = 8192
MAX_TEXT_TITLE_CHARS = 120
MAX_SLUG_CHARS = 60
# Page furniture, not content: it would repeat in every page's chunks.
HTML_DROPPED_ELEMENTS = ("head", "script", "style", "noscript", "template", "nav", "header", "footer")
HTML_DATE_META = (("name", "effective-date"), ("property", "article:modified_time"),
                  ("name", "article:modified_time"))
KINDS = {"article": knowledge_pb2.DOCUMENT_KIND_ARTICLE, "faq": knowledge_pb2.DOCUMENT_KIND_FAQ}

FIRST_HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$", re.MULTILINE)
FRONT_MATTER_START = re.compile(r"---[ \t\r]*\n")
FRONT_MATTER = re.compile(r"---[ \t\r]*\n(.*?)^---[ \t\r]*(?:\n|\Z)", re.DOTALL | re.MULTILINE)
EXTRA_BLANK_LINES = re.compile(r"\n(?:[ \t]*\n){2,}")
SLUG_WORD = re.compile(r"[^\W_]+")


class DocumentError(ValueError):
    """A file cannot be read as a document; the message names the file, the problem and the fix."""


class DocumentErrors(DocumentError):
    """Several documents failed; `errors` holds each one and the message lists them, one a line."""

    def __init__(self, errors: list[DocumentError]):
        self.errors = list(errors)
        if len(self.errors) == 1:
            super().__init__(str(self.errors[0]))
        else:
            lines = "\n".join(f"  {error}" for error in self.errors)
            super().__init__(f"{len(self.errors)} document problems, so no document was read:\n{lines}")


@dataclass
class DocumentReport:
    """What reading a path gave: its documents, and the files skipped for an unsupported suffix."""

    documents: list[knowledge_pb2.Document] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)


# A document and where it came from ("x.csv row 4"), for error messages.
_Read = tuple[knowledge_pb2.Document, str]


def markdown_title(content: str, fallback: str) -> str:
    """The text of the first Markdown heading in `content`, or `fallback` when there is none."""
    heading = FIRST_HEADING.search(content)
    return heading.group(1).strip() if heading else fallback


def read_documents(
    path: Path | str, collection: str = "", max_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES
) -> list[knowledge_pb2.Document]:
    """The documents of a file, or of every supported file under a folder; see read_documents_report."""
    return read_documents_report(path, collection, max_bytes).documents


def read_documents_report(
    path: Path | str, collection: str = "", max_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES
) -> DocumentReport:
    """Read `path` (a file, or a folder walked recursively in sorted order) into Documents.

    Hidden files and folders are ignored; files with an unsupported suffix are skipped and listed in
    the report. A single file with an unsupported suffix, or a path that does not exist, raises
    DocumentError. Every file is read first; if any fails (or two documents share an id), raises
    DocumentErrors listing every failure and returns nothing. `collection` is set on every document
    ("" leaves the choice to the service's default collection).
    """
    return _read_path(Path(path), collection, max_bytes, SUPPORTED_SUFFIXES)


def read_document_folder(
    path: Path | str, collection: str = "", suffixes: tuple[str, ...] = (".md", ".json"),
    max_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES,
) -> list[knowledge_pb2.Document]:
    """The documents of the files under folder `path` whose suffix is in `suffixes` (compatibility).

    Like read_documents, but `path` must be a folder and other suffixes are ignored.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise DocumentError(f"document folder {folder} does not exist or is not a folder: check the path")
    wanted = tuple(suffix.lower() for suffix in suffixes)
    unsupported = [suffix for suffix in wanted if suffix not in SUPPORTED_SUFFIXES]
    if unsupported:
        raise DocumentError(f"suffixes {', '.join(unsupported)} are not supported: "
                            f"choose among {', '.join(SUPPORTED_SUFFIXES)}")
    return _read_path(folder, collection, max_bytes, wanted).documents


def _read_path(root: Path, collection: str, max_bytes: int, suffixes: tuple[str, ...]) -> DocumentReport:
    errors: list[DocumentError] = []
    if root.is_dir():
        files, skipped = _walk(root, suffixes, errors)
        # Ids keep the subfolder, so cards/faq.md and loans/faq.md never collide.
        named = [(file, file.relative_to(root).with_suffix("").as_posix()) for file in files]
        # Sources are named below the resolved folder, not by where a symlinked file points, so a
        # re-ingest of the folder can tell which of its documents' files are gone.
        base = root.resolve()
        sources = {file: (base / file.relative_to(root)).as_uri() for file in files}
    elif root.is_file():
        if root.suffix.lower() not in suffixes:
            raise DocumentError(f"{root} has an unsupported suffix ({root.suffix or 'none'}): "
                                f"convert it to one of {', '.join(suffixes)}")
        named, skipped = [(root, root.stem)], []
        sources = {root: (root.parent.resolve() / root.name).as_uri()}
    else:
        raise DocumentError(f"{root} does not exist: check the path")

    documents: list[knowledge_pb2.Document] = []
    origins: dict[str, str] = {}
    for file, file_id in named:
        try:
            read = _read_file(file, file_id, collection, max_bytes, sources[file])
        except DocumentError as error:
            errors.append(error)
            continue
        for document, origin in read:
            if not document.content.strip():
                errors.append(DocumentError(f"{origin} has no text: add content or remove it"))
            elif document.document_id in origins:
                errors.append(DocumentError(
                    f"document id {document.document_id!r} is used by both {origins[document.document_id]} "
                    f"and {origin}: give each a distinct id (front matter, record or CSV `id`) or rename a file"))
            else:
                origins[document.document_id] = origin
                documents.append(document)
    if errors:
        raise DocumentErrors(errors)
    if skipped:
        log.info("skipped files with unsupported suffixes",
                 extra={"folder": str(root), "skipped": [str(file) for file in skipped]})
    return DocumentReport(documents, skipped)


def _walk(root: Path, suffixes: tuple[str, ...], errors: list[DocumentError]) -> tuple[list[Path], list[Path]]:
    """(files to read, files skipped for their suffix) under `root`, hidden ones left out, sorted."""
    def unreadable(error: OSError) -> None:
        errors.append(DocumentError(f"{error.filename} cannot be listed ({error.strerror}): fix its permissions"))

    files: list[Path] = []
    skipped: list[Path] = []
    for folder, subfolders, names in os.walk(root, onerror=unreadable):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        for name in names:
            if not name.startswith("."):
                file = Path(folder, name)
                (files if file.suffix.lower() in suffixes else skipped).append(file)

    def in_order(file: Path) -> tuple[str, ...]:
        return file.relative_to(root).parts

    return sorted(files, key=in_order), sorted(skipped, key=in_order)


def _read_file(path: Path, file_id: str, collection: str, max_bytes: int, uri: str) -> list[_Read]:
    suffix = path.suffix.lower()
    data = _read_bytes(path, max_bytes)
    if suffix == ".pdf":
        return [(_read_pdf(path, data, file_id, collection, uri), str(path))]
    text = _decode_text(path, data)
    if not text.strip():
        raise DocumentError(f"{path} has no text: add content or remove the file")
    if suffix == ".json":
        return _read_json(path, text, file_id, collection, uri)
    if suffix == ".csv":
        return _read_csv(path, text, file_id, collection, uri)
    if suffix in (".html", ".htm"):
        document = _read_html(path, text, file_id, collection, uri)
    elif suffix == ".txt":
        first_line = text.split("\n", 1)[0].strip()
        title = first_line if 0 < len(first_line) <= MAX_TEXT_TITLE_CHARS else path.stem
        document = knowledge_pb2.Document(document_id=file_id, title=title, content=text, source_uri=uri,
                                          collection=collection)
    else:
        document = _read_markdown(path, text, file_id, collection, uri)
    return [(document, str(path))]


def _read_bytes(path: Path, max_bytes: int) -> bytes:
    """The file's bytes; a file over `max_bytes` is refused from its size, without reading it."""
    try:
        size = path.stat().st_size
        if size <= max_bytes:
            with path.open("rb") as file:
                # Bounded, in case the file grew since stat().
                data = file.read(max_bytes + 1)
            size = max(size, len(data))
    except OSError as error:
        raise DocumentError(f"{path} cannot be read ({error.strerror or error}): "
                            "check that it exists and is readable") from None
    if size > max_bytes:
        raise DocumentError(f"{path} is {_format_size(size)}, over the {_format_size(max_bytes)} limit per document "
                            "(knowledge.max_document_bytes): split it or raise the limit")
    return data


def _format_size(size: int) -> str:
    if size >= 1024 * 1024:
        return f"{size / (1024 * 1024):.1f} MB"
    return f"{size / 1024:.1f} KB" if size >= 1024 else f"{size} bytes"


def _decode_text(path: Path, data: bytes) -> str:
    if b"\0" in data[:BINARY_SNIFF_BYTES]:
        raise DocumentError(f"{path} is not a text document (binary data?): it holds NUL bytes; "
                            "save it as UTF-8 text or remove it")
    try:
        return data.decode("utf-8-sig")  # -sig: drops the BOM Windows editors write
    except UnicodeDecodeError as error:
        # utf-8-sig counts from after the BOM; the offset named is the file's.
        offset = error.start + (len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0)
        raise DocumentError(f"{path} is not a text document (binary data?): byte {offset} is not UTF-8; "
                            "save it as UTF-8 text") from None


def _iso_date(value: object, where: str) -> str:
    """`value` (a date, or an ISO date or datetime string) as YYYY-MM-DD; "" when there is none."""
    if value is None or value == "":
        return ""
    if isinstance(value, dt.datetime):  # before date: a datetime is a date too
        return value.date().isoformat()
    if isinstance(value, dt.date):  # YAML reads an unquoted 2024-03-01 as a date
        return value.isoformat()
    if isinstance(value, str):
        for parse in (dt.date.fromisoformat, dt.datetime.fromisoformat):
            try:
                parsed = parse(value.strip())
            except ValueError:
                continue
            return (parsed.date() if isinstance(parsed, dt.datetime) else parsed).isoformat()
    raise DocumentError(f"{where}: effective_date {value!r} is not an ISO date: write it as YYYY-MM-DD")


def _kind(value: object, where: str) -> int:
    if value is None or value == "":
        return knowledge_pb2.DOCUMENT_KIND_ARTICLE
    if isinstance(value, str) and value.strip().lower() in KINDS:
        return KINDS[value.strip().lower()]
    raise DocumentError(f"{where}: kind {value!r} is unknown: write faq or article")


def _given_id(value: object, where: str) -> str | None:
    """An id a record or front matter gives, or None when it gives none."""
    if value is None or value == "":
        return None
    if isinstance(value, str | int) and not isinstance(value, bool) and str(value).strip():
        return str(value).strip()
    raise DocumentError(f"{where}: id {value!r} is not a string: write the id as text")


def _read_markdown(path: Path, text: str, file_id: str, collection: str, uri: str) -> knowledge_pb2.Document:
    front: dict = {}
    if FRONT_MATTER_START.match(text):
        match = FRONT_MATTER.match(text)
        if not match:
            raise DocumentError(f"{path} opens front matter with --- but never closes it: "
                                "end it with a line holding only ---")
        front = _front_matter(path, match.group(1))
        text = text[match.end():].lstrip("\r\n")
    where = f"{path} front matter"
    title = str(front.get("title") or "").strip()
    return knowledge_pb2.Document(
        document_id=_given_id(front.get("id"), where) or file_id,
        title=title or markdown_title(text, path.stem), content=text, source_uri=uri, collection=collection,
        effective_date=_iso_date(front.get("effective_date"), where), kind=_kind(front.get("kind"), where),
    )


def _front_matter(path: Path, block: str) -> dict:
    try:
        front = yaml.safe_load(block)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" at line {mark.line + 2}" if mark else ""  # +2: 0-based, and the opening --- line
        problem = getattr(error, "problem", None) or error
        raise DocumentError(f"{path} has front matter that is not valid YAML{at} ({problem}): "
                            "write it as `key: value` lines between the --- lines") from None
    if front is None:
        return {}
    if not isinstance(front, dict):
        raise DocumentError(f"{path} has front matter that is not a mapping: write it as `key: value` lines "
                            "(id, title, effective_date, kind)")
    return front


def _read_html(path: Path, text: str, file_id: str, collection: str, uri: str) -> knowledge_pb2.Document:
    soup = BeautifulSoup(text, "html.parser")
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    if not title and (first_h1 := soup.find("h1")):
        title = first_h1.get_text(" ", strip=True)
    effective_date = ""
    for attribute, name in HTML_DATE_META:
        meta = soup.find("meta", attrs={attribute: name})
        if meta and meta.get("content"):
            effective_date = _iso_date(meta["content"], f'{path} <meta {attribute}="{name}">')
            break
    for element in soup.find_all(HTML_DROPPED_ELEMENTS):
        element.decompose()
    # Escaping `_` and `*` would put backslashes into the text that is searched and quoted.
    converter = MarkdownConverter(heading_style=ATX, bullets="-", table_infer_header=True,
                                  escape_underscores=False, escape_asterisks=False)
    content = EXTRA_BLANK_LINES.sub("\n\n", converter.convert_soup(soup)).strip() + "\n"
    return knowledge_pb2.Document(document_id=file_id, title=title or path.stem, content=content,
                                  source_uri=uri, collection=collection, effective_date=effective_date)


@contextmanager
def _quiet_pypdf() -> Iterator[None]:
    """pypdf logs and warns about every flaw it works around; only the outcome matters here."""
    logger = logging.getLogger("pypdf")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _read_pdf(path: Path, data: bytes, file_id: str, collection: str, uri: str) -> knowledge_pb2.Document:
    if not data.startswith(b"%PDF-"):
        raise DocumentError(f"{path} is not a readable PDF (it does not start with %PDF-): "
                            "re-export it from its source")
    with _quiet_pypdf():
        try:
            reader = pypdf.PdfReader(io.BytesIO(data))
            if reader.is_encrypted and not _opens_without_password(reader):
                raise DocumentError(f"{path} is encrypted: export an unencrypted copy")
            pages = [page.extract_text() or "" for page in reader.pages]
            title = str((reader.metadata.title if reader.metadata else None) or "").strip()
        except DocumentError:
            raise
        except Exception as error:  # noqa: BLE001 - damaged files raise PdfReadError, KeyError, ValueError...
            reason = str(error) or type(error).__name__
            raise DocumentError(f"{path} is not a readable PDF ({reason}): re-export it from its source") from None
    # One section per page, so a passage's section says which page to look at.
    sections = [f"## Page {number}\n\n{text.strip()}\n" for number, text in enumerate(pages, 1) if text.strip()]
    if not sections:
        raise DocumentError(f"{path} has no text layer (a scan?): run OCR (e.g. ocrmypdf) and ingest the result")
    return knowledge_pb2.Document(document_id=file_id, title=title or path.stem, content="\n".join(sections),
                                  source_uri=uri, collection=collection)


def _opens_without_password(reader: pypdf.PdfReader) -> bool:
    try:
        return reader.decrypt("") != pypdf.PasswordType.NOT_DECRYPTED
    except Exception:  # noqa: BLE001 - e.g. AES without the cryptography package: unreadable here either way
        return False


def _read_json(path: Path, text: str, file_id: str, collection: str, uri: str) -> list[_Read]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise DocumentError(f"{path} is not valid JSON ({error.msg} at line {error.lineno} column {error.colno}): "
                            "fix the file") from None
    single = isinstance(data, dict)
    records = [data] if single else data
    if not isinstance(records, list) or not records:
        raise DocumentError(f"{path} holds no records: it must hold an object with id, title and content "
                            "(Markdown), or a non-empty list of such objects")
    read: list[_Read] = []
    for index, record in enumerate(records):
        where = str(path) if single else f"{path} record {index + 1} of {len(records)}"
        if not isinstance(record, dict) or not isinstance(record.get("content"), str):
            raise DocumentError(f"{where} has no string `content`: give it an object with id, title and content")
        given_id = _given_id(record.get("id"), where)
        if single:
            document_id, record_uri = given_id or file_id, uri
        else:
            fragment = given_id or str(index + 1)
            document_id, record_uri = given_id or f"{file_id}#{fragment}", f"{uri}#{quote(fragment)}"
        content = record["content"]
        source_uri = record.get("source_uri")
        read.append((knowledge_pb2.Document(
            document_id=document_id, title=str(record.get("title") or "").strip() or markdown_title(content, document_id),
            content=content, source_uri=source_uri if isinstance(source_uri, str) and source_uri else record_uri,
            collection=collection, effective_date=_iso_date(record.get("effective_date"), where),
            kind=_kind(record.get("kind"), where),
        ), where))
    return read


def _read_csv(path: Path, text: str, file_id: str, collection: str, uri: str) -> list[_Read]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        rows = list(reader)
    except csv.Error as error:
        raise DocumentError(f"{path} is not valid CSV at line {reader.line_num} ({error}): "
                            "save it again as CSV") from None
    header = [name.strip() for name in rows[0]]
    column: dict[str, int] = {}
    for index, name in enumerate(header):
        column.setdefault(name.lower(), index)
    if "question" not in column or "answer" not in column:
        raise DocumentError(f"{path} has columns {', '.join(header) or '(none)'}; an FAQ table needs question and "
                            "answer (id, effective_date, section or category optional): rename its header row")
    read: list[_Read] = []
    for row_number, row in enumerate(rows[1:], start=2):  # row numbers as a spreadsheet shows them
        if not any(cell.strip() for cell in row):
            continue
        cells = {name: row[index].strip() if index < len(row) else "" for name, index in column.items()}
        where = f"{path} row {row_number}"
        question, answer = cells.get("question", ""), cells.get("answer", "")
        if not question or not answer:
            raise DocumentError(f"{where} has an empty {'question' if not question else 'answer'}: "
                                "fill it in or delete the row")
        row_id = cells.get("id", "") or _slug(question) or str(row_number)
        read.append((knowledge_pb2.Document(
            document_id=f"{file_id}#{row_id}", title=question, content=answer, source_uri=f"{uri}#{quote(row_id)}",
            collection=collection, effective_date=_iso_date(cells.get("effective_date", ""), where),
            kind=knowledge_pb2.DOCUMENT_KIND_FAQ,
        ), where))
    if not read:
        raise DocumentError(f"{path} has a header but no rows: add question and answer rows or remove the file")
    return read


def _slug(text: str) -> str:
    """Lowercase words joined by "-", at most MAX_SLUG_CHARS long: "Lost card?" -> "lost-card"."""
    return "-".join(SLUG_WORD.findall(text.lower()))[:MAX_SLUG_CHARS].rstrip("-")
