-- Answers (issue 14): their metrics, and search on a conversation's behalf.
--
-- Metrics: tokens spent and time to first token, as
-- sharded counters like every other count `keel_metrics` reports, so every
-- instance reports the same numbers. The time to first token is a
-- Prometheus histogram: one cumulative counter per bucket, a sum and a
-- count. Re-runnable, like every migration.

create or replace function public.keel_chat_observe(args jsonb) returns jsonb
language plpgsql
security definer
set search_path = keel, pg_catalog
as $$
declare
  v_prompt bigint := greatest(coalesce((args->>'prompt_tokens')::bigint, 0), 0);
  v_completion bigint := greatest(coalesce((args->>'completion_tokens')::bigint, 0), 0);
  v_ttft double precision := (args->>'ttft_seconds')::double precision;
  v_bucket text;
begin
  perform keel.bump('chat_answers');
  if v_prompt > 0 then
    perform keel.bump('chat_tokens_prompt', v_prompt);
  end if;
  if v_completion > 0 then
    perform keel.bump('chat_tokens_completion', v_completion);
  end if;
  if v_ttft is not null and v_ttft >= 0 then
    -- Buckets in seconds; the names match ops/metrics.rs.
    foreach v_bucket in array array['0.1', '0.25', '0.5', '1', '2.5', '5', '10'] loop
      if v_ttft <= v_bucket::double precision then
        perform keel.bump('chat_ttft_le_' || v_bucket);
      end if;
    end loop;
    perform keel.bump('chat_ttft_count');
    perform keel.bump('chat_ttft_sum_ms', round(v_ttft * 1000)::bigint);
  end if;
  return '{}'::jsonb;
end $$;

-- Answers search a tenant's knowledge on behalf of a conversation whose
-- caller `keel_chat_begin` already authenticated (a tenant key or a
-- publishable key, which has no tenant key hash): keel_search takes the
-- tenant as every other tenant function does, through keel.resolve_tenant
-- (`key_hash`, authenticated here, or a trusted `tenant_id`). The body is
-- 0009's otherwise unchanged.
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
