-- A bank's customer records (tau2-bench banking db.json shape: collections of records keyed by id),
-- for banking tools to come. One table for every collection: the records stay jsonb as exported, and
-- what tools look records up by (the owning customer, the account) are indexed columns.

CREATE TABLE bank_collections (
    collection text    PRIMARY KEY,
    notes      text    NOT NULL DEFAULT '',
    ordinal    integer NOT NULL
);

CREATE TABLE bank_records (
    collection text    NOT NULL REFERENCES bank_collections ON DELETE CASCADE,
    record_id  text    NOT NULL,
    -- The customer the record belongs to (its user_id, or referrer_id for a referral); NULL when it
    -- names none (an application by name only, an account's transaction: see account_id).
    user_id    text,
    account_id text,
    data       jsonb   NOT NULL,
    ordinal    integer NOT NULL,
    PRIMARY KEY (collection, record_id)
);
CREATE INDEX bank_records_user ON bank_records (collection, user_id);
CREATE INDEX bank_records_account ON bank_records (collection, account_id);
