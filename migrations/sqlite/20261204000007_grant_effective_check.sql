-- A revocation stores the grant as ended as soon as Keycloak removed the mapping, and reads
-- the user's effective roles afterwards, outside the burst of removals. A grant waiting for
-- that read has effective_check_pending = 1; its due_at is the time of the next attempt.
alter table access_grant add column effective_check_pending integer not null default 0;
create index access_grant_effective_check on access_grant (due_at) where effective_check_pending = 1;
