-- Search defaults re-chosen for issue 16 (docs/search-quality.md,
-- experiments 13–16): which chunks dense feedback takes, and BM25's length
-- normalisation. Every other knob, and everything the experiments tried that
-- did not help (document-level, score-based and three-list fusion, more
-- feedback rounds, weighted or negative feedback, agreement-weighted fusion,
-- keyword candidates re-ranked by the moved query vector), is left out.

-- Dense feedback re-ranks the candidates it already has instead of
-- searching the tenant again (issue 17; added here before 0022 landed).
-- 0021's feedback ran keel.rank_vector a second time with the moved query vector: a second
-- exact scan of a small tenant's vectors or a second HNSW walk of a large
-- one. The moved vector is three quarters the query's, so the chunks
-- nearest to it are nearly all among the candidates of the first rankings:
-- the moved vector now ranks that pool (the first vector ranking's chunks,
-- `feedback_pool` of them, and the keyword candidates) by exact distance,
-- one primary-key read per chunk. `feedback_pool` 0 searches the tenant
-- again as before; a pool larger than the candidates makes the first walk
-- longer (a larger ef_search), which cost more than the second walk saved.
--
-- Measured (docs/search-quality.md, experiment 17): nDCG@10 hybrid mean
-- over the development collections 0.595 with a second search, 0.597 with
-- the default pool of 40, 0.598 with 100, 0.595 with 200; in the database
-- on a 100k-chunk tenant (319 queries, p50 / p95) 7.0 / 11.3 ms with a
-- second search, 7.1 / 10.5 ms with 40, 8.8 / 13.7 ms with 100.

-- The chunks of p_chunks nearest to p_embedding by exact cosine distance,
-- at most p_limit, best first, in rank_vector's shape. The caller's
-- rankings already honoured the tenant and any metadata filter.
create or replace function keel.rerank_vector(
  p_model text, p_dimensions int, p_embedding extensions.vector, p_chunks bigint[], p_limit int
) returns jsonb
language sql
stable
set search_path = keel, extensions, pg_catalog
as $$
  select coalesce(jsonb_agg(jsonb_build_object('chunk_id', chunk_id, 'score', score) order by score desc, chunk_id), '[]'::jsonb)
  from (
    select e.chunk_id, 1 - (e.embedding <=> p_embedding) as score
    from keel.embeddings e
    where e.chunk_id = any(p_chunks) and e.model = p_model and e.dimensions = p_dimensions
    order by score desc, e.chunk_id
    limit p_limit
  ) ranked
$$;

-- Hybrid search for the caller's tenant, as in 0021 (modes, feedback, query
-- cache and model choice unchanged) with three changes, each chosen by the
-- mean nDCG@10 over the development collections:
-- - the feedback chunks are the best of an equal-weight fusion
--   (`feedback_keyword_weight` 1), while the final fusion keeps the keyword
--   ranking at 0.75. Before feedback the two rankings are about equally good
--   (keyword 0.511, vector 0.529), and the chunks both put high are the
--   likeliest relevant; after feedback the vector ranking is the stronger
--   one. 0.85–1.25 is one plateau (experiment 14);
-- - BM25's length normalisation b 0.6 instead of 0.75: chunks are at most
--   200 tokens, so their lengths say less about verbosity than whole
--   documents' do (experiment 15; keyword mode's mean rises too).
-- - dense feedback re-ranks the first rankings' candidates instead of
--   searching the tenant again (`feedback_pool`, above).
-- The other knobs are 0021's.
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

revoke all on function keel.rerank_vector(text, int, extensions.vector, bigint[], int) from public, anon, authenticated;

select keel.lock_down_api();
