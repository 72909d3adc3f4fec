-- Issue 15: verification presets. Each webhook endpoint names how its
-- deliveries are verified and deduplicated (`standard` = Standard Webhooks,
-- as every endpoint made before this migration; or a provider's own scheme:
-- vapi, twilio, vonage, razorpay, shopify, woocommerce, stripe, github).
-- The secret stays sealed by Keel (AES-256-GCM under ENCRYPTION_KEY) whether
-- Keel generated it or the provider issued it; the database never sees it
-- in clear.
--
-- Re-runnable, like every migration; Postgres 15 + pgvector only.

alter table keel.webhook_endpoints
  add column if not exists verification text not null default 'standard';

do $$
begin
  if not exists (select 1 from pg_constraint where conname = 'webhook_endpoints_verification_known') then
    alter table keel.webhook_endpoints add constraint webhook_endpoints_verification_known
      check (verification in ('standard', 'vapi', 'twilio', 'vonage', 'razorpay', 'shopify',
                              'woocommerce', 'stripe', 'github'));
  end if;
end $$;

-- As in 0014, with `verification` stored, audited and returned.
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
  insert into keel.webhook_endpoints (tenant_id, source, verification, secret_ciphertext, key_id, pull_url)
  values (v_tenant, args->>'source', coalesce(args->>'verification', 'standard'),
          args->>'secret_ciphertext', args->>'key_id', args->>'pull_url')
  returning * into v_endpoint;
  perform keel.audit(args, 'webhook_endpoint.created', 'webhook_endpoint:' || v_endpoint.id, v_endpoint.tenant_id,
                     jsonb_build_object('source', v_endpoint.source, 'verification', v_endpoint.verification,
                                        'pull_url', v_endpoint.pull_url,
                                        'encryption_key_id', v_endpoint.key_id));
  return keel.idempotency_store(v_scope, 'webhooks.endpoints', args,
    jsonb_build_object('id', v_endpoint.id, 'source', v_endpoint.source,
                       'verification', v_endpoint.verification,
                       'pull_url', v_endpoint.pull_url, 'created_at', v_endpoint.created_at));
end $$;

-- As in 0005, with the endpoint's `verification`.
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
                            'verification', v_endpoint.verification,
                            'secret_ciphertext', v_endpoint.secret_ciphertext, 'key_id', v_endpoint.key_id,
                            'previous_secret_ciphertext',
                              case when v_previous_valid then v_endpoint.previous_secret_ciphertext end,
                            'previous_key_id', case when v_previous_valid then v_endpoint.previous_key_id end,
                            'pull_url', v_endpoint.pull_url);
end $$;

-- The verification of one of the caller's endpoints, so a rotation knows
-- whether the new secret comes from the provider (in the request) or from
-- Keel. Another tenant's endpoint is "not found".
create or replace function public.keel_webhook_endpoint_verification(args jsonb) returns jsonb
language plpgsql
stable
security definer
set search_path = keel, pg_catalog
as $$
declare
  v_verification text;
begin
  select e.verification into v_verification from keel.webhook_endpoints e
  where e.id = (args->>'id')::uuid and e.tenant_id = keel.resolve_tenant(args);
  if v_verification is null then
    raise exception 'no webhook endpoint with this id' using errcode = 'P0002';
  end if;
  return jsonb_build_object('verification', v_verification);
end $$;

-- As in 0012, with the endpoint's `verification`: a Shopify endpoint's
-- `products/update` is a catalogue change, another sender's is its own.
create or replace function public.keel_webhook_delivery(args jsonb) returns jsonb
language sql
stable
security definer
set search_path = keel, pg_catalog
as $$
  select jsonb_build_object('id', d.id, 'tenant_id', d.tenant_id, 'webhook_id', d.webhook_id,
                            'event_type', d.event_type, 'payload', d.payload, 'status', d.status,
                            'event_at', d.event_at, 'verification', e.verification)
  from keel.webhook_deliveries d
  join keel.webhook_endpoints e on e.id = d.endpoint_id
  where d.id = (args->>'id')::bigint and d.tenant_id = keel.resolve_tenant(args);
$$;

select keel.lock_down_api();
