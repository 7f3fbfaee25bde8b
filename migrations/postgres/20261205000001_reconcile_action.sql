-- A Keycloak write of the reconciliation that has been sent and not yet recorded: a
-- restore of an active grant's missing mapping, or the removal of a standing mapping of a
-- JIT-only role. The row is stored before the write and deleted in the transaction that
-- records the outcome, so a replica killed in between leaves it behind. A later run reads
-- Keycloak and records what the write did. The scheduler starts no grant of a lane with
-- a pending removal, because the start would find the mapping gone and claim it.
create table reconcile_action (
    subject text not null,
    role_key text not null,
    kind text not null check (kind in ('restore', 'remove')),
    username text not null,
    grant_id text,
    owner text not null,
    expires_at bigint not null,
    started_at bigint not null,
    primary key (subject, role_key)
);
