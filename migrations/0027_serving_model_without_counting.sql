-- Search picks its model without counting the tenant's vectors once a model
-- change is over (docs/search-quality.md, "The serving model").
--
-- Since 0002, while another model than the configured one is registered,
-- every vector or hybrid search chose the model with the most of the
-- tenant's vectors by counting them, grouped by model: about 50 ms per
-- search at 100k vectors. keel.embedding_models keeps a replaced model's row
-- after its vectors are pruned (0007), so after any model change, or a
-- rollback, every search paid that count for good.
--
-- The count's answer is known without it once the configured model covers
-- the tenant: it is the current model (prepared last), its backfill has
-- queued every chunk (0011), and the tenant has none of its jobs left
-- (pending or failed) and at least one of its vectors. Then each of the
-- tenant's chunks has its vector, so no other model has more, and ties
-- went to the configured model anyway. Three index probes decide it;
-- during a change (jobs left, backfill running, or a rollback not yet
-- prepared) search counts as before, and serves the old vectors until the
-- new ones cover the tenant.

-- PL/pgSQL, not SQL: a SQL function that cannot be inlined is planned again
-- in every transaction, which cost more than its three probes; PL/pgSQL
-- keeps the plan for the session.
create or replace function keel.model_covers_tenant(p_tenant uuid, p_model text, p_dimensions int)
returns boolean
language plpgsql
stable
set search_path = keel, pg_catalog
as $$
begin
  return exists (select 1 from keel.embedding_models m
                 where m.model = p_model and m.dimensions = p_dimensions
                   and m.backfill_after is null
                   and not exists (select 1 from keel.embedding_models o
                                   where o.prepared_at > m.prepared_at))
     and not exists (select 1 from keel.embedding_jobs j
                     where j.tenant_id = p_tenant and j.model = p_model and j.dimensions = p_dimensions)
     and exists (select 1 from keel.embeddings e
                 where e.tenant_id = p_tenant and e.model = p_model and e.dimensions = p_dimensions);
end $$;

-- 0022's function; only the model choice's condition is new.
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
  v_feedback_keyword_weight float8 := coalesce((args->>'feedback_keyword_weight')::float8, 1);
  v_k1 float8 := coalesce((args->>'bm25_k1')::float8, 1.2);
  v_b float8 := coalesce((args->>'bm25_b')::float8, 0.6);
  v_title_weight float8 := coalesce((args->>'title_weight')::float8, 1);
  -- Hybrid only by default: the fused ranking is the better feedback, and
  -- vector alone gained less for a second index scan (experiments 8, 12).
  v_feedback_chunks int := least(greatest(coalesce((args->>'feedback_chunks')::numeric::int,
                                                   case when args->>'mode' = 'hybrid' then 3 else 0 end), 0), 20);
  v_feedback_vector_weight float8 := coalesce((args->>'feedback_vector_weight')::float8, 0.25);
  v_feedback_pool int := least(greatest(coalesce((args->>'feedback_pool')::numeric::int, 40), 0), 1000);
  v_feedback_terms int := least(greatest(coalesce((args->>'feedback_terms')::numeric::int, 0), 0), 10);
  v_feedback_term_weight float8 := coalesce((args->>'feedback_term_weight')::float8, 0);
  v_filter jsonb := coalesce(args->'filter', '{}'::jsonb);
  v_embedding extensions.vector;
  v_best record;
  v_vector jsonb := '[]';
  v_pool bigint[];
  v_keyword jsonb := '[]';
  v_query tsquery;
  v_terms jsonb;
  v_excluded tsquery;
  v_feedback bigint[];
  v_centroid extensions.vector;
  -- The query vector moved toward the feedback chunks' centroid.
  v_moved extensions.vector;
  v_expansion jsonb;
begin
  if v_mode in ('vector', 'hybrid') then
    if not coalesce((args->>'model_chosen')::boolean, false)
       and exists (select 1 from keel.embedding_models
                   where not (model = v_model and dimensions = v_dimensions))
       and not keel.model_covers_tenant(v_tenant, v_model, v_dimensions) then
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

    if v_feedback_chunks > 0 and v_feedback_pool > v_candidates then
      -- One walk for both: the pool, whose first v_candidates are the ranking.
      v_vector := keel.rank_vector(v_tenant, v_model, v_dimensions, v_embedding, v_filter, v_feedback_pool);
      v_pool := array(select (x->>'chunk_id')::bigint from jsonb_array_elements(v_vector) x);
      v_vector := coalesce((select jsonb_agg(x order by i) from jsonb_array_elements(v_vector) with ordinality t (x, i)
                            where i <= v_candidates), '[]'::jsonb);
    else
      v_vector := keel.rank_vector(v_tenant, v_model, v_dimensions, v_embedding, v_filter, v_candidates);
      v_pool := array(select (x->>'chunk_id')::bigint from jsonb_array_elements(v_vector) x);
    end if;
  end if;

  if v_mode in ('keyword', 'hybrid') then
    -- websearch syntax (`-word` excludes, quotes, `or`), except that a dash
    -- between spaces is punctuation in prose, not an exclusion.
    v_query := websearch_to_tsquery('english',
                 regexp_replace(args->>'query', '(^|\s)-+(?=\s|$)', '\1', 'g'));
    select q.terms, q.excluded into v_terms, v_excluded
    from keel.keyword_terms(v_query, coalesce((args->>'bm25_k3')::float8, 3)) q;
    v_keyword := keel.rank_keyword_terms(v_tenant, v_terms, v_excluded, v_filter, v_candidates,
                                         v_k1, v_b, v_title_weight, 5000);
  end if;

  if v_feedback_chunks > 0 then
    v_feedback := array(
      select f.chunk_id
      from keel.fuse_rankings(v_vector, v_keyword, v_mode = 'hybrid', v_rrf_k, v_feedback_keyword_weight) f
      order by f.score desc, f.chunk_id
      limit v_feedback_chunks);
  end if;
  if cardinality(v_feedback) > 0 and v_mode in ('vector', 'hybrid') and v_feedback_vector_weight > 0 then
    select extensions.l2_normalize(avg(e.embedding)) into v_centroid
    from keel.embeddings e
    where e.chunk_id = any(v_feedback) and e.model = v_model and e.dimensions = v_dimensions;
    if v_centroid is not null then
      v_moved := extensions.l2_normalize(v_embedding)
          * array_fill((1 - v_feedback_vector_weight)::real, array[v_dimensions])::extensions.vector
        + v_centroid * array_fill(v_feedback_vector_weight::real, array[v_dimensions])::extensions.vector;
      if v_feedback_pool > 0 then
        v_vector := keel.rerank_vector(
          v_model, v_dimensions, v_moved,
          v_pool || array(select (x->>'chunk_id')::bigint from jsonb_array_elements(v_keyword) x),
          v_candidates);
      else
        v_vector := keel.rank_vector(v_tenant, v_model, v_dimensions, v_moved, v_filter, v_candidates);
      end if;
    end if;
  end if;
  if cardinality(v_feedback) > 0 and v_mode in ('keyword', 'hybrid') and v_terms is not null
     and v_feedback_terms > 0 and v_feedback_term_weight > 0 then
    select jsonb_object_agg(key, value::float8 * v_feedback_term_weight) into v_expansion
    from jsonb_each_text(keel.feedback_terms(v_tenant, v_feedback, v_terms, v_feedback_terms));
    if v_expansion is not null then
      v_keyword := keel.rank_keyword_terms(v_tenant, v_terms || v_expansion, v_excluded, v_filter,
                                           v_candidates, v_k1, v_b, v_title_weight, 5000);
    end if;
  end if;

  return jsonb_build_object('results', coalesce((
    select jsonb_agg(jsonb_build_object(
             'document_id', d.external_id, 'title', d.title, 'chunk_index', c.chunk_index,
             'content', c.content, 'score', round(f.score::numeric, 6), 'metadata', d.metadata,
             'source_url', d.source_url) order by f.score desc, c.id)
    from (
      select f.chunk_id, f.score
      from keel.fuse_rankings(v_vector, v_keyword, v_mode = 'hybrid', v_rrf_k, v_keyword_weight) f
      where f.score >= coalesce((args->>'min_score')::float8, 0)
      order by f.score desc, f.chunk_id
      limit v_top_k
    ) f
    join keel.chunks c on c.id = f.chunk_id
    join keel.documents d on d.id = c.document_id), '[]'::jsonb));
end $$;

revoke all on function keel.model_covers_tenant(uuid, text, int) from public, anon, authenticated;

select keel.lock_down_api();
