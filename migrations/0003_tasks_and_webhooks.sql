-- The durable task queue, webhook endpoints and deliveries, and maintenance.
--
-- Tasks are claimed FOR UPDATE SKIP LOCKED with a lease: a task whose worker
-- died (lease expired) is claimed again, failures back off exponentially with
-- jitter, and after max_attempts a task is `dead` with its last error kept.

create table if not exists keel.tasks (
  id bigint generated always as identity primary key,
  tenant_id uuid references keel.tenants (id) on delete cascade,
  kind text not null check (length(kind) between 1 and 100),
  payload jsonb not null default '{}',
  status text not null default 'queued'
    check (status in ('queued', 'running', 'succeeded', 'failed', 'dead')),
  attempts int not null default 0,
  max_attempts int not null default 5 check (max_attempts >= 1),
  run_at timestamptz not null default now(),
  lease_token uuid,
  lease_until timestamptz,
  last_error text,
  idempotency_key text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  finished_at timestamptz
);
-- Enqueueing the same work twice yields one task.
create unique index if not exists tasks_idempotency
  on keel.tasks (coalesce(tenant_id, '00000000-0000-0000-0000-000000000000'::uuid), kind, idempotency_key)
  where idempotency_key is not null;
create index if not exists tasks_due on keel.tasks (run_at) where status in ('queued', 'failed');
create index if not exists tasks_leased on keel.tasks (lease_until) where status = 'running';
create index if not exists tasks_tenant on keel.tasks (tenant_id, id);
create index if not exists tasks_finished on keel.tasks (finished_at) where status = 'succeeded';

create table if not exists keel.webhook_endpoints (
  id uuid primary key default gen_random_uuid(),
  tenant_id uuid not null references keel.tenants (id) on delete cascade,
  source text not null check (length(source) between 1 and 64),
  -- AES-256-GCM of the signing secret; key_id names the ENCRYPTION_KEY used.
  secret_ciphertext text not null,
  key_id text not null,
  pull_url text,
  created_at timestamptz not null default now(),
  secret_rotated_at timestamptz
);
create index if not exists webhook_endpoints_tenant on keel.webhook_endpoints (tenant_id);

create table if not exists keel.webhook_deliveries (
  id bigint generated always as identity primary key,
  endpoint_id uuid not null references keel.webhook_endpoints (id) on delete cascade,
  tenant_id uuid not null,
  webhook_id text not null,
  event_type text not null,
  payload jsonb not null,
  status text not null default 'queued' check (status in ('queued', 'processed', 'stored', 'failed')),
  received_at timestamptz not null default now(),
  processed_at timestamptz,
  unique (endpoint_id, webhook_id)
);
create index if not exists webhook_deliveries_tenant on keel.webhook_deliveries (tenant_id, id);
create index if not exists webhook_deliveries_received on keel.webhook_deliveries (received_at);

create or replace function keel.task_json(t keel.tasks) returns jsonb
language sql
immutable
set search_path = keel, pg_catalog
as $$
  select jsonb_build_object(
    'id', t.id, 'kind', t.kind, 'status', t.status, 'attempts', t.attempts,
    'max_attempts', t.max_attempts, 'run_at', t.run_at, 'last_error', t.last_error,
    'idempotency_key', t.idempotency_key, 'created_at', t.created_at,
    'updated_at', t.updated_at, 'finished_at', t.finished_at);
$$;

-- Enqueues a task; with an idempotency key, a second enqueue returns the first task.
create or replace function keel.enqueue_task(
  p_tenant uuid, p_kind text, p_payload jsonb, p_idempotency_key text,
  p_max_attempts int default 5, p_run_at timestamptz default now()
) returns jsonb
language plpgsql
set search_path = keel, pg_catalog
as $$
declare
  v_task keel.tasks;
begin
  insert into keel.tasks (tenant_id, kind, payload, idempotency_key, max_attempts, run_at)
  values (p_tenant, p_kind, coalesce(p_payload, '{}'), p_idempotency_key, p_max_attempts, p_run_at)
  on conflict (coalesce(tenant_id, '00000000-0000-0000-0000-000000000000'::uuid), kind, idempotency_key)
    where idempotency_key is not null
  do nothing
  returning * into v_task;
  if v_task.id is not null then
    return keel.task_json(v_task) || jsonb_build_object('created', true);
  end if;
  select * into v_task from keel.tasks
  where coalesce(tenant_id, '00000000-0000-0000-0000-000000000000'::uuid)
        = coalesce(p_tenant, '00000000-0000-0000-0000-000000000000'::uuid)
    and kind = p_kind and idempotency_key = p_idempotency_key;
  return keel.task_json(v_task) || jsonb_build_object('created', false);
end $$;

create or replace function public.keel_enqueue_task(args jsonb) returns jsonb
language plpgsql
security definer
set search_path = keel, pg_catalog
as $$
declare
  v_tenant uuid;
begin
  if args ? 'key_hash' or args ? 'tenant_id' then
    v_tenant := keel.resolve_tenant(args);
  end if;
  return keel.enqueue_task(v_tenant, args->>'kind', args->'payload', args->>'idempotency_key',
                           coalesce((args->>'max_attempts')::int, 5),
                           coalesce((args->>'run_at')::timestamptz, now()));
end $$;

-- Claims up to `limit` due tasks: queued or failed ones whose time has come,
-- and running ones whose lease expired (their worker died).
create or replace function public.keel_claim_tasks(args jsonb) returns jsonb
language plpgsql
security definer
set search_path = keel, pg_catalog
as $$
declare
  v_token uuid := gen_random_uuid();
  v_tasks jsonb;
begin
  with due as (
    select t.id from keel.tasks t
    where (t.status in ('queued', 'failed') and t.run_at <= now())
       or (t.status = 'running' and t.lease_until < now())
    order by t.run_at, t.id
    limit (args->>'limit')::int
    for update skip locked
  ), claimed as (
    update keel.tasks t
    set status = 'running', attempts = t.attempts + 1, lease_token = v_token,
        lease_until = now() + make_interval(secs => (args->>'lease_seconds')::int), updated_at = now()
    from due where t.id = due.id
    returning t.*
  )
  select coalesce(jsonb_agg(jsonb_build_object(
           'id', c.id, 'tenant_id', c.tenant_id, 'kind', c.kind, 'payload', c.payload,
           'attempts', c.attempts, 'max_attempts', c.max_attempts) order by c.id), '[]'::jsonb)
  into v_tasks
  from claimed c;
  return jsonb_build_object('lease_token', v_token, 'tasks', v_tasks);
end $$;

-- Records a task's outcome if the caller still holds its lease: `succeeded`,
-- `failed` (retried with backoff, or dead after max_attempts) or `dead`
-- (never retried: an unknown kind or a permanent error).
create or replace function public.keel_complete_task(args jsonb) returns jsonb
language plpgsql
security definer
set search_path = keel, pg_catalog
as $$
declare
  v_task keel.tasks;
  v_outcome text := args->>'outcome';
begin
  select * into v_task from keel.tasks
  where id = (args->>'id')::bigint and lease_token = (args->>'lease_token')::uuid and status = 'running'
  for update;
  if v_task.id is null then
    -- The lease expired and another worker took the task over: its outcome counts.
    return jsonb_build_object('recorded', false);
  end if;
  if v_outcome = 'failed' and v_task.attempts >= v_task.max_attempts then
    v_outcome := 'dead';
  end if;
  update keel.tasks
  set status = v_outcome,
      last_error = case when v_outcome = 'succeeded' then last_error else left(args->>'error', 2000) end,
      run_at = case when v_outcome = 'failed'
                    then now() + make_interval(secs => least(3600, (args->>'retry_base_seconds')::float8
                                                            * power(2, v_task.attempts - 1)) * (0.5 + random() / 2))
                    else run_at end,
      lease_token = null, lease_until = null, updated_at = now(),
      finished_at = case when v_outcome in ('succeeded', 'dead') then now() end
  where id = v_task.id;
  perform keel.bump('tasks_' || v_outcome);
  return jsonb_build_object('recorded', true, 'status', v_outcome);
end $$;

create or replace function public.keel_task_backlog(args jsonb) returns jsonb
language sql
stable
security definer
set search_path = keel, pg_catalog
as $$
  select jsonb_build_object('due', count(*)) from keel.tasks
  where (status in ('queued', 'failed') and run_at <= now()) or (status = 'running' and lease_until < now());
$$;

create or replace function public.keel_list_tasks(args jsonb) returns jsonb
language sql
stable
security definer
set search_path = keel, pg_catalog
as $$
  with page as (
    select t.*, row_number() over (order by t.id desc) as n
    from keel.tasks t
    where t.tenant_id = keel.resolve_tenant(args)
      and (args->>'status' is null or t.status = args->>'status')
      and (args->>'kind' is null or t.kind = args->>'kind')
      and (args->>'cursor' is null or t.id < (args->>'cursor')::bigint)
    order by t.id desc
    limit (args->>'limit')::int + 1
  )
  select jsonb_build_object(
    'tasks', coalesce((select jsonb_agg(keel.task_json(row(id, tenant_id, kind, payload, status, attempts,
        max_attempts, run_at, lease_token, lease_until, last_error, idempotency_key, created_at, updated_at,
        finished_at)::keel.tasks) order by id desc) from page where n <= (args->>'limit')::int), '[]'::jsonb),
    'next_cursor', case when (select count(*) from page) > (args->>'limit')::int
                        then (select min(id)::text from page where n <= (args->>'limit')::int) end);
$$;

-- Webhooks ---------------------------------------------------------------------------

create or replace function public.keel_create_webhook_endpoint(args jsonb) returns jsonb
language plpgsql
security definer
set search_path = keel, pg_catalog
as $$
declare
  v_endpoint keel.webhook_endpoints;
begin
  insert into keel.webhook_endpoints (tenant_id, source, secret_ciphertext, key_id, pull_url)
  values (keel.resolve_tenant(args), args->>'source', args->>'secret_ciphertext', args->>'key_id', args->>'pull_url')
  returning * into v_endpoint;
  perform keel.audit(args, 'webhook_endpoint.created', 'webhook_endpoint:' || v_endpoint.id, v_endpoint.tenant_id,
                     jsonb_build_object('source', v_endpoint.source, 'pull_url', v_endpoint.pull_url,
                                        'encryption_key_id', v_endpoint.key_id));
  return jsonb_build_object('id', v_endpoint.id, 'source', v_endpoint.source,
                            'pull_url', v_endpoint.pull_url, 'created_at', v_endpoint.created_at);
end $$;

-- What intake needs to verify a delivery: the encrypted secret. No auth: the
-- signature is the credential, checked by the caller before anything is stored.
create or replace function public.keel_webhook_endpoint(args jsonb) returns jsonb
language plpgsql
stable
security definer
set search_path = keel, pg_catalog
as $$
declare
  v_endpoint keel.webhook_endpoints;
begin
  select * into v_endpoint from keel.webhook_endpoints where id = (args->>'id')::uuid;
  if v_endpoint.id is null then
    raise exception 'no webhook endpoint with this id' using errcode = 'P0002';
  end if;
  return jsonb_build_object('id', v_endpoint.id, 'tenant_id', v_endpoint.tenant_id,
                            'secret_ciphertext', v_endpoint.secret_ciphertext, 'key_id', v_endpoint.key_id,
                            'pull_url', v_endpoint.pull_url);
end $$;

-- Stores a verified delivery and enqueues its processing, atomically; a
-- redelivery of the same webhook id stores and enqueues nothing.
create or replace function public.keel_accept_webhook(args jsonb) returns jsonb
language plpgsql
security definer
set search_path = keel, pg_catalog
as $$
declare
  v_endpoint keel.webhook_endpoints;
  v_delivery bigint;
begin
  select * into v_endpoint from keel.webhook_endpoints where id = (args->>'endpoint_id')::uuid;
  if v_endpoint.id is null then
    raise exception 'no webhook endpoint with this id' using errcode = 'P0002';
  end if;
  insert into keel.webhook_deliveries (endpoint_id, tenant_id, webhook_id, event_type, payload)
  values (v_endpoint.id, v_endpoint.tenant_id, args->>'webhook_id', args->>'event_type', args->'payload')
  on conflict (endpoint_id, webhook_id) do nothing
  returning id into v_delivery;
  if v_delivery is null then
    perform keel.bump('webhooks_duplicate');
    return jsonb_build_object('duplicate', true);
  end if;
  perform keel.enqueue_task(v_endpoint.tenant_id, 'webhook.process',
                            jsonb_build_object('delivery_id', v_delivery), 'delivery:' || v_delivery);
  perform keel.bump('webhooks_accepted');
  return jsonb_build_object('duplicate', false, 'delivery_id', v_delivery);
end $$;

create or replace function public.keel_count_webhook_rejection(args jsonb) returns jsonb
language sql
security definer
set search_path = keel, pg_catalog
as $$
  select keel.bump('webhooks_rejected');
  select jsonb_build_object('counted', true);
$$;

create or replace function public.keel_webhook_delivery(args jsonb) returns jsonb
language sql
stable
security definer
set search_path = keel, pg_catalog
as $$
  select jsonb_build_object('id', d.id, 'tenant_id', d.tenant_id, 'webhook_id', d.webhook_id,
                            'event_type', d.event_type, 'payload', d.payload, 'status', d.status)
  from keel.webhook_deliveries d
  where d.id = (args->>'id')::bigint and d.tenant_id = keel.resolve_tenant(args);
$$;

create or replace function public.keel_finish_webhook_delivery(args jsonb) returns jsonb
language sql
security definer
set search_path = keel, pg_catalog
as $$
  update keel.webhook_deliveries set status = args->>'status', processed_at = now()
  where id = (args->>'id')::bigint and tenant_id = keel.resolve_tenant(args);
  select jsonb_build_object('status', args->>'status');
$$;

create or replace function public.keel_list_webhook_deliveries(args jsonb) returns jsonb
language sql
stable
security definer
set search_path = keel, pg_catalog
as $$
  with page as (
    select d.*, row_number() over (order by d.id) as n
    from keel.webhook_deliveries d
    where d.tenant_id = keel.resolve_tenant(args)
      and (args->>'cursor' is null or d.id > (args->>'cursor')::bigint)
    order by d.id
    limit (args->>'limit')::int + 1
  )
  select jsonb_build_object(
    'deliveries', coalesce((select jsonb_agg(jsonb_build_object(
        'webhook_id', webhook_id, 'endpoint_id', endpoint_id, 'event_type', event_type,
        'received_at', received_at, 'status', status, 'payload', payload) order by id)
      from page where n <= (args->>'limit')::int), '[]'::jsonb),
    'next_cursor', case when (select count(*) from page) > (args->>'limit')::int
                        then (select max(id)::text from page where n <= (args->>'limit')::int) end);
$$;

-- Endpoints to reconcile by pulling, with the webhook ids already seen.
create or replace function public.keel_reconcile_targets(args jsonb) returns jsonb
language sql
stable
security definer
set search_path = keel, pg_catalog
as $$
  select coalesce(jsonb_agg(jsonb_build_object('endpoint_id', e.id, 'tenant_id', e.tenant_id)), '[]'::jsonb)
  from keel.webhook_endpoints e where e.pull_url is not null;
$$;

-- Maintenance --------------------------------------------------------------------------

create or replace function public.keel_maintenance(args jsonb) returns jsonb
language plpgsql
security definer
set search_path = keel, pg_catalog
as $$
declare
  v_cache int;
  v_tasks int;
  v_deliveries int;
  v_task_leases int;
  v_embedding_leases int;
  v_reconciles int := 0;
  v_endpoint record;
begin
  delete from keel.query_cache where expires_at < now();
  get diagnostics v_cache = row_count;
  delete from keel.tasks
  where status = 'succeeded' and finished_at < now() - make_interval(days => (args->>'task_retention_days')::int);
  get diagnostics v_tasks = row_count;
  delete from keel.webhook_deliveries
  where received_at < now() - make_interval(days => (args->>'delivery_retention_days')::int)
    and status <> 'queued';
  get diagnostics v_deliveries = row_count;
  -- A dead worker's task becomes visibly due again rather than silently "running".
  update keel.tasks set status = 'failed', lease_token = null, lease_until = null, updated_at = now(),
         last_error = coalesce(last_error, 'lease expired: the worker stopped before finishing')
  where status = 'running' and lease_until < now();
  get diagnostics v_task_leases = row_count;
  update keel.embedding_jobs set lease_token = null, lease_until = null
  where lease_until < now();
  get diagnostics v_embedding_leases = row_count;
  -- One reconciliation per pull endpoint per window, however often this runs.
  for v_endpoint in select id, tenant_id from keel.webhook_endpoints where pull_url is not null loop
    if (keel.enqueue_task(v_endpoint.tenant_id, 'webhook.reconcile',
                          jsonb_build_object('endpoint_id', v_endpoint.id),
                          'reconcile:' || v_endpoint.id || ':' || (args->>'window'))->>'created')::boolean then
      v_reconciles := v_reconciles + 1;
    end if;
  end loop;
  return jsonb_build_object(
    'query_cache_expired', v_cache, 'tasks_pruned', v_tasks, 'deliveries_pruned', v_deliveries,
    'task_leases_released', v_task_leases, 'embedding_leases_released', v_embedding_leases,
    'reconciliations_enqueued', v_reconciles);
end $$;

select keel.lock_down_api();
revoke all on function keel.task_json(keel.tasks) from public, anon, authenticated;
revoke all on function keel.enqueue_task(uuid, text, jsonb, text, int, timestamptz) from public, anon, authenticated;
