-- Collections, document versions and per-chunk provenance.
-- Applied by services/knowledge/store.py inside one transaction, with search_path = knowledge, public.

-- A collection (one per line of business or site) exists once a document was ingested into it;
-- a search naming any other collection is refused.
CREATE TABLE collections (
    name       text        PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO collections (name) SELECT DISTINCT collection FROM documents;

-- Every version of every document ever ingested, so that a past answer's citation
-- (collection, document_id, version, start_char, end_char) still resolves after the document
-- changed or was removed. Rows are only ever added, or closed by setting superseded_at.
CREATE TABLE document_versions (
    collection     text        NOT NULL REFERENCES collections (name),
    document_id    text        NOT NULL,
    version        integer     NOT NULL,
    title          text        NOT NULL,
    source_uri     text        NOT NULL,
    content_hash   text        NOT NULL,
    content        text        NOT NULL,
    effective_date date,
    -- 0: article, 1: FAQ answer (quietline.v1.DocumentKind).
    kind           smallint    NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT now(),
    superseded_at  timestamptz,
    -- True on the last version of a document that was removed.
    removed        boolean     NOT NULL DEFAULT false,
    PRIMARY KEY (collection, document_id, version)
);
INSERT INTO document_versions (collection, document_id, version, title, source_uri, content_hash, content, created_at)
SELECT collection, document_id, version, title, source_uri, content_hash, content, updated_at FROM documents;

-- `documents` keeps the current version of each searchable document; its content lives in
-- document_versions.
ALTER TABLE documents
    DROP COLUMN content,
    ADD COLUMN effective_date date,
    ADD COLUMN kind smallint NOT NULL DEFAULT 0,
    ADD FOREIGN KEY (collection) REFERENCES collections (name);

ALTER TABLE chunks
    ADD COLUMN version integer NOT NULL DEFAULT 1,
    -- sha256 of the chunk's text: a cited passage can be checked against what was said.
    ADD COLUMN chunk_hash text NOT NULL DEFAULT '';
UPDATE chunks SET version = d.version, chunk_hash = encode(sha256(convert_to(chunks.text, 'UTF8')), 'hex')
FROM documents AS d WHERE d.collection = chunks.collection AND d.document_id = chunks.document_id;
ALTER TABLE chunks ALTER COLUMN version DROP DEFAULT, ALTER COLUMN chunk_hash DROP DEFAULT;

-- Collection filters come first in both rankings' scans.
CREATE INDEX chunks_collection ON chunks (collection);

-- sha256 of the embedding model and the exact text embedded: a chunk whose text, title and
-- section did not change (in an edited document, a moved file or a copied document) reuses its
-- stored vector instead of being embedded again.
ALTER TABLE chunks ADD COLUMN embedding_key text;
CREATE INDEX chunks_embedding_key ON chunks (embedding_key);
