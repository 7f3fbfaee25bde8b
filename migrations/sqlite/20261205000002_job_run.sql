-- The last start of each periodic job that one replica runs for all of them, so that the
-- replicas on one database take turns instead of each running it every interval.
create table job_run (
    name text primary key,
    owner text not null,
    started_at integer not null
);
