-- A lease on a lane (every grant of one user and one role) that no grant row carries. The
-- reconciliation holds it while it removes a standing mapping of a JIT-only role, and the
-- scheduler claims no grant of a leased lane. So no grant can start in between, find the
-- mapping about to be removed, and record it as held before the grant.
create table lane_lease (
    subject text not null,
    role_key text not null,
    owner text not null,
    expires_at bigint not null,
    created_at bigint not null,
    primary key (subject, role_key)
);
