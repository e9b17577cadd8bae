-- The logs kept beside runs: the audit record (log `audit`) and each flow's hook log (log
-- `hooks:FLOW`: catch-hook requests that started no run). Entries are appended and pruned, never
-- changed; ids are ULIDs made from `at`, so id order is time order within a log.
CREATE TABLE hookflow.logs (
    log    text NOT NULL,
    kind   text NOT NULL,
    id     text NOT NULL,
    at     bigint NOT NULL,
    action text NOT NULL,
    data   json NOT NULL,
    PRIMARY KEY (log, id)
);
CREATE INDEX logs_by_kind ON hookflow.logs (kind, id);
