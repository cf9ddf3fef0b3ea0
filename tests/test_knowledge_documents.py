"""Unit tests for services.knowledge.documents: files of every supported format into Document messages."""

from __future__ import annotations

import codecs
import json
import os
from pathlib import Path

import pytest
from fpdf import FPDF
from quietline.v1 import knowledge_pb2

from services.knowledge.documents import (
    DocumentError,
    DocumentErrors,
    markdown_title,
    read_document_folder,
    read_documents,
    read_documents_report,
)

ARTICLE = knowledge_pb2.DOCUMENT_KIND_ARTICLE
FAQ = knowledge_pb2.DOCUMENT_KIND_FAQ

PAGE_HTML = """<!doctype html>
<html><head><title>Card fees</title>
<meta name="effective-date" content="2024-03-01">
<style>body { color: red }</style><script>var trackingId = "SECRET-TRACKER";</script></head>
<body><header>Site banner</header><nav><ul><li>Home navigation</li></ul></nav>
<h1>Fees for cards</h1><p>Fees for debit_card holders.</p>
<h2>Abroad</h2><ul><li>ATM withdrawals: 2%</li><li>Purchases: free</li></ul>



<table><tr><th>Card</th><th>Fee</th></tr><tr><td>Debit</td><td>0</td></tr></table>
<footer>Copyright notice</footer></body></html>
"""

FRONT_MATTER_MD = """---
id: lost-card
title: Lost or stolen card
effective_date: 2024-05-02
kind: faq
---

# Heading that is not the title

Freeze the card in the app.
"""


def two_page_pdf(title: str = "Card guide", user_password: str | None = None) -> bytes:
    pdf = FPDF()
    pdf.set_title(title)
    if user_password is not None:
        pdf.set_encryption(owner_password="owner-secret", user_password=user_password)
    pdf.set_font("helvetica", size=12)
    pdf.add_page()
    pdf.cell(text="Freeze your card in the app.")
    pdf.add_page()
    pdf.cell(text="Call the card line on 0800 555 0123.")
    return bytes(pdf.output())


def by_id(documents: list[knowledge_pb2.Document]) -> dict[str, knowledge_pb2.Document]:
    return {document.document_id: document for document in documents}


def problems(error: pytest.ExceptionInfo) -> list[str]:
    return [str(each) for each in error.value.errors]


@pytest.fixture
def knowledge_folder(tmp_path: Path) -> Path:
    """A folder with one file of every supported format, a subfolder, and files to skip."""
    folder = tmp_path / "kb"
    (folder / "cards").mkdir(parents=True)
    (folder / "cards" / "lost-card.md").write_text("# Lost card\n\nCall us at once.\n", encoding="utf-8")
    (folder / "policy.md").write_text(FRONT_MATTER_MD, encoding="utf-8")
    (folder / "fees.html").write_text(PAGE_HTML, encoding="utf-8")
    (folder / "guide.pdf").write_bytes(two_page_pdf())
    (folder / "hours.txt").write_text("Opening hours\nWe are open from nine to five.\n", encoding="utf-8")
    (folder / "savings.json").write_text(json.dumps(
        {"id": "doc_savings_001", "title": "Savings account", "content": "## Rates\n\n3% a year."}), encoding="utf-8")
    (folder / "loans.json").write_text(json.dumps([
        {"id": "loan-a", "title": "Personal loan", "content": "Borrow up to 25000.", "effective_date": "2024-01-15"},
        {"title": "Car loan", "content": "# Car loan\n\nFor new cars.", "kind": "FAQ"},
    ]), encoding="utf-8")
    # Written as Excel writes it: with a byte-order mark.
    (folder / "faq.csv").write_bytes(codecs.BOM_UTF8 + (
        b"Question,Answer,ID,Category\n"
        b"How do I reset my PIN?,At any of our cash machines.,,Cards\n"
        b"Can I bank abroad?,Yes: use the app.,abroad,Travel\n"
    ))
    (folder / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (folder / "notes.docx").write_bytes(b"PK\x03\x04")
    (folder / ".hidden.md").write_text("# Hidden\n\nNot read.\n", encoding="utf-8")
    (folder / ".git").mkdir()
    (folder / ".git" / "readme.md").write_text("# Git internals\n", encoding="utf-8")
    return folder


def test_folder_reads_every_supported_format_in_sorted_order(knowledge_folder):
    report = read_documents_report(knowledge_folder, collection="banking")
    ids = [document.document_id for document in report.documents]
    assert ids == ["cards/lost-card", "faq#how-do-i-reset-my-pin", "faq#abroad", "fees", "guide", "hours",
                   "loan-a", "loans#2", "lost-card", "doc_savings_001"]
    assert {document.collection for document in report.documents} == {"banking"}
    assert report.skipped == [knowledge_folder / "logo.png", knowledge_folder / "notes.docx"]
    assert read_documents(knowledge_folder, collection="banking") == report.documents


def test_markdown_without_front_matter_takes_id_from_the_subfolder_path_and_title_from_its_heading(knowledge_folder):
    document = by_id(read_documents(knowledge_folder))["cards/lost-card"]
    assert document.title == "Lost card"
    assert document.content == "# Lost card\n\nCall us at once.\n"
    assert document.kind == ARTICLE
    assert document.effective_date == ""
    assert document.source_uri == (knowledge_folder / "cards" / "lost-card.md").resolve().as_uri()


def test_markdown_front_matter_sets_id_title_date_and_kind_and_is_removed(knowledge_folder):
    document = by_id(read_documents(knowledge_folder))["lost-card"]
    assert document.title == "Lost or stolen card"
    assert document.effective_date == "2024-05-02"
    assert document.kind == FAQ
    assert document.content.startswith("# Heading that is not the title")
    assert "effective_date" not in document.content and "---" not in document.content


def test_html_becomes_markdown_without_scripts_or_page_furniture(knowledge_folder):
    document = by_id(read_documents(knowledge_folder))["fees"]
    assert document.title == "Card fees"
    assert document.effective_date == "2024-03-01"
    assert document.content.startswith("# Fees for cards\n\nFees for debit_card holders.\n\n## Abroad\n")
    assert "- ATM withdrawals: 2%\n- Purchases: free" in document.content
    assert "| Card | Fee |\n| --- | --- |\n| Debit | 0 |" in document.content
    for dropped in ("SECRET-TRACKER", "color: red", "Site banner", "Home navigation", "Copyright notice"):
        assert dropped not in document.content
    assert "\n\n\n" not in document.content


def test_html_title_falls_back_to_the_first_h1_then_the_stem(tmp_path):
    (tmp_path / "a.html").write_text("<h1>Branch access</h1><p>Ramps at every branch.</p>", encoding="utf-8")
    (tmp_path / "b.htm").write_text(
        '<html><head><meta property="article:modified_time" content="2023-11-30T08:15:00+00:00"></head>'
        "<body><p>No heading here.</p></body></html>", encoding="utf-8")
    documents = by_id(read_documents(tmp_path))
    assert documents["a"].title == "Branch access"
    assert documents["b"].title == "b"
    assert documents["b"].effective_date == "2023-11-30"


def test_pdf_text_is_split_into_page_sections_and_titled_from_its_metadata(knowledge_folder):
    document = by_id(read_documents(knowledge_folder))["guide"]
    assert document.title == "Card guide"
    assert document.content.startswith("## Page 1\n\nFreeze your card in the app.")
    assert "## Page 2\n\nCall the card line on 0800 555 0123." in document.content


def test_text_file_is_kept_as_is_and_titled_by_its_first_line(knowledge_folder, tmp_path):
    document = by_id(read_documents(knowledge_folder))["hours"]
    assert document.title == "Opening hours"
    assert document.content == "Opening hours\nWe are open from nine to five.\n"
    long_first_line = tmp_path / "long.txt"
    long_first_line.write_text("word " * 40 + "\nsecond line\n", encoding="utf-8")
    assert read_documents(long_first_line)[0].title == "long"


def test_json_object_and_list_records(knowledge_folder):
    documents = by_id(read_documents(knowledge_folder))
    savings = documents["doc_savings_001"]
    assert (savings.title, savings.content) == ("Savings account", "## Rates\n\n3% a year.")
    assert savings.source_uri == (knowledge_folder / "savings.json").resolve().as_uri()
    loans_uri = (knowledge_folder / "loans.json").resolve().as_uri()
    personal = documents["loan-a"]
    assert (personal.title, personal.effective_date, personal.kind) == ("Personal loan", "2024-01-15", ARTICLE)
    assert personal.source_uri == f"{loans_uri}#loan-a"
    car = documents["loans#2"]
    assert (car.title, car.kind, car.source_uri) == ("Car loan", FAQ, f"{loans_uri}#2")


def test_csv_rows_become_faq_documents(knowledge_folder):
    documents = by_id(read_documents(knowledge_folder))
    csv_uri = (knowledge_folder / "faq.csv").resolve().as_uri()
    pin = documents["faq#how-do-i-reset-my-pin"]
    assert (pin.title, pin.content, pin.kind) == ("How do I reset my PIN?", "At any of our cash machines.", FAQ)
    assert pin.source_uri == f"{csv_uri}#how-do-i-reset-my-pin"
    abroad = documents["faq#abroad"]
    assert (abroad.title, abroad.content, abroad.kind) == ("Can I bank abroad?", "Yes: use the app.", FAQ)
    assert abroad.source_uri == f"{csv_uri}#abroad"


def test_csv_question_slug_is_cut_to_60_characters(tmp_path):
    question = "What happens to my standing orders and direct debits when I switch my current account?"
    (tmp_path / "faq.csv").write_text(f"question,answer\n\"{question}\",They move with it.\n", encoding="utf-8")
    [document] = read_documents(tmp_path / "faq.csv")
    row_id = document.document_id.removeprefix("faq#")
    assert row_id == "what-happens-to-my-standing-orders-and-direct-debits-when-i"
    assert len(row_id) <= 60


def test_single_file_id_is_its_stem(tmp_path):
    page = tmp_path / "deep" / "opening-hours.md"
    page.parent.mkdir()
    page.write_text("# Opening hours\n\nNine to five.\n", encoding="utf-8")
    [document] = read_documents(page, collection="branches")
    assert (document.document_id, document.title, document.collection) == ("opening-hours", "Opening hours", "branches")


def test_unsupported_single_file_is_an_error_naming_the_supported_suffixes(tmp_path):
    doc = tmp_path / "notes.docx"
    doc.write_bytes(b"PK\x03\x04")
    with pytest.raises(DocumentError) as error:
        read_documents(doc)
    assert str(doc) in str(error.value)
    assert ".md" in str(error.value) and ".pdf" in str(error.value) and ".csv" in str(error.value)


def test_missing_path_is_an_error(tmp_path):
    with pytest.raises(DocumentError, match="does not exist"):
        read_documents(tmp_path / "nowhere")


def test_truncated_pdf_is_not_readable(tmp_path):
    whole = two_page_pdf()
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DocumentError) as error:
        read_documents(broken)
    assert f"{broken} is not a readable PDF" in str(error.value)
    assert "re-export it from its source" in str(error.value)


def test_random_bytes_named_pdf_are_not_readable(tmp_path):
    junk = tmp_path / "junk.pdf"
    junk.write_bytes(os.urandom(4000))
    with pytest.raises(DocumentError, match=r"junk\.pdf is not a readable PDF .*re-export it from its source"):
        read_documents(junk)


def test_encrypted_pdf_asks_for_an_unencrypted_copy(tmp_path):
    locked = tmp_path / "locked.pdf"
    locked.write_bytes(two_page_pdf(user_password="x"))
    with pytest.raises(DocumentError) as error:
        read_documents(locked)
    assert str(error.value) == f"{locked} is encrypted: export an unencrypted copy"


def test_pdf_without_a_text_layer_asks_for_ocr(tmp_path):
    pdf = FPDF()
    pdf.add_page()
    pdf.rect(20, 20, 50, 50)  # a drawing, no text: what a scan looks like to a text extractor
    scan = tmp_path / "scan.pdf"
    scan.write_bytes(bytes(pdf.output()))
    with pytest.raises(DocumentError, match=r"scan\.pdf has no text layer .*ocrmypdf"):
        read_documents(scan)


def test_binary_junk_named_markdown_is_not_a_text_document(tmp_path):
    junk = tmp_path / "junk.md"
    junk.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + os.urandom(500))
    with pytest.raises(DocumentError, match=r"junk\.md is not a text document \(binary data\?\)"):
        read_documents(junk)


def test_invalid_utf8_names_the_byte_offset(tmp_path):
    latin = tmp_path / "latin.txt"
    latin.write_bytes(codecs.BOM_UTF8 + b"Caf" + b"\xe9 au lait\n")
    with pytest.raises(DocumentError) as error:
        read_documents(latin)
    assert "is not a text document (binary data?): byte 6 is not UTF-8; save it as UTF-8 text" in str(error.value)


def test_file_over_the_size_limit_is_refused_without_being_read(tmp_path, monkeypatch):
    big = tmp_path / "big.md"
    big.write_text("# Big\n\n" + "x" * 4993, encoding="utf-8")
    assert big.stat().st_size == 5000

    def must_not_open(self, *args, **kwargs):
        raise AssertionError(f"{self} was opened")

    monkeypatch.setattr(Path, "open", must_not_open)
    monkeypatch.setattr(Path, "read_bytes", must_not_open)
    with pytest.raises(DocumentError) as error:
        read_documents(big, max_bytes=1000)
    assert str(error.value) == (f"{big} is 4.9 KB, over the 1000 bytes limit per document "
                                "(knowledge.max_document_bytes): split it or raise the limit")


def test_empty_file_has_no_text(tmp_path):
    empty = tmp_path / "empty.md"
    empty.write_text("  \n\n", encoding="utf-8")
    with pytest.raises(DocumentError, match=r"empty\.md has no text"):
        read_documents(empty)


def test_duplicate_ids_across_files_name_both_sources(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"id": "same", "title": "A", "content": "First."}), encoding="utf-8")
    (tmp_path / "b.json").write_text(json.dumps({"id": "same", "title": "B", "content": "Second."}), encoding="utf-8")
    with pytest.raises(DocumentErrors) as error:
        read_documents(tmp_path)
    [message] = problems(error)
    assert f"document id 'same' is used by both {tmp_path / 'a.json'} and {tmp_path / 'b.json'}" in message
    assert "give each a distinct id" in message


def test_duplicate_csv_row_ids_name_both_rows(tmp_path):
    faq = tmp_path / "faq.csv"
    faq.write_text("question,answer\nLost card?,Freeze it.\nlost card,Call us.\n", encoding="utf-8")
    with pytest.raises(DocumentErrors) as error:
        read_documents(faq)
    assert problems(error) == [(f"document id 'faq#lost-card' is used by both {faq} row 2 and {faq} row 3: "
                                "give each a distinct id (front matter, record or CSV `id`) or rename a file")]


def test_several_bad_files_are_all_reported_and_nothing_is_returned(tmp_path):
    (tmp_path / "good.md").write_text("# Good\n\nFine.\n", encoding="utf-8")
    (tmp_path / "bad.json").write_text('{"id": "x", "content": ', encoding="utf-8")
    (tmp_path / "junk.pdf").write_bytes(b"not a pdf at all")
    (tmp_path / "list.json").write_text(json.dumps([{"id": "ok", "content": "Fine."}, {"id": "no-content"}]),
                                        encoding="utf-8")
    with pytest.raises(DocumentErrors) as error:
        read_documents(tmp_path)
    messages = problems(error)
    assert len(messages) == 3
    assert messages[0].startswith(f"{tmp_path / 'bad.json'} is not valid JSON (Expecting value at line 1 column 24)")
    assert messages[1].startswith(f"{tmp_path / 'junk.pdf'} is not a readable PDF")
    assert messages[2].startswith(f"{tmp_path / 'list.json'} record 2 of 2 has no string `content`")
    assert str(error.value).splitlines()[1:] == [f"  {message}" for message in messages]
    assert isinstance(error.value, DocumentError)


@pytest.mark.parametrize(("front_matter", "expected"), [
    ("id: one\ntitle: a: b\n", "has front matter that is not valid YAML at line 3 (mapping values are not allowed here)"),
    ("- just\n- a list\n", "has front matter that is not a mapping"),
    ("effective_date: 2024-02-30x\n", "effective_date '2024-02-30x' is not an ISO date: write it as YYYY-MM-DD"),
    ("kind: recipe\n", "kind 'recipe' is unknown: write faq or article"),
])
def test_bad_front_matter_names_the_file_and_the_fix(tmp_path, front_matter, expected):
    page = tmp_path / "page.md"
    page.write_text(f"---\n{front_matter}---\n# Page\n\nText.\n", encoding="utf-8")
    with pytest.raises(DocumentError) as error:
        read_documents(page)
    assert str(error.value).startswith(str(page))
    assert expected in str(error.value)


def test_unclosed_front_matter_is_an_error(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("---\ntitle: Page\n# Page\n", encoding="utf-8")
    with pytest.raises(DocumentError, match="never closes it: end it with a line holding only ---"):
        read_documents(page)


def test_effective_dates_are_normalised(tmp_path):
    (tmp_path / "a.md").write_text("---\neffective_date: '2024-06-01T09:30:00'\n---\nText.\n", encoding="utf-8")
    (tmp_path / "b.json").write_text(json.dumps({"content": "Text.", "effective_date": "20240702"}), encoding="utf-8")
    documents = by_id(read_documents(tmp_path))
    assert documents["a"].effective_date == "2024-06-01"
    assert documents["b"].effective_date == "2024-07-02"


def test_csv_without_the_needed_columns_names_what_it_found(tmp_path):
    faq = tmp_path / "faq.csv"
    faq.write_text("Q,Reply\nLost card?,Freeze it.\n", encoding="utf-8")
    with pytest.raises(DocumentError) as error:
        read_documents(faq)
    assert str(error.value) == (f"{faq} has columns Q, Reply; an FAQ table needs question and answer "
                                "(id, effective_date, section or category optional): rename its header row")


def test_csv_row_with_an_empty_answer_names_the_row(tmp_path):
    faq = tmp_path / "faq.csv"
    faq.write_text("question,answer\nLost card?,Freeze it.\nStolen card?,\n", encoding="utf-8")
    with pytest.raises(DocumentError, match=r"faq\.csv row 3 has an empty answer: fill it in or delete the row"):
        read_documents(faq)


def test_read_document_folder_keeps_only_the_asked_suffixes(knowledge_folder):
    documents = read_document_folder(knowledge_folder, "banking", suffixes=(".md",))
    assert [document.document_id for document in documents] == ["cards/lost-card", "lost-card"]
    assert {document.collection for document in documents} == {"banking"}
    with pytest.raises(DocumentError, match="not a folder"):
        read_document_folder(knowledge_folder / "policy.md")


def test_markdown_title():
    assert markdown_title("Intro\n\n## Fees ##\n\n# Later\n", "fallback") == "Fees"
    assert markdown_title("no heading", "fallback") == "fallback"
