-- Keel foundation: extensions, Supabase roles, the private schema, migration
-- bookkeeping and the health probe.
--
-- Layout rule for every migration:
--   * tables live in schema `keel`, which PostgREST does not expose;
--   * the API is `public.keel_*(args jsonb) returns jsonb`, SECURITY DEFINER
--     with a fixed search_path, executable by `service_role` only;
--   * every statement is re-runnable, so a file can be pasted into psql or the
--     Supabase SQL editor and `keel migrate` will simply record it later.

-- pgvector >= 0.8 (iterative index scans). Supabase keeps extensions in
-- `extensions`; locally we do the same so one search_path works everywhere.
create schema if not exists extensions;
create extension if not exists vector with schema extensions;

do $$
declare
  installed text := (select extversion from pg_extension where extname = 'vector');
begin
  if string_to_array(installed, '.')::int[] < array[0, 8] then
    raise exception 'Keel needs pgvector >= 0.8, found %', installed
      using hint = 'ALTER EXTENSION vector UPDATE; (Supabase: Database > Extensions)';
  end if;
end $$;

-- Supabase's API roles. They exist on Supabase; create them elsewhere so the
-- grants below mean the same thing locally, in CI and on self-hosted Postgres.
do $$
begin
  if not exists (select from pg_roles where rolname = 'anon') then
    create role anon nologin noinherit;
  end if;
  if not exists (select from pg_roles where rolname = 'authenticated') then
    create role authenticated nologin noinherit;
  end if;
  if not exists (select from pg_roles where rolname = 'service_role') then
    create role service_role nologin noinherit bypassrls;
  end if;
end $$;

create schema if not exists keel;
revoke all on schema keel from public, anon, authenticated;
-- Tables are reached only through SECURITY DEFINER functions; nobody but the
-- owner gets table privileges, not even service_role.
alter default privileges in schema keel revoke all on tables from public, anon, authenticated;
alter default privileges in schema keel revoke all on sequences from public, anon, authenticated;
alter default privileges in schema keel revoke execute on functions from public, anon, authenticated;

create table if not exists keel.schema_migrations (
  version bigint primary key,
  name text not null,
  checksum text,
  applied_at timestamptz not null default now()
);

-- Locks the public API down after each migration: every public.keel_*
-- function is executable by service_role and by nobody else. Supabase grants
-- EXECUTE on new public functions to anon and authenticated by default.
create or replace function keel.lock_down_api() returns void
language plpgsql
set search_path = pg_catalog
as $$
declare
  fn regprocedure;
begin
  for fn in
    select p.oid::regprocedure
    from pg_proc p join pg_namespace n on n.oid = p.pronamespace
    where n.nspname = 'public' and p.proname like 'keel\_%'
  loop
    execute format('revoke all on function %s from public, anon, authenticated', fn);
    execute format('grant execute on function %s to service_role', fn);
  end loop;
end $$;
revoke all on function keel.lock_down_api() from public, anon, authenticated;

-- The readiness probe: one round trip proving the database answers, the
-- migrations ran and the caller may execute Keel's functions.
create or replace function public.keel_health(args jsonb) returns jsonb
language sql
stable
security definer
set search_path = keel, pg_catalog
as $$
  select jsonb_build_object(
    'ok', true,
    'schema_version', (select max(version) from keel.schema_migrations),
    'database_time', now()
  );
$$;

select keel.lock_down_api();
