-- Order, bounds and fairness (issue #13).
--
-- 1. Fair claiming: due tasks are taken round-robin across tenants, so one
--    tenant's backlog cannot starve the others.
-- 2. Per-tenant quotas, refused with {"refused": {quota, limit, retry_after}}
--    rather than an exception, so callers can name the quota: stored webhook
--    bytes per UTC day, unfinished tasks, pull endpoints.
-- 3. Deliveries pages bounded by bytes as well as by rows.
-- 4. Maintenance and rate-limit pruning in bounded batches: each call is one
--    short transaction that skips rows others hold locked, and reports
--    whether work is left, so every run makes progress.
-- 5. Event ordering for document webhooks: a per-document record of the
--    newest event applied (kept as a tombstone for deletes), checked before
--    an event is applied.

-- Fair claiming ----------------------------------------------------------------------------

create index if not exists tasks_due_by_tenant
  on keel.tasks (tenant_id, run_at, id) where status in ('queued', 'failed');
create index if not exists tasks_leased_by_tenant
  on keel.tasks (tenant_id, lease_until) where status = 'running';

-- Up to p_limit due tasks of one owner (a tenant, or no tenant), oldest first:
-- queued or failed ones whose time has come, and running ones whose lease
-- expired (their worker died). Index probes only: never a scan of the backlog.
create or replace function keel.due_tasks_of(p_tenant uuid, p_limit int)
returns table (id bigint, run_at timestamptz)
language plpgsql
stable
set search_path = keel, pg_catalog
as $$
begin
  if p_tenant is null then
    return query
      (select t.id, t.run_at from keel.tasks t
       where t.tenant_id is null and t.status in ('queued', 'failed') and t.run_at <= now()
       order by t.run_at, t.id limit p_limit)
      union all
      (select t.id, t.run_at from keel.tasks t
       where t.tenant_id is null and t.status = 'running' and t.lease_until < now()
       order by t.lease_until limit p_limit);
  else
    return query
      (select t.id, t.run_at from keel.tasks t
       where t.tenant_id = p_tenant and t.status in ('queued', 'failed') and t.run_at <= now()
       order by t.run_at, t.id limit p_limit)
      union all
      (select t.id, t.run_at from keel.tasks t
       where t.tenant_id = p_tenant and t.status = 'running' and t.lease_until < now()
       order by t.lease_until limit p_limit);
  end if;
end $$;

-- Claims up to `limit` due tasks, round-robin across owners: each owner's
-- oldest due task first, then each owner's second, and so on. Rows another
-- claimer holds are skipped, so concurrent runs never take the same task.
create or replace function public.keel_claim_tasks(args jsonb) returns jsonb
language plpgsql
security definer
set search_path = keel, pg_catalog
as $$
declare
  v_token uuid := gen_random_uuid();
  v_limit int := (args->>'limit')::int;
  v_candidates bigint[];
  v_tasks jsonb;
begin
  select array_agg(c.id order by c.turn, c.run_at, c.id) into v_candidates
  from (
    select d.id, d.run_at, row_number() over (partition by o.id order by d.run_at, d.id) as turn
    from (select k.id from keel.tenants k union all select null::uuid) o
    cross join lateral keel.due_tasks_of(o.id, v_limit) d
  ) c;
  with due as (
    select t.id from keel.tasks t
    join unnest(coalesce(v_candidates, '{}')) with ordinality as c(id, position) on c.id = t.id
    where (t.status in ('queued', 'failed') and t.run_at <= now())
       or (t.status = 'running' and t.lease_until < now())
    order by c.position
    limit v_limit
    for update of t skip locked
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

-- Per-tenant quotas ------------------------------------------------------------------------

-- Webhook payload bytes stored per tenant and UTC day.
-- Sharded like keel.counters: concurrent deliveries of one tenant add to one
-- of 16 rows, so intake never queues behind one tenant-wide row lock (the
-- check sums the shards; deliveries in flight when the quota runs out may
-- each still pass).
create table if not exists keel.tenant_daily_usage (
  tenant_id uuid not null references keel.tenants (id) on delete cascade,
  day date not null,
  shard smallint not null default 0,
  webhook_bytes bigint not null default 0,
  primary key (tenant_id, day, shard)
);

alter table keel.webhook_deliveries add column if not exists payload_bytes int;
-- The event's ordering key: its own `timestamp`, else the delivery's
-- `webhook-timestamp` header; null when neither was given (a pulled event
-- without a timestamp), which orders before every event that has one.
alter table keel.webhook_deliveries add column if not exists event_at timestamptz;

create or replace function keel.refusal(p_quota text, p_limit bigint, p_retry_after int) returns jsonb
language sql
immutable
set search_path = keel, pg_catalog
as $$
  select jsonb_build_object('refused', jsonb_build_object(
    'quota', p_quota, 'limit', p_limit, 'retry_after', p_retry_after));
$$;

-- Stores a verified delivery and enqueues its processing, atomically; a
-- redelivery of the same webhook id stores and enqueues nothing. A new
-- delivery is refused, storing nothing, when it would take the tenant over
-- `max_webhook_bytes_per_day` stored payload bytes today (UTC) or when the
-- tenant already has `max_queued_tasks` unfinished tasks.
create or replace function public.keel_accept_webhook(args jsonb) returns jsonb
language plpgsql
security definer
set search_path = keel, pg_catalog
as $$
declare
  v_endpoint keel.webhook_endpoints;
  v_delivery bigint;
  v_bytes int := octet_length((args->'payload')::text);
  v_today date := (now() at time zone 'utc')::date;
  v_max_bytes bigint := (args->>'max_webhook_bytes_per_day')::bigint;
  v_max_tasks int := (args->>'max_queued_tasks')::int;
  v_next_day int := ceil(extract(epoch from ((v_today + 1)::timestamp at time zone 'utc') - now()))::int;
begin
  select * into v_endpoint from keel.webhook_endpoints where id = (args->>'endpoint_id')::uuid;
  if v_endpoint.id is null then
    raise exception 'no webhook endpoint with this id' using errcode = 'P0002';
  end if;
  if exists (select 1 from keel.webhook_deliveries
             where endpoint_id = v_endpoint.id and webhook_id = args->>'webhook_id') then
    perform keel.bump('webhooks_duplicate');
    return jsonb_build_object('duplicate', true);
  end if;
  if v_max_tasks is not null
     and (select count(*) from (select 1 from keel.tasks
                                where tenant_id = v_endpoint.tenant_id
                                  and status in ('queued', 'failed', 'running')
                                limit v_max_tasks) queued) >= v_max_tasks then
    return keel.refusal('queued_tasks', v_max_tasks, 60);
  end if;
  if v_max_bytes is not null
     and (select coalesce(sum(webhook_bytes), 0) from keel.tenant_daily_usage
          where tenant_id = v_endpoint.tenant_id and day = v_today) + v_bytes > v_max_bytes then
    return keel.refusal('webhook_bytes_per_day', v_max_bytes, greatest(v_next_day, 1));
  end if;
  insert into keel.webhook_deliveries (endpoint_id, tenant_id, webhook_id, event_type, payload,
                                       payload_bytes, event_at)
  values (v_endpoint.id, v_endpoint.tenant_id, args->>'webhook_id', args->>'event_type', args->'payload',
          v_bytes, (args->>'event_at')::timestamptz)
  on conflict (endpoint_id, webhook_id) do nothing
  returning id into v_delivery;
  if v_delivery is null then
    -- A concurrent delivery of the same id won the race.
    perform keel.bump('webhooks_duplicate');
    return jsonb_build_object('duplicate', true);
  end if;
  if v_max_bytes is not null then
    insert into keel.tenant_daily_usage as u (tenant_id, day, shard, webhook_bytes)
    values (v_endpoint.tenant_id, v_today, floor(random() * 16)::smallint, v_bytes)
    on conflict (tenant_id, day, shard) do update set webhook_bytes = u.webhook_bytes + excluded.webhook_bytes;
  end if;
  perform keel.enqueue_task(v_endpoint.tenant_id, 'webhook.process',
                            jsonb_build_object('delivery_id', v_delivery), 'delivery:' || v_delivery);
  perform keel.bump('webhooks_accepted');
  return jsonb_build_object('duplicate', false, 'delivery_id', v_delivery);
end $$;

-- Creates a tenant's endpoint; one with a pull_url is refused once the tenant
-- has `max_pull_endpoints` of them (each is pulled every hour).
create or replace function public.keel_create_webhook_endpoint(args jsonb) returns jsonb
language plpgsql
security definer
set search_path = keel, pg_catalog
as $$
declare
  v_endpoint keel.webhook_endpoints;
  v_tenant uuid := keel.resolve_tenant(args);
  v_max int := (args->>'max_pull_endpoints')::int;
begin
  if args->>'pull_url' is not null and v_max is not null then
    -- Serialises a tenant's concurrent creations so the count holds.
    perform 1 from keel.tenants where id = v_tenant for update;
    if (select count(*) from keel.webhook_endpoints
        where tenant_id = v_tenant and pull_url is not null) >= v_max then
      return keel.refusal('pull_endpoints', v_max, null);
    end if;
  end if;
  insert into keel.webhook_endpoints (tenant_id, source, secret_ciphertext, key_id, pull_url)
  values (v_tenant, args->>'source', args->>'secret_ciphertext', args->>'key_id', args->>'pull_url')
  returning * into v_endpoint;
  perform keel.audit(args, 'webhook_endpoint.created', 'webhook_endpoint:' || v_endpoint.id, v_endpoint.tenant_id,
                     jsonb_build_object('source', v_endpoint.source, 'pull_url', v_endpoint.pull_url,
                                        'encryption_key_id', v_endpoint.key_id));
  return jsonb_build_object('id', v_endpoint.id, 'source', v_endpoint.source,
                            'pull_url', v_endpoint.pull_url, 'created_at', v_endpoint.created_at);
end $$;

-- Deliveries pages bounded by bytes -------------------------------------------------------

-- The tenant's deliveries, oldest first: at most `limit` rows and at most
-- `max_bytes` of payload (counted as stored; the first row always comes, with
-- its payload left out — null, `payload_bytes` still given — if it alone is
-- over the bound). Payloads past the cut are never read.
create or replace function public.keel_list_webhook_deliveries(args jsonb) returns jsonb
language sql
stable
security definer
set search_path = keel, pg_catalog
as $$
  with sized as (
    select d.id, d.webhook_id, d.endpoint_id, d.event_type, d.received_at, d.status,
           coalesce(d.payload_bytes, pg_column_size(d.payload)) as bytes,
           row_number() over (order by d.id) as n
    from keel.webhook_deliveries d
    where d.tenant_id = keel.resolve_tenant(args)
      and (args->>'cursor' is null or d.id > (args->>'cursor')::bigint)
    order by d.id
    limit (args->>'limit')::int + 1
  ), page as (
    select s.*, sum(s.bytes) over (order by s.id) as running
    from sized s
  ), kept as (
    select p.* from page p
    where p.n <= (args->>'limit')::int
      and (p.n = 1 or p.running <= (args->>'max_bytes')::bigint)
  )
  select jsonb_build_object(
    'deliveries', coalesce((select jsonb_agg(jsonb_build_object(
        'webhook_id', k.webhook_id, 'endpoint_id', k.endpoint_id, 'event_type', k.event_type,
        'received_at', k.received_at, 'status', k.status, 'payload_bytes', k.bytes,
        'payload', case when k.bytes <= (args->>'max_bytes')::bigint
                        then (select d.payload from keel.webhook_deliveries d where d.id = k.id) end)
        order by k.id)
      from kept k), '[]'::jsonb),
    'next_cursor', case when (select count(*) from page) > (select count(*) from kept)
                        then (select max(id)::text from kept) end);
$$;

-- Event ordering ---------------------------------------------------------------------------

-- The newest event applied to each of a tenant's documents (by the delivery's
-- event_at, then its id), kept after a delete as a tombstone so an older
-- upsert replayed later cannot resurrect the document. `applying_until` is a
-- lease: while one delivery applies its event, others for the same document
-- wait (retry), so an older event can never land after a newer one.
create table if not exists keel.document_event_order (
  tenant_id uuid not null references keel.tenants (id) on delete cascade,
  document_id text not null,
  event_at timestamptz,
  delivery_id bigint not null,
  deleted boolean not null,
  applying_until timestamptz,
  updated_at timestamptz not null default now(),
  primary key (tenant_id, document_id)
);
create index if not exists document_event_order_updated on keel.document_event_order (updated_at);

-- Decides, for the delivery `delivery_id` touching documents `ids`, which ids
-- it may apply (`apply`) and which already saw a newer event (`stale`). If
-- another delivery is applying to one of them (`busy`), nothing is decided
-- and the caller retries later. Re-running for the same delivery (a retried
-- task) applies again.
create or replace function public.keel_order_document_events(args jsonb) returns jsonb
language plpgsql
security definer
set search_path = keel, pg_catalog
as $$
declare
  v_tenant uuid := keel.resolve_tenant(args);
  v_delivery bigint := (args->>'delivery_id')::bigint;
  v_event_at timestamptz;
  v_deleted boolean := (args->>'deleted')::boolean;
  v_ids text[] := array(select distinct jsonb_array_elements_text(args->'ids') order by 1);
  v_row keel.document_event_order;
  v_apply text[] := '{}';
  v_stale text[] := '{}';
  v_busy text[] := '{}';
  v_id text;
begin
  select d.event_at into v_event_at from keel.webhook_deliveries d
  where d.id = v_delivery and d.tenant_id = v_tenant;
  -- Sorted ids: concurrent deliveries lock rows in the same order.
  foreach v_id in array v_ids loop
    insert into keel.document_event_order (tenant_id, document_id, event_at, delivery_id, deleted)
    values (v_tenant, v_id, null, 0, false)
    on conflict do nothing;
    select * into v_row from keel.document_event_order
    where tenant_id = v_tenant and document_id = v_id for update;
    if v_row.delivery_id = v_delivery then
      v_apply := v_apply || v_id;
    elsif (coalesce(v_row.event_at, '-infinity'), v_row.delivery_id)
          > (coalesce(v_event_at, '-infinity'), v_delivery) then
      v_stale := v_stale || v_id;
    elsif v_row.applying_until > now() then
      v_busy := v_busy || v_id;
    else
      v_apply := v_apply || v_id;
    end if;
  end loop;
  if cardinality(v_busy) > 0 then
    return jsonb_build_object('apply', '[]'::jsonb, 'stale', '[]'::jsonb, 'busy', to_jsonb(v_busy));
  end if;
  update keel.document_event_order
  set event_at = v_event_at, delivery_id = v_delivery, deleted = v_deleted,
      applying_until = now() + make_interval(secs => (args->>'lease_seconds')::int), updated_at = now()
  where tenant_id = v_tenant and document_id = any (v_apply);
  return jsonb_build_object('apply', to_jsonb(v_apply), 'stale', to_jsonb(v_stale), 'busy', '[]'::jsonb);
end $$;

-- Finishing a delivery also ends its hold on the documents it applied.
create or replace function public.keel_finish_webhook_delivery(args jsonb) returns jsonb
language sql
security definer
set search_path = keel, pg_catalog
as $$
  update keel.webhook_deliveries set status = args->>'status', processed_at = now()
  where id = (args->>'id')::bigint and tenant_id = keel.resolve_tenant(args);
  update keel.document_event_order set applying_until = null
  where tenant_id = keel.resolve_tenant(args) and delivery_id = (args->>'id')::bigint;
  select jsonb_build_object('status', args->>'status');
$$;

create or replace function public.keel_webhook_delivery(args jsonb) returns jsonb
language sql
stable
security definer
set search_path = keel, pg_catalog
as $$
  select jsonb_build_object('id', d.id, 'tenant_id', d.tenant_id, 'webhook_id', d.webhook_id,
                            'event_type', d.event_type, 'payload', d.payload, 'status', d.status,
                            'event_at', d.event_at)
  from keel.webhook_deliveries d
  where d.id = (args->>'id')::bigint and d.tenant_id = keel.resolve_tenant(args);
$$;

-- Maintenance in bounded batches -----------------------------------------------------------

-- One bounded pass: releases stale leases and schedules reconciliation first
-- (cheap, and what must never stall behind a backlog), then deletes at most
-- `batch` rows of each retention kind, skipping rows others hold locked.
-- `more` says a batch was full: the caller calls again, each call its own
-- short transaction.
create or replace function public.keel_maintenance(args jsonb) returns jsonb
language plpgsql
security definer
set search_path = keel, pg_catalog
as $$
declare
  v_batch int := coalesce((args->>'batch')::int, 10000);
  v_cache int;
  v_tasks int;
  v_deliveries int;
  v_task_leases int;
  v_embedding_leases int;
  v_orders int;
  v_usage int;
  v_reconciles int := 0;
  v_endpoint record;
begin
  -- A dead worker's task becomes visibly due again rather than silently "running".
  update keel.tasks set status = 'failed', lease_token = null, lease_until = null, updated_at = now(),
         last_error = coalesce(last_error, 'lease expired: the worker stopped before finishing')
  where id in (select id from keel.tasks where status = 'running' and lease_until < now()
               limit v_batch for update skip locked);
  get diagnostics v_task_leases = row_count;
  update keel.embedding_jobs set lease_token = null, lease_until = null
  where ctid in (select ctid from keel.embedding_jobs where lease_until < now()
                 limit v_batch for update skip locked);
  get diagnostics v_embedding_leases = row_count;
  -- One reconciliation per pull endpoint per window, however often this runs.
  for v_endpoint in select id, tenant_id from keel.webhook_endpoints where pull_url is not null loop
    if (keel.enqueue_task(v_endpoint.tenant_id, 'webhook.reconcile',
                          jsonb_build_object('endpoint_id', v_endpoint.id),
                          'reconcile:' || v_endpoint.id || ':' || (args->>'window'))->>'created')::boolean then
      v_reconciles := v_reconciles + 1;
    end if;
  end loop;
  delete from keel.query_cache
  where ctid in (select ctid from keel.query_cache where expires_at < now()
                 limit v_batch for update skip locked);
  get diagnostics v_cache = row_count;
  delete from keel.tasks
  where id in (select id from keel.tasks
               where status = 'succeeded'
                 and finished_at < now() - make_interval(days => (args->>'task_retention_days')::int)
               limit v_batch for update skip locked);
  get diagnostics v_tasks = row_count;
  delete from keel.webhook_deliveries
  where id in (select id from keel.webhook_deliveries
               where received_at < now() - make_interval(days => (args->>'delivery_retention_days')::int)
                 and status <> 'queued'
               limit v_batch for update skip locked);
  get diagnostics v_deliveries = row_count;
  -- Ordering records (and delete tombstones) outlive the deliveries that
  -- could replay an older event by the same retention.
  delete from keel.document_event_order
  where ctid in (select ctid from keel.document_event_order
                 where updated_at < now() - make_interval(days => (args->>'delivery_retention_days')::int)
                   and (applying_until is null or applying_until < now())
                 limit v_batch for update skip locked);
  get diagnostics v_orders = row_count;
  delete from keel.tenant_daily_usage
  where ctid in (select ctid from keel.tenant_daily_usage where day < (now() at time zone 'utc')::date - 1
                 limit v_batch for update skip locked);
  get diagnostics v_usage = row_count;
  return jsonb_build_object(
    'query_cache_expired', v_cache, 'tasks_pruned', v_tasks, 'deliveries_pruned', v_deliveries,
    'task_leases_released', v_task_leases, 'embedding_leases_released', v_embedding_leases,
    'reconciliations_enqueued', v_reconciles,
    'more', greatest(v_cache, v_tasks, v_deliveries, v_task_leases, v_embedding_leases, v_orders, v_usage)
            >= v_batch);
end $$;

-- Hits older than any window, at most `batch` per call; `more` when the batch was full.
create or replace function public.keel_prune_rate_limits(args jsonb) returns jsonb
language plpgsql
security definer
set search_path = keel, pg_catalog
as $$
declare
  v_batch int := coalesce((args->>'batch')::int, 10000);
  v_pruned int;
begin
  delete from keel.rate_limit_hits
  where ctid in (select ctid from keel.rate_limit_hits where at < now() - interval '1 minute'
                 limit v_batch for update skip locked);
  get diagnostics v_pruned = row_count;
  return jsonb_build_object('rate_limit_hits_pruned', v_pruned, 'more', v_pruned >= v_batch);
end $$;

select keel.lock_down_api();
