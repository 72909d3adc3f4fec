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

-- Search for a trusted caller: a Vapi call waiting on a `search_knowledge`
-- tool call is answered from the knowledge of the endpoint's tenant, which
-- intake read from the database (never from the sender). As 0009's
-- keel_search, with the tenant resolved by keel.resolve_tenant (the key
-- hash of an API caller, authenticated exactly as before, or a trusted
-- tenant id) instead of keel.authenticate alone. Only Keel's own role
-- executes it (keel.lock_down_api), as every tenant function.
create or replace function public.keel_search(args jsonb) returns jsonb
language plpgsql
security definer
set search_path = keel, extensions, pg_catalog
as $$
declare
  v_tenant uuid := keel.resolve_tenant(args);
  v_mode text := args->>'mode';
  v_model text := args->>'model';
  v_dimensions int := (args->>'dimensions')::int;
  v_top_k int := (args->>'top_k')::int;
  v_candidates int := greatest(coalesce((args->>'candidates')::numeric::int, 40), (args->>'top_k')::int);
  v_rrf_k float8 := coalesce((args->>'rrf_k')::float8, 10);
  v_keyword_weight float8 := coalesce((args->>'keyword_weight')::float8, 0.75);
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
    -- websearch syntax (`-word` excludes, quotes, `or`), except that a dash
    -- between spaces is punctuation in prose, not an exclusion.
    v_query := websearch_to_tsquery('english',
                 regexp_replace(args->>'query', '(^|\s)-+(?=\s|$)', '\1', 'g'));
    if numnode(v_query) > 0 then
      v_keyword := keel.rank_keyword(
        v_tenant, v_query, v_filter, v_candidates,
        coalesce((args->>'bm25_k1')::float8, 1.2),
        coalesce((args->>'bm25_b')::float8, 0.75),
        coalesce((args->>'bm25_k3')::float8, 3),
        coalesce((args->>'title_weight')::float8, 1),
        5000);
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
                 case when v_mode = 'hybrid' then 1.0 / (v_rrf_k + v.ordinality) else (v.value->>'score')::float8 end as score
          from jsonb_array_elements(v_vector) with ordinality v
          union all
          select (k.value->>'chunk_id')::bigint,
                 case when v_mode = 'hybrid' then v_keyword_weight / (v_rrf_k + k.ordinality) else (k.value->>'score')::float8 end
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
