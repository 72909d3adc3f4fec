-- A task that waited on another, rather than failing: `deferred` (for
-- example a document event while another delivery holds that document's
-- lease, webhooks/processing.rs). It is retried like `failed`, but gives
-- back the attempt its claim counted: a burst of events for one document
-- is applied one at a time, and the newest must not run out of attempts
-- while the older ones take their turns. The wait is bounded by the lease
-- it waits on, which always expires. Other outcomes as in 0003.
create or replace function public.keel_complete_task(args jsonb) returns jsonb
language plpgsql
security definer
set search_path = keel, pg_catalog
as $$
declare
  v_task keel.tasks;
  v_outcome text := args->>'outcome';
  v_deferred boolean := args->>'outcome' = 'deferred';
begin
  select * into v_task from keel.tasks
  where id = (args->>'id')::bigint and lease_token = (args->>'lease_token')::uuid and status = 'running'
  for update;
  if v_task.id is null then
    -- The lease expired and another worker took the task over: its outcome counts.
    return jsonb_build_object('recorded', false);
  end if;
  if v_deferred then
    v_outcome := 'failed';
    v_task.attempts := greatest(v_task.attempts - 1, 0);
  elsif v_outcome = 'failed' and v_task.attempts >= v_task.max_attempts then
    v_outcome := 'dead';
  end if;
  update keel.tasks
  set status = v_outcome,
      attempts = v_task.attempts,
      last_error = case when v_outcome = 'succeeded' then last_error else left(args->>'error', 2000) end,
      run_at = case when v_outcome = 'failed'
                    then now() + make_interval(secs => least(3600, (args->>'retry_base_seconds')::float8
                                                            * power(2, greatest(v_task.attempts, 1) - 1)) * (0.5 + random() / 2))
                    else run_at end,
      lease_token = null, lease_until = null, updated_at = now(),
      finished_at = case when v_outcome in ('succeeded', 'dead') then now() end
  where id = v_task.id;
  perform keel.bump('tasks_' || case when v_deferred then 'deferred' else v_outcome end);
  return jsonb_build_object('recorded', true, 'status', v_outcome);
end $$;

select keel.lock_down_api();
