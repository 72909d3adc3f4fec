-- Issue 11: Supabase's API roles reach nothing of Keel's.
--
-- PostgreSQL grants EXECUTE on every new function to PUBLIC, and
-- `alter default privileges in schema keel revoke ... from public` (0001)
-- cannot take that built-in grant away: per-schema default privileges only
-- add to the global ones. So every internal keel.* function that a
-- migration did not revoke by hand stayed executable by anon and
-- authenticated (keel.take_quota, from 0005, let anyone holding the anon key
-- fill or probe any rate-limit bucket, had they been given USAGE on keel).
--
-- lock_down_api(), which every migration calls last, now closes the whole
-- private schema as well as the public API:
--   * public.keel_*: executable by service_role only (as before);
--   * keel.*: functions executable by their owner only (the public API runs
--     them as SECURITY DEFINER, i.e. as the owner); tables, views and
--     sequences: no privilege at all for PUBLIC, anon or authenticated.
-- Re-runnable, like every migration.

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

  revoke all on all functions in schema keel from public, anon, authenticated;
  revoke all on all tables in schema keel from public, anon, authenticated;
  revoke all on all sequences in schema keel from public, anon, authenticated;
  revoke all on schema keel from public, anon, authenticated;
end $$;
revoke all on function keel.lock_down_api() from public, anon, authenticated;

select keel.lock_down_api();
