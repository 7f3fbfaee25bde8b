-- Grants: an approved request becomes one grant, which the scheduler applies to Keycloak at
-- its start and removes at its end. Findings of the reconciliation, and the grant an audit
-- event belongs to.

create table access_grant (
    id text primary key not null,
    request_id text not null unique references access_request (id),
    -- Keycloak user id (`sub`) and username of the grantee.
    subject text not null,
    username text not null,
    role_key text not null,
    -- The Keycloak role as the catalog named it when the grant was made.
    client_id text,
    role_name text not null,
    -- Keycloak's id of the role, stored at the first write and re-read before each later one.
    role_id text,
    starts_at integer not null,
    ends_at integer not null check (ends_at > starts_at),
    -- scheduled: waits for its start; applying: the mapping is being added; active: Keycloak
    -- has the mapping; revoking: the mapping is being removed; ended, refused, failed and
    -- cancelled are final.
    status text not null check (status in
        ('scheduled', 'applying', 'active', 'revoking', 'ended', 'refused', 'failed', 'cancelled')),
    -- The user held the mapping directly before the grant started and keeps it at the end.
    preexisting integer not null default 0,
    -- End the user's Keycloak sessions when the grant ends.
    end_sessions integer not null default 0,
    applied_at integer,
    revoked_at integer,
    -- After the revocation the role was still effective through a group or composite role.
    still_effective integer not null default 0,
    -- Every access token issued before the revocation has expired by then.
    tokens_expire_by integer,
    -- When the scheduler works on the grant next.
    due_at integer not null,
    attempts integer not null default 0,
    last_error text,
    -- Why a final status was reached, in words.
    outcome text,
    lease_owner text,
    lease_expires_at integer,
    created_at integer not null,
    updated_at integer not null
);

create index access_grant_due on access_grant (status, due_at);
create index access_grant_holder on access_grant (subject, role_key, status);

-- An extension request names the grant it extends.
alter table access_request add column extends_grant_id text references access_grant (id);

alter table audit_event add column grant_id text;
create index audit_event_grant on audit_event (grant_id, id);

-- What the reconciliation found in Keycloak that the grants do not explain, or the reverse.
create table reconcile_finding (
    id integer primary key autoincrement,
    subject text not null,
    username text not null default '',
    role_key text not null,
    -- standing_access: a catalog role mapped without a grant; removed: the same, removed
    -- because the role is JIT-only; restored: an active grant's mapping was missing.
    kind text not null check (kind in ('standing_access', 'removed', 'restored')),
    detail text not null default '',
    first_seen integer not null,
    last_seen integer not null,
    resolved_at integer
);

create unique index reconcile_finding_open
    on reconcile_finding (subject, role_key, kind) where resolved_at is null;
