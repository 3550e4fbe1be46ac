-- hotpath SQL origin schema (applied by `hotpath origin init`, i.e. cacheman.origin.sql.init_schema).
--
-- One DDL for PostgreSQL 13+ and SQLite 3.35+: only types, defaults and clauses both accept.
-- Idempotent: every statement is IF NOT EXISTS, so re-running it is a no-op.
-- On PostgreSQL the tables go into the schema named by `?schema=` on the origin URL (default: the
-- connection's search_path, normally `public`).
--
-- Every table is keyed by tenant first: a query can never reach another tenant's rows by accident,
-- and each lookup cacheman makes is one primary-key or index range scan.
--
-- Unread counts are derived, never stored: unread(room, user) = max(0, rooms.last_seq - read_states.last_read_seq).
-- A missing read_states row means "read nothing" (last_read_seq = 0).
--
-- Statements are separated by a semicolon at the end of a line (the loader splits on that).

-- Users known to a tenant (display data only; cacheman reads ids).
CREATE TABLE IF NOT EXISTS users (
    tenant_id    VARCHAR(64)  NOT NULL,
    user_id      VARCHAR(64)  NOT NULL,
    display_name VARCHAR(200) NOT NULL DEFAULT '',
    created_at   TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (tenant_id, user_id)
);

-- Rooms. `version` increases on every metadata change (name, topic, deleted);
-- `members_version` increases on every membership change (add, remove, role change);
-- `last_seq` is the seq of the room's latest message (monotonic, 0 = no message yet).
-- A deleted room keeps its row with deleted = TRUE so late events can be recognised.
CREATE TABLE IF NOT EXISTS rooms (
    tenant_id       VARCHAR(64)  NOT NULL,
    room_id         VARCHAR(64)  NOT NULL,
    name            VARCHAR(200) NOT NULL,
    topic           VARCHAR(1000) NOT NULL DEFAULT '',
    version         BIGINT       NOT NULL DEFAULT 1,
    members_version BIGINT       NOT NULL DEFAULT 1,
    last_seq        BIGINT       NOT NULL DEFAULT 0,
    deleted         BOOLEAN      NOT NULL DEFAULT FALSE,
    updated_at      TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (tenant_id, room_id)
);

-- Who is in which room, with a role (owner | admin | member).
-- The primary key makes the membership check (the hottest call) a single index probe.
CREATE TABLE IF NOT EXISTS room_members (
    tenant_id VARCHAR(64) NOT NULL,
    room_id   VARCHAR(64) NOT NULL,
    user_id   VARCHAR(64) NOT NULL,
    role      VARCHAR(32) NOT NULL DEFAULT 'member',
    joined_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (tenant_id, room_id, user_id)
);

-- "Rooms of a user" reads this index instead of scanning every room.
CREATE INDEX IF NOT EXISTS room_members_by_user ON room_members (tenant_id, user_id, room_id);

-- How far a user has read in a room: the seq of the last message they have seen (monotonic).
CREATE TABLE IF NOT EXISTS read_states (
    tenant_id     VARCHAR(64) NOT NULL,
    room_id       VARCHAR(64) NOT NULL,
    user_id       VARCHAR(64) NOT NULL,
    last_read_seq BIGINT      NOT NULL DEFAULT 0,
    updated_at    TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (tenant_id, room_id, user_id)
);

-- Messages, numbered per room by `seq` (1, 2, 3, ...); rooms.last_seq is the highest seq.
-- cacheman never reads messages; they are here so the demo origin is a complete chat database
-- (and for the index worker's replays).
CREATE TABLE IF NOT EXISTS messages (
    tenant_id  VARCHAR(64)  NOT NULL,
    room_id    VARCHAR(64)  NOT NULL,
    seq        BIGINT       NOT NULL,
    message_id VARCHAR(64)  NOT NULL,
    sender_id  VARCHAR(64)  NOT NULL,
    text       VARCHAR(8000) NOT NULL DEFAULT '',
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (tenant_id, room_id, seq)
);

CREATE UNIQUE INDEX IF NOT EXISTS messages_by_id ON messages (tenant_id, message_id);
