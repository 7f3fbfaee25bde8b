-- Keycloak session id (`sid`) of a signed-in session. A back-channel logout token may name
-- only the sid; the portal then ends every session of the user that sid belongs to.
alter table session add column keycloak_sid text;

create index session_keycloak_sid on session (keycloak_sid);
