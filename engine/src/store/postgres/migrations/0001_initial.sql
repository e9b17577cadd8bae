-- hookflow's tables, in their own schema. Times are milliseconds since the Unix epoch (bigint),
-- ids are the text form of hookflow's ids (ULIDs with a prefix: text order is time order), and
-- records are kept whole as json beside the columns that queries select on.

CREATE TABLE hookflow.events (
    id          text PRIMARY KEY,
    flow_id     text NOT NULL,
    received_at bigint NOT NULL,
    data        json NOT NULL
);

CREATE TABLE hookflow.runs (
    id         text PRIMARY KEY,
    flow_id    text NOT NULL,
    event_id   text NOT NULL,
    status     text NOT NULL,
    final      boolean NOT NULL,
    created_at bigint NOT NULL,
    data       json NOT NULL
);
CREATE INDEX runs_by_flow ON hookflow.runs (flow_id, id);
CREATE INDEX runs_by_status ON hookflow.runs (status, id);

CREATE TABLE hookflow.step_records (
    run_id  text NOT NULL,
    step_id text NOT NULL,
    data    json NOT NULL,
    PRIMARY KEY (run_id, step_id)
);

-- A queue item is queued (lease_owner NULL) or leased (owner, token, until).
CREATE TABLE hookflow.queue (
    id          text PRIMARY KEY,
    run_id      text NOT NULL,
    flow_id     text NOT NULL,
    due_at      bigint NOT NULL,
    data        json NOT NULL,
    lease_owner text,
    lease_token bigint,
    lease_until bigint,
    -- When an item this version could not read was parked (leased to `~quarantine`).
    parked_at   bigint,
    CHECK ((lease_owner IS NULL) = (lease_token IS NULL) AND (lease_owner IS NULL) = (lease_until IS NULL))
);
CREATE INDEX queue_ready ON hookflow.queue (flow_id, due_at, id) WHERE lease_owner IS NULL;
CREATE INDEX queue_due ON hookflow.queue (due_at) WHERE lease_owner IS NULL;
CREATE INDEX queue_leased ON hookflow.queue (flow_id, lease_until) WHERE lease_owner IS NOT NULL;

-- Fencing tokens: never handed out twice.
CREATE SEQUENCE hookflow.lease_tokens;

CREATE TABLE hookflow.dedupe (
    flow_id    text NOT NULL,
    key        text NOT NULL,
    event_id   text NOT NULL,
    run_id     text NOT NULL,
    taken_at   bigint NOT NULL,
    expires_at bigint NOT NULL,
    PRIMARY KEY (flow_id, key)
);
CREATE INDEX dedupe_expiry ON hookflow.dedupe (expires_at);

CREATE TABLE hookflow.hook_tokens (
    flow_id text PRIMARY KEY,
    token   text NOT NULL
);

CREATE TABLE hookflow.revisions (
    flow_id  text NOT NULL,
    revision text NOT NULL,
    source   text NOT NULL,
    PRIMARY KEY (flow_id, revision)
);

CREATE TABLE hookflow.state (
    key   text PRIMARY KEY,
    value json NOT NULL
);

-- Coordination: one row per lane of a named queue and per paced account, locked while changed.
CREATE TABLE hookflow.lanes (
    name  text NOT NULL,
    key   text NOT NULL,
    state json NOT NULL,
    PRIMARY KEY (name, key)
);

CREATE TABLE hookflow.pacing (
    account text PRIMARY KEY,
    state   json NOT NULL
);

CREATE TABLE hookflow.ticks (
    flow_id   text PRIMARY KEY,
    last_tick bigint NOT NULL
);

-- The nodes using the database: when each started and was last seen.
CREATE TABLE hookflow.nodes (
    id         text PRIMARY KEY,
    version    text NOT NULL,
    started_at bigint NOT NULL,
    seen_at    bigint NOT NULL
);
