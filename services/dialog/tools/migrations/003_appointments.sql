-- Appointments with an adviser (a bank's branch appointments; a clinic's would have the same shape):
-- the calendar of bookable slots and the customers' bookings. Applied by services/kit/database.py with
-- search_path = backoffice, public.
--
-- A slot is one adviser's time at one location for one topic. A booking holds a slot for a customer;
-- at most one booking per slot is `booked` at a time (the partial unique index), so two callers
-- confirming the same slot at once cannot both get it, whatever the application does. A cancelled
-- booking stays as a record and frees the slot.

CREATE TABLE appointment_slots (
    slot_id      text        PRIMARY KEY,
    topic        text        NOT NULL
                 CHECK (topic IN ('mortgage', 'loan', 'account_opening', 'investment', 'general')),
    location     text        NOT NULL,
    adviser      text        NOT NULL,
    starts_at    timestamptz NOT NULL,
    duration_min integer     NOT NULL CHECK (duration_min > 0)
);
-- Finding free slots filters by topic and time, soonest first.
CREATE INDEX appointment_slots_topic_start ON appointment_slots (topic, starts_at);

CREATE TABLE appointment_bookings (
    appointment_id text        PRIMARY KEY,
    slot_id        text        NOT NULL REFERENCES appointment_slots ON DELETE CASCADE,
    -- The back office's id of the verified caller (from the session, never from the caller's words).
    customer_id    text        NOT NULL,
    topic          text        NOT NULL,
    note           text        NOT NULL DEFAULT '',
    status         text        NOT NULL DEFAULT 'booked' CHECK (status IN ('booked', 'cancelled')),
    created_at     timestamptz NOT NULL DEFAULT now(),
    cancelled_at   timestamptz,
    CHECK ((status = 'cancelled') = (cancelled_at IS NOT NULL))
);
-- One live booking per slot: the database refuses a double booking even under concurrency.
CREATE UNIQUE INDEX appointment_bookings_one_per_slot ON appointment_bookings (slot_id) WHERE status = 'booked';
CREATE INDEX appointment_bookings_customer ON appointment_bookings (customer_id, status);
