-- The back office the retail tools act on: customers, their payment methods, orders and the product
-- catalogue, in the shape of a tau-bench retail export. Applied by services/kit/database.py with
-- search_path = backoffice, public.
--
-- Keys the tools filter or join on are columns with indexes; nested parts that are only ever read
-- and rewritten whole with their order (addresses, order lines, fulfilments, payment history) are
-- jsonb. Every table keeps its export position (`ordinal`) so an export round-trips in order.

CREATE TABLE users (
    user_id    text    PRIMARY KEY,
    first_name text    NOT NULL,
    last_name  text    NOT NULL,
    email      text    NOT NULL,
    -- {address1, address2, city, state, country, zip}
    address    jsonb   NOT NULL,
    zip        text    GENERATED ALWAYS AS (address ->> 'zip') STORED,
    -- Keys of the export's user record this schema has no column for, kept for the round trip.
    extra      jsonb   NOT NULL DEFAULT '{}',
    ordinal    integer NOT NULL
);
-- Identification looks callers up case-insensitively by email, or by name and zip code.
CREATE INDEX users_email ON users (lower(email));
CREATE INDEX users_name_zip ON users (lower(first_name), lower(last_name), zip);

CREATE TABLE payment_methods (
    payment_method_id text    PRIMARY KEY,
    user_id           text    NOT NULL REFERENCES users ON DELETE CASCADE,
    source            text    NOT NULL,
    -- Gift cards only: what is left on the card. Never negative: a payment it cannot cover is refused.
    balance           numeric(12, 2) CHECK (balance >= 0),
    -- The rest of the method as exported (brand, last_four, ...).
    details           jsonb   NOT NULL DEFAULT '{}',
    ordinal           integer NOT NULL,
    CHECK (source <> 'gift_card' OR balance IS NOT NULL)
);
CREATE INDEX payment_methods_user ON payment_methods (user_id, ordinal);

CREATE TABLE products (
    product_id text    PRIMARY KEY,
    name       text    NOT NULL,
    ordinal    integer NOT NULL
);

-- A product's variants ("items"): one option combination each, with its own id, price and stock.
CREATE TABLE items (
    item_id    text    PRIMARY KEY,
    product_id text    NOT NULL REFERENCES products ON DELETE CASCADE,
    options    jsonb   NOT NULL,
    available  boolean NOT NULL,
    price      numeric(12, 2) NOT NULL CHECK (price >= 0),
    ordinal    integer NOT NULL
);
CREATE INDEX items_product ON items (product_id, ordinal);

CREATE TABLE orders (
    order_id        text    PRIMARY KEY,
    user_id         text    NOT NULL REFERENCES users ON DELETE CASCADE,
    -- pending, processed, delivered, cancelled, and what the tools set: 'pending (item modified)',
    -- 'return requested', 'exchange requested'.
    status          text    NOT NULL,
    address         jsonb   NOT NULL,
    -- [{name, product_id, item_id, price, options}]
    items           jsonb   NOT NULL,
    -- [{tracking_id: [...], item_ids: [...]}]
    fulfillments    jsonb   NOT NULL,
    -- [{transaction_type: payment | refund, amount, payment_method_id}], oldest first
    payment_history jsonb   NOT NULL,
    -- What tools recorded on the order (cancel_reason, return_items, exchange_items, ...) and export
    -- keys without a column.
    extra           jsonb   NOT NULL DEFAULT '{}',
    -- Position in the owner's order list.
    user_ordinal    integer NOT NULL
);
CREATE INDEX orders_user ON orders (user_id, user_ordinal);
CREATE INDEX orders_status ON orders (status);

-- The export last loaded, each file as a jsonb array of its records in file order (objects keyed by
-- id become arrays, as jsonb would not keep their order). The tables above are materialised from
-- it, so `reset` can put the back office back to it, undoing what the tools changed (tests, the demo
-- between calls).
CREATE TABLE retail_export (
    singleton boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    source    text        NOT NULL,
    users     jsonb       NOT NULL,
    orders    jsonb       NOT NULL,
    products  jsonb       NOT NULL,
    loaded_at timestamptz NOT NULL DEFAULT now()
);
