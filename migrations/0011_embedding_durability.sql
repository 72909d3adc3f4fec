-- Embeddings that survive provider outages and model changes (issue #12).
--
-- Outages: a failure of the provider itself (unreachable, timeouts, 429,
-- 5xx, a refused key) no longer costs the jobs an attempt. It opens a
-- circuit per model (`paused_until`, growing with consecutive outages or
-- set by the provider's retry-after) during which no run claims work; the
-- first batch after the pause probes the provider. Only a rejection of the
-- input itself counts as an attempt, and failed jobs can be queued again by
-- their tenant (keel_retry_embedding_jobs, or uploading the document again).
--
-- Model changes: `prepared_at` is when a model last became the configured
-- one (the latest `prepared_at` is the current model), and
-- `backfill_after` is the chunk id up to which its backfill has queued
-- jobs (null: complete). Requests only register a model; the embeddings
-- cron creates its index and queues the backfill in bounded batches
-- (keel_prepare_embedding_model), including after a rollback to a model
-- seen before. Vectors of another model are deleted only for tenants whose
-- every chunk has a vector of the configured model, a day after it became
-- current.

alter table keel.embedding_models add column if not exists paused_until timestamptz;
alter table keel.embedding_models add column if not exists outage_failures int not null default 0;
alter table keel.embedding_models add column if not exists backfill_after bigint;

-- Registers a model (cheap: one insert that usually conflicts). The index and
-- the backfill are the cron's work (keel_prepare_embedding_model), never a
-- request's.
create or replace function keel.prepare_embedding_model(p_model text, p_dimensions int) returns void
language sql
set search_path = keel, pg_catalog
as $$
  insert into keel.embedding_models (model, dimensions, backfill_after)
  values (p_model, p_dimensions, 0)
  on conflict (model, dimensions) do nothing;
$$;

-- One bounded step of preparing the configured model: makes it the current
-- model if another one was configured since (a change or a rollback: the
-- rollback window starts again and chunks lacking its vector are queued
-- again), creates its HNSW index, then queues jobs for up to `limit` chunks
-- after the backfill cursor that lack its vector. `done` once the backfill
-- has covered every chunk.
create or replace function public.keel_prepare_embedding_model(args jsonb) returns jsonb
language plpgsql
security definer
set search_path = keel, extensions, pg_catalog
as $$
declare
  v_model text := args->>'model';
  v_dimensions int := (args->>'dimensions')::int;
  v_limit int := (args->>'limit')::int;
  v_index text := 'embeddings_hnsw_' || left(md5(v_model || ':' || v_dimensions), 16);
  v_row keel.embedding_models;
  v_activated boolean := false;
  v_index_created boolean := false;
  v_scanned int;
  v_last bigint;
  v_queued int := 0;
begin
  perform keel.prepare_embedding_model(v_model, v_dimensions);
  select * into v_row from keel.embedding_models where model = v_model and dimensions = v_dimensions;
  if exists (select 1 from keel.embedding_models o
             where not (o.model = v_model and o.dimensions = v_dimensions)
               and o.prepared_at > v_row.prepared_at) then
    perform pg_advisory_xact_lock(hashtext('keel.prepare_embedding_model'));
    update keel.embedding_models
    set prepared_at = now(), backfill_after = 0
    where model = v_model and dimensions = v_dimensions
      and exists (select 1 from keel.embedding_models o
                  where not (o.model = v_model and o.dimensions = v_dimensions)
                    and o.prepared_at > keel.embedding_models.prepared_at)
    returning * into v_row;
    v_activated := found;
    select * into v_row from keel.embedding_models where model = v_model and dimensions = v_dimensions;
  end if;

  if to_regclass('keel.' || v_index) is null then
    perform pg_advisory_xact_lock(hashtext('keel.prepare_embedding_model'));
    execute format(
      'create index if not exists %I on keel.embeddings using hnsw ((embedding::extensions.vector(%s)) extensions.vector_cosine_ops) where model = %L and dimensions = %s',
      v_index, v_dimensions, v_model, v_dimensions);
    v_index_created := true;
  end if;

  if v_row.backfill_after is not null then
    with batch as (
      select c.id, c.tenant_id from keel.chunks c
      where c.id > v_row.backfill_after
      order by c.id
      limit v_limit
    ), queued as (
      insert into keel.embedding_jobs (chunk_id, model, dimensions, tenant_id)
      select b.id, v_model, v_dimensions, b.tenant_id
      from batch b
      where not exists (select 1 from keel.embeddings e
                        where e.chunk_id = b.id and e.model = v_model and e.dimensions = v_dimensions)
      on conflict do nothing
      returning 1
    )
    select (select count(*) from batch), (select max(id) from batch), (select count(*) from queued)
    into v_scanned, v_last, v_queued;
    update keel.embedding_models
    set backfill_after = case when v_scanned < v_limit then null else v_last end
    where model = v_model and dimensions = v_dimensions and backfill_after is not distinct from v_row.backfill_after;
  end if;

  return jsonb_build_object(
    'activated', v_activated,
    'index_created', v_index_created,
    'queued', v_queued,
    'done', not exists (select 1 from keel.embedding_models
                        where model = v_model and dimensions = v_dimensions and backfill_after is not null));
end $$;

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

-- Vectors (and jobs) of other models, for tenants the configured model has
-- fully replaced them: only while the configured model is the current one
-- (no other model was configured after it), a day (`after_seconds`) after
-- it became current, and only for tenants each of whose chunks has a vector
-- of the configured model. A tenant the configured model does not cover yet
-- (backfill pending, jobs failed, or a rollback re-embedding) keeps every
-- vector, so search always has a model to serve. At most `limit` rows of
-- each per run.
create or replace function public.keel_prune_replaced_vectors(args jsonb) returns jsonb
language plpgsql
security definer
set search_path = keel, pg_catalog
as $$
declare
  v_model text := args->>'model';
  v_dimensions int := (args->>'dimensions')::int;
  v_limit int := (args->>'limit')::int;
  v_vectors int := 0;
  v_jobs int := 0;
  v_covered uuid[];
begin
  if not exists (
    select 1 from keel.embedding_models m
    where m.model = v_model and m.dimensions = v_dimensions
      and m.prepared_at < now() - make_interval(secs => (args->>'after_seconds')::int)
      and not exists (select 1 from keel.embedding_models o
                      where not (o.model = v_model and o.dimensions = v_dimensions)
                        and o.prepared_at > m.prepared_at)) then
    return jsonb_build_object('replaced_vectors_pruned', 0, 'replaced_jobs_pruned', 0);
  end if;

  select coalesce(array_agg(t.tenant_id), '{}') into v_covered
  from (
    select distinct e.tenant_id from keel.embeddings e
    where (e.model, e.dimensions) is distinct from (v_model, v_dimensions)
    union
    select distinct j.tenant_id from keel.embedding_jobs j
    where (j.model, j.dimensions) is distinct from (v_model, v_dimensions)
  ) t
  where not exists (
    select 1 from keel.chunks c
    where c.tenant_id = t.tenant_id
      and not exists (select 1 from keel.embeddings e
                      where e.chunk_id = c.id and e.model = v_model and e.dimensions = v_dimensions));

  delete from keel.embeddings
  where ctid in (
    select e.ctid from keel.embeddings e
    where e.tenant_id = any (v_covered)
      and (e.model, e.dimensions) is distinct from (v_model, v_dimensions)
    limit v_limit);
  get diagnostics v_vectors = row_count;
  delete from keel.embedding_jobs
  where ctid in (
    select j.ctid from keel.embedding_jobs j
    where j.tenant_id = any (v_covered)
      and (j.model, j.dimensions) is distinct from (v_model, v_dimensions)
    limit v_limit);
  get diagnostics v_jobs = row_count;
  return jsonb_build_object('replaced_vectors_pruned', v_vectors, 'replaced_jobs_pruned', v_jobs);
end $$;

revoke all on function keel.prepare_embedding_model(text, int) from public, anon, authenticated;
revoke all on function keel.requeue_document(uuid, uuid, text, int) from public, anon, authenticated;

select keel.lock_down_api();
