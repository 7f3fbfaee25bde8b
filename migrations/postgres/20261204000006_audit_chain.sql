-- The audit log's hash chain: each event stores the previous event's hash and its own,
-- computed by the portal over the event's fields and that link. Events written before
-- this migration have neither and precede the chain.
alter table audit_event add column prev_hash text;
alter table audit_event add column hash text;
