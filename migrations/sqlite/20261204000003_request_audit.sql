-- Access requests, their approvals, and the audit log of every state change.

create table access_request (
    id text primary key not null,
    -- Keycloak `sub` and username of the requester at the time of the request.
    requester_subject text not null,
    requester_username text not null,
    -- Catalog key of the requested role.
    role_key text not null,
    duration_seconds integer not null check (duration_seconds > 0),
    -- Unix seconds at which the grant starts; null means as soon as it is approved.
    starts_at integer,
    justification text not null default '',
    ticket text,
    status text not null
        check (status in ('pending', 'approved', 'denied', 'expired', 'cancelled')),
    approvals_required integer not null check (approvals_required > 0),
    -- Unix seconds after which a pending request expires.
    approval_deadline integer not null,
    created_at integer not null,
    updated_at integer not null
);

-- At most one pending request per user and role.
create unique index access_request_one_pending
    on access_request (requester_subject, role_key) where status = 'pending';
create index access_request_status on access_request (status, created_at);

create table approval (
    request_id text not null references access_request (id),
    approver_subject text not null,
    approver_username text not null,
    decision text not null check (decision in ('approve', 'deny')),
    comment text not null default '',
    decided_at integer not null,
    created_at integer not null default (unixepoch()),
    -- An approver decides a request once.
    primary key (request_id, approver_subject)
);

-- Append-only: written in the same transaction as the change it records.
create table audit_event (
    id integer primary key autoincrement,
    occurred_at integer not null,
    -- Null for the portal's own actions, such as an expiry.
    actor_subject text,
    actor_username text,
    request_id text,
    action text not null,
    from_status text,
    to_status text,
    comment text not null default '',
    created_at integer not null default (unixepoch())
);

create index audit_event_request on audit_event (request_id, id);

create trigger audit_event_no_update before update on audit_event
begin
    select raise(abort, 'audit_event is append-only');
end;

create trigger audit_event_no_delete before delete on audit_event
begin
    select raise(abort, 'audit_event is append-only');
end;
