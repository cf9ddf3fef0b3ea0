-- Call records of the dialog service: calls, turns, tool calls, escalations and the audit chain.
-- Applied by services.kit.database.apply_migrations with the dialog schema first on the search path,
-- so no name here carries a schema. Every text and JSON value arrives redacted (records.py).

CREATE TABLE calls (
    call_id      text PRIMARY KEY CHECK (call_id <> ''),
    started_at   timestamptz NOT NULL DEFAULT now(),
    ended_at     timestamptz,
    -- Dialled number or service line: which policy and knowledge the call used.
    service_line text NOT NULL DEFAULT '',
    -- BCP-47 language of the call.
    language     text NOT NULL DEFAULT '',
    -- Where the call came in: 'sip', 'webrtc', 'cli', ...
    channel      text NOT NULL DEFAULT '',
    -- How it ended: 'completed', 'escalated', 'caller_hung_up', 'failed', ...
    end_reason   text,
    -- Anything else the gateway knows about the call (redacted).
    context      jsonb NOT NULL DEFAULT '{}',
    CHECK (ended_at IS NULL OR ended_at >= started_at)
);
CREATE INDEX calls_started_at ON calls (started_at);

-- Rows of a call go with it when a retention job deletes the call; the audit rows stay.
CREATE TABLE turns (
    call_id     text NOT NULL REFERENCES calls (call_id) ON DELETE CASCADE,
    turn        integer NOT NULL CHECK (turn >= 0),
    caller_text text NOT NULL,
    bot_text    text NOT NULL,
    route       text NOT NULL,
    reason      text NOT NULL,
    -- Stage durations in milliseconds, e.g. {"asr_ms": 180, "llm_first_token_ms": 420}.
    timings     jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (call_id, turn)
);

CREATE TABLE tool_calls (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    call_id    text NOT NULL REFERENCES calls (call_id) ON DELETE CASCADE,
    turn       integer NOT NULL CHECK (turn >= 0),
    tool       text NOT NULL CHECK (tool <> ''),
    arguments  jsonb NOT NULL DEFAULT '{}',
    -- 'ok', 'error', 'refused', 'timeout', 'needs_confirmation', ...
    outcome    text NOT NULL,
    error      text,
    latency_ms double precision CHECK (latency_ms >= 0),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX tool_calls_call ON tool_calls (call_id, turn);

CREATE TABLE escalations (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    call_id    text NOT NULL REFERENCES calls (call_id) ON DELETE CASCADE,
    turn       integer NOT NULL CHECK (turn >= 0),
    reason     text NOT NULL,
    -- The queue, skill group or agent the call is handed to.
    target     text NOT NULL DEFAULT '',
    -- What the person taking the call reads first: summary, intent, verified facts, open questions.
    briefing   jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX escalations_call ON escalations (call_id, id);

-- The audit chain: every routing decision, tool call and escalation, append-only. Row n carries
-- prev_hash = hash of row n-1 (64 zeros for row 1) and
--     hash = hex(sha256(utf8(prev_hash || audit_content(id, at, kind, call_id, turn, payload))))
-- where audit_content is PostgreSQL's canonical jsonb text of those fields. The insert trigger sets
-- id, at, prev_hash and hash itself, under an advisory lock, so no writer can fork or forge the chain.
CREATE TABLE audit (
    id        bigint PRIMARY KEY CHECK (id >= 1),
    at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- 'turn', 'tool_call', 'escalation', 'call_started', 'call_ended'
    kind      text NOT NULL CHECK (kind <> ''),
    call_id   text,
    turn      integer,
    payload   jsonb NOT NULL DEFAULT '{}',
    -- UNIQUE: two rows naming the same predecessor would be a fork.
    prev_hash text NOT NULL UNIQUE CHECK (prev_hash ~ '^[0-9a-f]{64}$'),
    hash      text NOT NULL UNIQUE CHECK (hash ~ '^[0-9a-f]{64}$')
);
CREATE INDEX audit_call ON audit (call_id, id);

-- jsonb text output is canonical: keys sorted, one spacing, numbers normalised, so the same row
-- always serialises to the same text. The time is written in UTC with microseconds, whatever the
-- session's TimeZone.
CREATE FUNCTION audit_content(p_id bigint, p_at timestamptz, p_kind text, p_call_id text, p_turn integer,
                              p_payload jsonb)
RETURNS text LANGUAGE sql STABLE
AS $$
    SELECT jsonb_build_object(
        'id', p_id,
        'at', to_char(p_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'kind', p_kind,
        'call_id', p_call_id,
        'turn', p_turn,
        'payload', p_payload
    )::text
$$;

-- SET search_path FROM CURRENT pins the schema this migration runs in, so the trigger finds its
-- table whatever the inserting session's search path is.
CREATE FUNCTION audit_chain_append() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    last_row record;
BEGIN
    -- Under READ COMMITTED each statement below sees rows committed up to its own start, so after
    -- the lock the newest row is the true chain head. A REPEATABLE READ snapshot could be older
    -- than the head and fork the chain (the UNIQUE prev_hash would then refuse the row).
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'audit rows must be appended at READ COMMITTED isolation, not %',
            current_setting('transaction_isolation')
            USING HINT = 'append audit rows in a transaction of their own at the default isolation level';
    END IF;
    -- Appends take turns; the lock is held until this transaction ends.
    PERFORM pg_advisory_xact_lock(hashtextextended('quietline audit chain ' || TG_TABLE_SCHEMA, 0));
    SELECT id, hash INTO last_row FROM audit ORDER BY id DESC LIMIT 1;
    NEW.id := coalesce(last_row.id, 0) + 1;
    NEW.prev_hash := coalesce(last_row.hash, repeat('0', 64));
    NEW.at := clock_timestamp();
    NEW.hash := encode(sha256(convert_to(
        NEW.prev_hash || audit_content(NEW.id, NEW.at, NEW.kind, NEW.call_id, NEW.turn, NEW.payload),
        'UTF8')), 'hex');
    RETURN NEW;
END
$$;

CREATE TRIGGER audit_chain BEFORE INSERT ON audit FOR EACH ROW EXECUTE FUNCTION audit_chain_append();

CREATE FUNCTION audit_refuse_change() RETURNS trigger LANGUAGE plpgsql
AS $$
BEGIN
    RAISE EXCEPTION 'the audit table is append-only: % is refused', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'audit rows are hash-chained and never change; append a new row that corrects the old one';
END
$$;

-- Statement-level, so even an UPDATE or DELETE that matches no row is refused.
CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
