-- Issue 11, item i: Idempotency-Key on the routes that create or rotate a
-- credential (POST /api/tenants, /api/tenants/{slug}/keys,
-- /api/webhooks/endpoints, /api/webhooks/endpoints/{id}/secret).
--
-- A retried call that timed out must get the key or secret the first call
-- made, not a second one. So the response is stored in the SAME transaction
-- as the work: each of the four functions, given args->'idempotency'
-- ({key, request_hash, sealed_response, key_id}), first claims
-- (scope, route, key) in keel.idempotency_keys and only then does its work,
-- finally storing its own result beside the claim. A duplicate that arrives
-- while the first call runs waits on the unique key, then replays. The
-- secret part of the response (the API key or whsec_ secret) is sealed by
-- Keel with AES-256-GCM under ENCRYPTION_KEY before the call; the rest of the
-- response (`result`) is the function's own output, which holds no secret.
--
-- Re-runnable, like every migration; Postgres 15 + pgvector only.

create table if not exists keel.idempotency_keys (
  -- 'admin', or 'tenant:<id>' as resolved from the caller's key: never
  -- chosen by the client, so no one replays another's response.
  scope text not null,
  route text not null,
  key text not null check (length(key) between 1 and 255),
  -- SHA-256 of the request (method, path and body): the same key with
  -- another request is refused.
  request_hash text not null,
  sealed_response text not null,
  key_id text not null,
  -- The function's result, set before the claim commits (null never
  -- survives a transaction).
  result jsonb,
  created_at timestamptz not null default now(),
  primary key (scope, route, key)
);

create index if not exists idempotency_keys_created_at on keel.idempotency_keys (created_at);

-- Claims args->'idempotency' for (scope, route). Null when claimed (or when
-- the call carries no key): do the work. Otherwise the answer to return at
-- once: {"idempotency":{"replayed":{result, sealed_response, key_id}}} for
-- the same request, {"idempotency":{"reused":true}} for another one. A key
-- older than 24 h counts as absent.
create or replace function keel.idempotency_claim(p_scope text, p_route text, args jsonb) returns jsonb
language plpgsql
set search_path = keel, pg_catalog
as $$
declare
  v_claim jsonb := args->'idempotency';
  v_row keel.idempotency_keys;
begin
  if v_claim is null or jsonb_typeof(v_claim) <> 'object' then
    return null;
  end if;
  insert into keel.idempotency_keys as k (scope, route, key, request_hash, sealed_response, key_id)
  values (p_scope, p_route, v_claim->>'key', v_claim->>'request_hash',
          v_claim->>'sealed_response', v_claim->>'key_id')
  on conflict (scope, route, key) do update
    set request_hash = excluded.request_hash, sealed_response = excluded.sealed_response,
        key_id = excluded.key_id, result = null, created_at = now()
    where k.created_at < now() - interval '24 hours'
  returning * into v_row;
  if found then
    return null;
  end if;
  select * into v_row from keel.idempotency_keys
  where scope = p_scope and route = p_route and key = v_claim->>'key';
  if v_row.request_hash is distinct from v_claim->>'request_hash' then
    return jsonb_build_object('idempotency', jsonb_build_object('reused', true));
  end if;
  return jsonb_build_object('idempotency', jsonb_build_object('replayed', jsonb_build_object(
    'result', v_row.result, 'sealed_response', v_row.sealed_response, 'key_id', v_row.key_id)));
end $$;

-- Stores the result of the work under the claim made by idempotency_claim.
create or replace function keel.idempotency_store(p_scope text, p_route text, args jsonb, p_result jsonb)
returns jsonb
language plpgsql
set search_path = keel, pg_catalog
as $$
begin
  if args->'idempotency' is not null and jsonb_typeof(args->'idempotency') = 'object' then
    update keel.idempotency_keys set result = p_result
    where scope = p_scope and route = p_route and key = args->'idempotency'->>'key';
  end if;
  return p_result;
end $$;

-- Tenants (admin) -----------------------------------------------------------------

create or replace function public.keel_create_tenant(args jsonb) returns jsonb
language plpgsql
security definer
set search_path = keel, pg_catalog
as $$
declare
  v_tenant keel.tenants;
  v_key_id uuid;
  v_replay jsonb := keel.idempotency_claim('admin', 'tenants.create', args);
begin
  if v_replay is not null then
    return v_replay;
  end if;
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
  return keel.idempotency_store('admin', 'tenants.create', args,
                                jsonb_build_object('tenant', keel.tenant_json(v_tenant)));
end $$;

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
  v_replay jsonb := keel.idempotency_claim('admin', 'tenants.keys', args);
begin
  if v_replay is not null then
    return v_replay;
  end if;
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
  return keel.idempotency_store('admin', 'tenants.keys', args,
    jsonb_build_object('tenant', keel.tenant_json(v_tenant), 'key_id', v_key_id, 'revoked', v_revoked));
end $$;

-- Webhook endpoints (tenant) -------------------------------------------------------

create or replace function public.keel_create_webhook_endpoint(args jsonb) returns jsonb
language plpgsql
security definer
set search_path = keel, pg_catalog
as $$
declare
  v_endpoint keel.webhook_endpoints;
  v_tenant uuid := keel.resolve_tenant(args);
  v_scope text := 'tenant:' || v_tenant;
  v_max int := (args->>'max_pull_endpoints')::int;
  v_replay jsonb := keel.idempotency_claim(v_scope, 'webhooks.endpoints', args);
begin
  if v_replay is not null then
    return v_replay;
  end if;
  if args->>'pull_url' is not null and v_max is not null then
    -- Serialises a tenant's concurrent creations so the count holds.
    perform 1 from keel.tenants where id = v_tenant for update;
    if (select count(*) from keel.webhook_endpoints
        where tenant_id = v_tenant and pull_url is not null) >= v_max then
      -- Nothing was created: a retry may succeed later, so no claim is kept.
      delete from keel.idempotency_keys
      where scope = v_scope and route = 'webhooks.endpoints' and key = args->'idempotency'->>'key';
      return keel.refusal('pull_endpoints', v_max, null);
    end if;
  end if;
  insert into keel.webhook_endpoints (tenant_id, source, secret_ciphertext, key_id, pull_url)
  values (v_tenant, args->>'source', args->>'secret_ciphertext', args->>'key_id', args->>'pull_url')
  returning * into v_endpoint;
  perform keel.audit(args, 'webhook_endpoint.created', 'webhook_endpoint:' || v_endpoint.id, v_endpoint.tenant_id,
                     jsonb_build_object('source', v_endpoint.source, 'pull_url', v_endpoint.pull_url,
                                        'encryption_key_id', v_endpoint.key_id));
  return keel.idempotency_store(v_scope, 'webhooks.endpoints', args,
    jsonb_build_object('id', v_endpoint.id, 'source', v_endpoint.source,
                       'pull_url', v_endpoint.pull_url, 'created_at', v_endpoint.created_at));
end $$;

create or replace function public.keel_rotate_webhook_secret(args jsonb) returns jsonb
language plpgsql
security definer
set search_path = keel, pg_catalog
as $$
declare
  v_tenant uuid := keel.resolve_tenant(args);
  v_scope text := 'tenant:' || v_tenant;
  v_grace interval := make_interval(secs => (args->>'grace_seconds')::int);
  v_endpoint keel.webhook_endpoints;
  v_replay jsonb := keel.idempotency_claim(v_scope, 'webhooks.secret', args);
begin
  if v_replay is not null then
    return v_replay;
  end if;
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
  return keel.idempotency_store(v_scope, 'webhooks.secret', args,
    jsonb_build_object('id', v_endpoint.id, 'rotated_at', v_endpoint.secret_rotated_at,
                       'previous_secret_expires_at', v_endpoint.previous_secret_expires_at));
end $$;

-- Maintenance: keys older than 24 h, at most `batch` per call; `more` when the
-- batch was full (called in a loop by the maintenance cron, like the other prunes).
create or replace function public.keel_prune_idempotency_keys(args jsonb) returns jsonb
language plpgsql
security definer
set search_path = keel, pg_catalog
as $$
declare
  v_batch int := coalesce((args->>'batch')::int, 5000);
  v_pruned int;
begin
  delete from keel.idempotency_keys
  where ctid in (select ctid from keel.idempotency_keys where created_at < now() - interval '24 hours'
                 limit v_batch for update skip locked);
  get diagnostics v_pruned = row_count;
  return jsonb_build_object('idempotency_keys_pruned', v_pruned, 'more', v_pruned >= v_batch);
end $$;

select keel.lock_down_api();
