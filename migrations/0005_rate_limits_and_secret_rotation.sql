-- Rate limits, and rotation of webhook signing secrets.

-- Rate limits ---------------------------------------------------------------------------
-- A sliding-window log per bucket: a scope and a tenant ("search:<tenant>")
-- or a scope and a client address ("anonymous:203.0.113.7"). Serverless
-- instances share no memory, so the quota lives here and is taken by
-- public.keel_gated in the same call as the work it guards.
--
-- Appending a row per request takes no row lock, so a tenant's concurrent
-- requests never queue behind each other's transactions; the price is that
-- requests in flight at the moment a quota runs out can each still pass.
-- Unlogged: a crash forgets recent hits (forgiving some requests), and
-- skipping the WAL keeps the per-request insert cheap.
create unlogged table if not exists keel.rate_limit_hits (
  bucket text not null,
  at timestamptz not null
);
create index if not exists rate_limit_hits_bucket_at on keel.rate_limit_hits (bucket, at);

-- Takes one request from `p_bucket`'s quota of `p_limit` per `p_window_seconds`,
-- or refuses it. Returns {allowed, limit, remaining, reset, window}; `reset`
-- is the seconds until the oldest counted request leaves the window, i.e.
-- when the quota next grows (and, when refused, when to retry).
create or replace function keel.take_quota(p_bucket text, p_limit int, p_window_seconds int) returns jsonb
language plpgsql
set search_path = keel, pg_catalog
as $$
declare
  v_now timestamptz := clock_timestamp();
  v_window interval := make_interval(secs => p_window_seconds);
  v_count int;
  v_oldest timestamptz;
  v_allowed boolean;
begin
  -- Only the newest p_limit hits matter: when they are all inside the window,
  -- the request is refused until the oldest of them leaves it.
  select count(*), min(at) into v_count, v_oldest
  from (select at from keel.rate_limit_hits
        where bucket = p_bucket and at > v_now - v_window
        order by at desc
        limit p_limit) recent;
  v_allowed := v_count < p_limit;
  if v_allowed then
    insert into keel.rate_limit_hits (bucket, at) values (p_bucket, v_now);
    v_count := v_count + 1;
    -- Expired hits are also swept hourly by keel_prune_rate_limits; pruning busy
    -- buckets now and then keeps their index range short in between.
    if random() < 1.0 / 64 then
      delete from keel.rate_limit_hits where bucket = p_bucket and at <= v_now - v_window;
    end if;
  end if;
  return jsonb_build_object(
    'allowed', v_allowed,
    'limit', p_limit,
    'remaining', greatest(p_limit - v_count, 0),
    'reset', greatest(1, ceil(extract(epoch from coalesce(v_oldest, v_now) + v_window - v_now)))::int,
    'window', p_window_seconds);
end $$;

-- Hits older than any window; run by the maintenance cron.
create or replace function public.keel_prune_rate_limits(args jsonb) returns jsonb
language plpgsql
security definer
set search_path = keel, pg_catalog
as $$
declare
  v_pruned int;
begin
  delete from keel.rate_limit_hits where at < now() - interval '1 minute';
  get diagnostics v_pruned = row_count;
  return jsonb_build_object('rate_limit_hits_pruned', v_pruned);
end $$;

-- Runs public.<function>(args->'args') after taking a request from the quota
-- args->'limit' names: {scope, per_minute} plus either `client_ip` (per
-- address) or nothing, in which case the bucket is the tenant that
-- args->'args'->>'key_hash' authenticates. Returns {quota, result}, or just
-- {quota} when refused: a refusal commits (so it is counted) and runs nothing.
create or replace function public.keel_gated(args jsonb) returns jsonb
language plpgsql
security definer
set search_path = keel, pg_catalog
as $$
declare
  v_function text := args->>'function';
  v_limit jsonb := args->'limit';
  v_scope text := v_limit->>'scope';
  v_subject text;
  v_quota jsonb;
  v_result jsonb;
begin
  if v_function is null or v_function !~ '^keel_[a-z_]+$' or v_function = 'keel_gated'
     or to_regprocedure('public.' || v_function || '(jsonb)') is null then
    raise exception 'keel_gated cannot run %', coalesce(v_function, 'null') using errcode = '42883';
  end if;
  if v_scope is null or v_scope !~ '^[a-z_]+$' or (v_limit->>'per_minute')::int < 1 then
    raise exception 'keel_gated needs limit.scope and a positive limit.per_minute' using errcode = '22023';
  end if;
  v_subject := coalesce(v_limit->>'client_ip', keel.authenticate(args->'args'->>'key_hash')::text);
  v_quota := keel.take_quota(v_scope || ':' || v_subject, (v_limit->>'per_minute')::int, 60);
  if not (v_quota->>'allowed')::boolean then
    perform keel.bump('rate_limited_' || v_scope);
    return jsonb_build_object('quota', v_quota);
  end if;
  execute format('select public.%I($1)', v_function) into v_result using args->'args';
  return jsonb_build_object('quota', v_quota, 'result', v_result);
end $$;

-- Webhook secret rotation -----------------------------------------------------------------
-- After a rotation the previous secret keeps verifying deliveries until
-- previous_secret_expires_at, so a provider can switch over without losing any.
alter table keel.webhook_endpoints add column if not exists previous_secret_ciphertext text;
alter table keel.webhook_endpoints add column if not exists previous_key_id text;
alter table keel.webhook_endpoints add column if not exists previous_secret_expires_at timestamptz;

create or replace function public.keel_webhook_endpoint(args jsonb) returns jsonb
language plpgsql
stable
security definer
set search_path = keel, pg_catalog
as $$
declare
  v_endpoint keel.webhook_endpoints;
  v_previous_valid boolean;
begin
  select * into v_endpoint from keel.webhook_endpoints where id = (args->>'id')::uuid;
  if v_endpoint.id is null then
    raise exception 'no webhook endpoint with this id' using errcode = 'P0002';
  end if;
  v_previous_valid := coalesce(v_endpoint.previous_secret_expires_at > now(), false);
  return jsonb_build_object('id', v_endpoint.id, 'tenant_id', v_endpoint.tenant_id,
                            'secret_ciphertext', v_endpoint.secret_ciphertext, 'key_id', v_endpoint.key_id,
                            'previous_secret_ciphertext',
                              case when v_previous_valid then v_endpoint.previous_secret_ciphertext end,
                            'previous_key_id', case when v_previous_valid then v_endpoint.previous_key_id end,
                            'pull_url', v_endpoint.pull_url);
end $$;

-- Replaces the signing secret of one of the caller's endpoints; the old one
-- stays valid for args->>'grace_seconds'. Another tenant's endpoint is "not found".
create or replace function public.keel_rotate_webhook_secret(args jsonb) returns jsonb
language plpgsql
security definer
set search_path = keel, pg_catalog
as $$
declare
  v_tenant uuid := keel.resolve_tenant(args);
  v_grace interval := make_interval(secs => (args->>'grace_seconds')::int);
  v_endpoint keel.webhook_endpoints;
begin
  update keel.webhook_endpoints e
  set previous_secret_ciphertext = e.secret_ciphertext,
      previous_key_id = e.key_id,
      previous_secret_expires_at = now() + v_grace,
      secret_ciphertext = args->>'secret_ciphertext',
      key_id = args->>'key_id',
      secret_rotated_at = now()
  where e.id = (args->>'id')::uuid and e.tenant_id = v_tenant
  returning * into v_endpoint;
  if v_endpoint.id is null then
    raise exception 'no webhook endpoint with this id' using errcode = 'P0002';
  end if;
  perform keel.audit(args, 'webhook_endpoint.secret_rotated', 'webhook_endpoint:' || v_endpoint.id,
                     v_tenant, jsonb_build_object('encryption_key_id', v_endpoint.key_id,
                                                  'previous_secret_expires_at', v_endpoint.previous_secret_expires_at));
  return jsonb_build_object('id', v_endpoint.id, 'rotated_at', v_endpoint.secret_rotated_at,
                            'previous_secret_expires_at', v_endpoint.previous_secret_expires_at);
end $$;

select keel.lock_down_api();
