-- Why a pending request cannot be decided without an administrator, such as a role whose
-- approver groups have no member other than the requester. Null when nothing is wrong.
alter table access_request add column needs_admin_reason text;
