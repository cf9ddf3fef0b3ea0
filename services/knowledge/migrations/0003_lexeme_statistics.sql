-- Per-collection lexeme statistics, so the full-text ranking can weigh a query's words by how rare
-- they are (inverse document frequency, as BM25 does); PostgreSQL's ts_rank alone weighs "card" in
-- a bank's knowledge base as much as "overdraft".
-- Kept exact by store.py in the same transaction as every chunk write and delete.

ALTER TABLE collections ADD COLUMN chunk_count integer NOT NULL DEFAULT 0;
UPDATE collections SET chunk_count = (SELECT count(*) FROM chunks WHERE chunks.collection = collections.name);

-- In how many chunks of a collection each lexeme occurs.
CREATE TABLE lexeme_chunks (
    collection text    NOT NULL REFERENCES collections (name),
    lexeme     text    NOT NULL,
    chunks     integer NOT NULL CHECK (chunks >= 0),
    PRIMARY KEY (collection, lexeme)
);
INSERT INTO lexeme_chunks (collection, lexeme, chunks)
SELECT collection, lexeme, count(*) FROM chunks, unnest(tsv) GROUP BY collection, lexeme;
