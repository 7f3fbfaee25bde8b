-- Access requests, their approvals, and the audit log of every state change.

create table access_request (
    id text primary key not null,
    -- Keycloak `sub` and username of the requester at the time of the request.
    requester_subject text not null,
    requester_username text not null,
    -- Catalog key of the requested role.
    role_key text not null,
    duration_seconds bigint not null check (duration_seconds > 0),
    -- Unix seconds at which the grant starts; null means as soon as it is approved.
    starts_at bigint,
    justification text not null default '',
    ticket text,
    status text not null
        check (status in ('pending', 'approved', 'denied', 'expired', 'cancelled')),
    approvals_required bigint not null check (approvals_required > 0),
    -- Unix seconds after which a pending request expires.
    approval_deadline bigint not null,
    created_at bigint not null,
    updated_at bigint not null
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
    decided_at bigint not null,
    created_at bigint not null default (extract(epoch from now())::bigint),
    -- An approver decides a request once.
    primary key (request_id, approver_subject)
);

-- Append-only: written in the same transaction as the change it records.
create table audit_event (
    id bigserial primary key,
    occurred_at bigint not null,
    -- Null for the portal's own actions, such as an expiry.
    actor_subject text,
    actor_username text,
    request_id text,
    action text not null,
    from_status text,
    to_status text,
    comment text not null default '',
    created_at bigint not null default (extract(epoch from now())::bigint)
);

create index audit_event_request on audit_event (request_id, id);

create function audit_event_append_only() returns trigger language plpgsql as $$
begin
    raise exception 'audit_event is append-only';
end;
$$;

create trigger audit_event_no_change before update or delete on audit_event
    for each row execute function audit_event_append_only();
