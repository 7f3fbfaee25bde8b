-- Server-side sessions of the portal. The browser holds only the opaque id; tokens and
-- other session data stay here.
create table session (
    id text primary key not null,
    -- JSON object of the session's keys and values.
    data text not null,
    -- Keycloak subject (`sub`) of a signed-in session, so that a back-channel logout can
    -- end every session of that user. Null before sign-in.
    subject text,
    -- Unix seconds after which the session is no longer loaded.
    expires_at bigint not null,
    created_at bigint not null default (extract(epoch from now())::bigint)
);

create index session_subject on session (subject);
create index session_expires_at on session (expires_at);
