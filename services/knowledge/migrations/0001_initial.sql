-- The knowledge base: documents and their embedded, full-text-indexed chunks.
-- Applied by services/knowledge/store.py inside one transaction, with search_path = knowledge, public.

-- In public, where other services and operators expect it; a site may have created it already.
CREATE EXTENSION IF NOT EXISTS vector WITH SCHEMA public;

CREATE TABLE documents (
    collection   text        NOT NULL,
    document_id  text        NOT NULL,
    title        text        NOT NULL DEFAULT '',
    source_uri   text        NOT NULL DEFAULT '',
    -- sha256 of everything that shapes the indexed chunks (see servicer.content_hash).
    content_hash text        NOT NULL,
    content      text        NOT NULL,
    version      integer     NOT NULL DEFAULT 1,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (collection, document_id)
);

CREATE TABLE chunks (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    collection  text    NOT NULL,
    document_id text    NOT NULL,
    ordinal     integer NOT NULL,
    -- The document's title is repeated here so the generated tsv can weigh it.
    title       text    NOT NULL DEFAULT '',
    section     text    NOT NULL DEFAULT '',
    text        text    NOT NULL,
    start_char  integer NOT NULL,
    end_char    integer NOT NULL,
    embedding   vector(384) NOT NULL,
    tsv tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('english', title), 'A')
        || setweight(to_tsvector('english', section), 'B')
        || to_tsvector('english', text)
    ) STORED,
    UNIQUE (collection, document_id, ordinal),
    FOREIGN KEY (collection, document_id) REFERENCES documents (collection, document_id) ON DELETE CASCADE
);

CREATE INDEX chunks_embedding_hnsw ON chunks USING hnsw (embedding vector_cosine_ops);
CREATE INDEX chunks_tsv_gin ON chunks USING gin (tsv);
