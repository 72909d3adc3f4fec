-- Embeddings that survive provider outages and model changes (issue #12).
--
-- Outages: a failure of the provider itself (unreachable, timeouts, 429,
-- 5xx, a refused key) no longer costs the jobs an attempt. It opens a
-- circuit per model (`paused_until`, growing with consecutive outages or
-- set by the provider's retry-after) during which no run claims work; the
-- first batch after the pause probes the provider. Only a rejection of the
-- input itself counts as an attempt.

alter table keel.embedding_models add column if not exists paused_until timestamptz;
alter table keel.embedding_models add column if not exists outage_failures int not null default 0;

-- Claims like 0002's, but claims nothing while the provider's circuit is
-- open for the model (answering `paused_until`), and only jobs due at
-- `due_before` when given: a run passes the `claimed_at` of its first claim,
-- so a job it rescheduled is not tried again in the same run.
create or replace function public.keel_claim_embedding_jobs(args jsonb) returns jsonb
language plpgsql
security definer
set search_path = keel, pg_catalog
as $$
declare
  v_model text := args->>'model';
  v_dimensions int := (args->>'dimensions')::int;
  v_tenant uuid;
  v_token uuid := gen_random_uuid();
  v_paused timestamptz;
  v_due timestamptz := least(now(), coalesce((args->>'due_before')::timestamptz, now()));
  v_jobs jsonb;
begin
  if args->>'key_hash' is not null then
    v_tenant := keel.authenticate(args->>'key_hash');
  end if;
  perform keel.prepare_embedding_model(v_model, v_dimensions);
  select paused_until into v_paused from keel.embedding_models
  where model = v_model and dimensions = v_dimensions and paused_until > now();
  if v_paused is not null then
    return jsonb_build_object('lease_token', v_token, 'jobs', '[]'::jsonb, 'paused_until', v_paused,
                              'claimed_at', v_due);
  end if;
  with picked as (
    select j.chunk_id
    from keel.embedding_jobs j
    where j.model = v_model and j.dimensions = v_dimensions
      and j.failed_at is null and j.run_at <= v_due
      and (j.lease_until is null or j.lease_until < now())
      and (v_tenant is null or j.tenant_id = v_tenant)
    order by j.run_at, j.chunk_id
    limit (args->>'limit')::int
    for update skip locked
  ), claimed as (
    update keel.embedding_jobs j
    set attempts = j.attempts + 1, lease_token = v_token,
        lease_until = now() + make_interval(secs => (args->>'lease_seconds')::int)
    from picked
    where j.chunk_id = picked.chunk_id and j.model = v_model and j.dimensions = v_dimensions
    returning j.chunk_id, j.attempts
  )
  select coalesce(jsonb_agg(jsonb_build_object(
           'chunk_id', c.id,
           'attempts', claimed.attempts,
           'input', case when d.title = '' then c.content else d.title || E'\n\n' || c.content end)
         order by c.id), '[]'::jsonb)
  into v_jobs
  from claimed
  join keel.chunks c on c.id = claimed.chunk_id
  join keel.documents d on d.id = c.document_id;
  return jsonb_build_object('lease_token', v_token, 'jobs', v_jobs, 'claimed_at', v_due);
end $$;

-- Completes like 0002's, plus:
-- - `deferred`: chunk ids the provider never judged (an outage, or the run's
--   time ran out); their claim is given back without costing an attempt.
-- - `outage`: when true, the model's circuit opens for `retry_after_seconds`
--   (the provider's word) or for `outage_base_seconds` doubling per
--   consecutive outage up to `outage_max_seconds`, jittered; any stored
--   vector closes it.
create or replace function public.keel_complete_embedding_jobs(args jsonb) returns jsonb
language plpgsql
security definer
set search_path = keel, extensions, pg_catalog
as $$
declare
  v_model text := args->>'model';
  v_dimensions int := (args->>'dimensions')::int;
  v_token uuid := (args->>'lease_token')::uuid;
  v_stored int;
  v_retrying int;
  v_failed int;
  v_deferred int;
  v_paused timestamptz;
  v_tenant uuid;
begin
  if args->>'key_hash' is not null then
    v_tenant := keel.authenticate(args->>'key_hash');
  end if;
  insert into keel.embeddings (chunk_id, model, dimensions, tenant_id, embedding)
  select c.id, v_model, v_dimensions, c.tenant_id, (e.value->>'embedding')::extensions.vector
  from jsonb_array_elements(args->'embedded') e
  join keel.chunks c on c.id = (e.value->>'chunk_id')::bigint
  on conflict do nothing;
  get diagnostics v_stored = row_count;

  delete from keel.embedding_jobs j
  using jsonb_array_elements(args->'embedded') e
  where j.chunk_id = (e.value->>'chunk_id')::bigint and j.model = v_model and j.dimensions = v_dimensions;

  with updated as (
    update keel.embedding_jobs j
    set lease_token = null,
        lease_until = null,
        last_error = left(f.value->>'error', 2000),
        run_at = now() + make_interval(secs => least(3600, (args->>'retry_base_seconds')::float8 * power(2, j.attempts - 1))
                                               * (0.5 + random() / 2)),
        failed_at = case when j.attempts >= (args->>'max_attempts')::int then now() end
    from jsonb_array_elements(args->'failed') f
    where j.chunk_id = (f.value->>'chunk_id')::bigint and j.model = v_model and j.dimensions = v_dimensions
      and j.lease_token = v_token
    returning j.failed_at
  )
  select count(*) filter (where failed_at is null), count(*) filter (where failed_at is not null)
  into v_retrying, v_failed
  from updated;

  update keel.embedding_jobs j
  set lease_token = null, lease_until = null, attempts = greatest(j.attempts - 1, 0),
      last_error = coalesce(left(args->>'deferred_error', 2000), j.last_error)
  from jsonb_array_elements(coalesce(args->'deferred', '[]'::jsonb)) d
  where j.chunk_id = (d.value #>> '{}')::bigint and j.model = v_model and j.dimensions = v_dimensions
    and j.lease_token = v_token;
  get diagnostics v_deferred = row_count;

  if coalesce((args->>'outage')::boolean, false) then
    update keel.embedding_models m
    set outage_failures = m.outage_failures + 1,
        paused_until = now() + make_interval(secs => coalesce(
          (args->>'retry_after_seconds')::float8,
          least((args->>'outage_max_seconds')::float8,
                (args->>'outage_base_seconds')::float8 * power(2, least(m.outage_failures, 20)))
            * (0.5 + random() / 2)))
    where m.model = v_model and m.dimensions = v_dimensions
    returning m.paused_until into v_paused;
  elsif v_stored > 0 then
    update keel.embedding_models m
    set outage_failures = 0, paused_until = null
    where m.model = v_model and m.dimensions = v_dimensions
      and (m.outage_failures > 0 or m.paused_until is not null);
  end if;

  perform keel.bump('embeddings_stored', v_stored) where v_stored > 0;
  perform keel.bump('embedding_failures', v_retrying + v_failed + v_deferred)
    where v_retrying + v_failed + v_deferred > 0;

  return jsonb_build_object(
    'stored', v_stored,
    'retrying', v_retrying,
    'failed', v_failed,
    'deferred', v_deferred,
    'paused_until', v_paused,
    'remaining', (select count(*) from keel.embedding_jobs j
                  where j.model = v_model and j.dimensions = v_dimensions and j.failed_at is null
                    and (v_tenant is null or j.tenant_id = v_tenant)));
end $$;

select keel.lock_down_api();
