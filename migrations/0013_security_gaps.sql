-- Issue 11, item 4: the smaller intake gaps.
--
-- Re-runnable, like every migration; Postgres 15 + pgvector only.

-- Tasks: a worker killed on every attempt cannot run a task forever ----------
--
-- Claiming counts the attempt (keel_claim_tasks sets attempts + 1), but an
-- expired lease, or one maintenance released to `failed`, was claimed again
-- whatever the count, so a task that kills its worker (out of memory, a
-- timeout of the function) ran without bound and `attempts` passed
-- `max_attempts`. This trigger refuses any claim (status set to `running`
-- under a new lease) of a task that has used all its attempts: it
-- dead-letters the task instead and drops the row from the claim, so no
-- worker ever receives it. A trigger rather than a change to
-- keel_claim_tasks, so it holds whichever claim query runs.
create or replace function keel.dead_letter_exhausted_task() returns trigger
language plpgsql
set search_path = keel, pg_catalog
as $$
begin
  update keel.tasks
  set status = 'dead', lease_token = null, lease_until = null, updated_at = now(), finished_at = now(),
      last_error = format('gave up after %s of %s attempts: the worker stopped before finishing the last one '
                          '(its lease expired)', old.attempts, old.max_attempts)
  where id = old.id;
  perform keel.bump('tasks_dead');
  -- Skips this row in the claiming UPDATE: it is not returned to the worker.
  return null;
end $$;

create or replace trigger tasks_dead_letter_exhausted
  before update on keel.tasks
  for each row
  when (new.status = 'running'
        and new.lease_token is distinct from old.lease_token
        and old.attempts >= old.max_attempts)
  execute function keel.dead_letter_exhausted_task();

-- Webhook endpoints: no credentials in audit rows ---------------------------------
--
-- POST /api/webhooks/endpoints now refuses a pull_url with user:password@
-- (the URL is stored and audited as given). Audit rows written before that
-- lose the credentials here; the endpoint rows keep their URL, which their
-- reconciliation still needs, until the tenant replaces the endpoint.
update keel.audit_log
set details = jsonb_set(details, '{pull_url}',
                        to_jsonb(regexp_replace(details->>'pull_url', '^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#]*@', '\1')))
where details->>'pull_url' ~ '^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*@';

-- Tasks: tenants read last_error, so it holds no internals -----------------------
--
-- The task engine now stores a summary (the full cause goes to the logs).
-- Errors stored before that are rewritten the same way: the text Keel's SQL
-- functions wrote for people (classes 22, 23, P0) is kept without the
-- function name and code; database internals and panics become summaries.
update keel.tasks
set last_error = case
  when last_error ~ '^keel_\w+ failed with (22|23|P0)[0-9A-Z]{3}: '
    then regexp_replace(last_error, '^keel_\w+ failed with [0-9A-Z]{5}: ', '')
  when last_error ~ '^keel_\w+ failed with ' or last_error ~ '^unexpected response to keel_'
    then 'the database could not complete the request'
  when last_error ~ '^database unreachable while calling ' or last_error ~ '^keel_\w+ timed out after '
    then 'the database is unavailable'
  else 'the task stopped unexpectedly' end
where last_error ~ '^(keel_\w+ failed with |unexpected response to keel_|database unreachable while calling |keel_\w+ timed out after |handler panicked: )';

select keel.lock_down_api();
