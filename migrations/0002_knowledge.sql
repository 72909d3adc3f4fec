-- Knowledge: tenants and their API keys, documents split into chunks,
-- embeddings per (model, dimensions) with background jobs, the query
-- embedding cache, and hybrid search.
--
-- Tenant isolation lives here, not in Rust: every tenant-facing function takes
-- the caller's key hash, resolves the tenant itself (keel.authenticate) and
-- only ever touches that tenant's rows. Authentication therefore costs no
-- extra round trip, and no Rust bug can pass another tenant's id.

create table if not exists keel.tenants (
  id uuid primary key default gen_random_uuid(),
  slug text not null unique check (slug ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'),
  name text not null check (length(name) between 1 and 200),
  created_at timestamptz not null default now()
);

create table if not exists keel.api_keys (
  id uuid primary key default gen_random_uuid(),
  tenant_id uuid not null references keel.tenants (id) on delete cascade,
  -- SHA-256 of the key, hex. The key itself is shown once and never stored.
  key_hash text not null unique check (key_hash ~ '^[0-9a-f]{64}$'),
  -- The first characters, so an operator can tell keys apart.
  prefix text not null,
  created_at timestamptz not null default now(),
  revoked_at timestamptz
);
create index if not exists api_keys_tenant on keel.api_keys (tenant_id);

create table if not exists keel.documents (
  id uuid primary key default gen_random_uuid(),
  tenant_id uuid not null references keel.tenants (id) on delete cascade,
  external_id text not null,
  title text not null default '',
  -- SHA-256 of title and content: what the embeddings depend on.
  content_hash text not null,
  metadata jsonb not null default '{}',
  source_url text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (tenant_id, external_id)
);
create index if not exists documents_metadata on keel.documents using gin (metadata jsonb_path_ops);

create table if not exists keel.chunks (
  id bigint generated always as identity primary key,
  tenant_id uuid not null references keel.tenants (id) on delete cascade,
  document_id uuid not null references keel.documents (id) on delete cascade,
  chunk_index int not null,
  content text not null,
  -- SHA-256 of the embedding input (title + chunk): identical text reuses its vector.
  content_hash text not null,
  token_count int not null,
  search_vector tsvector not null,
  unique (document_id, chunk_index)
);
create index if not exists chunks_tenant on keel.chunks (tenant_id);
create index if not exists chunks_search on keel.chunks using gin (search_vector);

-- One row per chunk and model: vectors of several models coexist while a
-- model change re-embeds in the background. HNSW indexes are partial, one
-- per (model, dimensions), created by keel.prepare_embedding_model.
create table if not exists keel.embeddings (
  chunk_id bigint not null references keel.chunks (id) on delete cascade,
  model text not null,
  dimensions int not null check (dimensions between 1 and 2000),
  tenant_id uuid not null,
  embedding extensions.vector not null,
  created_at timestamptz not null default now(),
  primary key (chunk_id, model, dimensions)
);
create index if not exists embeddings_tenant_model on keel.embeddings (tenant_id, model, dimensions);

-- Work to do: a chunk that needs a vector for a model. Claimed with
-- FOR UPDATE SKIP LOCKED and a lease, so concurrent or killed runs neither
-- duplicate nor lose work; deleted once the vector is stored.
create table if not exists keel.embedding_jobs (
  chunk_id bigint not null references keel.chunks (id) on delete cascade,
  model text not null,
  dimensions int not null,
  tenant_id uuid not null,
  attempts int not null default 0,
  run_at timestamptz not null default now(),
  lease_token uuid,
  lease_until timestamptz,
  last_error text,
  failed_at timestamptz,
  primary key (chunk_id, model, dimensions)
);
create index if not exists embedding_jobs_due on keel.embedding_jobs (model, dimensions, run_at) where failed_at is null;
create index if not exists embedding_jobs_tenant on keel.embedding_jobs (tenant_id, model, dimensions);

-- Models this deployment has embedded with; a new one triggers the backfill.
create table if not exists keel.embedding_models (
  model text not null,
  dimensions int not null,
  prepared_at timestamptz not null default now(),
  primary key (model, dimensions)
);

create table if not exists keel.query_cache (
  model text not null,
  dimensions int not null,
  query_hash text not null,
  embedding extensions.vector not null,
  created_at timestamptz not null default now(),
  expires_at timestamptz not null,
  primary key (model, dimensions, query_hash)
);
create index if not exists query_cache_expiry on keel.query_cache (expires_at);

-- Counters for metrics, sharded so concurrent requests do not queue on one row.
create table if not exists keel.counters (
  name text not null,
  shard int not null,
  value bigint not null default 0,
  primary key (name, shard)
);

create or replace function keel.bump(p_name text, p_by bigint default 1) returns void
language sql
set search_path = keel, pg_catalog
as $$
  insert into keel.counters as c (name, shard, value)
  values (p_name, floor(random() * 16)::int, p_by)
  on conflict (name, shard) do update set value = c.value + excluded.value;
$$;

-- The tenant a key belongs to, or SQLSTATE PT401. Missing, unknown and
-- revoked keys are indistinguishable to the caller.
create or replace function keel.authenticate(p_key_hash text) returns uuid
language plpgsql
stable
set search_path = keel, pg_catalog
as $$
declare
  v_tenant uuid;
begin
  select k.tenant_id into v_tenant
  from keel.api_keys k
  where k.key_hash = p_key_hash and k.revoked_at is null;
  if v_tenant is null then
    raise exception 'missing or invalid credentials' using errcode = 'PT401';
  end if;
  return v_tenant;
end $$;

-- The tenant of a call: the HTTP API always passes the caller's key hash,
-- authenticated here; trusted internal callers (the task worker syncing a
-- tenant's documents from its webhooks) pass the tenant id itself.
create or replace function keel.resolve_tenant(args jsonb) returns uuid
language plpgsql
stable
set search_path = keel, pg_catalog
as $$
begin
  if args ? 'key_hash' then
    return keel.authenticate(args->>'key_hash');
  end if;
  if args->>'tenant_id' is null then
    raise exception 'missing or invalid credentials' using errcode = 'PT401';
  end if;
  return (args->>'tenant_id')::uuid;
end $$;

-- Creates the HNSW index for a model and queues every chunk that lacks its
-- vector. Cheap when the model is already prepared.
create or replace function keel.prepare_embedding_model(p_model text, p_dimensions int) returns void
language plpgsql
set search_path = keel, extensions, pg_catalog
as $$
begin
  if exists (select 1 from keel.embedding_models where model = p_model and dimensions = p_dimensions) then
    return;
  end if;
  perform pg_advisory_xact_lock(hashtext('keel.prepare_embedding_model'));
  if exists (select 1 from keel.embedding_models where model = p_model and dimensions = p_dimensions) then
    return;
  end if;
  execute format(
    'create index if not exists %I on keel.embeddings using hnsw ((embedding::extensions.vector(%s)) extensions.vector_cosine_ops) where model = %L and dimensions = %s',
    'embeddings_hnsw_' || left(md5(p_model || ':' || p_dimensions), 16), p_dimensions, p_model, p_dimensions);
  insert into keel.embedding_jobs (chunk_id, model, dimensions, tenant_id)
  select c.id, p_model, p_dimensions, c.tenant_id
  from keel.chunks c
  where not exists (
    select 1 from keel.embeddings e
    where e.chunk_id = c.id and e.model = p_model and e.dimensions = p_dimensions)
  on conflict do nothing;
  insert into keel.embedding_models (model, dimensions) values (p_model, p_dimensions);
end $$;

-- Audit ---------------------------------------------------------------------------

-- Admin and security-relevant actions: who (actor), what (action, target),
-- from where (request id, client IP) and when. Never a secret: keys appear by
-- id and prefix only. Written in the same transaction as the action.
create table if not exists keel.audit_log (
  id bigint generated always as identity primary key,
  at timestamptz not null default now(),
  actor text not null,
  action text not null,
  target text not null,
  tenant_id uuid references keel.tenants (id) on delete set null,
  request_id text,
  ip text,
  details jsonb not null default '{}'
);
create index if not exists audit_log_at on keel.audit_log (at);
create index if not exists audit_log_tenant on keel.audit_log (tenant_id, at);

-- Records an action; `p_args->'audit'` carries the caller's actor, request id and IP.
create or replace function keel.audit(p_args jsonb, p_action text, p_target text, p_tenant uuid, p_details jsonb)
returns void
language sql
set search_path = keel, pg_catalog
as $$
  insert into keel.audit_log (actor, action, target, tenant_id, request_id, ip, details)
  values (coalesce(p_args->'audit'->>'actor', 'system'), p_action, p_target, p_tenant,
          p_args->'audit'->>'request_id', p_args->'audit'->>'ip', coalesce(p_details, '{}'::jsonb));
$$;

-- Tenants (admin) -------------------------------------------------------------

create or replace function keel.tenant_json(t keel.tenants) returns jsonb
language sql
immutable
set search_path = keel, pg_catalog
as $$
  select jsonb_build_object('id', t.id, 'slug', t.slug, 'name', t.name, 'created_at', t.created_at);
$$;

create or replace function public.keel_create_tenant(args jsonb) returns jsonb
language plpgsql
security definer
set search_path = keel, pg_catalog
as $$
declare
  v_tenant keel.tenants;
  v_key_id uuid;
begin
  begin
    insert into keel.tenants (slug, name)
    values (args->>'slug', args->>'name')
    returning * into v_tenant;
  exception when unique_violation then
    raise exception 'a tenant with slug "%" already exists', args->>'slug' using errcode = '23505';
  end;
  insert into keel.api_keys (tenant_id, key_hash, prefix)
  values (v_tenant.id, args->>'key_hash', args->>'key_prefix')
  returning id into v_key_id;
  perform keel.audit(args, 'tenant.created', 'tenant:' || v_tenant.slug, v_tenant.id,
                     jsonb_build_object('name', v_tenant.name));
  perform keel.audit(args, 'key.issued', 'key:' || v_key_id, v_tenant.id,
                     jsonb_build_object('prefix', args->>'key_prefix'));
  return jsonb_build_object('tenant', keel.tenant_json(v_tenant));
end $$;

create or replace function public.keel_list_tenants(args jsonb) returns jsonb
language sql
stable
security definer
set search_path = keel, pg_catalog
as $$
  with page as (
    select t.*, (select count(*) from keel.api_keys k where k.tenant_id = t.id and k.revoked_at is null) as active_keys
    from keel.tenants t
    where args->>'cursor' is null or t.slug > args->>'cursor'
    order by t.slug
    limit (args->>'limit')::int + 1
  ), numbered as (
    select page.*, row_number() over (order by slug) as n from page
  )
  select jsonb_build_object(
    'tenants', coalesce(
      (select jsonb_agg(keel.tenant_json(row(id, slug, name, created_at)::keel.tenants)
                        || jsonb_build_object('active_keys', active_keys) order by slug)
       from numbered where n <= (args->>'limit')::int), '[]'::jsonb),
    'next_cursor', case when (select count(*) from numbered) > (args->>'limit')::int
                        then (select slug from numbered where n = (args->>'limit')::int) end);
$$;

create or replace function public.keel_issue_key(args jsonb) returns jsonb
language plpgsql
security definer
set search_path = keel, pg_catalog
as $$
declare
  v_tenant keel.tenants;
  v_revoked int := 0;
  v_revoked_keys jsonb;
  v_key_id uuid;
begin
  select * into v_tenant from keel.tenants where slug = args->>'slug' for update;
  if v_tenant.id is null then
    raise exception 'no tenant with slug "%"', args->>'slug' using errcode = 'P0002';
  end if;
  if coalesce((args->>'revoke_existing')::boolean, false) then
    with revoked as (
      update keel.api_keys set revoked_at = now()
      where tenant_id = v_tenant.id and revoked_at is null
      returning id, prefix
    )
    select count(*), coalesce(jsonb_agg(jsonb_build_object('key_id', id, 'prefix', prefix)), '[]'::jsonb)
    into v_revoked, v_revoked_keys
    from revoked;
    if v_revoked > 0 then
      perform keel.audit(args, 'key.revoked', 'tenant:' || v_tenant.slug, v_tenant.id,
                         jsonb_build_object('keys', v_revoked_keys));
    end if;
  end if;
  insert into keel.api_keys (tenant_id, key_hash, prefix)
  values (v_tenant.id, args->>'key_hash', args->>'key_prefix')
  returning id into v_key_id;
  perform keel.audit(args, 'key.issued', 'key:' || v_key_id, v_tenant.id,
                     jsonb_build_object('prefix', args->>'key_prefix'));
  return jsonb_build_object('tenant', keel.tenant_json(v_tenant), 'key_id', v_key_id, 'revoked', v_revoked);
end $$;

-- Documents (tenant) ------------------------------------------------------------

create or replace function public.keel_document_hashes(args jsonb) returns jsonb
language sql
stable
security definer
set search_path = keel, pg_catalog
as $$
  select coalesce(jsonb_object_agg(d.external_id, d.content_hash), '{}'::jsonb)
  from keel.documents d
  where d.tenant_id = keel.resolve_tenant(args)
    and d.external_id in (select jsonb_array_elements_text(args->'ids'));
$$;

-- A vector kept across a content change, keyed by its chunk's embedding input.
do $$
begin
  if not exists (select 1 from pg_type t join pg_namespace n on n.oid = t.typnamespace
                 where n.nspname = 'keel' and t.typname = 'kept_vector') then
    create type keel.kept_vector as (content_hash text, model text, dimensions int, embedding extensions.vector);
  end if;
end $$;

-- Replaces one document's chunks, keeping the vectors of chunks whose
-- embedding input did not change, and queues the rest for p_model.
-- Returns how many chunks were queued.
create or replace function keel.replace_chunks(
  p_tenant uuid, p_document uuid, p_title text, p_chunks jsonb, p_model text, p_dimensions int
) returns int
language plpgsql
set search_path = keel, extensions, pg_catalog
as $$
declare
  v_kept keel.kept_vector[];
  v_queued int;
begin
  select array_agg(row(c.content_hash, e.model, e.dimensions, e.embedding)::keel.kept_vector)
  into v_kept
  from keel.chunks c join keel.embeddings e on e.chunk_id = c.id
  where c.document_id = p_document;

  delete from keel.chunks where document_id = p_document;

  insert into keel.chunks (tenant_id, document_id, chunk_index, content, content_hash, token_count, search_vector)
  select p_tenant, p_document, (c.ordinality - 1)::int, c.value->>'content', c.value->>'content_hash',
         (c.value->>'token_count')::int,
         setweight(to_tsvector('english', p_title), 'A') || setweight(to_tsvector('english', c.value->>'content'), 'B')
  from jsonb_array_elements(p_chunks) with ordinality as c (value, ordinality);

  insert into keel.embeddings (chunk_id, model, dimensions, tenant_id, embedding)
  select distinct on (c.id, k.model, k.dimensions) c.id, k.model, k.dimensions, p_tenant, k.embedding
  from keel.chunks c
  join unnest(v_kept) k on k.content_hash = c.content_hash
  where c.document_id = p_document
  on conflict do nothing;

  insert into keel.embedding_jobs (chunk_id, model, dimensions, tenant_id)
  select c.id, p_model, p_dimensions, p_tenant
  from keel.chunks c
  where c.document_id = p_document
    and not exists (select 1 from keel.embeddings e
                    where e.chunk_id = c.id and e.model = p_model and e.dimensions = p_dimensions);
  get diagnostics v_queued = row_count;
  return v_queued;
end $$;

-- Upserts a batch by the tenant's own document ids. A document whose content
-- hash is unchanged keeps its chunks and vectors (metadata-only changes never
-- re-embed). When a changed document arrives without chunks (the caller
-- believed it unchanged), nothing is written and its id is returned in
-- `needs_chunks` so the caller can chunk it and retry.
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

create or replace function public.keel_list_documents(args jsonb) returns jsonb
language sql
stable
security definer
set search_path = keel, pg_catalog
as $$
  with tenant as (
    select keel.authenticate(args->>'key_hash') as id
  ), page as (
    select d.*, row_number() over (order by d.external_id) as n
    from keel.documents d, tenant
    where d.tenant_id = tenant.id
      and (args->>'cursor' is null or d.external_id > args->>'cursor')
    order by d.external_id
    limit (args->>'limit')::int + 1
  ), shown as (
    select p.*,
      (select count(*) from keel.chunks c where c.document_id = p.id) as chunk_count,
      (select count(*) from keel.chunks c join keel.embeddings e on e.chunk_id = c.id
        where c.document_id = p.id and e.model = args->>'model' and e.dimensions = (args->>'dimensions')::int) as embedded,
      (select count(*) from keel.chunks c join keel.embedding_jobs j on j.chunk_id = c.id
        where c.document_id = p.id and j.model = args->>'model' and j.dimensions = (args->>'dimensions')::int
          and j.failed_at is not null) as failed
    from page p
    where p.n <= (args->>'limit')::int
  )
  select jsonb_build_object(
    'documents', coalesce((select jsonb_agg(jsonb_build_object(
        'id', s.external_id, 'title', s.title, 'metadata', s.metadata, 'source_url', s.source_url,
        'embedding_state', case when s.failed > 0 then 'failed'
                                when s.embedded >= s.chunk_count then 'embedded'
                                else 'pending' end,
        'chunks', s.chunk_count, 'updated_at', s.updated_at) order by s.external_id) from shown s), '[]'::jsonb),
    'next_cursor', case when (select count(*) from page) > (args->>'limit')::int
                        then (select max(external_id) from shown) end);
$$;

create or replace function public.keel_delete_document(args jsonb) returns jsonb
language plpgsql
security definer
set search_path = keel, pg_catalog
as $$
declare
  v_tenant uuid := keel.resolve_tenant(args);
  v_chunks int;
begin
  select count(*) into v_chunks from keel.chunks c join keel.documents d on d.id = c.document_id
  where d.tenant_id = v_tenant and d.external_id = args->>'id';
  delete from keel.documents where tenant_id = v_tenant and external_id = args->>'id';
  if not found then
    raise exception 'no document with id "%"', args->>'id' using errcode = 'P0002';
  end if;
  return jsonb_build_object('deleted', args->>'id', 'chunks_deleted', v_chunks);
end $$;

-- Embedding jobs -------------------------------------------------------------------

-- Claims up to `limit` due jobs for a model (all tenants, or the caller's
-- when `key_hash` is given), leasing them for `lease_seconds`. Jobs whose
-- lease expired (a killed run) are due again.
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
  v_jobs jsonb;
begin
  if args->>'key_hash' is not null then
    v_tenant := keel.authenticate(args->>'key_hash');
  end if;
  perform keel.prepare_embedding_model(v_model, v_dimensions);
  with picked as (
    select j.chunk_id
    from keel.embedding_jobs j
    where j.model = v_model and j.dimensions = v_dimensions
      and j.failed_at is null and j.run_at <= now()
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
  return jsonb_build_object('lease_token', v_token, 'jobs', v_jobs);
end $$;

-- Stores vectors (at most once per chunk and model, whoever finishes first)
-- and records failures: retried later with exponential backoff and jitter,
-- or marked failed after `max_attempts` with the error kept.
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

  perform keel.bump('embeddings_stored', v_stored) where v_stored > 0;
  perform keel.bump('embedding_failures', v_retrying + v_failed) where v_retrying + v_failed > 0;

  return jsonb_build_object(
    'stored', v_stored,
    'retrying', v_retrying,
    'failed', v_failed,
    'remaining', (select count(*) from keel.embedding_jobs j
                  where j.model = v_model and j.dimensions = v_dimensions and j.failed_at is null
                    and (v_tenant is null or j.tenant_id = v_tenant)));
end $$;

-- Search ----------------------------------------------------------------------------

-- Up to p_limit of a tenant's chunks matching p_query, best ts_rank_cd first,
-- skipping the chunk ids already in p_seen; ranks at most 5,000 matches.
-- EXECUTE plans with the actual query and tenant: a generic plan cannot tell
-- a rare word (GIN index) from a common one and scanned the whole tenant.
create or replace function keel.rank_keyword(
  p_tenant uuid, p_query tsquery, p_filter jsonb, p_limit int, p_seen jsonb
) returns jsonb
language plpgsql
stable
set search_path = keel, pg_catalog
as $$
declare
  v_ranked jsonb;
begin
  execute $q$
    select coalesce(jsonb_agg(jsonb_build_object('chunk_id', id, 'score', score) order by score desc, id), '[]'::jsonb)
    from (
      select id, ts_rank_cd(search_vector, $2, 32)::float8 as score
      from (
        select c.id, c.search_vector
        from keel.chunks c
        join keel.documents d on d.id = c.document_id
        where c.tenant_id = $1 and c.search_vector @@ $2 and d.metadata @> $3
          and ($5::jsonb is null or not $5::jsonb @> jsonb_build_array(jsonb_build_object('chunk_id', c.id)))
        limit 5000
      ) matches
      order by score desc, id
      limit $4
    ) ranked$q$
  into v_ranked
  using p_tenant, p_query, p_filter, p_limit, p_seen;
  return v_ranked;
end $$;

-- Hybrid search for the caller's tenant. Modes: `vector` (cosine similarity
-- through the model's HNSW index, with pgvector's iterative scan so tenant and
-- metadata filters cannot starve the result), `keyword` (full-text,
-- ts_rank_cd) and `hybrid` (reciprocal rank fusion, k = 60, of both).
--
-- The query vector comes from the caller (`embedding`) or the query cache
-- (`query_hash`); on a cache miss the function answers `needs_embedding`
-- after authenticating, so unauthenticated callers never cost a provider call.
-- While a model change is being backfilled, the model with the most vectors
-- for this tenant serves; the function answers `use_model` when that is not
-- the caller's.
create or replace function public.keel_search(args jsonb) returns jsonb
language plpgsql
security definer
set search_path = keel, extensions, pg_catalog
as $$
declare
  v_tenant uuid := keel.authenticate(args->>'key_hash');
  v_mode text := args->>'mode';
  v_model text := args->>'model';
  v_dimensions int := (args->>'dimensions')::int;
  v_top_k int := (args->>'top_k')::int;
  v_candidates int := greatest(40, (args->>'top_k')::int * 4);
  v_filter jsonb := coalesce(args->'filter', '{}'::jsonb);
  v_embedding extensions.vector;
  v_best record;
  v_vector jsonb := '[]';
  v_keyword jsonb := '[]';
  v_query tsquery;
begin
  if v_mode in ('vector', 'hybrid') then
    if not coalesce((args->>'model_chosen')::boolean, false)
       and exists (select 1 from keel.embedding_models
                   where not (model = v_model and dimensions = v_dimensions)) then
      select e.model, e.dimensions, count(*) as vectors into v_best
      from keel.embeddings e where e.tenant_id = v_tenant
      group by e.model, e.dimensions
      order by count(*) desc, (e.model = v_model and e.dimensions = v_dimensions) desc
      limit 1;
      if v_best.model is not null and not (v_best.model = v_model and v_best.dimensions = v_dimensions) then
        return jsonb_build_object('use_model', jsonb_build_object('model', v_best.model, 'dimensions', v_best.dimensions));
      end if;
    end if;

    if jsonb_typeof(args->'embedding') = 'array' then
      v_embedding := (args->>'embedding')::extensions.vector;
      if coalesce((args->>'cache_hit')::boolean, false) then
        perform keel.bump('query_cache_hits');
      else
        insert into keel.query_cache (model, dimensions, query_hash, embedding, expires_at)
        values (v_model, v_dimensions, args->>'query_hash', v_embedding,
                now() + make_interval(secs => (args->>'cache_ttl_seconds')::int))
        on conflict (model, dimensions, query_hash)
        do update set embedding = excluded.embedding, expires_at = excluded.expires_at, created_at = now();
      end if;
    else
      select q.embedding into v_embedding from keel.query_cache q
      where q.model = v_model and q.dimensions = v_dimensions
        and q.query_hash = args->>'query_hash' and q.expires_at > now();
      if v_embedding is null then
        perform keel.bump('query_cache_misses');
        return jsonb_build_object('needs_embedding', true);
      end if;
      perform keel.bump('query_cache_hits');
    end if;

    -- relaxed_order: keep scanning the index until enough rows pass the
    -- filters; the outer ORDER BY restores exact order.
    perform set_config('hnsw.iterative_scan', 'relaxed_order', true);
    perform set_config('hnsw.ef_search', greatest(40, v_candidates)::text, true);
    execute format($q$
      select coalesce(jsonb_agg(jsonb_build_object('chunk_id', chunk_id, 'score', score) order by score desc), '[]'::jsonb)
      from (
        select e.chunk_id, 1 - (e.embedding::extensions.vector(%1$s) <=> $1) as score
        from keel.embeddings e
        join keel.chunks c on c.id = e.chunk_id
        join keel.documents d on d.id = c.document_id
        where e.model = %2$L and e.dimensions = %1$s and e.tenant_id = $2
          and d.metadata @> $3
        order by e.embedding::extensions.vector(%1$s) <=> $1
        limit $4
      ) ranked$q$, v_dimensions, v_model)
    into v_vector
    using v_embedding::extensions.vector, v_tenant, v_filter, v_candidates;
  end if;

  if v_mode in ('keyword', 'hybrid') then
    -- Chunks with every query word first; when they are too few, chunks with
    -- any of them. Ranking reads each matching row, so the any-word pass ranks
    -- at most 5,000 matches: bounded latency for short, common-word queries on
    -- large tenants, at the price of possibly missing a better match beyond them.
    v_query := websearch_to_tsquery('english', args->>'query');
    if numnode(v_query) > 0 then
      v_keyword := keel.rank_keyword(v_tenant, v_query, v_filter, v_candidates, null);
      if jsonb_array_length(v_keyword) < v_candidates and position('&' in v_query::text) > 0 then
        v_keyword := v_keyword || keel.rank_keyword(
          v_tenant, replace(v_query::text, ' & ', ' | ')::tsquery, v_filter,
          v_candidates - jsonb_array_length(v_keyword), v_keyword);
      end if;
    end if;
  end if;

  return jsonb_build_object('results', coalesce((
    select jsonb_agg(jsonb_build_object(
             'document_id', d.external_id, 'title', d.title, 'chunk_index', c.chunk_index,
             'content', c.content, 'score', round(f.score::numeric, 6), 'metadata', d.metadata,
             'source_url', d.source_url) order by f.score desc, c.id)
    from (
      select chunk_id, score from (
        select chunk_id, sum(score) as score from (
          select (v.value->>'chunk_id')::bigint as chunk_id,
                 case when v_mode = 'hybrid' then 1.0 / (60 + v.ordinality) else (v.value->>'score')::float8 end as score
          from jsonb_array_elements(v_vector) with ordinality v
          union all
          select (k.value->>'chunk_id')::bigint,
                 case when v_mode = 'hybrid' then 1.0 / (60 + k.ordinality) else (k.value->>'score')::float8 end
          from jsonb_array_elements(v_keyword) with ordinality k
        ) ranked
        group by chunk_id
      ) fused
      where score >= coalesce((args->>'min_score')::float8, 0)
      order by score desc, chunk_id
      limit v_top_k
    ) f
    join keel.chunks c on c.id = f.chunk_id
    join keel.documents d on d.id = c.document_id), '[]'::jsonb));
end $$;

select keel.lock_down_api();
revoke all on function keel.authenticate(text) from public, anon, authenticated;
revoke all on function keel.resolve_tenant(jsonb) from public, anon, authenticated;
revoke all on function keel.bump(text, bigint) from public, anon, authenticated;
revoke all on function keel.prepare_embedding_model(text, int) from public, anon, authenticated;
revoke all on function keel.replace_chunks(uuid, uuid, text, jsonb, text, int) from public, anon, authenticated;
revoke all on function keel.tenant_json(keel.tenants) from public, anon, authenticated;
revoke all on function keel.audit(jsonb, text, text, uuid, jsonb) from public, anon, authenticated;
revoke all on function keel.rank_keyword(uuid, tsquery, jsonb, int, jsonb) from public, anon, authenticated;
