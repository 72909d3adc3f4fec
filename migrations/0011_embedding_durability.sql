-- Embeddings that survive provider outages and model changes (issue #12).
--
-- Outages: a failure of the provider itself (unreachable, timeouts, 429,
-- 5xx, a refused key) no longer costs the jobs an attempt. It opens a
-- circuit per model (`paused_until`, growing with consecutive outages or
-- set by the provider's retry-after) during which no run claims work; the
-- first batch after the pause probes the provider. Only a rejection of the
-- input itself counts as an attempt, and failed jobs can be queued again by
-- their tenant (keel_retry_embedding_jobs, or uploading the document again).

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

-- Queues the caller's failed jobs for the configured model again, with a
-- fresh set of attempts.
create or replace function public.keel_retry_embedding_jobs(args jsonb) returns jsonb
language plpgsql
security definer
set search_path = keel, pg_catalog
as $$
declare
  v_tenant uuid := keel.resolve_tenant(args);
  v_requeued int;
begin
  update keel.embedding_jobs
  set attempts = 0, failed_at = null, run_at = now(), lease_token = null, lease_until = null
  where tenant_id = v_tenant and model = args->>'model' and dimensions = (args->>'dimensions')::int
    and failed_at is not null;
  get diagnostics v_requeued = row_count;
  return jsonb_build_object('requeued', v_requeued);
end $$;

-- Queues the configured model's job for every chunk of a document that has
-- no vector for it, and gives failed ones a fresh set of attempts: what an
-- upload of an unchanged document does. Returns how many were queued.
create or replace function keel.requeue_document(
  p_tenant uuid, p_document uuid, p_model text, p_dimensions int
) returns int
language plpgsql
set search_path = keel, pg_catalog
as $$
declare
  v_queued int;
begin
  insert into keel.embedding_jobs as j (chunk_id, model, dimensions, tenant_id)
  select c.id, p_model, p_dimensions, p_tenant
  from keel.chunks c
  where c.document_id = p_document
    and not exists (select 1 from keel.embeddings e
                    where e.chunk_id = c.id and e.model = p_model and e.dimensions = p_dimensions)
  on conflict (chunk_id, model, dimensions) do update
    set attempts = 0, failed_at = null, run_at = now(), lease_token = null, lease_until = null
    where j.failed_at is not null;
  get diagnostics v_queued = row_count;
  return v_queued;
end $$;

-- Upserts like 0002's; an unchanged document (or a metadata-only change)
-- queues again its chunks that failed or lack a vector.
create or replace function public.keel_upsert_documents(args jsonb) returns jsonb
language plpgsql
security definer
set search_path = keel, pg_catalog
as $$
declare
  v_tenant uuid := keel.resolve_tenant(args);
  v_model text := args->>'model';
  v_dimensions int := (args->>'dimensions')::int;
  v_doc jsonb;
  v_existing keel.documents;
  v_needs text[] := '{}';
  v_created int := 0;
  v_updated int := 0;
  v_unchanged int := 0;
  v_pending int := 0;
  v_document uuid;
begin
  perform keel.prepare_embedding_model(v_model, v_dimensions);
  -- Lock this tenant's affected rows in id order so concurrent batches cannot deadlock.
  perform 1 from keel.documents d
  where d.tenant_id = v_tenant
    and d.external_id in (select e->>'id' from jsonb_array_elements(args->'documents') e)
  order by d.external_id
  for update;

  for v_doc in select * from jsonb_array_elements(args->'documents') loop
    select * into v_existing from keel.documents
    where tenant_id = v_tenant and external_id = v_doc->>'id';
    if (v_existing.id is null or v_existing.content_hash <> v_doc->>'content_hash')
       and jsonb_typeof(v_doc->'chunks') is distinct from 'array' then
      v_needs := v_needs || (v_doc->>'id');
    end if;
  end loop;
  if cardinality(v_needs) > 0 then
    return jsonb_build_object('needs_chunks', to_jsonb(v_needs));
  end if;

  for v_doc in select * from jsonb_array_elements(args->'documents') loop
    select * into v_existing from keel.documents
    where tenant_id = v_tenant and external_id = v_doc->>'id';
    if v_existing.id is null then
      insert into keel.documents (tenant_id, external_id, title, content_hash, metadata, source_url)
      values (v_tenant, v_doc->>'id', v_doc->>'title', v_doc->>'content_hash',
              v_doc->'metadata', v_doc->>'source_url')
      returning id into v_document;
      v_pending := v_pending + keel.replace_chunks(v_tenant, v_document, v_doc->>'title', v_doc->'chunks', v_model, v_dimensions);
      v_created := v_created + 1;
    elsif v_existing.content_hash = v_doc->>'content_hash' then
      if v_existing.metadata is distinct from v_doc->'metadata'
         or v_existing.source_url is distinct from v_doc->>'source_url' then
        update keel.documents
        set metadata = v_doc->'metadata', source_url = v_doc->>'source_url', updated_at = now()
        where id = v_existing.id;
        v_updated := v_updated + 1;
      else
        v_unchanged := v_unchanged + 1;
      end if;
      v_pending := v_pending + keel.requeue_document(v_tenant, v_existing.id, v_model, v_dimensions);
    else
      update keel.documents
      set title = v_doc->>'title', content_hash = v_doc->>'content_hash', metadata = v_doc->'metadata',
          source_url = v_doc->>'source_url', updated_at = now()
      where id = v_existing.id;
      v_pending := v_pending + keel.replace_chunks(v_tenant, v_existing.id, v_doc->>'title', v_doc->'chunks', v_model, v_dimensions);
      v_updated := v_updated + 1;
    end if;
  end loop;
  return jsonb_build_object('created', v_created, 'updated', v_updated,
                            'unchanged', v_unchanged, 'chunks_pending', v_pending);
end $$;

revoke all on function keel.requeue_document(uuid, uuid, text, int) from public, anon, authenticated;

select keel.lock_down_api();
